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
use std::time::Duration;

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
    let ips = [s.nodes[0].mesh_ip, s.nodes[1].mesh_ip];
    // Full-size packets both ways, and buffers as the node's shell has them: room for one
    // datagram behind the GSO run, a TUN slot larger than any datagram.
    let mut pkts = [sim::ipv4(ips[0], ips[1], 0), sim::ipv4(ips[1], ips[0], 0)];
    for p in &mut pkts {
        p.resize(1280, 0x5a);
    }
    let mut wire = vec![0u8; 1280 + TRANSPORT_OVERHEAD];
    let mut tun = vec![0u8; 65_535];
    let mut now = s.now;
    let mut run = |s: &mut sim::Sim, packets: u32| {
        for i in 0..packets {
            for (from, to) in [(0, 1), (1, 0)] {
                let pkt = &mut pkts[from];
                pkt[20..24].copy_from_slice(&i.to_be_bytes());
                let Some(Encapsulated::Udp { len: n, .. }) =
                    s.nodes[from].engine.encapsulate(pkt, &mut wire, now)
                else {
                    panic!("session is up, path direct");
                };
                let got = s.nodes[to]
                    .engine
                    .handle_datagram(addr[to], &wire[..n], &mut tun, now)
                    .expect("decrypts");
                assert_eq!(&tun[..got], &pkt[..]);
            }
            now += Duration::from_micros(10);
        }
    };
    run(&mut s, 100);
    let before = allocs();
    run(&mut s, PACKETS);
    let made = allocs() - before;
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
    let ips = [s.nodes[0].mesh_ip, s.nodes[1].mesh_ip];
    let mut pkts = [sim::ipv4(ips[0], ips[1], 0), sim::ipv4(ips[1], ips[0], 0)];
    for p in &mut pkts {
        p.resize(1280, 0x5a);
    }
    let mut wire = vec![0u8; RELAY_HEADER_LEN + 1280 + TRANSPORT_OVERHEAD];
    let mut tun = vec![0u8; 65_535];
    let mut now = s.now;
    let mut run = |s: &mut sim::Sim, packets: u32| {
        for i in 0..packets {
            for (from, to) in [(0, 1), (1, 0)] {
                let pkt = &mut pkts[from];
                pkt[20..24].copy_from_slice(&i.to_be_bytes());
                let Some(Encapsulated::Relay { peer, len }) =
                    s.nodes[from].engine.encapsulate(pkt, &mut wire, now)
                else {
                    panic!("session is up, path relayed");
                };
                assert_eq!(peer, ids[to]);
                relay::write_header(ids[from], &mut wire).expect("room for the header");
                let got = s.nodes[to]
                    .engine
                    .handle_relay_datagram(&wire[..len], &mut tun, now)
                    .expect("decrypts");
                assert_eq!(&tun[..got], &pkt[..]);
            }
            now += Duration::from_micros(10);
        }
    };
    run(&mut s, 100);
    let before = allocs();
    run(&mut s, PACKETS);
    let made = allocs() - before;
    assert_eq!(made, 0, "{made} allocations for {} packets", 2 * PACKETS);
}
