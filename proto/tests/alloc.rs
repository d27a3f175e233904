//! No heap allocation per packet on the data path: an established direct session moves packets
//! through [`Engine::encapsulate`] (seal into the caller's buffer) and
//! [`Engine::handle_datagram`] (open into the caller's TUN buffer) for both ciphers, counted by
//! a global allocator that tallies the allocations of the test's own thread.
//!
//! [`Engine::encapsulate`]: warren_proto::engine::Engine::encapsulate
//! [`Engine::handle_datagram`]: warren_proto::engine::Engine::handle_datagram

#![allow(clippy::unwrap_used)]

mod sim;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use sim::{pair, NatKind};
use warren_proto::engine::{Encapsulated, PathKind, TRANSPORT_OVERHEAD};
use warren_proto::noise::CipherSuite;
use warren_proto::relay::{self, RELAY_HEADER_LEN};

/// The system allocator, counting allocations (and reallocations) per thread.
struct Counting;

thread_local! {
    /// Allocations made by this thread so far.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the allocator may run while the thread's locals are torn down.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

/// Packets timed per direction after the warm-up.
const PACKETS: u32 = 5_000;

/// Where [`carried_allocations`] passes a packet: `from`, `to`, the packet, the wire buffer,
/// the TUN buffer and the time; returns the length opened into the TUN buffer.
type Carry<'a> =
    dyn FnMut(&mut sim::Sim, usize, usize, &[u8], &mut [u8], &mut [u8], Instant) -> usize + 'a;

/// Carries full-size (1280-byte) IP packets between nodes 0 and 1, one each way per round,
/// through `carry` (seal at one engine, open at the other), with a `wire` buffer of
/// `wire_len` bytes and a TUN buffer larger than any datagram, as the node's shell has them:
/// 100 rounds to warm up, then [`PACKETS`]; returns the allocations of the measured rounds.
fn carried_allocations(s: &mut sim::Sim, wire_len: usize, carry: &mut Carry<'_>) -> u64 {
    let ips = [s.nodes[0].mesh_ip, s.nodes[1].mesh_ip];
    let mut pkts = [sim::ipv4(ips[0], ips[1], 0), sim::ipv4(ips[1], ips[0], 0)];
    for p in &mut pkts {
        p.resize(1280, 0x5a);
    }
    let mut wire = vec![0u8; wire_len];
    let mut tun = vec![0u8; 65_535];
    let mut now = s.now;
    let mut round = |s: &mut sim::Sim, i: u32| {
        for (from, to) in [(0, 1), (1, 0)] {
            let pkt = &mut pkts[from];
            pkt[20..24].copy_from_slice(&i.to_be_bytes());
            let got = carry(s, from, to, pkt, &mut wire, &mut tun, now);
            assert_eq!(&tun[..got], &pkt[..]);
        }
        now += Duration::from_micros(10);
    };
    (0..100).for_each(|i| round(s, i));
    let before = allocs();
    (100..100 + PACKETS).for_each(|i| round(s, i));
    allocs() - before
}

fn no_allocation_per_packet(suite: CipherSuite) {
    let mut s = pair(None, None, 41);
    for n in &mut s.nodes {
        n.engine.set_suite(suite);
    }
    s.traffic_both_ways(0, 1, Duration::from_millis(100), Duration::from_secs(2));
    assert!(s.direct(0, 1));
    assert_eq!(s.status(0, 1).cipher, Some(suite));
    assert_eq!(s.status(1, 0).cipher, Some(suite));
    let addr = [
        s.status(1, 0).endpoint.unwrap(),
        s.status(0, 1).endpoint.unwrap(),
    ];
    let made = carried_allocations(
        &mut s,
        1280 + TRANSPORT_OVERHEAD,
        &mut |s, from, to, pkt, wire, tun, now| {
            let Some(Encapsulated::Udp { len, .. }) =
                s.nodes[from].engine.encapsulate(pkt, wire, now)
            else {
                panic!("session is up, path direct");
            };
            s.nodes[to]
                .engine
                .handle_datagram(addr[to], &wire[..len], tun, now)
                .expect("decrypts")
        },
    );
    assert_eq!(
        made,
        0,
        "{made} allocations for {} packets ({suite})",
        2 * PACKETS
    );
    // The counter works (it would hide a regression otherwise).
    let before = allocs();
    let v = std::hint::black_box(vec![0u8; 64]);
    assert_eq!(allocs() - before, 1);
    drop(v);
}

#[test]
fn chacha_data_path_allocates_nothing_per_packet() {
    no_allocation_per_packet(CipherSuite::ChaChaPoly);
}

#[test]
fn aes_gcm_data_path_allocates_nothing_per_packet() {
    no_allocation_per_packet(CipherSuite::AesGcm);
}

/// The relayed path: `encapsulate` seals behind the relay header into the caller's buffer, the
/// simulated coordinator rewrites the header to the source (in place, as the real one does)
/// and `handle_relay_datagram` opens it into the TUN buffer, with no allocation either way.
#[test]
fn relayed_data_path_allocates_nothing_per_packet() {
    let mut s = pair(Some(NatKind::Sym), Some(NatKind::Sym), 43);
    s.set_relay(true);
    s.traffic_both_ways(0, 1, Duration::from_millis(100), Duration::from_secs(2));
    assert_eq!(s.status(0, 1).path, PathKind::Relay);
    assert_eq!(s.status(1, 0).path, PathKind::Relay);
    let ids = [s.nodes[0].id, s.nodes[1].id];
    let made = carried_allocations(
        &mut s,
        RELAY_HEADER_LEN + 1280 + TRANSPORT_OVERHEAD,
        &mut |s, from, to, pkt, wire, tun, now| {
            let Some(Encapsulated::Relay { peer, len }) =
                s.nodes[from].engine.encapsulate(pkt, wire, now)
            else {
                panic!("session is up, path relayed");
            };
            assert_eq!(peer, ids[to]);
            // The coordinator names the source instead of the destination.
            relay::write_header(ids[from], wire).expect("room for the header");
            s.nodes[to]
                .engine
                .handle_relay_datagram(&wire[..len], tun, now)
                .expect("decrypts")
        },
    );
    assert_eq!(made, 0, "{made} allocations for {} packets", 2 * PACKETS);
}
