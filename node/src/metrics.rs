//! Prometheus metrics on the node's local API (IO shell layer): a small HTTP/1.1 server that
//! answers `GET /metrics` with the text exposition format (version 0.0.4).
//!
//! The numbers come from the daemon the same way `warren status` gets them: one
//! [`StatusRequest`] per scrape, answered by the engine-owner task with a [`StatusReport`], which
//! [`render`] turns into metric families (per peer: path, online, bytes, RTT, handshakes, time
//! since the last handshake; node-wide: drops by reason, coordinator link, carrier, cipher).
//!
//! axum serves it (the same HTTP stack as the coordinator's API). It listens where
//! the operator put it (`--metrics ADDR`, loopback by default in the docs): the counters carry
//! peer names and traffic volumes, not packet contents.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use warren_cli::prometheus;

use crate::status::{Carrier, Link, PathName, StatusReport, StatusRequest};

/// Content type of the Prometheus text format.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `GET /metrics` (and `HEAD`) on `listener` until the task is dropped, asking the daemon
/// for its status through `requests` once per scrape (503 when the daemon is gone). axum/hyper
/// do the HTTP: other paths get 404, other methods 405 with `Allow`, malformed requests 400.
pub async fn serve(listener: TcpListener, requests: mpsc::Sender<StatusRequest>) {
    if let Err(e) = axum::serve(listener, app(requests)).await {
        tracing::warn!(error = %e, "metrics listener failed");
    }
}

/// The metrics router.
fn app(requests: mpsc::Sender<StatusRequest>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(requests)
}

/// `GET /metrics`.
async fn scrape(State(requests): State<mpsc::Sender<StatusRequest>>) -> Response {
    match report(&requests).await {
        Some(r) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], render(&r)).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "daemon stopped\n").into_response(),
    }
}

/// Asks the daemon for its report; `None` when it is gone.
async fn report(requests: &mpsc::Sender<StatusRequest>) -> Option<StatusReport> {
    let (tx, rx) = oneshot::channel();
    requests.send(tx).await.ok()?;
    rx.await.ok()
}

