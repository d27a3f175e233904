//! The measurements: iperf3 TCP and UDP through a tunnel, ping RTT, and the CPU time and
//! resident memory of daemons read from `/proc`.
//!
//! Bench layer. iperf3 runs with `--json` and the numbers are taken from the receiver's side
//! (bytes that arrived), never from the sender's.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use warren_lab::{Host, Lab};

/// Seconds of each TCP iperf3 run.
pub const TCP_SECONDS: u32 = 5;
/// Seconds of each UDP iperf3 step.
pub const UDP_SECONDS: u32 = 3;
/// UDP payload size: fits both tunnels' 1280-byte MTU with IP and UDP headers.
const UDP_LEN: u32 = 1200;
/// Socket buffer of both iperf3 ends in the UDP steps (`iperf3 -w`). With the default
/// (net.core.rmem_default, 208 KiB here) the receiving iperf3 drops what it cannot read in
/// time: Warren hands UDP to the kernel coalesced, up to about 50 datagrams per TUN write, and
/// on the demo mesh 1.2 Gbit/s lost 12%, 99% of it in iperf3's socket (120,742 `RcvbufErrors`
/// in B's namespace against 718 `tx_dropped` on A's TUN device and none in Warren's counters),
/// while 416 KiB lost 0.4% at 2 Gbit/s. The row is about the tunnel, so both systems get a
/// buffer that does not limit them.
pub const UDP_SOCKET_BUFFER: &str = "4M";
/// Highest loss still counted as "no loss" in the UDP search, in percent.
pub const UDP_MAX_LOSS: f64 = 1.0;
/// Offered UDP rate tried first, in Mbit/s; the search then doubles, quarters or bisects.
const UDP_START_MBIT: f64 = 500.0;
/// Number of UDP steps in the search.
pub const UDP_STEPS: usize = 6;
/// Pings per RTT measurement and their interval (`ping -i 0.02` needs root, which we are).
pub const PING_COUNT: u32 = 50;
/// Interval between pings, seconds.
pub const PING_INTERVAL: &str = "0.02";
/// Time the TCP stream runs before the pings under load start (past slow start).
const LOAD_WARMUP: Duration = Duration::from_secs(1);
/// Extra time an iperf3 client gets beyond its test length.
const IPERF_SLACK: Duration = Duration::from_secs(20);
/// How often RSS is sampled during a transfer.
const RSS_SAMPLE: Duration = Duration::from_millis(100);

/// One iperf3 TCP result.
#[derive(Clone, Copy, Debug, Default)]
pub struct Transfer {
    /// Bytes the receiver got.
    pub bytes: f64,
    /// Receiver throughput, bit/s.
    pub bps: f64,
    /// TCP retransmissions the sender counted (lost or reordered segments).
    pub retransmits: f64,
}

/// What the daemons of one system used during a transfer.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    /// CPU seconds (user + system) summed over the watched processes.
    pub cpu_s: f64,
    /// Highest VmRSS seen per watched process, bytes.
    pub peak_rss: Vec<u64>,
}

