//! Micro-benchmarks of the data path's crypto through the public `noise` API: seal + open of a
//! 1400-byte packet with each cipher suite, and a complete Noise IK handshake (both sides).
//!
//! Run with `cargo bench -p warren-proto`. The lab benchmark (`scripts/bench.sh`) measures the
//! whole tunnel; these numbers say how much of its CPU budget the AEAD and handshakes take.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use warren_proto::ids::{PrivateKey, SessionIndex};
use warren_proto::noise::{
    CipherSuite, InitiatorHandshake, ResponderHandshake, Session, Timestamp,
};
use warren_proto::packet::{Packet, TRANSPORT_OVERHEAD};

/// Plaintext size: a full inner packet of a typical 1400-byte tunnel MTU.
const PACKET_LEN: usize = 1400;

/// Both sides of one handshake: the initiator's and the responder's sessions.
fn handshake(
    suite: CipherSuite,
    a: &PrivateKey,
    b: &PrivateKey,
    now: Instant,
) -> (Session, Session) {
    let ts = Timestamp::from_unix_nanos(1_700_000_000_000_000_000);
    let (init, m1) =
        InitiatorHandshake::start(suite, a, &b.public_key(), SessionIndex(1), ts, [7; 32])
            .expect("handshake start with valid keys");
    let Ok(Packet::HandshakeInit(p1)) = Packet::parse(&m1) else {
        panic!("start produced no HandshakeInit");
    };
    let resp = ResponderHandshake::read_init(b, &p1, [8; 32]).expect("valid initiation");
    let (sb, m2) = resp.respond(SessionIndex(2), now).expect("respond");
    let Ok(Packet::HandshakeResp(p2)) = Packet::parse(&m2) else {
        panic!("respond produced no HandshakeResp");
    };
    let sa = init.finish(&p2, now).expect("valid response");
    (sa, sb)
}

fn seal_open(c: &mut Criterion) {
    let a = PrivateKey::from_random([1; 32]);
    let b = PrivateKey::from_random([2; 32]);
    let mut group = c.benchmark_group("seal_open_1400");
    group.throughput(Throughput::Bytes(PACKET_LEN as u64));
    for suite in [CipherSuite::ChaChaPoly, CipherSuite::AesGcm] {
        let now = Instant::now();
        let (mut sa, mut sb) = handshake(suite, &a, &b, now);
        let plain = [0x5au8; PACKET_LEN];
        let mut wire = [0u8; PACKET_LEN + TRANSPORT_OVERHEAD];
        let mut out = [0u8; PACKET_LEN + TRANSPORT_OVERHEAD];
        group.bench_function(format!("{suite:?}"), |bench| {
            bench.iter(|| {
                let n = sa.seal(black_box(&plain), &mut wire, now).expect("seal");
                let Ok(Packet::Transport(t)) = Packet::parse(&wire[..n]) else {
                    panic!("seal produced no Transport packet");
                };
                let m = sb
                    .open(t.counter, t.ciphertext, &mut out, now)
                    .expect("open of a fresh packet");
                black_box(m)
            })
        });
    }
    group.finish();
}

fn ik_handshake(c: &mut Criterion) {
    let a = PrivateKey::from_random([1; 32]);
    let b = PrivateKey::from_random([2; 32]);
    c.bench_function("noise_ik_handshake", |bench| {
        bench.iter_batched(
            Instant::now,
            |now| black_box(handshake(CipherSuite::ChaChaPoly, &a, &b, now)),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, seal_open, ik_handshake);
criterion_main!(benches);
