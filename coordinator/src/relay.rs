//! Relay fallback (DESIGN.md section 2.5): nodes that have no direct path hand their already
//! encrypted packets to the coordinator as QUIC datagrams on their control connection, and the
//! coordinator forwards them to the destination node's connection without looking inside.
//!
//! Datagram format, both directions: an 8-byte big-endian node id, then the opaque packet.
//! From a node the id names the destination; the coordinator rewrites it to the *source* node's
//! id before forwarding, so the receiver knows which peer's session to decrypt with and cannot be
//! lied to about the sender. Datagrams that are too short, name an offline or unknown node, name
//! the sender itself, or do not fit the destination's current datagram size are dropped: relay is
//! best effort like any UDP path.

use warren_proto::ids::NodeId;

use crate::registry::Registry;

/// Length of the node-id header of a relay datagram, in bytes.
pub const RELAY_HEADER: usize = 8;

/// Why a relay datagram was not forwarded (for debug logs and tests).
#[derive(Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Shorter than the header.
    TooShort,
    /// Addressed to the sending node itself.
    ToSelf,
    /// The destination is not online.
    Offline,
    /// The destination's connection cannot carry a datagram this large right now.
    TooLarge,
}

/// Splits a relay datagram into its node id and packet.
pub fn parse(datagram: &[u8]) -> Option<(NodeId, &[u8])> {
    let header: [u8; RELAY_HEADER] = datagram.get(..RELAY_HEADER)?.try_into().ok()?;
    Some((
        NodeId(u64::from_be_bytes(header)),
        &datagram[RELAY_HEADER..],
    ))
}

/// Builds a relay datagram carrying `packet` labelled with `id`.
pub fn build(id: NodeId, packet: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RELAY_HEADER + packet.len());
    out.extend_from_slice(&id.0.to_be_bytes());
    out.extend_from_slice(packet);
    out
}

/// Forwards one datagram received from node `from`.
pub fn forward(registry: &Registry, from: NodeId, datagram: &[u8]) -> Result<(), Dropped> {
    let (to, packet) = parse(datagram).ok_or(Dropped::TooShort)?;
    if to == from {
        return Err(Dropped::ToSelf);
    }
    let conn = registry.connection(to).ok_or(Dropped::Offline)?;
    let out = build(from, packet);
    if conn.max_datagram_size().is_none_or(|max| out.len() > max) {
        return Err(Dropped::TooLarge);
    }
    // Fails only if the peer disabled datagrams or the size changed meanwhile: a lost packet.
    conn.send_datagram(out.into())
        .map_err(|_| Dropped::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_short_input() {
        let d = build(NodeId(0x0102_0304_0506_0708), b"payload");
        assert_eq!(&d[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            parse(&d),
            Some((NodeId(0x0102_0304_0506_0708), &b"payload"[..]))
        );
        assert_eq!(
            parse(&d[..8]),
            Some((NodeId(0x0102_0304_0506_0708), &b""[..]))
        );
        assert_eq!(parse(&d[..7]), None);
        assert_eq!(parse(&[]), None);
    }
}
