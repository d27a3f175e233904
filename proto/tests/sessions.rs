//! Deterministic simulation tests of the engine's sessions and defences: rekey and expiry,
//! replays, forged and garbage input, initiation floods, buffer sizes.

#![allow(clippy::unwrap_used)]

mod sim;

use std::time::Duration;

use sim::{pair, NatKind};
use warren_proto::engine::{Encapsulated, PathKind};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

#[test]
fn traffic_survives_rekey() {
    let mut s = pair(Some(NatKind::Eim), Some(NatKind::Eim), 7);
    s.traffic_both_ways(0, 1, 100 * MS, 400 * SEC);
    let ra = s.received_from(1, 0);
    let rb = s.received_from(0, 1);
    // Everything after the first couple of seconds arrives, across three rekeys.
    for seq in 30..3990 {
        assert!(ra.contains(&seq), "b missed {seq}");
        assert!(rb.contains(&seq), "a missed {seq}");
    }
    for n in &s.nodes {
        let d = n.engine.drop_counters();
        assert_eq!((d.unknown_index, d.decrypt_failed), (0, 0), "{d:?}");
    }
    assert!(s.status(0, 1).last_handshake.unwrap() < 130 * SEC);
    assert_eq!(s.nodes[1].engine.drop_counters().expired, 0);
    // Rekeys stay few: one initiation per REKEY_AFTER_TIME, not one per side.
    let inits = s.delivered_log.iter().filter(|(_, _, p)| p[0] == 1).count();
    assert!(inits <= 5, "{inits} initiations in 400 s");
}

#[test]
fn encapsulate_fast_path_and_small_tun_buffer() {
    let mut s = pair(None, Some(NatKind::Eim), 15);
    s.traffic_both_ways(0, 1, 100 * MS, 3 * SEC);
    assert!(s.direct(0, 1));
    let now = s.now;
    let pkt = sim::ipv4(s.nodes[0].mesh_ip, s.nodes[1].mesh_ip, 777);
    let mut out = vec![0u8; pkt.len() + warren_proto::engine::TRANSPORT_OVERHEAD];
    let Some(Encapsulated::Udp { dst, len: n }) =
        s.nodes[0].engine.encapsulate(&pkt, &mut out, now)
    else {
        panic!("sealed for the direct path");
    };
    assert_eq!(n, out.len());
    assert_eq!(Some(dst), s.status(0, 1).endpoint);
    let from = s.status(1, 0).endpoint.unwrap();
    let mut small = [0u8; 50];
    assert_eq!(
        s.nodes[1]
            .engine
            .handle_datagram(from, &out, &mut small, now),
        None
    );
    assert_eq!(s.nodes[1].engine.drop_counters().tun_out_too_small, 1);
    let mut tun = [0u8; 1500];
    // The too-small attempt did not consume the counter.
    let got = s.nodes[1].engine.handle_datagram(from, &out, &mut tun, now);
    assert_eq!(got, Some(pkt.len()));
    assert_eq!(&tun[..pkt.len()], &pkt[..]);
    // Unknown destination: dropped and counted, nothing sealed.
    let stray = sim::ipv4(s.nodes[0].mesh_ip, "100.80.9.9".parse().unwrap(), 1);
    assert!(s.nodes[0]
        .engine
        .encapsulate(&stray, &mut out, now)
        .is_none());
    assert_eq!(s.nodes[0].engine.drop_counters().tun_unknown_dst, 1);
}

#[test]
fn sessions_rejected_after_reject_time_without_rekey() {
    let mut s = pair(Some(NatKind::Eim), Some(NatKind::Eim), 8);
    s.traffic_both_ways(0, 1, SEC, 5 * SEC);
    assert!(s.direct(0, 1));
    s.block_handshakes = true;
    let t0 = s.now;
    s.traffic_both_ways(0, 1, SEC, 200 * SEC);
    let _ = t0;
    let ra = s.received_from(1, 0);
    // Sessions were made within the first seconds; nothing may pass after 180 s of age.
    assert!(ra.contains(&100));
    assert!(
        ra.iter().all(|&seq| seq < 180),
        "packet delivered on an expired session"
    );
    assert_ne!(s.status(0, 1).path, PathKind::Direct);
}

