//! Data-plane wire formats (sans-IO, data-plane layer).
//!
//! Every Warren datagram starts with a type byte below `0x40`, so that the node can share one UDP
//! socket between QUIC (whose packets have the fixed bit `0x40` set, with greasing off) and the
//! data plane. Common header: `type u8 | 3 bytes` (reserved, zero unless stated); integers are
//! little-endian.
//!
//! | type | name | layout after the 4-byte header |
//! |---|---|---|
//! | 1 | HandshakeInit | (byte 1 = suite) `sender_index u32 \| noise IK msg 1` |
//! | 2 | HandshakeResp | `sender_index u32 \| receiver_index u32 \| noise IK msg 2` |
//! | 3 | Transport | `receiver_index u32 \| counter u64 \| ciphertext` |
//! | 4 | Probe | `sender NodeId u64 \| tx_id u64 \| mac[16]` |
//! | 5 | ProbeAck | `sender u64 \| tx_id u64 \| family u8 \| ip \| port u16 \| mac[16]` |
//!
//! Parsers return borrowed views and typed errors; they never panic on any input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::ids::{NodeId, SessionIndex};
use crate::noise::CipherSuite;

/// Type byte of a handshake initiation.
pub const TYPE_HANDSHAKE_INIT: u8 = 1;
/// Type byte of a handshake response.
pub const TYPE_HANDSHAKE_RESP: u8 = 2;
/// Type byte of a transport (data or keepalive) packet.
pub const TYPE_TRANSPORT: u8 = 3;
/// Type byte of a path probe.
pub const TYPE_PROBE: u8 = 4;
/// Type byte of a path probe acknowledgement.
pub const TYPE_PROBE_ACK: u8 = 5;

/// Length of the common header (type + 3 bytes).
pub const HEADER_LEN: usize = 4;
/// Length of the Noise IK message 1 Warren sends: ephemeral (32) + encrypted static (32 + 16) +
/// encrypted 12-byte timestamp (12 + 16).
pub const INIT_NOISE_LEN: usize = 32 + 48 + 28;
/// Length of the Noise IK message 2 Warren sends: ephemeral (32) + encrypted empty payload (16).
pub const RESP_NOISE_LEN: usize = 32 + 16;
/// Total length of a HandshakeInit datagram.
pub const HANDSHAKE_INIT_LEN: usize = HEADER_LEN + 4 + INIT_NOISE_LEN;
/// Total length of a HandshakeResp datagram.
pub const HANDSHAKE_RESP_LEN: usize = HEADER_LEN + 8 + RESP_NOISE_LEN;
/// Length of a transport header (before the ciphertext).
pub const TRANSPORT_HEADER_LEN: usize = HEADER_LEN + 4 + 8;
/// AEAD tag length (both suites).
pub const AEAD_TAG_LEN: usize = 16;
/// Bytes a transport packet adds to the plaintext it carries (header + AEAD tag). Add 8 (UDP) and
/// 20/40 (IPv4/IPv6) for the on-the-wire size.
pub const TRANSPORT_OVERHEAD: usize = TRANSPORT_HEADER_LEN + AEAD_TAG_LEN;
/// Truncated HMAC length of probes.
pub const PROBE_MAC_LEN: usize = 16;
/// Total length of a Probe datagram.
pub const PROBE_LEN: usize = HEADER_LEN + 8 + 8 + PROBE_MAC_LEN;

/// Whether a datagram whose first byte is `first` belongs to QUIC rather than to Warren.
pub fn is_quic(first: u8) -> bool {
    first >= 0x40
}

/// Why a datagram is not a valid Warren packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum PacketError {
    /// Zero-length datagram.
    #[error("empty datagram")]
    Empty,
    /// First byte has the QUIC fixed bit; belongs to the QUIC endpoint.
    #[error("QUIC packet (first byte {0:#04x})")]
    Quic(u8),
    /// Type byte below 0x40 that Warren does not define.
    #[error("unknown packet type {0}")]
    UnknownType(u8),
    /// Shorter than its type requires.
    #[error("{kind} packet truncated ({len} bytes)")]
    Truncated {
        /// Packet kind.
        kind: &'static str,
        /// Length received.
        len: usize,
    },
    /// Longer than a fixed-size type allows.
    #[error("{kind} packet has trailing bytes ({len} bytes)")]
    TooLong {
        /// Packet kind.
        kind: &'static str,
        /// Length received.
        len: usize,
    },
    /// A reserved header byte is not zero.
    #[error("reserved header bytes are not zero")]
    Reserved,
    /// HandshakeInit names a cipher suite Warren does not know.
    #[error("unknown cipher suite {0}")]
    Suite(u8),
    /// ProbeAck address family is neither 4 nor 6.
    #[error("unknown address family {0}")]
    Family(u8),
}

