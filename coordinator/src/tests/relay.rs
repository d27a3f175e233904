//! Relay datagrams over a real QUIC endpoint on loopback: labelling, refusals, per-node limits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use warren_proto::ids::NodeId;
use warren_proto::relay;

use super::*;
use crate::relay::{Dropped, RelayLimits};
use crate::testutil::mesh_with;

/// Joins `n` nodes (keys seeded from `seed`); returns the clients and their ids.
async fn nodes(
    addr: std::net::SocketAddr,
    mesh: &Arc<Mesh>,
    seed: u8,
    n: u8,
) -> Vec<(Client, NodeId)> {
    let secret = new_invite(mesh, u32::from(n));
    let mut out = Vec::new();
    for i in 0..n {
        let key = PrivateKey::from_random([seed + i; 32]);
        let (c, w) = join(addr, mesh, &key, secret, &format!("n{i}")).await;
        let CoordMessage::Welcome { node, .. } = w else {
            panic!("{w:?}")
        };
        out.push((c, node.node_id));
    }
    out
}

/// Next datagram on `c`'s connection, if one comes within `wait`.
async fn next(c: &Client, wait: Duration) -> Option<Vec<u8>> {
    tokio::time::timeout(wait, c.conn.read_datagram())
        .await
        .ok()
        .map(|d| d.unwrap().to_vec())
}

#[tokio::test]
async fn relay_datagrams_reach_the_named_peer_labelled_with_the_sender() {
    let (_d, mesh, identity) = mesh();
    let addr = start(&mesh, &identity);
    let mut n = nodes(addr, &mesh, 21, 3).await;
    let (c, nc) = n.pop().unwrap();
    let (b, nb) = n.pop().unwrap();
    let (a, na) = n.pop().unwrap();
    let wait = Duration::from_secs(5);
    // Junk first: too short, to an unknown node, to itself. None of it arrives anywhere, and
    // the connection survives it.
    a.conn.send_datagram(vec![1, 2, 3].into()).unwrap();
    a.conn
        .send_datagram(relay::build(NodeId(999), b"x").into())
        .unwrap();
    a.conn
        .send_datagram(relay::build(na, b"self").into())
        .unwrap();
    a.conn
        .send_datagram(relay::build(nb, b"sealed packet").into())
        .unwrap();
    let got = next(&b, wait).await.expect("B gets a datagram");
    assert_eq!(
        relay::parse(&got),
        Ok((na, &b"sealed packet"[..])),
        "B gets A's packet labelled with A's id"
    );
    let big = vec![0xAB; 1000];
    b.conn.send_datagram(relay::build(na, &big).into()).unwrap();
    let got = next(&a, wait).await.expect("A gets a datagram");
    assert_eq!(relay::parse(&got), Ok((nb, &big[..])), "not its own packet");
    assert_eq!(next(&c, Duration::from_millis(300)).await, None);
    let stats = &mesh.relay.stats;
    assert_eq!(stats.forwarded_packets(), 2);
    assert_eq!(stats.dropped(Dropped::TooShort), 1);
    assert_eq!(stats.dropped(Dropped::NoRoute), 1);
    assert_eq!(stats.dropped(Dropped::ToSelf), 1);
    assert_eq!(mesh.registry.online_count(), 3);
    // Health shows the counters.
    let (status, health) = call(&mesh, "GET", "/v1/health", Some(TOKEN), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["relay"]["forwarded_packets"], 2);
    assert_eq!(health["relay"]["dropped"]["to_self"], 1);
    // An offline node is no route either.
    c.conn.close(0u32.into(), b"bye");
    while mesh.registry.online_count() > 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.conn
        .send_datagram(relay::build(nc, b"gone").into())
        .unwrap();
    let deadline = Instant::now() + wait;
    while stats.dropped(Dropped::NoRoute) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stats.dropped(Dropped::NoRoute), 2);
}

