//! The bench's sequence: build the lab, start both systems, measure each path of each system.
//!
//! Bench layer. Everything a measurement needs about one system on one pair of sites is in a
//! [`Target`]; [`measure`] turns it into [`Metrics`], and [`run`] lays them out as a table.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use warren_lab::cmd::wait_for;
use warren_lab::lab::which;
use warren_lab::{Coordinator, Host, Lab, Node, SiteKind};

use crate::measure::{self, Usage};
use crate::nebula::Nebula;
use crate::perf;
use crate::report::Table;
use crate::RelayLimits;

/// iperf3 port of the servers (each bound to its system's overlay address).
const IPERF_PORT: u16 = 5201;
/// How long a tunnel gets to carry its first ping.
const FIRST_PING: Duration = Duration::from_secs(40);
/// How long Warren gets to show the expected path in `warren status`.
const PATH_SETTLE: Duration = Duration::from_secs(20);
/// Idle time before idle RSS is read.
const IDLE_SETTLE: Duration = Duration::from_secs(2);
/// Bytes in a gigabyte (10^9, as in Gbit/s).
const GB: f64 = 1e9;
/// Extra rounds of one-stream transfers on the direct pair, Warren and Nebula taking turns,
/// after both were measured: with the first transfer of each, the one-stream rows' medians
/// come from `1 + ALTERNATE_ROUNDS` runs per system and direction. One run of each swings by
/// up to a third (Nebula 0.57-0.88 Gbit/s in three full runs of session 4), and a machine
/// that speeds up or slows down over the minutes between the two systems' turns weighs on
/// both alike when they alternate.
const ALTERNATE_ROUNDS: usize = 3;

/// Two sites of one kind and the hosts on them.
#[derive(Clone, Debug)]
pub struct Pair {
    /// `direct` or `relayed`.
    pub path: &'static str,
    /// Warren's expected `path` in `warren status`.
    pub expect: &'static str,
    /// The client's host (site A).
    pub a: Host,
    /// The server's host (site B).
    pub b: Host,
    /// Router namespace of site B (for the raw RTT).
    pub router_b: String,
}

/// One system's view of one pair: overlay addresses and processes.
#[derive(Clone, Debug)]
struct Target {
    /// Overlay address of the server side (B).
    b_ip: Ipv4Addr,
    /// Pids of the A and B daemons.
    pids: [u32; 2],
    /// Pid of the relay (Warren coordinator or Nebula lighthouse).
    relay_pid: u32,
    /// Where to write a `perf record` of the one-stream transfer, if wanted.
    perf_data: Option<PathBuf>,
}

/// What one system did on one pair.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// One TCP stream A -> B, bit/s.
    pub tcp_ab: f64,
    /// TCP retransmissions of the one-stream A -> B transfer.
    pub retransmits: f64,
    /// One TCP stream B -> A, bit/s.
    pub tcp_ba: f64,
    /// Every one-stream A -> B transfer, bit/s: the first (`tcp_ab`) and those of
    /// [`alternate_one_stream`].
    pub tcp_ab_runs: Vec<f64>,
    /// The same B -> A.
    pub tcp_ba_runs: Vec<f64>,
    /// Four TCP streams A -> B, bit/s.
    pub tcp4: f64,
    /// Highest UDP rate with <= 1 % loss A -> B, bit/s.
    pub udp: f64,
    /// The UDP search's steps, (offered Mbit/s, loss %), shown when none was clean.
    pub udp_steps: Vec<(f64, f64)>,
    /// Median ping RTT through the tunnel, ms.
    pub rtt_ms: f64,
    /// The same with no CPU idle ([`measure::with_busy_cpus`]), ms.
    pub busy_rtt_ms: f64,
    /// Median ping RTT through the tunnel while one TCP stream A -> B runs, ms.
    pub load_rtt_ms: f64,
    /// Highest of those pings, ms.
    pub load_rtt_max_ms: f64,
    /// Median ping RTT while one CUBIC TCP stream A -> B runs, ms (loss-based congestion
    /// control, the default of most systems).
    pub cubic_load_rtt_ms: f64,
    /// Highest of those pings, ms.
    pub cubic_load_rtt_max_ms: f64,
    /// What was sampled during those pings: the stream's throughput, the UDP socket queues of
    /// both node namespaces and the coordinator's, the stream's TCP RTT and window, and the
    /// run-queue wait of both daemons and the relay.
    pub load_queues: String,
    /// CPU seconds of both daemons per GB moved (one stream A -> B).
    pub cpu_per_gb: f64,
    /// CPU seconds of the relay process per GB moved (same transfer).
    pub relay_cpu_per_gb: f64,
    /// Share of the moved bytes that went through the coordinator namespace's `eth0`.
    pub via_coordinator: f64,
    /// RSS of the A and B daemons at idle, bytes.
    pub rss_idle: [u64; 2],
    /// Peak RSS of the A and B daemons during the four-stream transfer, bytes.
    pub rss_load: [u64; 2],
    /// Top of `perf report` over the one-stream transfer (with `--perf`).
    pub perf: Option<String>,
}