/// `iperf3 -c server [-R] [-P streams] -t TCP_SECONDS` from `client`; receiver side numbers.
pub fn tcp(
    lab: &Lab,
    client: &Host,
    server: Ipv4Addr,
    port: u16,
    reverse: bool,
    streams: u32,
    congestion: Option<&str>,
) -> Result<Transfer> {
    let mut args = vec![
        "-c".to_string(),
        server.to_string(),
        "-p".into(),
        port.to_string(),
        "-t".into(),
        TCP_SECONDS.to_string(),
        "-P".into(),
        streams.to_string(),
    ];
    if reverse {
        args.push("-R".into());
    }
    if let Some(cc) = congestion {
        args.extend(["-C".to_string(), cc.to_string()]);
    }
    let v = iperf(lab, client, &args, TCP_SECONDS)?;
    let sum = &v["end"]["sum_received"];
    let bytes = sum["bytes"]
        .as_f64()
        .context("iperf3 JSON has no end.sum_received.bytes")?;
    let bps = sum["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
    let retransmits = v["end"]["sum_sent"]["retransmits"]
        .as_f64()
        .unwrap_or(f64::NAN);
    Ok(Transfer {
        bytes,
        bps,
        retransmits,
    })
}

/// One UDP step: offered `mbit`, returns (received bit/s, loss percent).
fn udp_step(
    lab: &Lab,
    client: &Host,
    server: Ipv4Addr,
    port: u16,
    mbit: f64,
) -> Result<(f64, f64)> {
    let args = vec![
        "-c".to_string(),
        server.to_string(),
        "-p".into(),
        port.to_string(),
        "-u".into(),
        "-l".into(),
        UDP_LEN.to_string(),
        "-b".into(),
        // In kbit/s: a rate that rounds to 0 would mean "unlimited" to iperf3.
        format!("{}K", (mbit * 1000.0).round().max(1.0) as u64),
        "-t".into(),
        UDP_SECONDS.to_string(),
        "-w".into(),
        UDP_SOCKET_BUFFER.into(),
    ];
    let v = iperf(lab, client, &args, UDP_SECONDS)?;
    let (sent, recv) = (&v["end"]["sum_sent"], &v["end"]["sum_received"]);
    let field = |sum: &Value, f: &str| -> Result<f64> {
        sum[f]
            .as_f64()
            .with_context(|| format!("iperf3 UDP JSON has no end.sum_*.{f}"))
    };
    let (sent_bytes, recv_bytes) = (field(sent, "bytes")?, field(recv, "bytes")?);
    // iperf3's lost_percent counts sequence gaps the server saw; a report that never came
    // back reads as 0 % lost with 0 bytes received, so the byte counts are checked as well.
    let byte_loss = if sent_bytes > 0.0 {
        100.0 * (1.0 - recv_bytes / sent_bytes)
    } else {
        100.0
    };
    let loss = field(recv, "lost_percent")?.max(byte_loss);
    let bps = field(recv, "bits_per_second")?;
    Ok((bps, loss))
}

/// The highest received UDP rate whose loss stayed at or under [`UDP_MAX_LOSS`], found in
/// [`UDP_STEPS`] steps: double while clean, quarter while lossy with nothing clean yet, then
/// bisect (geometrically) between the best clean and the lowest lossy rate. Returns the best
/// received rate in bit/s (0 if no step was clean) and every step as (offered Mbit/s, loss %).
pub fn udp_search(
    lab: &Lab,
    client: &Host,
    server: Ipv4Addr,
    port: u16,
) -> Result<(f64, Vec<(f64, f64)>)> {
    let (mut lo, mut hi): (Option<f64>, Option<f64>) = (None, None);
    let mut best = 0.0f64;
    let mut rate = UDP_START_MBIT;
    let mut steps = Vec::new();
    for _ in 0..UDP_STEPS {
        let (bps, loss) = udp_step(lab, client, server, port, rate)?;
        steps.push((rate, loss));
        if loss <= UDP_MAX_LOSS {
            best = best.max(bps);
            lo = Some(lo.map_or(rate, |l: f64| l.max(rate)));
        } else {
            hi = Some(hi.map_or(rate, |h: f64| h.min(rate)));
        }
        rate = match (lo, hi) {
            (_, None) => rate * 2.0,
            (None, Some(h)) => h / 4.0,
            (Some(l), Some(h)) => (l * h).sqrt(),
        };
    }
    Ok((best, steps))
}

/// Runs iperf3 with `--json` in `client`'s namespace and parses its report.
fn iperf(lab: &Lab, client: &Host, args: &[String], seconds: u32) -> Result<Value> {
    let mut full: Vec<&str> = vec!["iperf3", "--json"];
    full.extend(args.iter().map(String::as_str));
    let out = lab.exec(
        &client.ns,
        &full,
        Duration::from_secs(seconds.into()) + IPERF_SLACK,
    )?;
    let v: Value = serde_json::from_str(&out.stdout).with_context(|| {
        format!(
            "iperf3 {args:?} printed no JSON: {} {}",
            out.stdout, out.stderr
        )
    })?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3 {args:?}: {e}");
    }
    Ok(v)
}

