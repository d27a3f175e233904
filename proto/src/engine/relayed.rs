//! The engine's relay inputs (sans-IO, engine layer): packets that arrived through the
//! coordinator's relay, and whether the shell can relay at all (DESIGN.md section 2.5).

use std::time::Instant;

use tracing::debug;

use std::net::SocketAddr;

use super::Engine;
use crate::ids::NodeId;
use crate::packet::Packet;

/// Where a received packet came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The data socket, from this address.
    Udp(SocketAddr),
    /// The relay, labelled by the coordinator with this sender.
    Relay(NodeId),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Udp(a) => write!(f, "{a}"),
            Self::Relay(id) => write!(f, "relay:{id}"),
        }
    }
}

impl Engine {
    /// A Warren packet arrived through the relay, labelled by the coordinator with its sender
    /// (see [`crate::relay::parse`]). Like [`Engine::handle_datagram`]: returns the length of a
    /// decrypted IP packet written to `tun_out`. Sessions are found by index, so the label only
    /// decides where replies to a handshake go; probes are dropped (they test direct paths).
    pub fn handle_relayed(
        &mut self,
        from: NodeId,
        packet: &[u8],
        tun_out: &mut [u8],
        now: Instant,
    ) -> Option<usize> {
        let parsed = match Packet::parse(packet) {
            Ok(p) => p,
            Err(e) => {
                self.shared.drops.malformed += 1;
                debug!(%from, error = %e, "malformed relayed packet dropped");
                return None;
            }
        };
        let source = Source::Relay(from);
        match parsed {
            Packet::Transport(t) => return self.on_transport(source, &t, tun_out, now),
            Packet::HandshakeInit(h) => self.on_handshake_init(source, &h, now),
            Packet::HandshakeResp(h) => self.on_handshake_resp(source, &h, now),
            Packet::Probe(_) | Packet::ProbeAck(_) => {
                self.shared.drops.relay_probe += 1;
                debug!(%from, "probe through the relay dropped");
            }
        }
        None
    }

    /// A complete relay datagram (header and packet) arrived on the control connection: the
    /// same as [`Engine::handle_relayed`] after [`crate::relay::parse`].
    pub fn handle_relay_datagram(
        &mut self,
        datagram: &[u8],
        tun_out: &mut [u8],
        now: Instant,
    ) -> Option<usize> {
        match crate::relay::parse(datagram) {
            Ok((from, packet)) => self.handle_relayed(from, packet, tun_out, now),
            Err(e) => {
                self.shared.drops.relay_malformed += 1;
                debug!(error = %e, "malformed relay datagram dropped");
                None
            }
        }
    }

    /// Whether the shell reaches the coordinator over TCP only because UDP is blocked. Only
    /// `warren status` changes: peers that are not direct show [`RelayReason::UdpBlocked`]
    /// (punching still runs, in case UDP works towards some peers).
    ///
    /// [`RelayReason::UdpBlocked`]: super::RelayReason::UdpBlocked
    pub fn set_udp_blocked(&mut self, blocked: bool) {
        if self.shared.udp_blocked != blocked {
            debug!(blocked, "UDP to the coordinator blocked");
            self.shared.udp_blocked = blocked;
        }
    }

    /// Whether the shell can relay now (its control connection is up and carries datagrams).
    /// Peers without a proven direct path move to the relay at once when it becomes
    /// available; when it goes away they fall back to whatever direct address they have.
    pub fn set_relay_available(&mut self, available: bool, now: Instant) {
        if self.shared.relay_available == available {
            return;
        }
        debug!(available, "relay availability changed");
        self.shared.relay_available = available;
        for peer in self.peers.values_mut() {
            peer.relay_ok = available;
            if peer.endpoint.is_some() {
                // Without a relay the address was (or now is) used directly: keep using it
                // rather than verifying it again.
                peer.direct_active = true;
                peer.confirmed_at = None;
                peer.next_verify_at = None;
                peer.check = None;
            }
            peer.kick(&mut self.shared, now);
            peer.report_path(&mut self.shared);
        }
    }
}
