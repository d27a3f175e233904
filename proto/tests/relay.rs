//! Deterministic simulation tests of the relay fallback (DESIGN.md section 2.5): relay at once,
//! promotion to a proven direct path, fallback when it dies, no flapping, handshakes over the
//! relay, and relay-less behaviour.

#![allow(clippy::unwrap_used)]

mod sim;

use std::time::{Duration, Instant};

use sim::{pair, NatKind, Sim};
use warren_proto::engine::{PathKind, RelayReason, CHECK_TIMEOUT, SUSPECT_AFTER};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn relayed_pair(ka: Option<NatKind>, kb: Option<NatKind>, seed: u64) -> Sim {
    let mut s = pair(ka, kb, seed);
    s.set_relay(true);
    s
}

/// Runs traffic both ways until `pred` holds for both sides' status of each other, stepping
/// 100 ms; returns the simulated time it took, or panics after `limit`.
fn time_until(s: &mut Sim, limit: Duration, pred: impl Fn(&Sim) -> bool) -> Duration {
    let start = s.now;
    let mut seq = 100_000;
    while !pred(s) {
        assert!(
            s.now - start <= limit,
            "not reached within {limit:?}: {:?} / {:?}",
            s.status(0, 1),
            s.status(1, 0)
        );
        s.send_ip(0, 1, seq);
        s.send_ip(1, 0, seq);
        seq += 1;
        s.run_for(100 * MS);
    }
    s.now - start
}

fn both(s: &Sim, path: PathKind) -> bool {
    s.status(0, 1).path == path && s.status(1, 0).path == path
}

#[test]
fn sym_sym_relays_at_once_both_ways() {
    let mut s = relayed_pair(Some(NatKind::Sym), Some(NatKind::Sym), 101);
    // The very first packet is delivered: a handshake and the data over the relay, no waiting
    // for punching (relay latency 2 × 20 ms each way).
    s.send_ip(0, 1, 0);
    s.run_for(200 * MS);
    assert_eq!(s.received_from(1, 0), [0]);
    assert_eq!(s.status(0, 1).path, PathKind::Relay);
    s.traffic_both_ways(0, 1, 100 * MS, 60 * SEC);
    assert!(both(&s, PathKind::Relay));
    let (ra, rb) = (s.received_from(1, 0), s.received_from(0, 1));
    assert!(
        ra.len() >= 600 && rb.len() >= 599,
        "{} / {}",
        ra.len(),
        rb.len()
    );
    // Punching went on in the background and failed: that is why it relays.
    assert!(s.punches >= 2, "{} punch orders", s.punches);
    assert_eq!(
        s.status(0, 1).relay_reason,
        Some(RelayReason::PunchTimedOut)
    );
    assert_eq!(s.status(0, 1).endpoint, None);
    for n in 0..2 {
        assert_eq!(s.path_changes(n), [PathKind::Relay], "node {n}");
        let d = s.nodes[n].engine.drop_counters();
        assert_eq!(
            (d.queue_expired, d.queue_overflow, d.decrypt_failed),
            (0, 0, 0)
        );
    }
}

#[test]
fn sym_sym_punching_backs_off_while_relayed() {
    let mut s = relayed_pair(Some(NatKind::Sym), Some(NatKind::Sym), 102);
    s.traffic_both_ways(0, 1, 500 * MS, 400 * SEC);
    assert!(both(&s, PathKind::Relay));
    // Rounds at 0, 30, 90, 210 s (then every 120 s) per side instead of every 30 s: at most
    // 2 × 5 orders plus a few triggered by the peer's probes.
    assert!(s.punches <= 12, "{} punch orders in 400 s", s.punches);
    assert!(s.received_from(1, 0).len() >= 799);
}

#[test]
fn eim_eim_starts_relayed_then_goes_direct() {
    let mut s = relayed_pair(Some(NatKind::Eim), Some(NatKind::Eim), 103);
    s.send_ip(0, 1, 0);
    s.run_for(200 * MS);
    assert_eq!(
        s.received_from(1, 0),
        [0],
        "first packet not relayed at once"
    );
    let t = time_until(&mut s, 5 * SEC, |s| both(s, PathKind::Direct));
    assert!(t <= 3 * SEC, "direct after {t:?}");
    assert_eq!(s.status(0, 1).relay_reason, None);
    assert!(s.status(0, 1).endpoint.is_some());
    s.traffic_both_ways(0, 1, 100 * MS, 30 * SEC);
    assert!(both(&s, PathKind::Direct));
    // Exactly one relay phase and one switch per side, and the session was kept: a single
    // initiation for the whole run.
    for n in 0..2 {
        assert_eq!(
            s.path_changes(n),
            [PathKind::Relay, PathKind::Direct],
            "node {n}"
        );
    }
    let inits = s.sent_log.iter().filter(|e| e.3 == 1).count();
    assert_eq!(inits, 1, "one handshake, carried by the relay");
    // Once direct, the relay is idle.
    let relayed = s.relayed;
    s.traffic_both_ways(0, 1, 100 * MS, 10 * SEC);
    assert_eq!(s.relayed, relayed);
}

