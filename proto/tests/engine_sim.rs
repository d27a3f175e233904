//! Deterministic simulation tests of the engine: NAT traversal outcomes, loss, roaming, rekey,
//! session expiry, and refusal of garbage and replays.

#![allow(clippy::unwrap_used)]

mod sim;

use std::time::Duration;

use sim::{NatKind, Sim};
use warren_proto::engine::{Event, PathKind};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

/// Two nodes, `a` behind `ka` and `b` behind `kb` (None = open), introduced to each other.
fn pair(ka: Option<NatKind>, kb: Option<NatKind>, seed: u64) -> Sim {
    let mut s = Sim::new(seed);
    let sa = ka.map(|k| s.add_nat(k));
    let sb = kb.map(|k| s.add_nat(k));
    s.add_node(sa);
    s.add_node(sb);
    s.introduce_all();
    s
}

fn assert_connects_both_ways(s: &mut Sim) {
    s.traffic_both_ways(0, 1, 100 * MS, 5 * SEC);
    assert!(
        s.direct(0, 1),
        "not direct: {:?} / {:?}",
        s.status(0, 1),
        s.status(1, 0)
    );
    let ra = s.received_from(1, 0);
    let rb = s.received_from(0, 1);
    assert!(ra.len() > 30, "b got {} packets from a", ra.len());
    assert!(rb.len() > 30, "a got {} packets from b", rb.len());
    // After connecting, every packet arrives: the last ones sent are all there.
    for seq in 40..49 {
        assert!(ra.contains(&seq) && rb.contains(&seq), "seq {seq} missing");
    }
    let st = s.status(0, 1);
    assert!(st.rtt.is_some() && st.rx_bytes > 0 && st.tx_bytes > 0 && st.last_handshake.is_some());
}

#[test]
fn eim_eim_goes_direct() {
    let mut s = pair(Some(NatKind::Eim), Some(NatKind::Eim), 1);
    assert_connects_both_ways(&mut s);
    // One transition per side, no flapping.
    for node in 0..2 {
        let paths: Vec<PathKind> = s
            .events
            .iter()
            .filter(|(n, _)| *n == node)
            .filter_map(|(_, e)| match e {
                Event::PathChanged { path, .. } => Some(*path),
                _ => None,
            })
            .collect();
        assert_eq!(paths, [PathKind::Direct], "node {node}");
    }
    // The path is the peer's NAT address.
    let ep = s.status(0, 1).endpoint.unwrap();
    assert_eq!(ep.ip(), std::net::IpAddr::from(s.nats[1].public_ip));
}

#[test]
fn open_eim_goes_direct() {
    let mut s = pair(None, Some(NatKind::Eim), 2);
    assert_connects_both_ways(&mut s);
    assert_eq!(s.status(1, 0).endpoint, Some(s.nodes[0].local));
}

#[test]
fn lan_lan_uses_lan_address() {
    let mut s = Sim::new(3);
    let site = s.add_nat(NatKind::Eim);
    s.add_node(Some(site));
    s.add_node(Some(site));
    s.introduce_all();
    assert_connects_both_ways(&mut s);
    assert_eq!(s.status(0, 1).endpoint, Some(s.nodes[1].local));
    assert_eq!(s.status(1, 0).endpoint, Some(s.nodes[0].local));
    assert!(s.status(0, 1).rtt.unwrap() < 10 * MS);
}

#[test]
fn sym_sym_never_direct() {
    let mut s = pair(Some(NatKind::Sym), Some(NatKind::Sym), 4);
    s.traffic_both_ways(0, 1, 500 * MS, 120 * SEC);
    assert_eq!(s.status(0, 1).path, PathKind::Connecting);
    assert_eq!(s.status(1, 0).path, PathKind::Connecting);
    assert!(s.received_from(1, 0).is_empty());
    // Rounds repeat while traffic waits (about every 30 s), and the peer is asked each time.
    assert!(s.punches >= 3, "only {} punch orders", s.punches);
    // Punching stops once the traffic does.
    s.run_for(120 * SEC);
    assert!(s.nodes[0].engine.drop_counters().queue_expired > 0);
    assert!(
        s.nodes[0].engine.poll_timeout().is_none(),
        "idle connecting peer keeps timers"
    );
}

#[test]
fn sym_open_goes_direct_via_peer_reflexive() {
    // The symmetric NAT picks a fresh port towards the open peer, which learns it from the
    // probe's source (peer-reflexive) and probes it back.
    let mut s = pair(Some(NatKind::Sym), None, 16);
    assert_connects_both_ways(&mut s);
    let refl = s.candidates(0)[0];
    let ep = s.status(1, 0).endpoint.unwrap();
    assert_eq!(ep.ip(), refl.ip());
    assert_ne!(
        ep.port(),
        refl.port(),
        "path must use the peer-reflexive port"
    );
}

