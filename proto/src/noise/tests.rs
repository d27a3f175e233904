//! Tests of Noise handshakes and sessions.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use super::*;
use crate::ids::{PrivateKey, SessionIndex};
use crate::packet::{Packet, TRANSPORT_OVERHEAD};

fn handshake(suite: CipherSuite) -> (Session, Session, Instant) {
    let a = PrivateKey::from_random([1; 32]);
    let b = PrivateKey::from_random([2; 32]);
    let ts = Timestamp::from_unix_nanos(1_700_000_000_123_456_789);
    let (init, m1) =
        InitiatorHandshake::start(suite, &a, &b.public_key(), SessionIndex(10), ts, [7; 32])
            .unwrap();
    let Packet::HandshakeInit(p1) = Packet::parse(&m1).unwrap() else {
        panic!("not an init")
    };
    let resp = ResponderHandshake::read_init(&b, &p1, [8; 32]).unwrap();
    assert_eq!(resp.remote_static(), a.public_key());
    assert_eq!(resp.timestamp(), ts);
    let now = Instant::now();
    let (sb, m2) = resp.respond(SessionIndex(20), now).unwrap();
    let Packet::HandshakeResp(p2) = Packet::parse(&m2).unwrap() else {
        panic!("not a resp")
    };
    let sa = init.finish(&p2, now).unwrap();
    assert_eq!(
        (sa.remote_index, sb.remote_index),
        (SessionIndex(20), SessionIndex(10))
    );
    (sa, sb, now)
}

fn transfer(from: &mut Session, to: &mut Session, msg: &[u8], now: Instant) -> Vec<u8> {
    let mut wire = vec![0u8; msg.len() + TRANSPORT_OVERHEAD];
    let n = from.seal(msg, &mut wire, now).unwrap();
    assert_eq!(n, wire.len());
    let Packet::Transport(t) = Packet::parse(&wire).unwrap() else {
        panic!("not transport")
    };
    let mut out = vec![0u8; 2000];
    let m = to.open(t.counter, t.ciphertext, &mut out, now).unwrap();
    out.truncate(m);
    out
}

#[test]
fn both_suites_carry_data_both_ways() {
    for suite in [CipherSuite::ChaChaPoly, CipherSuite::AesGcm] {
        let (mut a, mut b, now) = handshake(suite);
        assert_eq!(transfer(&mut a, &mut b, b"ping", now), b"ping");
        assert_eq!(transfer(&mut b, &mut a, b"pong", now), b"pong");
        assert_eq!(transfer(&mut a, &mut b, b"", now), b"");
    }
}

#[test]
fn replay_and_tamper_rejected() {
    let (mut a, mut b, now) = handshake(CipherSuite::ChaChaPoly);
    let mut wire = [0u8; 4 + TRANSPORT_OVERHEAD];
    a.seal(b"data", &mut wire, now).unwrap();
    let mut out = [0u8; 64];
    assert_eq!(b.open(0, &wire[16..], &mut out, now), Ok(4));
    assert_eq!(
        b.open(0, &wire[16..], &mut out, now),
        Err(NoiseError::Replay)
    );
    a.seal(b"data", &mut wire, now).unwrap();
    let mut bad = wire;
    bad[20] ^= 1;
    assert_eq!(
        b.open(1, &bad[16..], &mut out, now),
        Err(NoiseError::Decrypt)
    );
    // A failed decryption must not have consumed counter 1.
    assert_eq!(b.open(1, &wire[16..], &mut out, now), Ok(4));
    assert_eq!(a.sent_count(), 2);
}

#[test]
fn expiry() {
    let (mut a, mut b, now) = handshake(CipherSuite::ChaChaPoly);
    let later = now + REJECT_AFTER_TIME;
    assert!(a.wants_rekey(now + REKEY_AFTER_TIME));
    let mut wire = [0u8; TRANSPORT_OVERHEAD];
    assert_eq!(a.seal(b"", &mut wire, later), Err(NoiseError::Expired));
    a.seal(b"", &mut wire, now).unwrap();
    let mut out = [0u8; 8];
    assert_eq!(
        b.open(0, &wire[16..], &mut out, later),
        Err(NoiseError::Expired)
    );
}

#[test]
fn wrong_responder_key_fails() {
    let a = PrivateKey::from_random([1; 32]);
    let b = PrivateKey::from_random([2; 32]);
    let c = PrivateKey::from_random([3; 32]);
    let (_, m1) = InitiatorHandshake::start(
        CipherSuite::ChaChaPoly,
        &a,
        &b.public_key(),
        SessionIndex(1),
        Timestamp::from_unix_nanos(1),
        [0; 32],
    )
    .unwrap();
    let Packet::HandshakeInit(p1) = Packet::parse(&m1).unwrap() else {
        panic!("not an init")
    };
    assert!(ResponderHandshake::read_init(&c, &p1, [0; 32]).is_err());
}

#[test]
fn timestamps_order() {
    let t1 = Timestamp::from_unix_nanos(1_999_999_999);
    let t2 = Timestamp::from_unix_nanos(2_000_000_000);
    assert!(t1 < t2);
}

#[test]
fn cipher_names_round_trip() {
    for suite in [CipherSuite::ChaChaPoly, CipherSuite::AesGcm] {
        assert_eq!(suite.name().parse::<CipherSuite>(), Ok(suite));
    }
    assert_eq!("AES256GCM".parse::<CipherSuite>(), Ok(CipherSuite::AesGcm));
    assert_eq!(
        "chacha20_poly1305".parse::<CipherSuite>(),
        Ok(CipherSuite::ChaChaPoly)
    );
    assert!("rc4".parse::<CipherSuite>().is_err());
}
