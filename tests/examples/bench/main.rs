//! `scripts/bench.sh`: Warren against Nebula 1.6.1 in one NAT lab, printed as a table.
//!
//! Bench layer on top of the lab harness (a program, not a test: `scripts/test.sh` does not
//! run it). One lab holds an `eim`+`eim` pair of sites (direct path) and a `sym`+`sym` pair
//! (relayed path). Warren's coordinator and Nebula's lighthouse (also Nebula's relay) share
//! the coordinator namespace; each node namespace runs a Warren node (`wrn0`) and a Nebula
//! node (`neb0`). Each system is measured in turn on the same lab: iperf3 TCP one stream each
//! way and four streams, UDP at <= 1 % loss, ping RTT, CPU seconds per GB, RSS idle and under
//! load. On the direct pair, more one-stream transfers follow with the two systems taking
//! turns, and the table adds each system's median. The lab (namespaces, processes) is removed
//! at the end, pass or fail.
//!
//! After the relayed pair, the coordinator is restarted with its default relay limits and the
//! relayed pair is measured once more under them (`rel/lim` rows: throughput and pings under
//! load).
//!
//! After both systems, Warren's direct pair is measured again with the mesh on AES-256-GCM: the
//! coordinator is restarted with `--cipher aes-256-gcm` and both nodes with `warren up`, so that
//! their sessions start on the new cipher (checked in `warren status`).
//!
//! `bench --perf` also samples both systems' daemons with `perf record` during the one-stream
//! transfers (which skews those lines a little) and prints the top symbols. `bench --quick`
//! measures Warren's direct pair only (both ciphers; no Nebula, no relayed pair), for quick
//! before/after comparisons while working on the data path; `bench --relayed` measures Warren's
//! relayed pair only, likewise. `bench --txqlen N` sets the `txqueuelen` of Warren's TUN
//! devices to N once the daemons run (an experiment knob: the TUN ring is where packets wait
//! under load). `bench --relay-link-mbit N` shapes the coordinator's link to N Mbit/s, like a
//! small VPS's, so that relayed traffic queues in front of the relay's link.

mod drops;
mod measure;
mod nebula;
mod perf;
mod report;
mod rows;
mod run;
mod setup;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use warren_lab::cmd::wait_for;
use warren_lab::warren::{HTTP_PORT, QUIC_PORT};
use warren_lab::{Coordinator, Lab};

/// Relay rate limit given to the coordinator, Mbit/s (its CLI maximum): the bench measures raw
/// relay capacity, not the default per-node limit (200 Mbit/s).
pub const RELAY_RATE_MBIT: u32 = 100_000;
/// Relay packet rate limit given to the coordinator, packets/s (its CLI maximum).
const RELAY_RATE_PPS: u32 = 10_000_000;
/// How long the coordinator gets to come up.
const COORDINATOR_READY: Duration = Duration::from_secs(20);

fn main() {
    if std::env::args().any(|a| a == "--sweep") {
        match warren_lab::names::sweep_stale() {
            Ok(gone) if !gone.is_empty() => {
                eprintln!("bench: removed leftover namespaces {gone:?}")
            }
            Ok(_) => {}
            Err(e) => eprintln!("bench: sweep failed: {e:#}"),
        }
        return;
    }
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("bench: {e:#}");
            eprintln!(
                "usage: bench [--quick | --relayed] [--perf] [--txqlen N] [--relay-link-mbit N] \
                 | bench --sweep"
            );
            std::process::exit(2);
        }
    };
    let t0 = Instant::now();
    let mut lab = match Lab::new("bench") {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::exit(1);
        }
    };
    let result = run::run(&mut lab, opts);
    match &result {
        Ok(table) => {
            println!("{table}");
        }
        Err(e) => {
            lab.report_failure();
            eprintln!("\nbench failed: {e:#}");
        }
    }
    eprintln!("bench: removing the lab...");
    drop(lab);
    eprintln!("bench: done in {:.0?}", t0.elapsed());
    if result.is_err() {
        std::process::exit(1);
    }
}

/// The bench's options from its arguments (`--sweep` is handled before).
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<run::Options> {
    let mut opts = run::Options {
        with_perf: false,
        scope: run::Scope::Full,
        txqlen: None,
        relay_link_mbit: None,
    };
    while let Some(arg) = args.next() {
        let mut number = |flag: &str| -> Result<u32> {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a number"))?;
            value
                .parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| format!("{flag} {value:?}: not a positive whole number"))
        };
        match arg.as_str() {
            "--perf" => opts.with_perf = true,
            "--quick" | "--relayed" if opts.scope != run::Scope::Full => {
                bail!("--quick and --relayed each pick the pairs; give one")
            }
            "--quick" => opts.scope = run::Scope::Quick,
            "--relayed" => opts.scope = run::Scope::Relayed,
            "--txqlen" => opts.txqlen = Some(number("--txqlen")?),
            "--relay-link-mbit" => opts.relay_link_mbit = Some(number("--relay-link-mbit")?),
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(opts)
}

/// The relay limits a coordinator of the bench runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayLimits {
    /// Raised to the CLI maximum: raw relay capacity.
    Raised,
    /// The coordinator's defaults, what a deployment gets.
    Default,
}

/// Starts Warren's coordinator with the given relay limits, and the mesh cipher `cipher`
/// (`serve --cipher`) when given. A coordinator already running on the same data dir must
/// have been stopped.
pub fn start_coordinator(
    lab: &mut Lab,
    cipher: Option<&str>,
    limits: RelayLimits,
) -> Result<Coordinator> {
    let bins = lab.bins()?;
    let host = lab.coordinator_host.clone();
    let data_dir = lab.dir().join("coordinator-data");
    let quic = SocketAddr::from((host.ip, QUIC_PORT));
    let http = SocketAddr::from((host.ip, HTTP_PORT));
    let mut args: Vec<String> = [
        "serve",
        "--data-dir",
        &data_dir.display().to_string(),
        "--listen",
        &quic.to_string(),
        "--http",
        &http.to_string(),
        "--public-addr",
        &quic.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if limits == RelayLimits::Raised {
        args.extend([
            "--relay-rate-mbit".to_string(),
            RELAY_RATE_MBIT.to_string(),
            "--relay-rate-pps".to_string(),
            RELAY_RATE_PPS.to_string(),
        ]);
    }
    if let Some(c) = cipher {
        args.extend(["--cipher".to_string(), c.to_string()]);
    }
    let label = format!("coordinator-{}", cipher.unwrap_or("default"));
    let proc = lab.spawn(&label, &host.ns, &bins.coordinator, &args)?;
    let c = Coordinator {
        host,
        data_dir,
        quic,
        http,
        proc,
    };
    wait_for(
        "the coordinator to answer /v1/health",
        COORDINATOR_READY,
        Duration::from_millis(100),
        || {
            if let Some(st) = lab.proc_mut(proc).try_exit() {
                bail!("coordinator exited early with {st}");
            }
            if !c.data_dir.join("admin.token").exists() {
                return Ok(None);
            }
            let (code, _) = lab.api_get(&c, "/v1/health", true)?;
            Ok((code == 200).then_some(()))
        },
    )?;
    Ok(c)
}