#[test]
fn sym_eim_stays_connecting_and_backs_off() {
    let mut s = pair(Some(NatKind::Sym), Some(NatKind::Eim), 17);
    s.traffic_both_ways(0, 1, 100 * MS, 95 * SEC);
    assert_eq!(s.status(0, 1).path, PathKind::Connecting);
    // Each side starts a round about every 30 s (0, 30, 60, 90), not on every packet.
    assert!((6..=10).contains(&s.punches), "{} punch orders", s.punches);
    assert!(s.nodes[0].engine.drop_counters().queue_overflow > 0);
}

#[test]
fn four_node_mesh_all_pairs_direct() {
    let mut s = Sim::new(18);
    let home = s.add_nat(NatKind::Eim);
    let office = s.add_nat(NatKind::Eim);
    s.add_node(Some(home));
    s.add_node(Some(home));
    s.add_node(Some(office));
    s.add_node(None);
    s.introduce_all();
    let until = s.now + 5 * SEC;
    let mut seq = 0;
    while s.now < until {
        for a in 0..4 {
            for b in 0..4 {
                if a != b {
                    s.send_ip(a, b, seq);
                }
            }
        }
        seq += 1;
        let next = s.now + 100 * MS;
        s.run_until(next);
    }
    for a in 0..4 {
        for b in 0..4 {
            if a != b {
                assert!(s.direct(a, b), "{a}->{b}: {:?}", s.status(a, b));
                assert!(
                    s.received_from(b, a).contains(&45),
                    "{a}->{b} lost late packets"
                );
            }
        }
    }
    assert_eq!(
        s.status(0, 1).endpoint,
        Some(s.nodes[1].local),
        "LAN pair not on LAN"
    );
}

#[test]
fn eim_eim_with_loss_connects() {
    for seed in 5..15 {
        let mut s = pair(Some(NatKind::Eim), Some(NatKind::Eim), seed * 1000);
        s.loss = 0.2;
        s.traffic_both_ways(0, 1, 200 * MS, 60 * SEC);
        assert!(s.direct(0, 1), "seed {seed}: {:?}", s.status(0, 1));
        assert!(s.received_from(1, 0).len() > 100, "seed {seed}");
        assert!(s.received_from(0, 1).len() > 100, "seed {seed}");
    }
}

#[test]
fn nat_rebinding_is_followed() {
    // The peer is open, so packets from the new mapping reach it and it must roam to them.
    let mut s = pair(Some(NatKind::Eim), None, 6);
    s.traffic_both_ways(0, 1, 100 * MS, 5 * SEC);
    assert!(s.direct(0, 1));
    let old = s.status(1, 0).endpoint.unwrap();
    let inside = s.nodes[0].local;
    s.nats[0].rebind(inside);
    s.nodes[1].tun_rx.clear();
    s.nodes[0].tun_rx.clear();
    s.traffic_both_ways(0, 1, 100 * MS, 5 * SEC);
    let new = s.status(1, 0).endpoint.unwrap();
    assert_ne!(old, new, "b did not roam to a's new mapping");
    assert_eq!(new.ip(), old.ip());
    assert!(s.direct(0, 1));
    assert!(s.received_from(1, 0).len() > 40);
    assert!(
        s.received_from(0, 1).len() > 40,
        "b's replies do not reach a's new mapping"
    );
}

#[test]
fn nat_rebinding_behind_filtering_nat_repunches() {
    // b's NAT filters a's new mapping: a must notice the dead path and punch again.
    let mut s = pair(Some(NatKind::Eim), Some(NatKind::Eim), 12);
    s.traffic_both_ways(0, 1, 100 * MS, 5 * SEC);
    assert!(s.direct(0, 1));
    let old = s.status(1, 0).endpoint.unwrap();
    let inside = s.nodes[0].local;
    s.nats[0].rebind(inside);
    s.traffic_both_ways(0, 1, 100 * MS, 40 * SEC);
    s.nodes[1].tun_rx.clear();
    s.nodes[0].tun_rx.clear();
    s.traffic_both_ways(0, 1, 100 * MS, 5 * SEC);
    assert!(s.direct(0, 1), "{:?}", s.status(0, 1));
    assert_ne!(s.status(1, 0).endpoint.unwrap(), old);
    assert!(s.received_from(1, 0).len() > 40);
    assert!(s.received_from(0, 1).len() > 40);
}

#[test]
fn traffic_survives_rekey() {
    let mut s = pair(Some(NatKind::Eim), Some(NatKind::Eim), 7);
    s.traffic_both_ways(0, 1, SEC, 400 * SEC);
    let ra = s.received_from(1, 0);
    let rb = s.received_from(0, 1);
    // Everything after the first couple of seconds arrives, across three rekeys.
    for seq in 3..399 {
        assert!(ra.contains(&seq), "b missed {seq}");
        assert!(rb.contains(&seq), "a missed {seq}");
    }
    assert!(s.status(0, 1).last_handshake.unwrap() < 130 * SEC);
    assert_eq!(s.nodes[1].engine.drop_counters().expired, 0);
    // Rekeys stay few: at most a handful of initiations per 120 s, from both sides together.
    let inits = s.delivered_log.iter().filter(|(_, _, p)| p[0] == 1).count();
    assert!(inits <= 12, "{inits} initiations in 400 s");
}

