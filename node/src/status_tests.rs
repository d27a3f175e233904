//! Tests of the status report shape, the socket server and the CLI client.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use super::*;
use crate::state::tests::scratch;
use warren_proto::engine::RelayReason;
use warren_proto::noise::CipherSuite;

fn rec(id: u64, online: bool) -> PeerRecord {
    PeerRecord {
        node_id: NodeId(id),
        name: format!("peer{id}"),
        public_key: PublicKey([id as u8; 32]),
        mesh_ip: MeshIp(Ipv4Addr::new(100, 80, 0, id as u8)),
        online,
        candidates: vec![],
    }
}

fn engine_statuses() -> Vec<PeerStatus> {
    vec![
        PeerStatus {
            node_id: NodeId(2),
            name: "peer2".into(),
            mesh_ip: MeshIp(Ipv4Addr::new(100, 80, 0, 2)),
            path: PathKind::Direct,
            endpoint: Some("198.51.100.7:4000".parse().unwrap()),
            rtt: Some(Duration::from_micros(1234)),
            rx_bytes: 10,
            tx_bytes: 20,
            last_handshake: Some(Duration::from_secs(5)),
            relay_reason: None,
            handshakes: 3,
            cipher: Some(CipherSuite::AesGcm),
        },
        PeerStatus {
            node_id: NodeId(4),
            name: "peer4".into(),
            mesh_ip: MeshIp(Ipv4Addr::new(100, 80, 0, 4)),
            path: PathKind::Relay,
            endpoint: None,
            rtt: None,
            rx_bytes: 1,
            tx_bytes: 2,
            last_handshake: Some(Duration::from_secs(1)),
            relay_reason: Some(RelayReason::PunchTimedOut),
            handshakes: 1,
            cipher: None,
        },
    ]
}

fn report() -> StatusReport {
    let records = [rec(3, false), rec(2, true), rec(4, true)];
    let engine = engine_statuses();
    StatusReport {
        me: SelfReport {
            node: SelfStatus {
                name: "alpha".into(),
                ip: MeshIp(Ipv4Addr::new(100, 80, 0, 1)),
                node_id: NodeId(1),
                public_key: PublicKey([1; 32]),
                reflexive: Some("203.0.113.9:41641".into()),
                coordinator: Link::Connected,
                carrier: crate::status::Carrier::Udp,
            },
            cipher: Some(CipherSuite::ChaChaPoly),
        },
        peers: peer_lines(records.iter(), &engine),
        dropped: BTreeMap::from([("decrypt_failed".into(), 2), ("tun_write_failed".into(), 0)]),
    }
}