/// What the bench measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Both systems, the direct and the relayed pair, and Warren's direct pair on AES.
    Full,
    /// Warren's direct pair only, on both ciphers (`--quick`).
    Quick,
    /// Warren's relayed pair only (`--relayed`).
    Relayed,
}

/// Median RTT of the raw path between a pair's hosts, ms.
#[derive(Clone, Copy, Debug, Default)]
pub struct Raw {
    /// Measured as it is.
    pub idle: Option<f64>,
    /// Measured with no CPU idle ([`measure::with_busy_cpus`]).
    pub busy: Option<f64>,
}

/// How the bench was asked to run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Sample the daemons with `perf record` during the one-stream transfers.
    pub with_perf: bool,
    /// Which pairs and systems are measured.
    pub scope: Scope,
    /// `txqueuelen` to set on Warren's TUN devices, if any.
    pub txqlen: Option<u32>,
    /// Rate to shape the coordinator's link to, Mbit/s, if any.
    pub relay_link_mbit: Option<u32>,
}

/// Builds the lab, measures, and returns the table.
pub fn run(lab: &mut Lab, opts: Options) -> Result<Table> {
    let Options {
        with_perf,
        scope,
        txqlen,
        relay_link_mbit,
    } = opts;
    for tool in ["iperf3", "nft"] {
        if which(tool).is_none() {
            bail!("the bench needs {tool} on PATH (scripts/bench.sh installs iperf3)");
        }
    }
    let mut table = Table::default();
    let mut coord = crate::start_coordinator(lab, None, RelayLimits::Raised)?;
    let neb = if scope != Scope::Full {
        None
    } else {
        let neb = Nebula::new(lab.dir())?;
        let lighthouse = neb.start_lighthouse(lab)?;
        Some((neb, lighthouse))
    };
    let mut pairs = Vec::new();
    let mut nodes: Vec<Node> = Vec::new();
    let mut neb_nodes = Vec::new();
    let kinds = [
        ("direct", "direct", SiteKind::Eim),
        ("relayed", "relay", SiteKind::Sym),
    ];
    let kinds = match scope {
        Scope::Full => &kinds[..],
        Scope::Quick => &kinds[..1],
        Scope::Relayed => &kinds[1..],
    };
    for &(path, expect, kind) in kinds {
        let sa = lab.add_site(kind)?;
        let sb = lab.add_site(kind)?;
        let (a, b) = (sa.hosts[0].clone(), sb.hosts[0].clone());
        for (site, host) in [(&sa, &a), (&sb, &b)] {
            let token = lab.invite(&coord, &[])?;
            let name = format!("{kind}{}", site.index);
            nodes.push(lab.join(host, &token, &name, None)?);
            if let Some((neb, _)) = &neb {
                neb_nodes.push(neb.start_node(lab, &name, host, 10 + site.index as u8)?);
            }
        }
        let router_b = sb.router.clone().context("a sym/eim site has a router")?;
        // Let site B's router answer pings on its WAN address: that is the raw path.
        lab.exec(
            &router_b,
            &[
                "nft",
                "insert",
                "rule",
                "ip",
                "filter",
                "input",
                "icmp",
                "type",
                "echo-request",
                "accept",
            ],
            Duration::from_secs(5),
        )?;
        for host in [&a, &b] {
            crate::setup::isolate_overlays(lab, host, IPERF_PORT)?;
        }
        pairs.push(Pair {
            path,
            expect,
            a,
            b,
            router_b,
        });
    }
    let mut warren_ips = Vec::new();
    for n in &nodes {
        warren_ips.push(lab.wait_node_ready(n)?);
        crate::setup::set_txqlen(lab, n, txqlen)?;
    }
    if let Some(mbit) = relay_link_mbit {
        crate::setup::shape_relay_link(lab, &coord.host, mbit)?;
        table.note(format!(
            "the coordinator's link is shaped to {mbit} Mbit/s each way out of its namespace \
             (tc tbf, 2 ms queue; --relay-link-mbit)"
        ));
    }
    if let Some(q) = txqlen {
        table.note(format!(
            "Warren's TUN devices run with txqueuelen {q} (--txqlen)"
        ));
    }
    let coord_pid = lab.proc(coord.proc).pid();
    let lighthouse_pid = neb.as_ref().map(|(_, l)| lab.proc(l.proc).pid());
    table.note(format!(
        "lab: eim+eim sites (direct) and sym+sym sites (relayed); Warren's coordinator runs with \
         --relay-rate-mbit {} (raw relay capacity, default limit is 200); Nebula 1.6.1 lighthouse \
         is its relay (am_relay), punchy on, both TUN MTUs 1280",
        crate::RELAY_RATE_MBIT
    ));
    table.note(
        "ciphers: Warren `direct`/`relayed` rows run ChaCha20-Poly1305 (the default), `dir/aes` \
         rows the same direct pair after restarting the coordinator with --cipher aes-256-gcm and \
         both nodes with `warren up` (sessions checked in warren status); Nebula runs its default \
         AES-256-GCM everywhere",
    );
    table.note(format!(
        "TCP: iperf3 -t {} (receiver's bytes); UDP: iperf3 -u -l 1200 -w {}, {}-step rate \
         search, best received rate with <= {}% loss (start 500 Mbit/s); CPU: utime+stime of \
         both node daemons over the one-stream A->B transfer, per GB received; ping under \
         load: {} pings -i {} s while one TCP stream A->B runs, with this machine's default \
         congestion control ({}) and with CUBIC (iperf3 -C cubic)",
        measure::TCP_SECONDS,
        measure::UDP_SOCKET_BUFFER,
        measure::UDP_STEPS,
        measure::UDP_MAX_LOSS,
        measure::PING_COUNT,
        measure::PING_INTERVAL,
        measure::default_congestion(),
    ));
    table.note(format!(
        "'no CPU idle': the same idle pings while one nice-19 spinner per CPU keeps every CPU \
         busy, which leaves out what waking an idle CPU costs (guest halt polling here: {})",
        halt_polling()
    ));
    table.note(format!("load average before measuring: {}", loadavg()));
    let mut raws = Vec::new();
    let mut nebula_direct = None;
    let mut nebula_relayed = None;
    for (i, pair) in pairs.iter().enumerate() {
        let wan = wan_of(lab, pair)?;
        let median = |rtts: Result<Vec<f64>>| rtts.map(|r| measure::median(&r)).ok();
        let raw = Raw {
            idle: median(measure::ping_rtts(lab, &pair.a, wan)),
            busy: median(measure::with_busy_cpus(|| {
                measure::ping_rtts(lab, &pair.a, wan)
            })),
        };
        raws.push(raw);
        let ms = |r: Option<f64>| r.map_or_else(|| "n/a".into(), |r| format!("{r:.3}"));
        table.note(format!(
            "{}: raw RTT {} ms median ({} with no CPU idle) = ping from A's namespace to site \
             B's router WAN address (A -> A's NAT -> lab internet -> B's router; one veth hop \
             short of B's node)",
            pair.path,
            ms(raw.idle),
            ms(raw.busy),
        ));
        let (na, nb) = (&nodes[2 * i], &nodes[2 * i + 1]);
        let warren = Target {
            b_ip: warren_ips[2 * i + 1],
            pids: [lab.proc(na.proc).pid(), lab.proc(nb.proc).pid()],
            relay_pid: coord_pid,
            perf_data: with_perf.then(|| lab.dir().join(format!("perf-warren-{}.data", pair.path))),
        };
        // Warren sets a tunnel up on demand: traffic first, then the path settles.
        let mut w = match first_ping(lab, pair, warren.b_ip)
            .and_then(|_| wait_warren_path(lab, na, nb, pair))
        {
            Ok(seen) => {
                table.note(format!("{}: warren status shows path {seen}", pair.path));
                measure_target(lab, pair, &warren, &coord.host)
            }
            Err(e) => Err(e),
        };
        table.note(format!(
            "{} warren: drops {}",
            pair.path,
            crate::drops::report(lab, &pair.a, &pair.b, [na, nb])
        ));
        let nebula = match (&neb_nodes.get(2 * i..2 * i + 2), lighthouse_pid) {
            (Some([wa, wb]), Some(relay_pid)) => Some(Target {
                b_ip: wb.ip,
                pids: [lab.proc(wa.proc).pid(), lab.proc(wb.proc).pid()],
                relay_pid,
                perf_data: with_perf
                    .then(|| lab.dir().join(format!("perf-nebula-{}.data", pair.path))),
            }),
            _ => None,
        };
        let mut n = match &nebula {
            Some(nebula) => measure_target(lab, pair, nebula, &coord.host),
            None => Err(anyhow::anyhow!("not measured (--quick or --relayed)")),
        };
        if let (0, Some(nebula), Ok(wm), Ok(nm)) = (i, &nebula, &mut w, &mut n) {
            match alternate_one_stream(lab, pair, [&warren, nebula], [wm, nm]) {
                Ok(()) => table.note(format!(
                    "{}: one-stream runs, Warren and Nebula taking turns (Gbit/s): {}",
                    pair.path,
                    one_stream_runs(&w, &n)
                )),
                Err(e) => table.note(format!(
                    "{}: the alternating one-stream rounds failed: {e:#}",
                    pair.path
                )),
            }
        }
        match pair.path {
            "direct" => nebula_direct = n.as_ref().ok().cloned(),
            _ => nebula_relayed = n.as_ref().ok().cloned(),
        }
        crate::rows::add(&mut table, pair, w, n, raw);
    }
    if let Some(i) = pairs.iter().position(|p| p.path == "relayed") {
        let limited = relay_limited(
            lab,
            &mut coord,
            &pairs[i],
            [&nodes[2 * i], &nodes[2 * i + 1]],
            warren_ips[2 * i + 1],
        );
        crate::rows::add_relay_limited(&mut table, limited, nebula_relayed);
    }
    if scope == Scope::Relayed {
        return Ok(table);
    }
    // The direct pair again with the mesh on AES-256-GCM.
    let pair = &pairs[0];
    let aes = (|| -> Result<Metrics> {
        lab.proc_mut(coord.proc).stop();
        coord = crate::start_coordinator(lab, Some("aes-256-gcm"), RelayLimits::Raised)?;
        for n in nodes.iter_mut().take(2) {
            *n = lab.restart_node_with_up(n, &format!("node-{}-aes", n.name))?;
        }
        let (na, nb) = (&nodes[0], &nodes[1]);
        for n in [na, nb] {
            wait_self_cipher(lab, n, "aes-256-gcm")?;
            crate::setup::set_txqlen(lab, n, txqlen)?;
        }
        first_ping(lab, pair, warren_ips[1])?;
        wait_warren_path(lab, na, nb, pair)?;
        let seen = peer_cipher(lab, na, &nb.name)?;
        if seen != "aes-256-gcm" {
            bail!(
                "after the restart {} seals to {} with {seen}",
                na.name,
                nb.name
            );
        }
        table.note(format!(
            "dir/aes: warren status shows path direct, cipher {seen} (self and session)"
        ));
        let warren = Target {
            b_ip: warren_ips[1],
            pids: [lab.proc(na.proc).pid(), lab.proc(nb.proc).pid()],
            relay_pid: lab.proc(coord.proc).pid(),
            perf_data: with_perf.then(|| lab.dir().join("perf-warren-aes.data")),
        };
        let m = measure_target(lab, pair, &warren, &coord.host);
        table.note(format!(
            "dir/aes warren: drops {}",
            crate::drops::report(lab, &pair.a, &pair.b, [na, nb])
        ));
        m
    })();
    crate::rows::add_aes(&mut table, aes, nebula_direct, raws[0]);
    table.note(format!(
        "load average after measuring: {} (everything, iperf3 included, shares this machine's {} \
         CPUs; other work on the machine skews the numbers)",
        loadavg(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    Ok(table)
}

/// Waits until `node`'s status shows `cipher` as its own (the coordinator's Welcome arrived).
fn wait_self_cipher(lab: &mut Lab, node: &Node, cipher: &str) -> Result<()> {
    wait_for(
        &format!("warren {} to report cipher {cipher}", node.name),
        PATH_SETTLE,
        Duration::from_millis(100),
        || {
            let v = lab.status(node)?;
            Ok((v["self"]["cipher"].as_str() == Some(cipher)).then_some(()))
        },
    )
}

/// The cipher `node` seals packets to `peer` with, as its status reports it.
fn peer_cipher(lab: &mut Lab, node: &Node, peer: &str) -> Result<String> {
    let v = lab.status(node)?;
    let p = v["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"].as_str() == Some(peer)))
        .with_context(|| format!("{} does not list {peer}", node.name))?;
    Ok(p["cipher"].as_str().unwrap_or("none").to_string())
}

/// This VM's guest halt polling window (`haltpoll.guest_halt_poll_ns`): 0 means an idle vCPU
/// halts at once and every wake-up goes through the host.
fn halt_polling() -> String {
    std::fs::read_to_string("/sys/module/haltpoll/parameters/guest_halt_poll_ns").map_or_else(
        |_| "not a haltpoll guest".into(),
        |ns| format!("guest_halt_poll_ns={}", ns.trim()),
    )
}

/// The first three fields of `/proc/loadavg`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

/// Site B router's WAN address.
fn wan_of(lab: &Lab, pair: &Pair) -> Result<Ipv4Addr> {
    let out = lab.exec(
        &pair.router_b,
        &["ip", "-4", "-o", "addr", "show", "wan"],
        Duration::from_secs(5),
    )?;
    out.stdout
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next()?.parse().ok())
        .context("site B's router has no WAN address")
}