#[test]
fn idle_peer_vanishing_is_noticed() {
    let mut s = pair(Some(NatKind::Eim), Some(NatKind::Eim), 13);
    s.traffic_both_ways(0, 1, 100 * MS, 3 * SEC);
    assert!(s.direct(0, 1));
    // Idle but alive: persistent keepalives keep the path up.
    s.run_for(100 * SEC);
    assert!(s.direct(0, 1), "idle path died: {:?}", s.status(0, 1));
    s.offline.insert(1);
    s.run_for(60 * SEC);
    assert_eq!(s.status(0, 1).path, PathKind::Connecting);
    // And an idle engine with a vanished peer quiets down.
    s.run_for(60 * SEC);
    assert!(s.nodes[0].engine.poll_timeout().is_none());
}

#[test]
fn peer_restart_recovers() {
    let mut s = pair(Some(NatKind::Eim), None, 14);
    s.traffic_both_ways(0, 1, 100 * MS, 3 * SEC);
    assert!(s.direct(0, 1));
    s.restart(1);
    s.traffic_both_ways(0, 1, 100 * MS, 30 * SEC);
    s.nodes[0].tun_rx.clear();
    s.nodes[1].tun_rx.clear();
    s.traffic_both_ways(0, 1, 100 * MS, 3 * SEC);
    assert!(
        s.direct(0, 1),
        "{:?} / {:?}",
        s.status(0, 1),
        s.status(1, 0)
    );
    assert!(s.received_from(1, 0).len() > 25);
    assert!(s.received_from(0, 1).len() > 25);
}

#[test]
fn encapsulate_fast_path_and_small_tun_buffer() {
    let mut s = pair(None, Some(NatKind::Eim), 15);
    s.traffic_both_ways(0, 1, 100 * MS, 3 * SEC);
    assert!(s.direct(0, 1));
    let now = s.now;
    let pkt = sim::ipv4(s.nodes[0].mesh_ip, s.nodes[1].mesh_ip, 777);
    let mut out = vec![0u8; pkt.len() + warren_proto::engine::TRANSPORT_OVERHEAD];
    let (dst, n) = s.nodes[0].engine.encapsulate(&pkt, &mut out, now).unwrap();
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
fn deterministic_given_seeds() {
    let run = || {
        let mut s = pair(Some(NatKind::Eim), Some(NatKind::Eim), 11);
        s.loss = 0.1;
        s.traffic_both_ways(0, 1, 100 * MS, 10 * SEC);
        s.delivered_log
            .iter()
            .map(|(_, _, p)| p.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
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
fn unanswered_punch_backs_off_then_goes_quiet() {
    use warren_proto::engine::ROUND_DURATION;
    let mut s = pair(None, None, 20);
    s.offline.insert(1);
    let start = s.now;
    let id = s.nodes[1].id;
    let cands = vec![s.nodes[1].local, "192.0.2.200:1".parse().unwrap()];
    s.nodes[0].engine.handle_punch(id, &cands, start);
    s.run_for(60 * SEC);
    // No traffic is waiting, so a failed round asks nobody for more.
    assert!(s.events.is_empty(), "{:?}", s.events);
    assert!(s.nodes[0].engine.poll_timeout().is_none());
    // Volleys at 0, 0.1, 0.3, 0.7, 1.5, 3.1, then every 2 s until 15 s: 11 per candidate.
    for c in &cands {
        let times: Vec<Duration> = s
            .sent_log
            .iter()
            .filter(|(n, _, dst, kind)| *n == 0 && dst == c && *kind == 4)
            .map(|(_, t, _, _)| *t - start)
            .collect();
        let ms: Vec<u128> = times.iter().map(|d| d.as_millis()).collect();
        assert_eq!(
            ms,
            [0, 100, 300, 700, 1500, 3100, 5100, 7100, 9100, 11100, 13100],
            "probes to {c}"
        );
        assert!(*times.last().unwrap() < ROUND_DURATION);
    }
}

#[test]
fn lossy_long_run_has_no_outage() {
    for seed in 21..27 {
        let mut s = pair(Some(NatKind::Eim), Some(NatKind::Eim), seed);
        s.loss = 0.2;
        s.traffic_both_ways(0, 1, 250 * MS, 400 * SEC);
        // seq n is sent at n/4 s; after the first 20 s every 10 s window delivers most packets.
        for (rx, tx) in [(1, 0), (0, 1)] {
            let got = s.received_from(rx, tx);
            for window in (80..1600).step_by(40) {
                let n = got
                    .iter()
                    .filter(|&&q| (window..window + 40).contains(&q))
                    .count();
                assert!(
                    n >= 20,
                    "seed {seed} {tx}->{rx}: only {n}/40 in window starting at seq {window}"
                );
            }
        }
        let changes = s
            .events
            .iter()
            .filter(|(_, e)| matches!(e, Event::PathChanged { .. }))
            .count();
        assert!(changes <= 6, "seed {seed}: {changes} path changes");
    }
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
