//! Relay datagram framing (sans-IO, data-plane layer; DESIGN.md section 2.5).
//!
//! When no direct path is up, a node hands its already Noise-encrypted Warren packet to the
//! coordinator as a QUIC DATAGRAM frame on its control connection; the coordinator forwards it to
//! the destination node's connection without looking inside. Format, both directions:
//!
//! ```text
//! +--------------------------+--------------------------------+
//! | node id (8 bytes, BE u64)| Warren packet (opaque, 0.. B)  |
//! +--------------------------+--------------------------------+
//! ```
//!
//! From a node the id names the *destination*; the coordinator rewrites it to the *source* node's
//! id before forwarding, so the receiver knows whose session to decrypt with. This module is the
//! one definition of the format: the node's engine and the coordinator's forwarder both use it.

use crate::ids::NodeId;

/// Length of the node-id header of a relay datagram, in bytes.
pub const RELAY_HEADER_LEN: usize = 8;

/// Why a relay datagram could not be parsed or built.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum RelayError {
    /// The datagram is shorter than its header.
    #[error("relay datagram of {0} bytes is shorter than its {RELAY_HEADER_LEN}-byte header")]
    TooShort(usize),
    /// The caller's buffer cannot hold the datagram.
    #[error("buffer of {have} bytes cannot hold a relay datagram of {need} bytes")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// Splits a relay datagram into its node id and the packet it carries (borrowed).
pub fn parse(datagram: &[u8]) -> Result<(NodeId, &[u8]), RelayError> {
    let (header, packet) = datagram
        .split_first_chunk::<RELAY_HEADER_LEN>()
        .ok_or(RelayError::TooShort(datagram.len()))?;
    Ok((NodeId(u64::from_be_bytes(*header)), packet))
}

/// Writes the header for `id` into the first [`RELAY_HEADER_LEN`] bytes of `out` (the packet is
/// then written behind it, e.g. sealed in place).
pub fn write_header(id: NodeId, out: &mut [u8]) -> Result<(), RelayError> {
    let have = out.len();
    let header = out
        .first_chunk_mut::<RELAY_HEADER_LEN>()
        .ok_or(RelayError::BufferTooSmall {
            need: RELAY_HEADER_LEN,
            have,
        })?;
    *header = id.0.to_be_bytes();
    Ok(())
}

/// Builds a relay datagram carrying `packet` labelled with `id` into `out`; returns its length.
pub fn build_into(id: NodeId, packet: &[u8], out: &mut [u8]) -> Result<usize, RelayError> {
    let need = RELAY_HEADER_LEN + packet.len();
    let have = out.len();
    let dst = out
        .get_mut(..need)
        .ok_or(RelayError::BufferTooSmall { need, have })?;
    write_header(id, dst)?;
    dst[RELAY_HEADER_LEN..].copy_from_slice(packet);
    Ok(need)
}

/// Builds a relay datagram carrying `packet` labelled with `id` (allocating).
pub fn build(id: NodeId, packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RELAY_HEADER_LEN + packet.len());
    out.extend_from_slice(&id.0.to_be_bytes());
    out.extend_from_slice(packet);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_big_endian() {
        let d = build(NodeId(0x0102_0304_0506_0708), b"payload");
        assert_eq!(&d[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            parse(&d),
            Ok((NodeId(0x0102_0304_0506_0708), &b"payload"[..]))
        );
        let mut buf = [0u8; 32];
        let n = build_into(NodeId(0x0102_0304_0506_0708), b"payload", &mut buf).unwrap();
        assert_eq!(&buf[..n], &d[..]);
    }

    #[test]
    fn empty_packet_and_short_input() {
        assert_eq!(parse(&[9; 8]), Ok((NodeId(0x0909_0909_0909_0909), &[][..])));
        assert_eq!(parse(&[1; 7]), Err(RelayError::TooShort(7)));
        assert_eq!(parse(&[]), Err(RelayError::TooShort(0)));
    }

    #[test]
    fn small_buffers_are_errors() {
        let mut buf = [0u8; 10];
        assert_eq!(
            build_into(NodeId(1), b"abc", &mut buf),
            Err(RelayError::BufferTooSmall { need: 11, have: 10 })
        );
        assert_eq!(
            write_header(NodeId(1), &mut buf[..7]),
            Err(RelayError::BufferTooSmall { need: 8, have: 7 })
        );
        write_header(NodeId(258), &mut buf).unwrap();
        assert_eq!(&buf[..8], &[0, 0, 0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn any_input_parses_or_errors() {
        for len in 0..64usize {
            let d: Vec<u8> = (0..len).map(|i| i as u8).collect();
            match parse(&d) {
                Ok((_, p)) => assert_eq!(p.len(), len - RELAY_HEADER_LEN),
                Err(RelayError::TooShort(n)) => assert!(n < RELAY_HEADER_LEN && n == len),
                Err(e) => panic!("{e}"),
            }
        }
    }
}