#[test]
fn dead_direct_path_falls_back_and_returns() {
    let mut s = relayed_pair(Some(NatKind::Eim), Some(NatKind::Eim), 104);
    time_until(&mut s, 5 * SEC, |s| both(s, PathKind::Direct));
    s.traffic_both_ways(0, 1, 100 * MS, 5 * SEC);
    let handshakes = s.status(0, 1).last_handshake.unwrap();

    // The direct path dies (both directions), the relay keeps working.
    s.block_udp = true;
    let cut = s.now;
    s.nodes[0].tun_rx.clear();
    s.nodes[1].tun_rx.clear();
    let fallback = time_until(&mut s, 10 * SEC, |s| both(s, PathKind::Relay));
    assert!(
        fallback <= SUSPECT_AFTER + CHECK_TIMEOUT + SEC,
        "fell back after {fallback:?}"
    );
    assert!(fallback <= 5 * SEC);
    assert_eq!(s.status(0, 1).relay_reason, Some(RelayReason::DirectLost));
    // The session survived the switch: no new handshake, and traffic flows again at once.
    let since_cut = s.now - cut;
    assert!(s.status(0, 1).last_handshake.unwrap() >= handshakes + since_cut - MS);
    s.nodes[0].tun_rx.clear();
    s.nodes[1].tun_rx.clear();
    s.traffic_both_ways(0, 1, 100 * MS, 5 * SEC);
    assert!(both(&s, PathKind::Relay));
    assert!(s.received_from(1, 0).len() >= 49 && s.received_from(0, 1).len() >= 49);

    // The path heals: background punching finds it, and traffic returns to it.
    s.block_udp = false;
    let back = time_until(&mut s, 40 * SEC, |s| both(s, PathKind::Direct));
    assert!(back <= 12 * SEC, "direct again after {back:?}");
    for n in 0..2 {
        assert_eq!(
            s.path_changes(n),
            [
                PathKind::Relay,
                PathKind::Direct,
                PathKind::Relay,
                PathKind::Direct
            ],
            "node {n}"
        );
    }
    let inits: Vec<_> = s
        .sent_log
        .iter()
        .filter(|e| e.3 == 1)
        .map(|e| (e.0, e.1 - s.start, e.2))
        .collect();
    // Both sides initiated at the start (they sent at the same moment); none since.
    assert!(
        inits.len() <= 2 && inits.iter().all(|i| i.1 < SEC),
        "no handshake was needed across the switches: {inits:?}"
    );
}

#[test]
fn long_outage_with_idle_relay_recovers() {
    // The direct path dies for two minutes: punching rounds back off, and the path returns
    // once a round runs after the heal.
    let mut s = relayed_pair(Some(NatKind::Eim), None, 105);
    time_until(&mut s, 5 * SEC, |s| both(s, PathKind::Direct));
    s.block_udp = true;
    s.traffic_both_ways(0, 1, 200 * MS, 120 * SEC);
    assert!(both(&s, PathKind::Relay));
    s.block_udp = false;
    time_until(&mut s, 130 * SEC, |s| both(s, PathKind::Direct));
    s.nodes[0].tun_rx.clear();
    s.traffic_both_ways(0, 1, 100 * MS, 3 * SEC);
    assert!(s.received_from(0, 1).len() >= 29);
}

