//! The bench table's rows: one pair's measurements of both systems, and the AES-256-GCM run
//! of Warren's direct pair.
//!
//! Bench layer.

use anyhow::Result;

use crate::measure;
use crate::report::Table;
use crate::run::{Metrics, Pair, Raw};

/// Bytes in a megabyte (2^20, as `VmRSS` counts kB of 1024).
const MB: f64 = 1024.0 * 1024.0;

/// Appends one pair's rows (or n/a with the reason) to the table.
pub fn add(table: &mut Table, pair: &Pair, w: Result<Metrics>, n: Result<Metrics>, raw: Raw) {
    for (name, r) in [("warren", &w), ("nebula", &n)] {
        match r {
            Err(e) => table.note(format!("{} {name}: n/a: {e:#}", pair.path)),
            Ok(m) if m.udp == 0.0 => table.note(format!(
                "{} {name}: UDP lost more than {}% at every offered rate: {}",
                pair.path,
                measure::UDP_MAX_LOSS,
                m.udp_steps
                    .iter()
                    .map(|(rate, loss)| format!("{rate:.1} Mbit/s {loss:.1}% lost"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Ok(m) => table.note(format!(
                "{} {name}: UDP steps {}; UDP queues under the loaded pings: {}",
                pair.path,
                steps(&m.udp_steps),
                m.load_queues
            )),
        }
        if let Ok(Metrics {
            perf: Some(top), ..
        }) = r
        {
            table.perf.push((
                format!("{name} {} (one stream A->B; nodes and relay)", pair.path),
                top.clone(),
            ));
        }
    }
    let (w, n) = (w.ok(), n.ok());
    let p = pair.path;
    let g = |m: &Option<Metrics>, f: fn(&Metrics) -> f64| m.as_ref().map(f);
    table.row(
        p,
        "TCP 1 stream A->B (Gbit/s)",
        g(&w, |m| m.tcp_ab / 1e9),
        g(&n, |m| m.tcp_ab / 1e9),
        3,
        true,
    );
    table.row(
        p,
        "  its TCP retransmits (count)",
        g(&w, |m| m.retransmits),
        g(&n, |m| m.retransmits),
        0,
        false,
    );
    table.row(
        p,
        "TCP 1 stream B->A (Gbit/s)",
        g(&w, |m| m.tcp_ba / 1e9),
        g(&n, |m| m.tcp_ba / 1e9),
        3,
        true,
    );
    // The medians over the alternating rounds, where there were any (the direct pair of a full
    // run): the rows to read the ratio from.
    let rounds = [&w, &n]
        .iter()
        .map(|m| m.as_ref().map_or(0, |m| m.tcp_ab_runs.len()))
        .min()
        .unwrap_or(0);
    if rounds > 1 {
        table.row(
            p,
            format!("TCP 1 stream A->B, median of {rounds} (Gbit/s)"),
            g(&w, |m| median_gbit(&m.tcp_ab_runs)),
            g(&n, |m| median_gbit(&m.tcp_ab_runs)),
            3,
            true,
        );
        table.row(
            p,
            format!("TCP 1 stream B->A, median of {rounds} (Gbit/s)"),
            g(&w, |m| median_gbit(&m.tcp_ba_runs)),
            g(&n, |m| median_gbit(&m.tcp_ba_runs)),
            3,
            true,
        );
    }
    table.row(
        p,
        "TCP 4 streams A->B (Gbit/s)",
        g(&w, |m| m.tcp4 / 1e9),
        g(&n, |m| m.tcp4 / 1e9),
        3,
        true,
    );
    table.row(
        p,
        "UDP <=1% loss A->B (Gbit/s)",
        g(&w, |m| m.udp / 1e9),
        g(&n, |m| m.udp / 1e9),
        3,
        true,
    );
    latency_rows(table, p, &w, &n, raw);
    table.row(
        p,
        "CPU s/GB, both nodes",
        g(&w, |m| m.cpu_per_gb),
        g(&n, |m| m.cpu_per_gb),
        2,
        false,
    );
    if p == "relayed" {
        table.row(
            p,
            "CPU s/GB, relay process",
            g(&w, |m| m.relay_cpu_per_gb),
            g(&n, |m| m.relay_cpu_per_gb),
            2,
            false,
        );
    }
    table.row(
        p,
        "bytes via coordinator ns (%)",
        g(&w, |m| 100.0 * m.via_coordinator),
        g(&n, |m| 100.0 * m.via_coordinator),
        1,
        false,
    );
    table.row(
        p,
        "RSS idle A (MB)",
        g(&w, |m| m.rss_idle[0] as f64 / MB),
        g(&n, |m| m.rss_idle[0] as f64 / MB),
        1,
        false,
    );
    table.row(
        p,
        "RSS idle B (MB)",
        g(&w, |m| m.rss_idle[1] as f64 / MB),
        g(&n, |m| m.rss_idle[1] as f64 / MB),
        1,
        false,
    );
    table.row(
        p,
        "RSS load A, 4 streams (MB)",
        g(&w, |m| m.rss_load[0] as f64 / MB),
        g(&n, |m| m.rss_load[0] as f64 / MB),
        1,
        false,
    );
    table.row(
        p,
        "RSS load B, 4 streams (MB)",
        g(&w, |m| m.rss_load[1] as f64 / MB),
        g(&n, |m| m.rss_load[1] as f64 / MB),
        1,
        false,
    );
}

/// The median of transfer rates in bit/s, in Gbit/s.
fn median_gbit(runs: &[f64]) -> f64 {
    let mut sorted = runs.to_vec();
    sorted.sort_by(f64::total_cmp);
    measure::median(&sorted) / 1e9
}

/// A UDP search's steps: `offered Mbit/s (loss %)`.
fn steps(steps: &[(f64, f64)]) -> String {
    steps
        .iter()
        .map(|(rate, loss)| format!("{rate:.0} ({loss:.1}%)"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ping RTT idle and under load, and the idle RTT added over the raw path.
fn latency_rows(
    table: &mut Table,
    p: &'static str,
    w: &Option<Metrics>,
    n: &Option<Metrics>,
    raw: Raw,
) {
    let g = |m: &Option<Metrics>, f: fn(&Metrics) -> f64| m.as_ref().map(f);
    table.row(
        p,
        "ping RTT median (ms)",
        g(w, |m| m.rtt_ms),
        g(n, |m| m.rtt_ms),
        3,
        false,
    );
    let added = |m: &Option<Metrics>| Some(m.as_ref()?.rtt_ms - raw.idle?);
    table.row(p, "added RTT vs raw (ms)", added(w), added(n), 3, false);
    let busy = |m: &Option<Metrics>| Some(m.as_ref()?.busy_rtt_ms - raw.busy?);
    table.row(
        p,
        "  the same, no CPU idle (ms)",
        busy(w),
        busy(n),
        3,
        false,
    );
    for (name, f) in LOADED {
        table.row(p, name, g(w, f), g(n, f), 3, false);
    }
}

/// The rows of pings under load (milliseconds, less is better).
const LOADED: [(&str, Value); 4] = [
    ("ping under 1-stream load, median (ms)", |m| m.load_rtt_ms),
    ("ping under 1-stream load, max (ms)", |m| m.load_rtt_max_ms),
    ("ping under CUBIC load, median (ms)", |m| {
        m.cubic_load_rtt_ms
    }),
    ("ping under CUBIC load, max (ms)", |m| {
        m.cubic_load_rtt_max_ms
    }),
];

/// A metric read off a run's figures.
type Value = fn(&Metrics) -> f64;

/// One row's recipe: metric name, value from the metrics, decimals, whether higher is better.
type Line = (&'static str, Value, usize, bool);

/// Rows of Warren's direct pair on AES-256-GCM, against Nebula's direct figures (Nebula runs
/// AES-256-GCM by default).
pub fn add_aes(table: &mut Table, aes: Result<Metrics>, nebula: Option<Metrics>, raw: Raw) {
    let p = "dir/aes";
    let w = match aes {
        Ok(m) => Some(m),
        Err(e) => {
            table.note(format!("{p} warren: n/a: {e:#}"));
            None
        }
    };
    if let Some(m) = &w {
        table.note(format!(
            "{p} warren: UDP steps {} (offered Mbit/s, loss); UDP queues under the loaded \
             pings: {}",
            steps(&m.udp_steps),
            m.load_queues
        ));
        if let Some(top) = &m.perf {
            table
                .perf
                .push((format!("warren {p} (one stream A->B; nodes)"), top.clone()));
        }
    }
    let n = nebula;
    let g = |m: &Option<Metrics>, f: fn(&Metrics) -> f64| m.as_ref().map(f);
    let rows: [Line; 6] = [
        ("TCP 1 stream A->B (Gbit/s)", |m| m.tcp_ab / 1e9, 3, true),
        ("  its TCP retransmits (count)", |m| m.retransmits, 0, false),
        ("TCP 1 stream B->A (Gbit/s)", |m| m.tcp_ba / 1e9, 3, true),
        ("TCP 4 streams A->B (Gbit/s)", |m| m.tcp4 / 1e9, 3, true),
        ("UDP <=1% loss A->B (Gbit/s)", |m| m.udp / 1e9, 3, true),
        ("CPU s/GB, both nodes", |m| m.cpu_per_gb, 2, false),
    ];
    for (metric, f, decimals, higher) in rows {
        table.row(p, metric, g(&w, f), g(&n, f), decimals, higher);
    }
    latency_rows(table, p, &w, &n, raw);
}

/// Rows of Warren's relayed pair under the coordinator's default relay limits, against
/// Nebula's relayed figures (its relay has no limit).
pub fn add_relay_limited(table: &mut Table, limited: Result<Metrics>, nebula: Option<Metrics>) {
    let p = "rel/lim";
    let w = match limited {
        Ok(m) => {
            table.note(format!(
                "{p} rows: the relayed pair after restarting the coordinator without \
                 --relay-rate-mbit/--relay-rate-pps, so with its default per-node relay limits \
                 (what a deployment gets unless it raises them); Nebula's figures are its \
                 relayed ones (its relay has no limit); UDP queues under the loaded pings: {}",
                m.load_queues
            ));
            Some(m)
        }
        Err(e) => {
            table.note(format!("{p} warren: n/a: {e:#}"));
            None
        }
    };
    let g = |m: &Option<Metrics>, f: fn(&Metrics) -> f64| m.as_ref().map(f);
    let rows: [Line; 2] = [
        ("TCP 1 stream A->B (Gbit/s)", |m| m.tcp_ab / 1e9, 3, true),
        ("  its TCP retransmits (count)", |m| m.retransmits, 0, false),
    ];
    for (metric, f, decimals, higher) in rows {
        table.row(p, metric, g(&w, f), g(&nebula, f), decimals, higher);
    }
    for (metric, f) in LOADED {
        table.row(p, metric, g(&w, f), g(&nebula, f), 3, false);
    }
}
