//! The node's peer/path/punch state machine (sans-IO).
//!
//! One [`Engine`] per node. The IO shell feeds it datagrams from the data socket, IP packets from
//! TUN, peer records and punch orders from the coordinator, and timer expiries; it hands back
//! datagrams to send ([`Engine::poll_transmit`]), events for the control client
//! ([`Engine::poll_event`]) and the next deadline ([`Engine::poll_timeout`]). Decrypted IP packets
//! are written into a caller-supplied buffer by [`Engine::handle_datagram`].
//!
//! STUB: the API below is the contract with `warren-node`; the implementation is in progress.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::control::PeerRecord;
use crate::ids::{MeshIp, NodeId, PrivateKey};
use crate::noise::CipherSuite;

/// Settings the engine is built with.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// This node's id (from the coordinator's Welcome).
    pub node_id: NodeId,
    /// This node's static private key.
    pub private_key: PrivateKey,
    /// Cipher used for sessions this node initiates.
    pub suite: CipherSuite,
    /// Wall-clock time at the `now` given to [`Engine::new`], in nanoseconds since the Unix
    /// epoch; handshake timestamps (replay protection across restarts) count from it.
    pub wall_clock_base_nanos: u64,
}

/// A datagram for the data socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination address.
    pub dst: SocketAddr,
    /// The datagram.
    pub payload: Vec<u8>,
}

/// Something the shell must act on outside the data socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Ask the coordinator to make this peer punch towards us (send `PunchRequest`).
    PunchRequest(NodeId),
    /// A peer's path changed (for logs and status).
    PathChanged {
        /// The peer.
        peer: NodeId,
        /// Its new path.
        path: PathKind,
    },
}

/// How packets to a peer travel now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathKind {
    /// Over a confirmed hole-punched (or LAN) UDP path.
    Direct,
    /// No path yet; punching.
    Connecting,
}

/// One peer as `warren status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// Coordinator id.
    pub node_id: NodeId,
    /// Name in the mesh.
    pub name: String,
    /// Mesh address.
    pub mesh_ip: MeshIp,
    /// Current path.
    pub path: PathKind,
    /// Confirmed remote address of the direct path, if any.
    pub endpoint: Option<SocketAddr>,
    /// Latest round-trip time measured by probes.
    pub rtt: Option<Duration>,
    /// Decrypted payload bytes received from this peer.
    pub rx_bytes: u64,
    /// Payload bytes sent to this peer.
    pub tx_bytes: u64,
    /// Time since the last completed handshake.
    pub last_handshake: Option<Duration>,
}

/// The node's data-plane state machine.
#[derive(Debug)]
pub struct Engine {
    _config: EngineConfig,
}

impl Engine {
    /// Builds an engine; `seed` feeds its deterministic RNG (session indices, ephemeral keys,
    /// probe ids).
    pub fn new(config: EngineConfig, seed: [u8; 32], now: Instant) -> Self {
        let _ = (seed, now);
        Self { _config: config }
    }

    /// Replaces the peer list (the coordinator's Welcome).
    pub fn set_peers(&mut self, peers: &[PeerRecord], now: Instant) {
        let _ = (peers, now);
    }

    /// Adds or updates one peer (the coordinator's PeerUpsert).
    pub fn upsert_peer(&mut self, peer: &PeerRecord, now: Instant) {
        let _ = (peer, now);
    }

    /// Forgets a peer and its sessions (the coordinator's PeerRemoved).
    pub fn remove_peer(&mut self, peer: NodeId) {
        let _ = peer;
    }

    /// The coordinator's Punch order: probe `candidates` of `peer` now, with backoff.
    pub fn handle_punch(&mut self, peer: NodeId, candidates: &[SocketAddr], now: Instant) {
        let _ = (peer, candidates, now);
    }

    /// A datagram arrived on the data socket (never a QUIC packet). Returns the length of a
    /// decrypted IP packet written to `tun_out`, if the datagram carried one.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        tun_out: &mut [u8],
        now: Instant,
    ) -> Option<usize> {
        let _ = (from, datagram, tun_out, now);
        None
    }

    /// An IP packet was read from TUN.
    pub fn handle_tun_packet(&mut self, packet: &[u8], now: Instant) {
        let _ = (packet, now);
    }

    /// The deadline from [`Engine::poll_timeout`] passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        None
    }

    /// Next event for the shell.
    pub fn poll_event(&mut self) -> Option<Event> {
        None
    }

    /// When [`Engine::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Per-peer status.
    pub fn peer_status(&self, now: Instant) -> Vec<PeerStatus> {
        let _ = now;
        Vec::new()
    }
}