/// Intermittent trouble on the direct path: `blackout` every `period`, traffic both ways.
/// Returns the number of path changes after the pair first went direct.
fn switches_under_blackouts(seed: u64, period: Duration, blackout: Duration, total: u32) -> usize {
    let mut s = relayed_pair(Some(NatKind::Eim), Some(NatKind::Eim), seed);
    time_until(&mut s, 5 * SEC, |s| both(s, PathKind::Direct));
    let before = s.events.len();
    let mut seq = 0;
    for _ in 0..total {
        let start = s.now;
        while s.now < start + period {
            s.block_udp = s.now < start + blackout;
            s.send_ip(0, 1, seq);
            s.send_ip(1, 0, seq);
            seq += 1;
            s.run_for(100 * MS);
        }
    }
    s.block_udp = false;
    s.events[before..]
        .iter()
        .filter(|(_, e)| matches!(e, warren_proto::engine::Event::PathChanged { .. }))
        .count()
}

#[test]
fn short_blackouts_do_not_switch() {
    // 1.5 s outages every 10 s never reach SUSPECT_AFTER + CHECK_TIMEOUT.
    assert_eq!(switches_under_blackouts(106, 10 * SEC, 1500 * MS, 20), 0);
}

#[test]
fn repeated_outages_do_not_flap() {
    // 5 s outages every 12 s for 4 minutes: each outage is long enough to demote, but the
    // hold-down after repeated demotions keeps traffic on the relay instead of switching back
    // and forth 40 times.
    let n = switches_under_blackouts(107, 12 * SEC, 5 * SEC, 20);
    eprintln!("repeated outages: {n} path changes of two nodes");
    assert!(n <= 2 * 6, "{n} path changes of two nodes");
}

#[test]
fn lossy_direct_path_does_not_flap() {
    let mut s = relayed_pair(Some(NatKind::Eim), Some(NatKind::Eim), 108);
    time_until(&mut s, 5 * SEC, |s| both(s, PathKind::Direct));
    let before = s.events.len();
    s.loss = 0.2;
    s.traffic_both_ways(0, 1, 100 * MS, 300 * SEC);
    let changes = s.events.len() - before;
    assert!(
        changes <= 2,
        "{changes} path changes: {:?}",
        &s.events[before..]
    );
    assert!(s.received_from(1, 0).len() > 2000);
}

#[test]
fn handshakes_and_rekeys_go_over_the_relay() {
    let mut s = relayed_pair(Some(NatKind::Sym), Some(NatKind::Sym), 109);
    s.traffic_both_ways(0, 1, 200 * MS, 400 * SEC);
    let inits: Vec<_> = s.sent_log.iter().filter(|e| e.3 == 1).collect();
    assert!(inits.len() >= 3, "rekeys: {}", inits.len());
    assert!(
        inits.iter().all(|e| e.2 == sim::COORD),
        "initiation over UDP"
    );
    let resps = s.sent_log.iter().filter(|e| e.3 == 2).count();
    assert_eq!(resps, inits.len());
    let got = s.received_from(1, 0);
    for q in 5..1995 {
        assert!(got.contains(&q), "lost {q} across rekeys");
    }
    assert_eq!(s.nodes[1].engine.drop_counters().unknown_index, 0);
}

#[test]
fn peer_offline_is_the_reason_and_nothing_is_relayed() {
    let mut s = relayed_pair(Some(NatKind::Sym), Some(NatKind::Sym), 110);
    let mut rec = s.record(1);
    rec.online = false;
    let now = s.now;
    s.nodes[0].engine.upsert_peer(&rec, now);
    s.send_ip(0, 1, 0);
    s.run_for(SEC);
    assert_eq!(s.status(0, 1).path, PathKind::Connecting);
    assert_eq!(s.status(0, 1).relay_reason, Some(RelayReason::PeerOffline));
    assert_eq!(s.relayed, 0);
    // Back online: the queued packet goes out over the relay at once.
    rec.online = true;
    let now = s.now;
    s.nodes[0].engine.upsert_peer(&rec, now);
    s.run_for(200 * MS);
    assert_eq!(s.received_from(1, 0), [0]);
}

#[test]
fn relay_going_away_keeps_direct_and_coming_back_serves_the_rest() {
    // Losing the relay does not disturb a direct pair.
    let mut s = relayed_pair(Some(NatKind::Eim), Some(NatKind::Eim), 111);
    time_until(&mut s, 5 * SEC, |s| both(s, PathKind::Direct));
    s.set_relay(false);
    s.traffic_both_ways(0, 1, 100 * MS, 30 * SEC);
    assert!(both(&s, PathKind::Direct));
    s.set_relay(true);
    s.traffic_both_ways(0, 1, 100 * MS, 30 * SEC);
    assert!(both(&s, PathKind::Direct));
    for n in 0..2 {
        assert_eq!(s.path_changes(n), [PathKind::Relay, PathKind::Direct]);
    }

    // A relayed pair without a relay is Connecting; the relay coming up carries its traffic.
    let mut s = pair(Some(NatKind::Sym), Some(NatKind::Sym), 112);
    s.traffic_both_ways(0, 1, 100 * MS, 2 * SEC);
    assert_eq!(
        s.status(0, 1).relay_reason,
        Some(RelayReason::RelayUnavailable)
    );
    assert!(s.received_from(1, 0).is_empty());
    s.set_relay(true);
    s.traffic_both_ways(0, 1, 100 * MS, 2 * SEC);
    assert!(both(&s, PathKind::Relay));
    assert!(s.received_from(1, 0).len() >= 19);
}

