//! Chaos runs of a four-node mesh: random loss, NAT rebinding, nodes going offline, restarts
//! and lost handshakes, all seeded. Whatever happened, once the network heals every pair must
//! be direct again and carry traffic.

#![allow(clippy::unwrap_used)]

mod sim;

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use sim::{NatKind, Sim};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const NODES: usize = 4;

fn mesh(seed: u64) -> Sim {
    let mut s = Sim::new(seed);
    let home = s.add_nat(NatKind::Eim);
    let office = s.add_nat(NatKind::Eim);
    s.add_node(Some(home));
    s.add_node(Some(home));
    s.add_node(Some(office));
    s.add_node(None);
    s.introduce_all();
    s
}

fn all_pairs_send(s: &mut Sim, seq: u32, rng: Option<&mut ChaCha20Rng>) {
    let mut rng = rng;
    for a in 0..NODES {
        for b in 0..NODES {
            let send = match rng.as_mut() {
                Some(r) => r.gen_bool(0.5),
                None => true,
            };
            if a != b && send && !s.offline.contains(&a) {
                s.send_ip(a, b, seq);
            }
        }
    }
}

#[test]
fn mesh_recovers_from_chaos() {
    for seed in 0..16u64 {
        chaos(seed, false);
    }
}

/// With the relay: the same trouble plus direct-path blackouts and relay outages; after the
/// heal every pair is direct again (punching backs off to 120 s rounds while relayed, hence the
/// longer heal).
#[test]
fn mesh_with_relay_recovers_from_chaos() {
    for seed in 100..112u64 {
        chaos(seed, true);
    }
}

fn chaos(seed: u64, relay: bool) {
    {
        let mut s = mesh(seed);
        s.set_relay(relay);
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0xc4a05);
        let mut seq = 0u32;
        let mut unblock_at = None;
        // 300 s of trouble, one step per second.
        for _ in 0..300 {
            all_pairs_send(&mut s, seq, Some(&mut rng));
            seq += 1;
            match rng.gen_range(0..100) {
                0..=4 => s.loss = rng.gen_range(0.0..0.4),
                5..=7 => {
                    let i = rng.gen_range(0..3); // nodes behind NATs
                    let site = s.nodes[i].site.unwrap();
                    let inside = s.nodes[i].local;
                    s.nats[site].rebind(inside);
                }
                8..=9 => {
                    let i = rng.gen_range(0..NODES);
                    if !s.offline.remove(&i) && s.offline.is_empty() {
                        s.offline.insert(i);
                    }
                }
                10 => {
                    let i = rng.gen_range(0..NODES);
                    s.restart(i);
                }
                11 => {
                    s.block_handshakes = true;
                    unblock_at = Some(s.now + 10 * SEC);
                }
                12..=13 if relay => s.block_udp = !s.block_udp,
                14 if relay => {
                    let on = !s.relay;
                    s.set_relay(on);
                }
                _ => {}
            }
            if unblock_at.is_some_and(|t| s.now >= t) {
                s.block_handshakes = false;
                unblock_at = None;
            }
            s.run_for(SEC);
        }
        // Heal, and give the mesh time: at most one punching round interval plus a round.
        s.loss = 0.0;
        s.offline.clear();
        s.block_handshakes = false;
        s.block_udp = false;
        s.set_relay(relay);
        let heal_steps = if relay { 2000 } else { 600 };
        for _ in 0..heal_steps {
            all_pairs_send(&mut s, seq, None);
            seq += 1;
            s.run_for(100 * MS);
        }
        for n in &mut s.nodes {
            n.tun_rx.clear();
        }
        let first = seq;
        for _ in 0..50 {
            all_pairs_send(&mut s, seq, None);
            seq += 1;
            s.run_for(100 * MS);
        }
        for a in 0..NODES {
            for b in 0..NODES {
                if a == b {
                    continue;
                }
                assert!(s.direct(a, b), "seed {seed}: {a}->{b} {:?}", s.status(a, b));
                let got = s.received_from(b, a);
                for q in first..seq - 1 {
                    assert!(
                        got.contains(&q),
                        "seed {seed}: {a}->{b} lost {q} after healing"
                    );
                }
            }
        }
    }
}