/// A parsed HandshakeInit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeInit<'a> {
    /// Cipher suite the initiator chose.
    pub suite: CipherSuite,
    /// Index the initiator will receive transport packets on.
    pub sender_index: SessionIndex,
    /// Noise IK message 1.
    pub noise: &'a [u8],
}

/// A parsed HandshakeResp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeResp<'a> {
    /// Index the responder will receive transport packets on.
    pub sender_index: SessionIndex,
    /// The initiator's index (from its HandshakeInit).
    pub receiver_index: SessionIndex,
    /// Noise IK message 2.
    pub noise: &'a [u8],
}

/// A parsed Transport packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport<'a> {
    /// The receiver's session index.
    pub receiver_index: SessionIndex,
    /// Explicit AEAD nonce.
    pub counter: u64,
    /// Ciphertext including the AEAD tag.
    pub ciphertext: &'a [u8],
}

/// A parsed Probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe<'a> {
    /// The probing node.
    pub sender: NodeId,
    /// Transaction id, echoed by the ack.
    pub tx_id: u64,
    /// Bytes covered by the MAC.
    pub authenticated: &'a [u8],
    /// Truncated HMAC.
    pub mac: &'a [u8],
}

/// A parsed ProbeAck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeAck<'a> {
    /// The acknowledging node.
    pub sender: NodeId,
    /// The probe's transaction id.
    pub tx_id: u64,
    /// Source address the acknowledging node saw the probe come from (our reflexive address).
    pub observed: SocketAddr,
    /// Bytes covered by the MAC.
    pub authenticated: &'a [u8],
    /// Truncated HMAC.
    pub mac: &'a [u8],
}

