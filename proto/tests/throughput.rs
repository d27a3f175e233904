//! Crypto throughput of an established session through the engine's fast paths
//! ([`Engine::encapsulate`] and [`Engine::handle_datagram`]), single core, no IO. Ignored by
//! default (timing-dependent); run with
//! `cargo test --release -p warren-proto --test throughput -- --ignored --nocapture`.

#![allow(clippy::unwrap_used)]

mod sim;

use std::time::{Duration, Instant};

use sim::pair;
use warren_proto::engine::{Encapsulated, TRANSPORT_OVERHEAD};

#[test]
#[ignore = "timing measurement; run in release"]
fn engine_fast_path_throughput() {
    let mut s = pair(None, None, 30);
    s.traffic_both_ways(0, 1, Duration::from_millis(100), Duration::from_secs(2));
    assert!(s.direct(0, 1));
    let from = s.status(1, 0).endpoint.unwrap();
    let mut pkt = sim::ipv4(s.nodes[0].mesh_ip, s.nodes[1].mesh_ip, 0);
    pkt.resize(1280, 0xab);
    let mut wire = vec![0u8; pkt.len() + TRANSPORT_OVERHEAD];
    let mut tun = vec![0u8; 1500];
    let now = s.now;
    let packets = 100_000u32;
    let started = Instant::now();
    for i in 0..packets {
        pkt[20..24].copy_from_slice(&i.to_be_bytes());
        let Some(Encapsulated::Udp { len: n, .. }) =
            s.nodes[0].engine.encapsulate(&pkt, &mut wire, now)
        else {
            panic!("session is up, path direct");
        };
        let got = s.nodes[1]
            .engine
            .handle_datagram(from, &wire[..n], &mut tun, now)
            .expect("decrypts");
        assert_eq!(&tun[..got], &pkt[..]);
    }
    let secs = started.elapsed().as_secs_f64();
    let gbit = f64::from(packets) * pkt.len() as f64 * 8.0 / secs / 1e9;
    eprintln!(
        "seal+open of {packets} x {} B: {secs:.3} s, {gbit:.2} Gbit/s",
        pkt.len()
    );
    assert!(gbit > 0.05, "implausibly slow: {gbit} Gbit/s");
}