/// Waits until A's `warren status` shows the pair's expected path to B; returns it.
fn wait_warren_path(lab: &mut Lab, a: &Node, b: &Node, pair: &Pair) -> Result<String> {
    wait_for(
        &format!(
            "warren {} to show path {} to {}",
            a.name, pair.expect, b.name
        ),
        PATH_SETTLE,
        Duration::from_millis(200),
        || {
            let p = lab.peer_status(a, &b.name)?;
            Ok(p.filter(|p| p.path == pair.expect).map(|p| p.path))
        },
    )
}

/// Bytes received so far on the coordinator namespace's `eth0`.
fn coordinator_rx(lab: &Lab, coord: &Host) -> Result<f64> {
    let out = lab.exec(
        &coord.ns,
        &["cat", "/sys/class/net/eth0/statistics/rx_bytes"],
        Duration::from_secs(5),
    )?;
    out.stdout.trim().parse().context("rx_bytes")
}

/// Waits until a ping from A to `b_ip` through the tunnel comes back.
fn first_ping(lab: &Lab, pair: &Pair, b_ip: Ipv4Addr) -> Result<()> {
    wait_for(
        &format!("a ping through the tunnel to {b_ip}"),
        FIRST_PING,
        Duration::ZERO,
        || Ok(lab.ping(&pair.a, b_ip, 1)?.then_some(())),
    )
}