/// The report as Prometheus text exposition.
pub fn render(r: &StatusReport) -> String {
    let mut out = String::with_capacity(1024 + r.peers.len() * 1024);
    let peer_labels: Vec<String> = r
        .peers
        .iter()
        .map(|p| {
            let id = p.node_id.map(|id| id.0.to_string()).unwrap_or_default();
            format!(
                "peer=\"{}\",peer_id=\"{}\",peer_ip=\"{}\"",
                prometheus::escape_label(&p.name),
                prometheus::escape_label(&id),
                p.ip
            )
        })
        .collect();
    let peers = || r.peers.iter().zip(&peer_labels);

    prometheus::header(
        &mut out,
        "warren_node_info",
        "gauge",
        "This node (always 1; the labels carry name, mesh address, id and cipher).",
    );
    let cipher = r.me.cipher.map_or("", |c| c.name());
    let _ = writeln!(
        out,
        "warren_node_info{{name=\"{}\",ip=\"{}\",node_id=\"{}\",cipher=\"{cipher}\"}} 1",
        prometheus::escape_label(&r.me.node.name),
        r.me.node.ip,
        r.me.node.node_id.0,
    );
    prometheus::header(
        &mut out,
        "warren_coordinator_connected",
        "gauge",
        "Whether the control connection to the coordinator is up (1) or reconnecting (0).",
    );
    let up = u8::from(r.me.node.coordinator == Link::Connected);
    let _ = writeln!(out, "warren_coordinator_connected {up}");
    prometheus::header(
        &mut out,
        "warren_carrier",
        "gauge",
        "What carries the control connection and the relay (1 for the one in use).",
    );
    for (name, c) in [("udp", Carrier::Udp), ("tcp", Carrier::Tcp)] {
        let v = u8::from(r.me.node.carrier == c);
        let _ = writeln!(out, "warren_carrier{{carrier=\"{name}\"}} {v}");
    }
    prometheus::header(
        &mut out,
        "warren_dropped_packets_total",
        "counter",
        "Packets dropped since the daemon started, by reason.",
    );
    for (reason, n) in &r.dropped {
        let _ = writeln!(
            out,
            "warren_dropped_packets_total{{reason=\"{}\"}} {n}",
            prometheus::escape_label(reason)
        );
    }
    prometheus::header(
        &mut out,
        "warren_peers",
        "gauge",
        "Peers the coordinator lists in the mesh.",
    );
    let _ = writeln!(out, "warren_peers {}", r.peers.len());
    prometheus::header(
        &mut out,
        "warren_peer_path",
        "gauge",
        "How packets to the peer travel (1 for the current path: direct, relay or connecting).",
    );
    for (p, l) in peers() {
        for (name, path) in [
            ("direct", PathName::Direct),
            ("relay", PathName::Relay),
            ("connecting", PathName::Connecting),
        ] {
            let v = u8::from(p.path == path);
            let _ = writeln!(out, "warren_peer_path{{{l},path=\"{name}\"}} {v}");
        }
    }
    prometheus::header(
        &mut out,
        "warren_peer_online",
        "gauge",
        "Whether the coordinator lists the peer as connected.",
    );
    for (p, l) in peers() {
        let _ = writeln!(out, "warren_peer_online{{{l}}} {}", u8::from(p.online));
    }
    prometheus::header(
        &mut out,
        "warren_peer_rx_bytes_total",
        "counter",
        "Decrypted payload bytes received from the peer.",
    );
    for (p, l) in peers() {
        let _ = writeln!(out, "warren_peer_rx_bytes_total{{{l}}} {}", p.rx_bytes);
    }
    prometheus::header(
        &mut out,
        "warren_peer_tx_bytes_total",
        "counter",
        "Payload bytes sent to the peer.",
    );
    for (p, l) in peers() {
        let _ = writeln!(out, "warren_peer_tx_bytes_total{{{l}}} {}", p.tx_bytes);
    }
    prometheus::header(
        &mut out,
        "warren_peer_rtt_seconds",
        "gauge",
        "Latest round-trip time of the direct path, measured by probes (absent when unknown).",
    );
    for (p, l) in peers() {
        if let Some(ms) = p.rtt_ms {
            let _ = writeln!(out, "warren_peer_rtt_seconds{{{l}}} {}", ms / 1e3);
        }
    }
    prometheus::header(
        &mut out,
        "warren_peer_handshakes_total",
        "counter",
        "Noise handshakes completed with the peer (either role).",
    );
    for (p, l) in peers() {
        let _ = writeln!(out, "warren_peer_handshakes_total{{{l}}} {}", p.handshakes);
    }
    prometheus::header(
        &mut out,
        "warren_peer_last_handshake_seconds",
        "gauge",
        "Seconds since the last completed handshake with the peer (absent before the first).",
    );
    for (p, l) in peers() {
        if let Some(s) = p.last_handshake_s {
            let _ = writeln!(out, "warren_peer_last_handshake_seconds{{{l}}} {s}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use warren_proto::control::PeerRecord;
    use warren_proto::engine::{PathKind, PeerStatus, RelayReason};
    use warren_proto::ids::{MeshIp, NodeId, PublicKey};
    use warren_proto::noise::CipherSuite;

    use super::*;
    use crate::status::{peer_lines, SelfReport, SelfStatus};

    fn rec(id: u64, name: &str) -> PeerRecord {
        PeerRecord {
            node_id: NodeId(id),
            name: name.into(),
            public_key: PublicKey([id as u8; 32]),
            mesh_ip: MeshIp(Ipv4Addr::new(100, 80, 0, id as u8)),
            online: id != 3,
            candidates: vec![],
        }
    }

    fn status(id: u64, path: PathKind) -> PeerStatus {
        PeerStatus {
            node_id: NodeId(id),
            name: String::new(),
            mesh_ip: MeshIp(Ipv4Addr::new(100, 80, 0, id as u8)),
            path,
            endpoint: None,
            rtt: (path == PathKind::Direct).then(|| Duration::from_micros(1500)),
            relay_reason: (path == PathKind::Relay).then_some(RelayReason::PunchTimedOut),
            rx_bytes: 1000 * id,
            tx_bytes: 2000 * id,
            last_handshake: Some(Duration::from_secs(7)),
            handshakes: id,
            cipher: Some(CipherSuite::ChaChaPoly),
        }
    }

    fn report() -> StatusReport {
        let records = [rec(2, "web"), rec(3, "db \"main\""), rec(4, "cache")];
        let engine = [status(2, PathKind::Direct), status(4, PathKind::Relay)];
        StatusReport {
            me: SelfReport {
                node: SelfStatus {
                    name: "alpha".into(),
                    ip: MeshIp(Ipv4Addr::new(100, 80, 0, 1)),
                    node_id: NodeId(1),
                    public_key: PublicKey([1; 32]),
                    reflexive: None,
                    coordinator: Link::Connected,
                    carrier: Carrier::Udp,
                },
                cipher: Some(CipherSuite::AesGcm),
            },
            peers: peer_lines(records.iter(), &engine),
            dropped: BTreeMap::from([("decrypt_failed".into(), 3), ("replayed".into(), 0)]),
        }
    }

    /// Every sample line: (name, labels, value); checks the exposition syntax on the way.
    fn samples(text: &str) -> Vec<(String, String, f64)> {
        let mut typed: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["gauge", "counter"].contains(&kind), "{line}");
                assert!(!typed.contains(&name.to_string()), "family twice: {name}");
                typed.push(name.into());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}').unwrap()),
                None => (series, ""),
            };
            assert_eq!(typed.last().map(String::as_str), Some(name), "{line}");
            if name.ends_with("_total") {
                assert!(text.contains(&format!("# TYPE {name} counter")));
            }
            out.push((name.into(), labels.into(), value.parse().unwrap()));
        }
        out
    }

    fn value(s: &[(String, String, f64)], name: &str, label: &str) -> Option<f64> {
        s.iter()
            .find(|(n, l, _)| n == name && l.contains(label))
            .map(|x| x.2)
    }

    #[test]
    fn renders_every_family_with_peer_labels() {
        let text = render(&report());
        let s = samples(&text);
        let web = "peer=\"web\",peer_id=\"2\",peer_ip=\"100.80.0.2\"";
        assert_eq!(
            value(&s, "warren_peer_path", &format!("{web},path=\"direct\"")),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            value(&s, "warren_peer_path", &format!("{web},path=\"relay\"")),
            Some(0.0)
        );
        assert_eq!(value(&s, "warren_peer_rx_bytes_total", web), Some(2000.0));
        assert_eq!(value(&s, "warren_peer_tx_bytes_total", web), Some(4000.0));
        assert_eq!(value(&s, "warren_peer_rtt_seconds", web), Some(0.0015));
        assert_eq!(value(&s, "warren_peer_handshakes_total", web), Some(2.0));
        assert_eq!(
            value(&s, "warren_peer_last_handshake_seconds", web),
            Some(7.0)
        );
        assert_eq!(value(&s, "warren_peer_online", web), Some(1.0));
        // The relayed peer has no RTT line; the unknown one is connecting with zeros.
        assert_eq!(
            value(
                &s,
                "warren_peer_path",
                "peer=\"cache\",peer_id=\"4\",peer_ip=\"100.80.0.4\",path=\"relay\""
            ),
            Some(1.0)
        );
        assert_eq!(value(&s, "warren_peer_rtt_seconds", "peer=\"cache\""), None);
        let db = "peer=\"db \\\"main\\\"\"";
        assert_eq!(
            value(
                &s,
                "warren_peer_path",
                &format!("{db},peer_id=\"3\",peer_ip=\"100.80.0.3\",path=\"connecting\"")
            ),
            Some(1.0),
            "{text}"
        );
        assert_eq!(value(&s, "warren_peer_online", db), Some(0.0));
        assert_eq!(value(&s, "warren_peer_handshakes_total", db), Some(0.0));
        assert_eq!(
            value(
                &s,
                "warren_dropped_packets_total",
                "reason=\"decrypt_failed\""
            ),
            Some(3.0)
        );
        assert_eq!(
            value(&s, "warren_dropped_packets_total", "reason=\"replayed\""),
            Some(0.0)
        );
        assert_eq!(value(&s, "warren_coordinator_connected", ""), Some(1.0));
        assert_eq!(value(&s, "warren_carrier", "carrier=\"udp\""), Some(1.0));
        assert_eq!(value(&s, "warren_carrier", "carrier=\"tcp\""), Some(0.0));
        assert_eq!(value(&s, "warren_peers", ""), Some(3.0));
        assert_eq!(
            value(&s, "warren_node_info", "cipher=\"aes-256-gcm\""),
            Some(1.0)
        );
        // One path line per state per peer.
        assert_eq!(s.iter().filter(|x| x.0 == "warren_peer_path").count(), 9);
    }

    async fn get(addr: std::net::SocketAddr, request: &str) -> (String, String) {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(request.as_bytes()).await.unwrap();
        let mut all = String::new();
        c.read_to_string(&mut all).await.unwrap();
        let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
        (head.to_ascii_lowercase(), body.to_string())
    }

    #[tokio::test]
    async fn answers_scrapes_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel::<StatusRequest>(4);
        let server = tokio::spawn(serve(listener, tx));
        let daemon = tokio::spawn(async move {
            // Two scrapes, then the daemon stops.
            for _ in 0..2 {
                let reply = rx.recv().await.unwrap();
                let _ = reply.send(report());
            }
        });
        let close = "Connection: close\r\n\r\n";
        let (head, body) = get(
            addr,
            &format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{close}"),
        )
        .await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        assert_eq!(body, render(&report()));
        let (head, body) = get(
            addr,
            &format!("HEAD /metrics?x=1 HTTP/1.1\r\nHost: x\r\n{close}"),
        )
        .await;
        assert!(head.starts_with("http/1.1 200 ok"), "{head}");
        assert!(body.is_empty());
        daemon.await.unwrap();
        let (head, _) = get(
            addr,
            &format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{close}"),
        )
        .await;
        assert!(head.starts_with("http/1.1 503"), "daemon gone: {head}");
        let (head, _) = get(addr, &format!("GET / HTTP/1.1\r\nHost: x\r\n{close}")).await;
        assert!(head.starts_with("http/1.1 404"), "{head}");
        let (head, _) = get(
            addr,
            &format!("POST /metrics HTTP/1.1\r\nHost: x\r\n{close}"),
        )
        .await;
        assert!(
            head.starts_with("http/1.1 405") && head.contains("allow: get,head"),
            "{head}"
        );
        let (head, _) = get(addr, "hello\r\n\r\n").await;
        assert!(head.starts_with("http/1.1 400"), "{head}");
        server.abort();
    }
}