#[test]
fn json_has_the_documented_shape() {
    let v = serde_json::to_value(report()).unwrap();
    let me = &v["self"];
    assert_eq!(me["name"], "alpha");
    assert_eq!(me["ip"], "100.80.0.1");
    assert_eq!(me["node_id"], 1);
    assert_eq!(me["public_key"], PublicKey([1; 32]).to_string());
    assert_eq!(me["reflexive"], "203.0.113.9:41641");
    assert_eq!(me["coordinator"], "connected");
    let peers = v["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3);
    // Sorted by mesh address; the engine's numbers merged by node id.
    let p = &peers[0];
    assert_eq!(p["name"], "peer2");
    assert_eq!(p["ip"], "100.80.0.2");
    assert_eq!(p["path"], "direct");
    assert_eq!(p["endpoint"], "198.51.100.7:4000");
    assert_eq!(p["rtt_ms"], 1.234);
    assert_eq!(p["rx_bytes"], 10);
    assert_eq!(p["tx_bytes"], 20);
    assert_eq!(p["last_handshake_s"], 5);
    assert_eq!(p["online"], true);
    assert!(p["relay_reason"].is_null());
    // A relayed peer and why.
    let r = &peers[2];
    assert_eq!(r["path"], "relay");
    assert_eq!(r["relay_reason"], "punch timed out");
    assert!(r["endpoint"].is_null());
    // A peer the engine does not know yet.
    let q = &peers[1];
    assert_eq!(q["path"], "connecting");
    assert!(q["endpoint"].is_null());
    assert!(q["rtt_ms"].is_null());
    assert!(q["last_handshake_s"].is_null());
    assert_eq!(q["rx_bytes"], 0);
    assert_eq!(q["online"], false);
    let keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(p["node_id"], 2);
    assert_eq!(p["handshakes"], 3);
    assert_eq!(q["handshakes"], 0);
    assert_eq!(p["cipher"], "aes-256-gcm");
    assert!(q["cipher"].is_null());
    assert_eq!(keys.len(), 13, "{keys:?}");
    assert_eq!(me["cipher"], "chacha20-poly1305");
    assert_eq!(v["dropped"]["decrypt_failed"], 2);
    let table = render(&report());
    assert!(table.contains("peer2") && table.contains("direct") && table.contains("1.2 ms"));
    assert!(
        table.contains("5s ago") && table.contains("HANDSHAKE"),
        "{table}"
    );
    assert!(
        table.contains("relay") && table.contains("punch timed out") && table.contains("REASON"),
        "{table}"
    );
    assert!(table.lines().count() == 5, "{table}");
    assert_eq!(me["carrier"], "udp");
    assert!(!table.contains("over tcp"), "{table}");
    assert!(table.contains("cipher chacha20-poly1305"), "{table}");
}

#[test]
fn the_tcp_carrier_shows() {
    let mut r = report();
    r.me.node.carrier = crate::status::Carrier::Tcp;
    r.me.node.reflexive = None;
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["self"]["carrier"], "tcp");
    assert!(v["self"]["reflexive"].is_null());
    let table = render(&r);
    assert!(
        table
            .lines()
            .next()
            .unwrap()
            .contains("coordinator connected over tcp (udp blocked)"),
        "{table}"
    );
    // An older daemon's report without the newer fields reads as UDP, no cipher, no drops.
    let mut old = serde_json::to_value(report()).unwrap();
    for key in ["carrier", "cipher"] {
        old["self"].as_object_mut().unwrap().remove(key);
    }
    old.as_object_mut().unwrap().remove("dropped");
    for p in old["peers"].as_array_mut().unwrap() {
        p.as_object_mut().unwrap().remove("handshakes");
        p.as_object_mut().unwrap().remove("node_id");
    }
    let back: StatusReport = serde_json::from_value(old).unwrap();
    assert_eq!(back.me.node.carrier, crate::status::Carrier::Udp);
    assert_eq!(back.me.cipher, None);
    assert!(back.dropped.is_empty());
    assert_eq!((back.peers[0].handshakes, back.peers[0].node_id), (0, None));
    // A cipher name this CLI does not know (a newer daemon's) reads as none, not an error.
    let mut newer = serde_json::to_value(report()).unwrap();
    newer["self"]["cipher"] = "future-cipher".into();
    let back: StatusReport = serde_json::from_value(newer).unwrap();
    assert_eq!(back.me.cipher, None);
}

#[tokio::test]
async fn socket_round_trip_and_no_daemon_error() {
    let dir = scratch("status");
    let err = query(&dir).unwrap_err();
    assert!(matches!(
        err.downcast_ref::<NodeError>(),
        Some(NodeError::NoDaemon(_))
    ));
    let (listener, path) = bind(&dir).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (tx, mut rx) = mpsc::channel::<StatusRequest>(4);
    let server = tokio::spawn(serve(listener, tx));
    let answerer = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            let _ = reply.send(report());
        }
    });
    let q_dir = dir.clone();
    let got = tokio::task::spawn_blocking(move || query(&q_dir))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, report());
    // A second daemon on the same directory is refused while the first answers.
    let err = bind(&dir).unwrap_err();
    assert!(matches!(
        err.downcast_ref::<NodeError>(),
        Some(NodeError::DaemonRunning(_))
    ));
    server.abort();
    answerer.abort();
    let _ = server.await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn path_report_carries_path_reason_and_endpoint() {
    use warren_proto::control::{NodeMessage, PathState};
    let statuses = engine_statuses();
    let NodeMessage::PathReport { paths } = crate::status::path_report(&statuses) else {
        panic!("a path report")
    };
    assert_eq!(paths.len(), statuses.len());
    for (info, st) in paths.iter().zip(&statuses) {
        assert_eq!(info.peer, st.node_id);
        assert_eq!(info.endpoint, st.endpoint);
        assert_eq!(info.reason, st.relay_reason.map(|r| r.to_string()));
        let want = match st.path {
            PathKind::Direct => PathState::Direct,
            PathKind::Relay => PathState::Relay,
            PathKind::Connecting => PathState::Connecting,
        };
        assert_eq!(info.path, want);
    }
    assert!(paths
        .iter()
        .any(|p| p.path == PathState::Relay && p.reason.is_some()));
}
