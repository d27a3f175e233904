//! Deterministic simulation tests of the engine: NAT traversal outcomes (open, eim, sym, LAN),
//! loss, roaming, restarts and punching back-off.

#![allow(clippy::unwrap_used)]

mod sim;

use std::time::Duration;

use sim::{pair, NatKind, Sim};
use warren_proto::engine::{Event, PathKind};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

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
    // Path death after 15 s, then an immediate punch: well under 20 s.
    s.traffic_both_ways(0, 1, 100 * MS, 20 * SEC);
    s.nodes[1].tun_rx.clear();
    s.nodes[0].tun_rx.clear();
    s.traffic_both_ways(0, 1, 100 * MS, 5 * SEC);
    assert!(s.direct(0, 1), "{:?}", s.status(0, 1));
    assert_ne!(s.status(1, 0).endpoint.unwrap(), old);
    assert!(s.received_from(1, 0).len() > 40);
    assert!(s.received_from(0, 1).len() > 40);
}

#[test]
fn idle_peer_vanishing_is_noticed() {
    let mut s = pair(Some(NatKind::Eim), Some(NatKind::Eim), 13);
    s.traffic_both_ways(0, 1, 100 * MS, 3 * SEC);
    assert!(s.direct(0, 1));
    // Idle but alive: persistent keepalives keep the path up, and refresh the RTT.
    s.wan_latency = 50 * MS;
    s.run_for(100 * SEC);
    assert!(s.direct(0, 1), "idle path died: {:?}", s.status(0, 1));
    assert_eq!(s.status(0, 1).rtt, Some(100 * MS));
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
fn restarted_receiver_resyncs_at_once() {
    // The restarted node sends nothing itself; its peer keeps sending on the session the
    // restarted node lost. The unknown index from a known peer's address makes it handshake
    // at once instead of waiting for the sender's ~15 s dead-path timeout.
    let mut s = pair(Some(NatKind::Eim), None, 15);
    s.traffic_both_ways(0, 1, 100 * MS, 3 * SEC);
    assert!(s.direct(0, 1));
    s.restart(1);
    s.nodes[1].tun_rx.clear();
    for seq in 0..30 {
        s.send_ip(0, 1, seq);
        s.run_for(100 * MS);
    }
    let got = s.received_from(1, 0);
    assert!(
        got.len() >= 20 && got.contains(&29),
        "only {} of 30 packets arrived after the restart: {got:?}",
        got.len()
    );
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
fn one_way_traffic_keeps_the_path() {
    // Only a sends; b's passive keepalives must stop a from declaring the path dead.
    let mut s = pair(Some(NatKind::Eim), Some(NatKind::Eim), 24);
    let until = s.now + 120 * SEC;
    let mut seq = 0;
    while s.now < until {
        s.send_ip(0, 1, seq);
        seq += 1;
        let next = s.now + 100 * MS;
        s.run_until(next);
    }
    assert!(s.direct(0, 1));
    let got = s.received_from(1, 0);
    for q in 10..1190 {
        assert!(got.contains(&q), "lost {q}");
    }
    let changes = s
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::PathChanged { .. }))
        .count();
    assert_eq!(
        changes, 2,
        "one Direct per side, nothing else: {:?}",
        s.events
    );
}

#[test]
fn network_change_recovers_quickly() {
    let mut s = pair(Some(NatKind::Eim), Some(NatKind::Eim), 25);
    s.traffic_both_ways(0, 1, 100 * MS, 3 * SEC);
    assert!(s.direct(0, 1));
    let inside = s.nodes[0].local;
    s.nats[0].rebind(inside);
    let now = s.now;
    s.nodes[0].engine.network_changed(now);
    s.nodes[0].tun_rx.clear();
    s.nodes[1].tun_rx.clear();
    s.traffic_both_ways(0, 1, 100 * MS, 3 * SEC);
    // Within a second both directions flow again (without the hint: path death after 15 s).
    for (rx, tx) in [(1, 0), (0, 1)] {
        let got = s.received_from(rx, tx);
        for q in 10..29 {
            assert!(got.contains(&q), "{tx}->{rx} lost {q}");
        }
    }
    assert!(s.direct(0, 1));
}
