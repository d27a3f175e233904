//! Coordinator metrics in the Prometheus text exposition format (version 0.0.4), served by the
//! HTTP API at `GET /metrics`.
//!
//! [`Metrics`] holds the counters only the coordinator's own code can see (registrations,
//! logins, API requests); [`render`] adds the gauges read at scrape time (nodes registered and
//! online) and the relay counters kept by [`crate::relay::RelayStats`]. No label carries a node
//! name, key, address or anything of the mesh's traffic: labels are fixed reasons, route
//! templates, methods and status codes, so the series are bounded and reveal no metadata.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use warren_cli::prometheus;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counters since the coordinator started.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Successful registrations (invite redeemed, node recorded).
    registrations: AtomicU64,
    /// Refused registrations by reason.
    registration_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Successful logins of registered nodes.
    logins: AtomicU64,
    /// Refused logins by reason.
    login_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// API requests by (method, route template, status code).
    api: Mutex<BTreeMap<(&'static str, &'static str, u16), u64>>,
}

/// Adds one to `key` in a counter map (a poisoned lock still holds valid counts).
fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    *map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default() += 1;
}

/// A copy of a counter map.
fn copy<K: Ord + Clone>(map: &Mutex<BTreeMap<K, u64>>) -> BTreeMap<K, u64> {
    map.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Metrics {
    /// Counts a successful registration.
    pub fn registered(&self) {
        self.registrations.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused registration (`reason` is a fixed label).
    pub fn registration_failed(&self, reason: &'static str) {
        bump(&self.registration_failures, reason);
    }

    /// Counts a successful login.
    pub fn logged_in(&self) {
        self.logins.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused login (`reason` is a fixed label).
    pub fn login_failed(&self, reason: &'static str) {
        bump(&self.login_failures, reason);
    }

    /// Counts one API request and its answer.
    pub fn api_request(&self, method: &'static str, route: &'static str, status: u16) {
        bump(&self.api, (method, route, status));
    }
}

/// What [`render`] reads besides the counters.
#[derive(Debug)]
pub struct Gauges {
    /// Nodes in the store.
    pub nodes_registered: usize,
    /// Nodes connected now.
    pub nodes_online: usize,
    /// The relay's counters, as [`crate::relay::RelayStats::to_json`] gives them.
    pub relay: serde_json::Value,
}

/// One sample: label pairs and a value.
type Sample = (Vec<(&'static str, String)>, u64);

/// Writes one metric family: HELP, TYPE, then its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[Sample]) {
    prometheus::header(out, name, kind, help);
    for (labels, value) in samples {
        out.push_str(name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", prometheus::escape_label(v));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {value}");
    }
}

/// A single unlabelled sample.
fn one(v: u64) -> Vec<Sample> {
    vec![(Vec::new(), v)]
}

/// The whole exposition.
pub fn render(m: &Metrics, g: &Gauges) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "warren_nodes_registered",
        "gauge",
        "Nodes registered in the mesh.",
        &one(g.nodes_registered as u64),
    );
    family(
        &mut out,
        "warren_nodes_online",
        "gauge",
        "Nodes connected to the coordinator now.",
        &one(g.nodes_online as u64),
    );
    family(
        &mut out,
        "warren_registrations_total",
        "counter",
        "Nodes registered through an invite since start.",
        &one(m.registrations.load(Ordering::Relaxed)),
    );
    let failures: Vec<Sample> = copy(&m.registration_failures)
        .into_iter()
        .map(|(r, v)| (vec![("reason", r.to_string())], v))
        .collect();
    family(
        &mut out,
        "warren_registration_failures_total",
        "counter",
        "Registrations refused since start, by reason.",
        &failures,
    );
    family(
        &mut out,
        "warren_logins_total",
        "counter",
        "Logins of registered nodes since start.",
        &one(m.logins.load(Ordering::Relaxed)),
    );
    let failures: Vec<Sample> = copy(&m.login_failures)
        .into_iter()
        .map(|(r, v)| (vec![("reason", r.to_string())], v))
        .collect();
    family(
        &mut out,
        "warren_login_failures_total",
        "counter",
        "Logins refused since start, by reason.",
        &failures,
    );
    relay(&mut out, &g.relay);
    let api: Vec<Sample> = copy(&m.api)
        .into_iter()
        .map(|((method, route, status), v)| {
            (
                vec![
                    ("method", method.to_string()),
                    ("route", route.to_string()),
                    ("status", status.to_string()),
                ],
                v,
            )
        })
        .collect();
    family(
        &mut out,
        "warren_api_requests_total",
        "counter",
        "HTTP API requests since start, by method, route template and status code.",
        &api,
    );
    out
}

/// The relay families, from the relay's JSON counters.
fn relay(out: &mut String, relay: &serde_json::Value) {
    let count = |k: &str| relay[k].as_u64().unwrap_or(0);
    family(
        out,
        "warren_relay_forwarded_packets_total",
        "counter",
        "Relay datagrams forwarded since start.",
        &one(count("forwarded_packets")),
    );
    family(
        out,
        "warren_relay_forwarded_bytes_total",
        "counter",
        "Bytes of relay datagrams forwarded since start, header included.",
        &one(count("forwarded_bytes")),
    );
    let dropped: Vec<Sample> = relay["dropped"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (vec![("reason", k.clone())], v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    family(
        out,
        "warren_relay_dropped_packets_total",
        "counter",
        "Relay datagrams dropped since start, by reason.",
        &dropped,
    );
}