/// Any Warren datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Type 1.
    HandshakeInit(HandshakeInit<'a>),
    /// Type 2.
    HandshakeResp(HandshakeResp<'a>),
    /// Type 3.
    Transport(Transport<'a>),
    /// Type 4.
    Probe(Probe<'a>),
    /// Type 5.
    ProbeAck(ProbeAck<'a>),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn exact(kind: &'static str, b: &[u8], want: usize) -> Result<(), PacketError> {
    match b.len() {
        n if n < want => Err(PacketError::Truncated { kind, len: n }),
        n if n > want => Err(PacketError::TooLong { kind, len: n }),
        _ => Ok(()),
    }
}

fn reserved_zero(b: &[u8], from: usize) -> Result<(), PacketError> {
    if b[from..HEADER_LEN].iter().all(|&x| x == 0) {
        Ok(())
    } else {
        Err(PacketError::Reserved)
    }
}

impl<'a> Packet<'a> {
    /// Parses a datagram.
    pub fn parse(b: &'a [u8]) -> Result<Self, PacketError> {
        let &first = b.first().ok_or(PacketError::Empty)?;
        if is_quic(first) {
            return Err(PacketError::Quic(first));
        }
        match first {
            TYPE_HANDSHAKE_INIT => {
                exact("handshake init", b, HANDSHAKE_INIT_LEN)?;
                let suite = CipherSuite::from_wire(b[1]).ok_or(PacketError::Suite(b[1]))?;
                reserved_zero(b, 2)?;
                Ok(Packet::HandshakeInit(HandshakeInit {
                    suite,
                    sender_index: SessionIndex(u32_at(b, 4)),
                    noise: &b[8..],
                }))
            }
            TYPE_HANDSHAKE_RESP => {
                exact("handshake response", b, HANDSHAKE_RESP_LEN)?;
                reserved_zero(b, 1)?;
                Ok(Packet::HandshakeResp(HandshakeResp {
                    sender_index: SessionIndex(u32_at(b, 4)),
                    receiver_index: SessionIndex(u32_at(b, 8)),
                    noise: &b[12..],
                }))
            }
            TYPE_TRANSPORT => {
                if b.len() < TRANSPORT_OVERHEAD {
                    return Err(PacketError::Truncated {
                        kind: "transport",
                        len: b.len(),
                    });
                }
                reserved_zero(b, 1)?;
                Ok(Packet::Transport(Transport {
                    receiver_index: SessionIndex(u32_at(b, 4)),
                    counter: u64_at(b, 8),
                    ciphertext: &b[TRANSPORT_HEADER_LEN..],
                }))
            }
            TYPE_PROBE => {
                exact("probe", b, PROBE_LEN)?;
                reserved_zero(b, 1)?;
                let body = PROBE_LEN - PROBE_MAC_LEN;
                Ok(Packet::Probe(Probe {
                    sender: NodeId(u64_at(b, 4)),
                    tx_id: u64_at(b, 12),
                    authenticated: &b[..body],
                    mac: &b[body..],
                }))
            }
            TYPE_PROBE_ACK => parse_probe_ack(b),
            other => Err(PacketError::UnknownType(other)),
        }
    }
}

fn parse_probe_ack(b: &[u8]) -> Result<Packet<'_>, PacketError> {
    let kind = "probe ack";
    // Header, sender, tx_id, family.
    let fixed = HEADER_LEN + 8 + 8 + 1;
    if b.len() < fixed {
        return Err(PacketError::Truncated { kind, len: b.len() });
    }
    reserved_zero(b, 1)?;
    let family = b[fixed - 1];
    let ip_len = match family {
        4 => 4,
        6 => 16,
        f => return Err(PacketError::Family(f)),
    };
    let body = fixed + ip_len + 2;
    exact(kind, b, body + PROBE_MAC_LEN)?;
    let ip = if ip_len == 4 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&b[fixed..fixed + 4]);
        IpAddr::V4(Ipv4Addr::from(a))
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[fixed..fixed + 16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    let port = u16::from_le_bytes([b[fixed + ip_len], b[fixed + ip_len + 1]]);
    Ok(Packet::ProbeAck(ProbeAck {
        sender: NodeId(u64_at(b, 4)),
        tx_id: u64_at(b, 12),
        observed: SocketAddr::new(ip, port),
        authenticated: &b[..body],
        mac: &b[body..],
    }))
}

/// Builds a HandshakeInit datagram around a Noise message 1.
pub fn encode_handshake_init(suite: CipherSuite, sender: SessionIndex, noise: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + noise.len());
    out.extend_from_slice(&[TYPE_HANDSHAKE_INIT, suite.to_wire(), 0, 0]);
    out.extend_from_slice(&sender.0.to_le_bytes());
    out.extend_from_slice(noise);
    out
}

/// Builds a HandshakeResp datagram around a Noise message 2.
pub fn encode_handshake_resp(
    sender: SessionIndex,
    receiver: SessionIndex,
    noise: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 8 + noise.len());
    out.extend_from_slice(&[TYPE_HANDSHAKE_RESP, 0, 0, 0]);
    out.extend_from_slice(&sender.0.to_le_bytes());
    out.extend_from_slice(&receiver.0.to_le_bytes());
    out.extend_from_slice(noise);
    out
}

/// Writes a transport header into `out[..TRANSPORT_HEADER_LEN]` (caller checked the length).
pub fn write_transport_header(out: &mut [u8], receiver: SessionIndex, counter: u64) {
    out[..HEADER_LEN].copy_from_slice(&[TYPE_TRANSPORT, 0, 0, 0]);
    out[4..8].copy_from_slice(&receiver.0.to_le_bytes());
    out[8..16].copy_from_slice(&counter.to_le_bytes());
}

/// The MAC-covered part of a Probe (the caller appends the MAC).
pub fn encode_probe_body(sender: NodeId, tx_id: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(PROBE_LEN);
    out.extend_from_slice(&[TYPE_PROBE, 0, 0, 0]);
    out.extend_from_slice(&sender.0.to_le_bytes());
    out.extend_from_slice(&tx_id.to_le_bytes());
    out
}

/// The MAC-covered part of a ProbeAck (the caller appends the MAC).
pub fn encode_probe_ack_body(sender: NodeId, tx_id: u64, observed: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 8 + 8 + 1 + 16 + 2 + PROBE_MAC_LEN);
    out.extend_from_slice(&[TYPE_PROBE_ACK, 0, 0, 0]);
    out.extend_from_slice(&sender.0.to_le_bytes());
    out.extend_from_slice(&tx_id.to_le_bytes());
    match observed.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&observed.port().to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn samples() -> Vec<Vec<u8>> {
        let mut probe = encode_probe_body(NodeId(7), 99);
        probe.extend_from_slice(&[0xaa; PROBE_MAC_LEN]);
        let mut ack4 = encode_probe_ack_body(NodeId(8), 99, "1.2.3.4:5678".parse().unwrap());
        ack4.extend_from_slice(&[0xbb; PROBE_MAC_LEN]);
        let mut ack6 = encode_probe_ack_body(NodeId(8), 98, "[2001:db8::1]:443".parse().unwrap());
        ack6.extend_from_slice(&[0xcc; PROBE_MAC_LEN]);
        let mut transport = vec![0u8; TRANSPORT_OVERHEAD + 5];
        write_transport_header(&mut transport, SessionIndex(42), 1 << 40);
        vec![
            encode_handshake_init(
                CipherSuite::AesGcm,
                SessionIndex(0xdead_beef),
                &[3; INIT_NOISE_LEN],
            ),
            encode_handshake_resp(SessionIndex(1), SessionIndex(2), &[4; RESP_NOISE_LEN]),
            transport,
            probe,
            ack4,
            ack6,
        ]
    }

    #[test]
    fn round_trips() {
        let s = samples();
        match Packet::parse(&s[0]).unwrap() {
            Packet::HandshakeInit(h) => {
                assert_eq!(h.suite, CipherSuite::AesGcm);
                assert_eq!(h.sender_index, SessionIndex(0xdead_beef));
                assert_eq!(h.noise, &[3; INIT_NOISE_LEN][..]);
            }
            p => panic!("wrong parse {p:?}"),
        }
        match Packet::parse(&s[1]).unwrap() {
            Packet::HandshakeResp(h) => {
                assert_eq!(
                    (h.sender_index, h.receiver_index),
                    (SessionIndex(1), SessionIndex(2))
                );
                assert_eq!(h.noise.len(), RESP_NOISE_LEN);
            }
            p => panic!("wrong parse {p:?}"),
        }
        match Packet::parse(&s[2]).unwrap() {
            Packet::Transport(t) => {
                assert_eq!(t.receiver_index, SessionIndex(42));
                assert_eq!(t.counter, 1 << 40);
                assert_eq!(t.ciphertext.len(), AEAD_TAG_LEN + 5);
            }
            p => panic!("wrong parse {p:?}"),
        }
        match Packet::parse(&s[3]).unwrap() {
            Packet::Probe(p) => {
                assert_eq!((p.sender, p.tx_id), (NodeId(7), 99));
                assert_eq!(p.mac, &[0xaa; PROBE_MAC_LEN][..]);
                assert_eq!(p.authenticated.len(), PROBE_LEN - PROBE_MAC_LEN);
            }
            p => panic!("wrong parse {p:?}"),
        }
        for (i, want) in [(4, "1.2.3.4:5678"), (5, "[2001:db8::1]:443")] {
            match Packet::parse(&s[i]).unwrap() {
                Packet::ProbeAck(a) => {
                    assert_eq!(a.sender, NodeId(8));
                    assert_eq!(a.observed, want.parse().unwrap());
                    assert_eq!(a.authenticated.len() + PROBE_MAC_LEN, s[i].len());
                }
                p => panic!("wrong parse {p:?}"),
            }
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for s in samples() {
            // A transport packet may shrink down to an empty keepalive.
            let valid_from = if s[0] == TYPE_TRANSPORT {
                TRANSPORT_OVERHEAD
            } else {
                s.len()
            };
            for len in 0..valid_from {
                assert!(Packet::parse(&s[..len]).is_err(), "{:?} at {len}", s[0]);
            }
        }
    }

    #[test]
    fn trailing_bytes_rejected_for_fixed_sizes() {
        for (i, s) in samples().into_iter().enumerate() {
            let mut long = s.clone();
            long.push(0);
            // Transport (index 2) carries variable-length ciphertext.
            assert_eq!(Packet::parse(&long).is_err(), i != 2, "sample {i}");
        }
    }

    #[test]
    fn type_and_reserved_bytes() {
        assert_eq!(Packet::parse(&[]), Err(PacketError::Empty));
        assert_eq!(Packet::parse(&[0xc3, 1, 2]), Err(PacketError::Quic(0xc3)));
        assert_eq!(Packet::parse(&[0x40]), Err(PacketError::Quic(0x40)));
        for t in [0u8, 6, 0x20, 0x3f] {
            assert_eq!(Packet::parse(&[t; 64]), Err(PacketError::UnknownType(t)));
        }
        let mut s = samples();
        s[0][1] = 9;
        assert_eq!(Packet::parse(&s[0]), Err(PacketError::Suite(9)));
        s[2][3] = 1;
        assert_eq!(Packet::parse(&s[2]), Err(PacketError::Reserved));
        s[4][20] = 5;
        assert_eq!(Packet::parse(&s[4]), Err(PacketError::Family(5)));
        assert!(is_quic(0x40) && !is_quic(0x3f));
    }

    #[test]
    fn garbage_never_panics() {
        use rand::{RngCore, SeedableRng};
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let mut buf = [0u8; 200];
        for i in 0..20_000 {
            let len = (rng.next_u32() as usize) % buf.len();
            rng.fill_bytes(&mut buf[..len]);
            if len > 0 {
                buf[0] %= 8; // mostly Warren type bytes
            }
            let _ = Packet::parse(&buf[..len]);
            let _ = i;
        }
    }
}