/// Runs every measurement of one system on one pair.
fn measure_target(lab: &mut Lab, pair: &Pair, t: &Target, coord: &Host) -> Result<Metrics> {
    first_ping(lab, pair, t.b_ip)?;
    std::thread::sleep(IDLE_SETTLE);
    let mut m = Metrics {
        rss_idle: [
            measure::rss_bytes(t.pids[0])?,
            measure::rss_bytes(t.pids[1])?,
        ],
        ..Metrics::default()
    };
    with_iperf_servers(lab, pair, &[t.b_ip], |lab| {
        let rx0 = coordinator_rx(lab, coord)?;
        let relay_cpu0 = measure::cpu_seconds(t.relay_pid)?;
        let recording = match &t.perf_data {
            Some(data) => {
                let pids = [t.pids[0], t.pids[1], t.relay_pid];
                Some(perf::start(&pids, measure::TCP_SECONDS - 1, data)?)
            }
            None => None,
        };
        let (ab, usage): (_, Usage) = measure::with_usage(&t.pids, || {
            measure::tcp(lab, &pair.a, t.b_ip, IPERF_PORT, false, 1, None)
        })?;
        if let Some(r) = recording {
            m.perf = Some(format!(
                "  pids: node A {}, node B {}, relay {}\n{}",
                t.pids[0],
                t.pids[1],
                t.relay_pid,
                r.report()?
            ));
        }
        let relay_cpu = measure::cpu_seconds(t.relay_pid)? - relay_cpu0;
        let rx = coordinator_rx(lab, coord)? - rx0;
        m.tcp_ab = ab.bps;
        m.retransmits = ab.retransmits;
        m.cpu_per_gb = usage.cpu_s / (ab.bytes / GB);
        m.relay_cpu_per_gb = relay_cpu / (ab.bytes / GB);
        m.via_coordinator = rx / ab.bytes;
        m.tcp_ba = measure::tcp(lab, &pair.a, t.b_ip, IPERF_PORT, true, 1, None)?.bps;
        m.tcp_ab_runs = vec![m.tcp_ab];
        m.tcp_ba_runs = vec![m.tcp_ba];
        let (four, usage4) = measure::with_usage(&t.pids, || {
            measure::tcp(lab, &pair.a, t.b_ip, IPERF_PORT, false, 4, None)
        })?;
        m.tcp4 = four.bps;
        m.rss_load = [usage4.peak_rss[0], usage4.peak_rss[1]];
        (m.udp, m.udp_steps) = measure::udp_search(lab, &pair.a, t.b_ip, IPERF_PORT)?;
        m.rtt_ms = measure::median(&measure::ping_rtts(lab, &pair.a, t.b_ip)?);
        m.busy_rtt_ms = measure::median(&measure::with_busy_cpus(|| {
            measure::ping_rtts(lab, &pair.a, t.b_ip)
        })?);
        loaded_pings(lab, pair, t, coord, &mut m)?;
        Ok(m)
    })
}