/// What B received, per source id: packets, bytes, and C's sequence numbers.
#[derive(Default)]
struct Received {
    /// (packets, bytes) per labelled source.
    per_source: HashMap<NodeId, (u64, u64)>,
    /// Sequence numbers seen in C's packets.
    c_seqs: Vec<u32>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_node_is_held_to_its_limit_and_does_not_starve_others() {
    // 4 Mbit/s = 500 kB/s (burst 64 KiB) and 2000 packets/s (burst 200) per node.
    let limits = RelayLimits::new(4, 2000);
    let (_d, mesh, identity) = mesh_with(limits);
    let addr = start(&mesh, &identity);
    let start_all = Instant::now();
    let mut n = nodes(addr, &mesh, 31, 3).await;
    let (c, nc) = n.pop().unwrap();
    let (b, nb) = n.pop().unwrap();
    let (a, na) = n.pop().unwrap();

    let received = Arc::new(Mutex::new(Received::default()));
    let reader = {
        let (conn, received) = (b.conn.clone(), received.clone());
        tokio::spawn(async move {
            while let Ok(d) = conn.read_datagram().await {
                let Ok((from, packet)) = relay::parse(&d) else {
                    continue;
                };
                let mut r = received.lock().unwrap();
                let e = r.per_source.entry(from).or_default();
                e.0 += 1;
                e.1 += d.len() as u64;
                if from == nc {
                    let seq = u32::from_be_bytes(packet[..4].try_into().unwrap());
                    r.c_seqs.push(seq);
                }
            }
        })
    };

    // A: 1000-byte packets to B as fast as it can for 2 s.
    const FLOOD: Duration = Duration::from_secs(2);
    let flood = {
        let conn = a.conn.clone();
        tokio::spawn(async move {
            let datagram = axum::body::Bytes::from(relay::build(nb, &[0x55; 1000]));
            let t0 = Instant::now();
            let mut sent = 0u64;
            while t0.elapsed() < FLOOD {
                for _ in 0..64 {
                    if conn.send_datagram(datagram.clone()).is_ok() {
                        sent += 1;
                    }
                }
                tokio::task::yield_now().await;
            }
            sent
        })
    };
    // C: 200 packets of 200 bytes at 100 packets/s, well within its own limit.
    const C_PACKETS: u32 = 200;
    for seq in 0..C_PACKETS {
        let mut packet = vec![0u8; 200];
        packet[..4].copy_from_slice(&seq.to_be_bytes());
        c.conn
            .send_datagram(relay::build(nb, &packet).into())
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let a_sent = flood.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let elapsed = start_all.elapsed();
    reader.abort();

    let r = received.lock().unwrap();
    let (a_pkts, a_bytes) = r.per_source.get(&na).copied().unwrap_or_default();
    let stats = &mesh.relay.stats;
    let limited = stats.dropped(Dropped::RateBytes) + stats.dropped(Dropped::RatePackets);
    let processed = stats.forwarded_packets() + limited;
    eprintln!(
        "flood: A sent {a_sent} datagrams in {FLOOD:?}; coordinator handled {processed} \
         ({:.0}/s), forwarded {} (A {a_pkts} = {a_bytes} B, C {}), rate-limited {limited}, \
         congested {}",
        processed as f64 / FLOOD.as_secs_f64(),
        stats.forwarded_packets(),
        r.c_seqs.len(),
        stats.dropped(Dropped::Congested),
    );
    // A was held to burst + rate over the whole time its connection existed.
    let bound = limits.burst_bytes() + (limits.bytes_per_sec as f64 * elapsed.as_secs_f64()) as u64;
    assert!(
        a_bytes <= bound,
        "A got {a_bytes} bytes through, bound {bound}"
    );
    // ... but did get its rate (at least half of it over the flood), and was limited.
    assert!(
        a_bytes >= limits.bytes_per_sec,
        "A got only {a_bytes} bytes through"
    );
    assert!(limited > 0, "the flood was never rate-limited");
    // C's modest stream got through: at most 2% lost.
    let mut seqs = r.c_seqs.clone();
    seqs.sort_unstable();
    seqs.dedup();
    assert!(
        seqs.len() as u32 >= C_PACKETS * 98 / 100,
        "C delivered only {} of {C_PACKETS}",
        seqs.len()
    );
    assert!(r.per_source.keys().all(|k| *k == na || *k == nc));
}

/// Measurement (run with `--ignored --nocapture`): how many datagrams the coordinator forwards
/// per second on loopback with limits out of the way, one sender flooding one receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, prints figures"]
async fn relay_throughput_on_loopback() {
    let (_d, mesh, identity) = mesh_with(RelayLimits::new(100_000, 10_000_000));
    let addr = start(&mesh, &identity);
    let mut n = nodes(addr, &mesh, 41, 2).await;
    let (b, nb) = n.pop().unwrap();
    let (a, na) = n.pop().unwrap();
    let got = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let (conn, got) = (b.conn.clone(), got.clone());
        tokio::spawn(async move {
            while let Ok(d) = conn.read_datagram().await {
                assert_eq!(relay::parse(&d).unwrap().0, na);
                got.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    const RUN: Duration = Duration::from_secs(3);
    let datagram = axum::body::Bytes::from(relay::build(nb, &[0x55; 1000]));
    let t0 = Instant::now();
    while t0.elapsed() < RUN {
        for _ in 0..64 {
            let _ = a.conn.send_datagram(datagram.clone());
        }
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    reader.abort();
    let stats = &mesh.relay.stats;
    let forwarded = stats.forwarded_packets();
    let received = got.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "throughput: forwarded {forwarded} ({:.0}/s, {:.1} Mbit/s), B received {received}, \
         rate-limited {}, congested {}",
        forwarded as f64 / RUN.as_secs_f64(),
        forwarded as f64 * 1008.0 * 8.0 / RUN.as_secs_f64() / 1e6,
        stats.dropped(Dropped::RateBytes) + stats.dropped(Dropped::RatePackets),
        stats.dropped(Dropped::Congested),
    );
    assert!(received <= forwarded);
    assert!(forwarded > 0);
}