/// RTT samples of `PING_COUNT` pings at `PING_INTERVAL`, in milliseconds, sorted.
pub fn ping_rtts(lab: &Lab, from: &Host, to: Ipv4Addr) -> Result<Vec<f64>> {
    let count = PING_COUNT.to_string();
    let target = to.to_string();
    let out = lab.exec(
        &from.ns,
        &[
            "ping",
            "-n",
            "-c",
            &count,
            "-i",
            PING_INTERVAL,
            "-W",
            "1",
            &target,
        ],
        Duration::from_secs(30),
    )?;
    let mut rtts: Vec<f64> = out
        .stdout
        .lines()
        .filter_map(|l| {
            l.split_once("time=")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    if rtts.len() < PING_COUNT as usize / 2 {
        bail!(
            "ping {from:?} -> {to}: only {} replies: {}",
            rtts.len(),
            out.stdout
        );
    }
    rtts.sort_by(f64::total_cmp);
    Ok(rtts)
}

/// Runs `work` while one spinning process per CPU runs at the lowest priority (nice 19), so
/// that no CPU goes idle but every other process still gets the CPU when it wants it. On a VM
/// whose idle vCPUs halt without polling (this lab machine: `haltpoll.guest_halt_poll_ns=0`)
/// every wake-up of an idle CPU costs tens of microseconds of the host's; pings measured this
/// way leave that out and show the tunnel's own cost.
pub fn with_busy_cpus<T>(work: impl FnOnce() -> Result<T>) -> Result<T> {
    /// The spinners, killed however `work` ends.
    struct Spinners(Vec<std::process::Child>);
    impl Drop for Spinners {
        fn drop(&mut self) {
            for c in &mut self.0 {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut spinners = Spinners(Vec::with_capacity(cpus));
    for _ in 0..cpus {
        let mut cmd = std::process::Command::new("nice");
        cmd.args(["-n", "19", "sh", "-c", "while :; do :; done"])
            .stdin(std::process::Stdio::null());
        // A bench killed outright (no destructors) must not leave spinners behind: each one
        // gets SIGKILL when the thread that started it ends.
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // which is async-signal-safe and touches no memory of the parent.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        spinners
            .0
            .push(cmd.spawn().context("starting a nice-19 spinner")?);
    }
    std::thread::sleep(Duration::from_millis(200));
    work()
}

/// RTT samples (sorted, ms) of [`ping_rtts`] taken while one TCP stream from `from` to
/// `to` runs (iperf3 server on `to`:`port`); the stream gets [`LOAD_WARMUP`] first and outlasts
/// the pings.
/// `queues` are the namespaces whose UDP socket queues are sampled once during the pings, and
/// `procs` the named processes whose run-queue wait over the pings is reported; both come back
/// with the RTTs. `congestion` picks the stream's TCP congestion control (iperf3 -C), else the
/// system's default.
pub fn ping_under_load(
    lab: &Lab,
    from: &Host,
    to: Ipv4Addr,
    port: u16,
    queues: &[&Host],
    procs: &[(&str, u32)],
    congestion: Option<&str>,
) -> Result<(Vec<f64>, String)> {
    std::thread::scope(|s| {
        let stream = s.spawn(|| tcp(lab, from, to, port, false, 1, congestion));
        std::thread::sleep(LOAD_WARMUP);
        let sampler = s.spawn(|| {
            std::thread::sleep(Duration::from_millis(500));
            let mut parts: Vec<String> = queues
                .iter()
                .map(|h| format!("{}: {}", h.ns, udp_queues(lab, h)))
                .collect();
            parts.push(format!("load sender: {}", tcp_sender(lab, from, port)));
            parts.join("; ")
        });
        let waited_before: Vec<Option<Duration>> =
            procs.iter().map(|&(_, p)| run_queue_wait(p).ok()).collect();
        let t0 = Instant::now();
        let pings = ping_rtts(lab, from, to);
        let wall = t0.elapsed();
        let waits: Vec<String> = procs
            .iter()
            .zip(waited_before)
            .map(
                |(&(name, p), before)| match (before, run_queue_wait(p).ok()) {
                    (Some(b), Some(a)) => format!(
                        "{name} {:.0}%",
                        100.0 * a.saturating_sub(b).as_secs_f64() / wall.as_secs_f64()
                    ),
                    _ => format!("{name} n/a"),
                },
            )
            .collect();
        let sampled = sampler.join().unwrap_or_default();
        let sampled = format!(
            "{sampled}; run-queue wait during the pings (all threads, share of wall time): {}",
            waits.join(", ")
        );
        // The load's own outcome is reported, not required: a stalled stream (Nebula's relay
        // has done it) leaves idle-looking pings, which the note makes visible.
        let load = match stream.join() {
            Ok(Ok(t)) => format!("load stream {:.2} Gbit/s", t.bps / 1e9),
            Ok(Err(e)) => format!("load stream failed: {e:#}"),
            Err(_) => "load stream's thread panicked".to_string(),
        };
        Ok((pings?, format!("{load}; {sampled}")))
    })
}

/// The UDP sockets of `host`'s namespace with bytes queued: `port recv-q/send-q` (`ss -uan`).
fn udp_queues(lab: &Lab, host: &Host) -> String {
    let Ok(out) = lab.exec(&host.ns, &["ss", "-uanH"], Duration::from_secs(5)) else {
        return "ss failed".into();
    };
    let busy: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (rq, sq) = (f.get(1)?, f.get(2)?);
            let port = f.get(3)?.rsplit(':').next()?;
            (*rq != "0" || *sq != "0").then(|| format!("port {port} recv-q {rq} send-q {sq}"))
        })
        .collect();
    if busy.is_empty() {
        "no UDP bytes queued".into()
    } else {
        busy.join(", ")
    }
}

/// The loaded TCP stream as its sender sees it (`ss -ti` in `host`'s namespace): smoothed RTT
/// and its variation (ms), congestion window and unacknowledged segments. The RTT is the
/// queueing the stream itself builds along the tunnel, ring and sockets included.
fn tcp_sender(lab: &Lab, host: &Host, port: u16) -> String {
    let filter = format!(":{port}");
    let Ok(out) = lab.exec(
        &host.ns,
        &["ss", "-tinH", "dport", "=", &filter],
        Duration::from_secs(5),
    ) else {
        return "ss failed".into();
    };
    let field = |line: &str, key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .map(str::to_string)
    };
    let flows: Vec<String> = out
        .stdout
        .lines()
        .filter(|l| l.contains("unacked:"))
        .map(|l| {
            format!(
                "rtt {} ms, cwnd {}, unacked {}",
                field(l, "rtt:").unwrap_or_default(),
                field(l, "cwnd:").unwrap_or_default(),
                field(l, "unacked:").unwrap_or_default()
            )
        })
        .collect();
    if flows.is_empty() {
        "no data in flight".into()
    } else {
        flows.join(", ")
    }
}

/// The system's default TCP congestion control (what iperf3 uses without -C).
pub fn default_congestion() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The median of sorted samples.
pub fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// CPU seconds (utime + stime) used so far by process `pid`.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the parenthesised command name (which may hold spaces): state is field 3,
    // utime field 14 and stime field 15 (proc(5)).
    let rest = stat.rsplit_once(')').context("malformed /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .context("malformed /proc/PID/stat field")
    };
    // `rest` starts at field 3, so field N is at index N - 3.
    let total = ticks(14 - 3)? + ticks(15 - 3)?;
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(total / if hz > 0 { hz as f64 } else { 100.0 })
}

/// Time the threads of process `pid` have spent runnable but waiting for a CPU, summed
/// (`/proc/PID/task/*/schedstat`, second field): how much a process was held up by the others
/// sharing the machine's CPUs.
pub fn run_queue_wait(pid: u32) -> Result<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing /proc/{pid}/task"))?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        // A thread may end between the listing and the read.
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += stat
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse::<u64>().ok())
            .context("malformed schedstat")?;
    }
    Ok(Duration::from_nanos(total))
}

/// Resident set size (VmRSS) of process `pid`, bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/PID/status")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .context("malformed VmRSS")?;
    Ok(kb * 1024)
}

/// Runs `work` while sampling the RSS of `pids`; returns its result and what the processes used.
pub fn with_usage<T>(pids: &[u32], work: impl FnOnce() -> Result<T>) -> Result<(T, Usage)> {
    let before: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum::<Result<f64>>()?;
    let done = AtomicBool::new(false);
    let (result, peak_rss) = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut peak = vec![0u64; pids.len()];
            while !done.load(Ordering::Relaxed) {
                for (i, &p) in pids.iter().enumerate() {
                    peak[i] = peak[i].max(rss_bytes(p).unwrap_or(0));
                }
                std::thread::sleep(RSS_SAMPLE);
            }
            peak
        });
        let result = work();
        done.store(true, Ordering::Relaxed);
        (result, sampler.join().unwrap_or_default())
    });
    let after: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum::<Result<f64>>()?;
    Ok((
        result?,
        Usage {
            cpu_s: after - before,
            peak_rss,
        },
    ))
}