/// Pings under a one-stream load, with the default congestion control and with CUBIC, into
/// `m`; an iperf3 server must be listening on `t.b_ip`.
fn loaded_pings(lab: &Lab, pair: &Pair, t: &Target, coord: &Host, m: &mut Metrics) -> Result<()> {
    let sides = [&pair.a, &pair.b, coord];
    let procs = [("A", t.pids[0]), ("B", t.pids[1]), ("relay", t.relay_pid)];
    let (loaded, queues) =
        measure::ping_under_load(lab, &pair.a, t.b_ip, IPERF_PORT, &sides, &procs, None)?;
    m.load_queues = queues;
    m.load_rtt_ms = measure::median(&loaded);
    m.load_rtt_max_ms = loaded.last().copied().unwrap_or(f64::NAN);
    let (cubic, _) = measure::ping_under_load(
        lab,
        &pair.a,
        t.b_ip,
        IPERF_PORT,
        &sides,
        &procs,
        Some("cubic"),
    )?;
    m.cubic_load_rtt_ms = measure::median(&cubic);
    m.cubic_load_rtt_max_ms = cubic.last().copied().unwrap_or(f64::NAN);
    Ok(())
}

/// Warren's relayed pair again after restarting the coordinator with its default relay limits
/// (what a deployment gets): one stream A -> B, and pings under load. Leaves `coord` running
/// with the default limits.
fn relay_limited(
    lab: &mut Lab,
    coord: &mut Coordinator,
    pair: &Pair,
    [na, nb]: [&Node; 2],
    b_ip: Ipv4Addr,
) -> Result<Metrics> {
    lab.proc_mut(coord.proc).stop();
    *coord = crate::start_coordinator(lab, None, RelayLimits::Default)?;
    first_ping(lab, pair, b_ip)?;
    wait_warren_path(lab, na, nb, pair)?;
    let t = Target {
        b_ip,
        pids: [lab.proc(na.proc).pid(), lab.proc(nb.proc).pid()],
        relay_pid: lab.proc(coord.proc).pid(),
        perf_data: None,
    };
    with_iperf_servers(lab, pair, &[b_ip], |lab| {
        let ab = measure::tcp(lab, &pair.a, b_ip, IPERF_PORT, false, 1, None)?;
        let mut m = Metrics {
            tcp_ab: ab.bps,
            retransmits: ab.retransmits,
            ..Metrics::default()
        };
        loaded_pings(lab, pair, &t, &coord.host, &mut m)?;
        Ok(m)
    })
}