#[test]
fn relayed_garbage_is_counted_not_fatal() {
    let mut s = relayed_pair(Some(NatKind::Eim), Some(NatKind::Eim), 113);
    let now: Instant = s.now;
    let mut buf = [0u8; 2048];
    let e = &mut s.nodes[0].engine;
    assert_eq!(e.handle_relay_datagram(&[1, 2, 3], &mut buf, now), None);
    assert_eq!(e.handle_relay_datagram(&[0; 8], &mut buf, now), None);
    let probe = {
        let mut d = vec![0, 0, 0, 0, 0, 0, 0, 2, 4];
        d.extend_from_slice(&[0; 40]);
        d
    };
    assert_eq!(e.handle_relay_datagram(&probe, &mut buf, now), None);
    let d = e.drop_counters();
    assert_eq!(d.relay_malformed, 1);
    assert_eq!(d.malformed + d.relay_probe, 2);
}

#[test]
fn udp_blocked_is_the_reason_for_relayed_peers() {
    let mut s = relayed_pair(Some(NatKind::Sym), Some(NatKind::Sym), 113);
    s.traffic_both_ways(0, 1, 100 * MS, 2 * SEC);
    assert!(both(&s, PathKind::Relay));
    assert_ne!(s.status(0, 1).relay_reason, Some(RelayReason::UdpBlocked));
    s.nodes[0].engine.set_udp_blocked(true);
    assert_eq!(s.status(0, 1).relay_reason, Some(RelayReason::UdpBlocked));
    // Only the status changes: the other node and the traffic are untouched.
    assert_ne!(s.status(1, 0).relay_reason, Some(RelayReason::UdpBlocked));
    s.traffic_both_ways(0, 1, 100 * MS, 2 * SEC);
    assert!(both(&s, PathKind::Relay));
    s.nodes[0].engine.set_udp_blocked(false);
    assert_ne!(s.status(0, 1).relay_reason, Some(RelayReason::UdpBlocked));
}

/// A direct path the local stack refuses full-size datagrams on (EMSGSIZE: it runs through
/// another tunnel) is left for the relay at once and not taken again while held down, although
/// probes keep passing it; afterwards it may be tried again.
#[test]
fn a_refused_direct_path_goes_to_the_relay_and_stays_held_down() {
    use warren_proto::engine::REFUSED_HOLD_DOWN;
    let mut s = relayed_pair(Some(NatKind::Eim), Some(NatKind::Eim), 211);
    time_until(&mut s, 5 * SEC, |s| both(s, PathKind::Direct));
    let dst = s.status(0, 1).endpoint.unwrap();
    let now = s.now;
    s.nodes[0].engine.send_refused(dst, now);
    assert_eq!(s.status(0, 1).path, PathKind::Relay);
    assert_eq!(s.status(0, 1).relay_reason, Some(RelayReason::DirectLost));
    // Traffic keeps flowing (over the relay) and the refused address is not taken back,
    // although the peer's packets and acks keep arriving from it.
    let before = s.received_from(1, 0).len();
    s.traffic_both_ways(0, 1, 100 * MS, REFUSED_HOLD_DOWN - 10 * SEC);
    assert_eq!(s.status(0, 1).path, PathKind::Relay, "{:?}", s.status(0, 1));
    assert_ne!(s.status(0, 1).endpoint, Some(dst));
    assert!(
        s.received_from(1, 0).len() > before + 400,
        "traffic continued"
    );
    // After the hold-down the path proves itself again.
    let t = time_until(&mut s, 60 * SEC, |s| {
        s.status(0, 1).path == PathKind::Direct
    });
    assert!(t > Duration::ZERO);
    assert_eq!(s.status(0, 1).endpoint, Some(dst));
}