#[test]
fn garbage_and_unknown_keys_get_no_reply() {
    use rand::{RngCore, SeedableRng};
    use warren_proto::ids::{NodeId, PrivateKey, SessionIndex};
    use warren_proto::noise::{CipherSuite, InitiatorHandshake, Timestamp};

    let mut s = pair(None, None, 9);
    let now = s.now;
    let from: std::net::SocketAddr = "192.0.2.99:1234".parse().unwrap();
    let mut out = [0u8; 2048];
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(9);
    let engine = &mut s.nodes[1].engine;
    for _ in 0..5000 {
        let mut g = vec![0u8; (rng.next_u32() % 200) as usize];
        rng.fill_bytes(&mut g);
        if let Some(b) = g.first_mut() {
            *b %= 6;
        }
        assert_eq!(engine.handle_datagram(from, &g, &mut out, now), None);
    }
    // An authentic initiation from a key nobody listed.
    let stranger = PrivateKey::from_random([77; 32]);
    let (_, init) = InitiatorHandshake::start(
        CipherSuite::ChaChaPoly,
        &stranger,
        &engine.public_key(),
        SessionIndex(5),
        Timestamp::from_unix_nanos(1),
        [1; 32],
    )
    .unwrap();
    engine.handle_datagram(from, &init, &mut out, now);
    // A probe claiming to be a listed peer, with a wrong MAC.
    let mut probe = warren_proto::packet::encode_probe_body(NodeId(1), 5);
    probe.extend_from_slice(&[0u8; 16]);
    engine.handle_datagram(from, &probe, &mut out, now);
    assert!(
        engine.poll_transmit().is_none(),
        "replied to unauthenticated input"
    );
    assert!(engine.poll_event().is_none());
    let d = engine.drop_counters();
    assert_eq!(d.handshake_unknown_key, 1);
    assert_eq!(d.probe_bad_mac, 1);
    assert!(d.malformed > 1000);
}

#[test]
fn replayed_transport_and_handshake_rejected() {
    let mut s = pair(Some(NatKind::Eim), Some(NatKind::Eim), 10);
    s.traffic_both_ways(0, 1, 100 * MS, 3 * SEC);
    assert!(s.direct(0, 1));
    let (from, data) = s
        .delivered_log
        .iter()
        .rev()
        .find(|(to, _, p)| *to == 1 && p[0] == 3 && p.len() > 40)
        .map(|(_, f, p)| (*f, p.clone()))
        .unwrap();
    let (init_to, init_from, init) = s
        .delivered_log
        .iter()
        .find(|(_, _, p)| p[0] == 1)
        .map(|(t, f, p)| (*t, *f, p.clone()))
        .unwrap();
    let now = s.now;
    let mut out = [0u8; 2048];
    let e = &mut s.nodes[1].engine;
    while e.poll_transmit().is_some() {}
    let before = e.drop_counters().clone();
    assert_eq!(e.handle_datagram(from, &data, &mut out, now), None);
    assert_eq!(e.drop_counters().replayed, before.replayed + 1);
    let e = &mut s.nodes[init_to].engine;
    while e.poll_transmit().is_some() {}
    let before = e.drop_counters().clone();
    e.handle_datagram(init_from, &init, &mut out, now);
    assert_eq!(
        e.drop_counters().handshake_replay,
        before.handshake_replay + 1
    );
    assert!(e.poll_transmit().is_none(), "replayed initiation answered");
}

#[test]
fn garbage_at_an_established_peer_changes_nothing() {
    use rand::{RngCore, SeedableRng};
    let mut s = pair(None, Some(NatKind::Eim), 19);
    s.traffic_both_ways(0, 1, 100 * MS, 3 * SEC);
    assert!(s.direct(0, 1));
    // A real transport packet to node 0, to learn its live receiver index.
    let (_, _, real) = s
        .delivered_log
        .iter()
        .rev()
        .find(|(to, _, p)| *to == 0 && p[0] == 3)
        .cloned()
        .unwrap();
    let attacker: std::net::SocketAddr = "192.0.2.66:999".parse().unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(19);
    let now = s.now;
    let mut out = [0u8; 2048];
    let e = &mut s.nodes[0].engine;
    while e.poll_transmit().is_some() {}
    for i in 0..3000u64 {
        let mut g = real.clone();
        let len = 16 + (rng.next_u32() as usize % 150);
        g.resize(len.max(32), 0);
        rng.fill_bytes(&mut g[8..]);
        if i % 3 == 0 {
            g[0] = (rng.next_u32() % 6) as u8;
        }
        assert_eq!(e.handle_datagram(attacker, &g, &mut out, now), None);
    }
    assert!(e.poll_transmit().is_none(), "answered forged packets");
    let d = e.drop_counters();
    assert!(d.decrypt_failed > 500, "{d:?}");
    // The forged source did not hijack the endpoint, and traffic still flows.
    assert_ne!(s.status(0, 1).endpoint, Some(attacker));
    s.nodes[0].tun_rx.clear();
    s.nodes[1].tun_rx.clear();
    s.traffic_both_ways(0, 1, 100 * MS, 2 * SEC);
    assert!(s.received_from(0, 1).len() >= 19);
    assert!(s.received_from(1, 0).len() >= 19);
}