/// Runs `work` while an iperf3 server listens on each of `ips` in site B's host (after giving
/// them time to listen); the servers are stopped however `work` ends.
fn with_iperf_servers<T>(
    lab: &mut Lab,
    pair: &Pair,
    ips: &[Ipv4Addr],
    work: impl FnOnce(&Lab) -> Result<T>,
) -> Result<T> {
    let mut servers = Vec::new();
    let result = (|| -> Result<T> {
        let iperf3 = which("iperf3").context("iperf3 on PATH")?;
        for ip in ips {
            let args: Vec<String> = ["-s", "-B", &ip.to_string(), "-p", &IPERF_PORT.to_string()]
                .iter()
                .map(|s| s.to_string())
                .collect();
            servers.push(lab.spawn(&format!("iperf3-{ip}"), &pair.b.ns, &iperf3, &args)?);
        }
        std::thread::sleep(Duration::from_millis(500));
        work(lab)
    })();
    for s in servers {
        lab.proc_mut(s).stop();
    }
    result
}

/// [`ALTERNATE_ROUNDS`] rounds of one-stream transfers on both systems' tunnels of `pair`,
/// taking turns (A -> B on each, then B -> A on each); appends them to each system's runs.
fn alternate_one_stream(
    lab: &mut Lab,
    pair: &Pair,
    targets: [&Target; 2],
    [wm, nm]: [&mut Metrics; 2],
) -> Result<()> {
    with_iperf_servers(lab, pair, &[targets[0].b_ip, targets[1].b_ip], |lab| {
        for _ in 0..ALTERNATE_ROUNDS {
            for reverse in [false, true] {
                for (t, m) in targets.iter().zip([&mut *wm, &mut *nm]) {
                    let bps = measure::tcp(lab, &pair.a, t.b_ip, IPERF_PORT, reverse, 1, None)?.bps;
                    if reverse {
                        m.tcp_ba_runs.push(bps);
                    } else {
                        m.tcp_ab_runs.push(bps);
                    }
                }
            }
        }
        Ok(())
    })
}

/// Both systems' one-stream runs, for the notes.
fn one_stream_runs(w: &Result<Metrics>, n: &Result<Metrics>) -> String {
    let list = |runs: &[f64]| {
        runs.iter()
            .map(|b| format!("{:.2}", b / 1e9))
            .collect::<Vec<_>>()
            .join(" ")
    };
    [("warren", w), ("nebula", n)]
        .iter()
        .filter_map(|(name, m)| m.as_ref().ok().map(|m| (name, m)))
        .map(|(name, m)| {
            format!(
                "{name} A->B {}, B->A {}",
                list(&m.tcp_ab_runs),
                list(&m.tcp_ba_runs)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
