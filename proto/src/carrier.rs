//! How a node reaches the coordinator: the names both ends must agree on (wire contract, no IO).
//!
//! Normally QUIC over UDP with ALPN [`ALPN_QUIC`]. A node whose network drops UDP falls back to
//! TLS over TCP on the same port number with ALPN [`ALPN_TCP`], inside which the very same QUIC
//! connection runs: each QUIC packet travels as one frame, a 2-byte big-endian length followed
//! by the packet, in both directions (a zero length is ignored). Both certificates are the
//! coordinator's self-signed one, issued for [`SERVER_NAME`] and pinned by invite tokens.

/// TLS server name of the coordinator's certificate.
pub const SERVER_NAME: &str = "warren-coordinator";

/// ALPN of the control protocol over QUIC.
pub const ALPN_QUIC: &[u8] = b"warren/1";

/// ALPN of the TLS-over-TCP carrier.
pub const ALPN_TCP: &[u8] = b"warren-tcp/1";

/// Largest QUIC packet a TCP carrier frame may hold, in bytes (the coordinator closes a tunnel
/// that sends a longer one; the node's tunnel MTU stays below it).
pub const MAX_TCP_FRAME: u16 = 1500;