#[test]
fn initiation_flood_is_capped() {
    use warren_proto::engine::MAX_INITS_PER_SEC;
    use warren_proto::ids::{PrivateKey, SessionIndex};
    use warren_proto::noise::{CipherSuite, InitiatorHandshake, Timestamp};

    let mut s = pair(None, None, 22);
    let now = s.now;
    let stranger = PrivateKey::from_random([78; 32]);
    let target = s.nodes[1].engine.public_key();
    let from: std::net::SocketAddr = "192.0.2.77:4444".parse().unwrap();
    let mut out = [0u8; 2048];
    let e = &mut s.nodes[1].engine;
    let n = MAX_INITS_PER_SEC as u64 + 50;
    for i in 0..n {
        let (_, init) = InitiatorHandshake::start(
            CipherSuite::ChaChaPoly,
            &stranger,
            &target,
            SessionIndex(i as u32),
            Timestamp::from_unix_nanos(i),
            [i as u8; 32],
        )
        .unwrap();
        e.handle_datagram(from, &init, &mut out, now);
    }
    let d = e.drop_counters();
    assert_eq!(d.handshake_unknown_key, u64::from(MAX_INITS_PER_SEC));
    assert_eq!(d.handshake_rate_limited, 50);
    assert!(e.poll_transmit().is_none());
    // The budget refills: a second later initiations are processed again.
    let (_, init) = InitiatorHandshake::start(
        CipherSuite::ChaChaPoly,
        &stranger,
        &target,
        SessionIndex(1),
        Timestamp::from_unix_nanos(u64::MAX / 2),
        [1; 32],
    )
    .unwrap();
    e.handle_datagram(from, &init, &mut out, now + SEC);
    assert_eq!(
        e.drop_counters().handshake_unknown_key,
        u64::from(MAX_INITS_PER_SEC) + 1
    );
}

#[test]
fn simultaneous_initiation_settles() {
    // Two open nodes told to punch at the same instant confirm the path together and both
    // initiate; traffic must flow and rekeys must not pile up.
    let mut s = pair(None, None, 23);
    let now = s.now;
    let (a, b) = (s.nodes[0].id, s.nodes[1].id);
    let (la, lb) = (s.nodes[0].local, s.nodes[1].local);
    s.nodes[0].engine.handle_punch(b, &[lb], now);
    s.nodes[1].engine.handle_punch(a, &[la], now);
    s.traffic_both_ways(0, 1, 100 * MS, 400 * SEC);
    let inits: Vec<(usize, u64)> = s
        .sent_log
        .iter()
        .filter(|(_, _, _, k)| *k == 1)
        .map(|(n, t, _, _)| (*n, (*t - s.start).as_secs()))
        .collect();
    let at_start = inits.iter().filter(|(_, t)| *t == 0).count();
    assert_eq!(at_start, 2, "both sides initiate at once: {inits:?}");
    // After the first rekey only one side keeps initiating (per-peer rekey jitter).
    assert!(inits.len() <= 6, "{inits:?}");
    for (rx, tx) in [(1, 0), (0, 1)] {
        let got = s.received_from(rx, tx);
        for seq in 10..3990 {
            assert!(got.contains(&seq), "{tx}->{rx} lost {seq}");
        }
        // No packet arrived for keys already thrown away, across the rekeys.
        let d = s.nodes[rx].engine.drop_counters();
        assert_eq!((d.unknown_index, d.decrypt_failed), (0, 0), "{d:?}");
    }
}

#[test]
fn peer_key_change_drops_old_sessions_and_reconnects() {
    use warren_proto::ids::PrivateKey;
    let mut s = pair(Some(NatKind::Eim), None, 26);
    s.traffic_both_ways(0, 1, 100 * MS, 3 * SEC);
    assert!(s.direct(0, 1));
    // b is reinstalled with a new key; the coordinator tells a.
    s.nodes[1].key = PrivateKey::from_random([99; 32]);
    s.restart(1);
    let rec = s.record(1);
    let now = s.now;
    s.nodes[0].engine.upsert_peer(&rec, now);
    assert_eq!(
        s.status(0, 1).path,
        PathKind::Connecting,
        "old keys must go"
    );
    s.nodes[0].tun_rx.clear();
    s.nodes[1].tun_rx.clear();
    s.traffic_both_ways(0, 1, 100 * MS, 5 * SEC);
    assert!(s.direct(0, 1), "{:?}", s.status(0, 1));
    assert!(s.received_from(1, 0).len() > 30);
    assert!(s.received_from(0, 1).len() > 30);
}
