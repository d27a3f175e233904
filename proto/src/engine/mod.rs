//! The node's peer/path/punch state machine (sans-IO).
//!
//! One [`Engine`] per node. The IO shell feeds it datagrams from the data socket, IP packets from
//! TUN, peer records and punch orders from the coordinator, and timer expiries; it hands back
//! datagrams to send ([`Engine::poll_transmit`]), events for the control client
//! ([`Engine::poll_event`]) and the next deadline ([`Engine::poll_timeout`]). Decrypted IP packets
//! are written into a caller-supplied buffer by [`Engine::handle_datagram`].
//!
//! Life of a peer:
//! 1. *Connecting.* A TUN packet for it is queued ([`MAX_QUEUED`]), a
//!    [`Event::PunchRequest`] goes to the coordinator and a probing round starts; the
//!    coordinator's Punch order ([`Engine::handle_punch`]) reaches both sides at once. Probes
//!    go to every candidate with back-off for [`ROUND_DURATION`]; a failed round is repeated
//!    every [`ROUND_INTERVAL`] while traffic waits.
//! 2. *Path confirmed* by an authenticated ProbeAck (lowest RTT wins within a round). A Noise
//!    IK handshake runs over it (both sides may initiate; both sessions work).
//! 3. *Direct.* Queued packets flush; keepalives hold the NAT open; the initiator rekeys after
//!    two minutes. Authenticated packets from a new address move the endpoint (roaming).
//! 4. *Path dead* (data unanswered for [`PATH_DEAD_TIMEOUT`], silence for
//!    [`PATH_SILENCE_TIMEOUT`], or [`MAX_HANDSHAKE_ATTEMPTS`] unanswered initiations): sessions
//!    are dropped and the peer is Connecting again.
//!
//! With a relay ([`Engine::set_relay_available`], DESIGN.md section 2.5) a peer without a proven
//! direct path is *Relay* at once: handshakes and data go out as [`RelayTransmit`]s
//! ([`Engine::poll_relay_transmit`]) and come in through [`Engine::handle_relayed`], while
//! punching goes on in the background. A confirmed direct address must prove itself before
//! traffic moves to it, and a direct path that stops answering falls back to the relay within
//! a few seconds, keeping its sessions (see `path` for the rules and constants).
//!
//! Submodules: `peer` (per-peer state, send path), `punch` (probing rounds), `path` (direct vs
//! relay), `relayed` (the relay's inputs), `handshake` (Noise handshakes, receive path), `timers` (timers as data), `shared`
//! (engine-wide state and [`DropCounters`]).
//!
//! Sizes the shell must know: `tun_out` must hold the largest packet a peer may send (the TUN
//! MTU), and decryption is allocation-free when it has 16 bytes more; a transport datagram is
//! the IP packet plus [`TRANSPORT_OVERHEAD`] (32) bytes. Pass only Warren datagrams (first byte
//! below 0x40, see [`crate::packet::is_quic`]) to [`Engine::handle_datagram`]; anything else is
//! counted as malformed. Re-read [`Engine::poll_timeout`] after every call: deadlines move.

mod handshake;
mod path;
mod peer;
mod punch;
mod relayed;
mod shared;
mod timers;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use tracing::debug;

use crate::control::PeerRecord;
use crate::ids::{MeshIp, NodeId, PrivateKey, PublicKey};
use crate::noise::CipherSuite;
use crate::packet::Packet;
use crate::probe::ProbeKey;

pub use crate::packet::TRANSPORT_OVERHEAD;
pub use path::{
    prove_after, RelayReason, CHECK_PROBE_INTERVAL, CHECK_TIMEOUT, REFUSED_HOLD_DOWN, STABLE_RESET,
    SUSPECT_AFTER, VERIFY_GIVE_UP, VERIFY_INTERVAL, VERIFY_MAX_GAP,
};
pub use peer::{MAX_QUEUED, PUNCH_REQUEST_INTERVAL, REKEY_JITTER_MAX};
pub use punch::{
    PATH_SETTLE, PROBE_BACKOFF_MAX, PROBE_BACKOFF_MIN, ROUND_DURATION, ROUND_INTERVAL,
};
pub use shared::{DropCounters, MAX_INITS_PER_SEC};
pub use timers::{
    MAX_HANDSHAKE_ATTEMPTS, PATH_DEAD_TIMEOUT, PATH_SILENCE_TIMEOUT, RESPONDER_REKEY_AFTER,
};

use handshake::inner_destination;
use peer::Peer;
use relayed::Source;
use shared::Shared;

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

/// A datagram for the relay: send it as a QUIC DATAGRAM on the control connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayTransmit {
    /// The destination peer.
    pub peer: NodeId,
    /// The complete relay datagram: the 8-byte header naming `peer`, then the Warren packet
    /// ([`crate::relay`]).
    pub datagram: Vec<u8>,
}

/// Where [`Engine::encapsulate`] sealed a packet, and how long the result is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encapsulated {
    /// A datagram for the data socket, to `dst`.
    Udp {
        /// Destination address.
        dst: SocketAddr,
        /// Datagram length.
        len: usize,
    },
    /// A complete relay datagram (header naming `peer`, then the Warren packet): send it as a
    /// QUIC DATAGRAM on the control connection.
    Relay {
        /// The destination peer.
        peer: NodeId,
        /// Datagram length.
        len: usize,
    },
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
    /// Through the coordinator's relay (no proven direct path; punching goes on).
    Relay,
    /// No usable path yet.
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
    /// Why the peer is not on a direct path (`None` when it is).
    pub relay_reason: Option<RelayReason>,
    /// Decrypted payload bytes received from this peer.
    pub rx_bytes: u64,
    /// Payload bytes sent to this peer.
    pub tx_bytes: u64,
    /// Time since the last completed handshake.
    pub last_handshake: Option<Duration>,
    /// Handshakes completed with this peer (as initiator or responder) since it was added.
    pub handshakes: u64,
    /// Cipher of the session packets to this peer are sealed with (`None` without one).
    pub cipher: Option<CipherSuite>,
}

/// The node's data-plane state machine.
#[derive(Debug)]
pub struct Engine {
    /// Engine-wide state (identity, RNG, index table, outputs, counters).
    shared: Shared,
    /// Known peers (ordered, so that timers fire and draw randomness in a deterministic order).
    peers: BTreeMap<NodeId, Peer>,
    /// Mesh address → peer, for TUN packets.
    by_ip: HashMap<Ipv4Addr, NodeId>,
    /// Static key → peer, for handshake initiations.
    by_key: HashMap<PublicKey, NodeId>,
}

impl Engine {
    /// Builds an engine; `seed` feeds its deterministic RNG (session indices, ephemeral keys,
    /// probe ids).
    pub fn new(config: EngineConfig, seed: [u8; 32], now: Instant) -> Self {
        Self {
            shared: Shared {
                config,
                start: now,
                rng: ChaCha20Rng::from_seed(seed),
                by_index: HashMap::new(),
                transmits: VecDeque::new(),
                relay_transmits: VecDeque::new(),
                relay_available: false,
                udp_blocked: false,
                events: VecDeque::new(),
                drops: DropCounters::default(),
                last_timestamp: None,
                init_budget: shared::InitBudget::new(),
            },
            peers: BTreeMap::new(),
            by_ip: HashMap::new(),
            by_key: HashMap::new(),
        }
    }

    /// This node's public key.
    pub fn public_key(&self) -> PublicKey {
        self.shared.config.private_key.public_key()
    }

    /// Sets the cipher for the sessions this node starts from now on (the mesh-wide choice the
    /// coordinator's Welcome carries). Running sessions keep theirs until their next rekey; as a
    /// responder the engine always answers in the initiator's cipher.
    pub fn set_suite(&mut self, suite: CipherSuite) {
        self.shared.config.suite = suite;
    }

    /// The cipher for sessions this node starts.
    pub fn suite(&self) -> CipherSuite {
        self.shared.config.suite
    }

    /// Replaces the peer list (the coordinator's Welcome).
    pub fn set_peers(&mut self, peers: &[PeerRecord], now: Instant) {
        let keep: Vec<NodeId> = peers.iter().map(|p| p.node_id).collect();
        let gone: Vec<NodeId> = self
            .peers
            .keys()
            .filter(|id| !keep.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.remove_peer(id);
        }
        for p in peers {
            self.upsert_peer(p, now);
        }
    }

    /// Adds or updates one peer (the coordinator's PeerUpsert).
    pub fn upsert_peer(&mut self, record: &PeerRecord, now: Instant) {
        if record.node_id == self.shared.config.node_id {
            return;
        }
        let id = record.node_id;
        if let Some(peer) = self.peers.get_mut(&id) {
            if peer.record.public_key != record.public_key {
                debug!(peer = %id, "peer key changed; sessions dropped");
                peer.clear_sessions(&mut self.shared);
                peer.probe_key =
                    ProbeKey::derive(&self.shared.config.private_key, &record.public_key);
                peer.last_init_timestamp = None;
                self.by_key.remove(&peer.record.public_key);
            }
            if peer.record.mesh_ip != record.mesh_ip {
                self.by_ip.remove(&peer.record.mesh_ip.0);
            }
            peer.set_candidates(&record.candidates);
            peer.record = record.clone();
            if peer.round.is_some() {
                // Still punching: try the new candidates at once.
                peer.probe_volley(&mut self.shared, now);
            }
            // Coming online makes the relay usable for it.
            peer.kick(&mut self.shared, now);
            peer.report_path(&mut self.shared);
        } else {
            let key = ProbeKey::derive(&self.shared.config.private_key, &record.public_key);
            let jitter_ms = self.shared.rng.next_u64() % (REKEY_JITTER_MAX.as_millis() as u64 + 1);
            let jitter = Duration::from_millis(jitter_ms);
            let relay = self.shared.relay_available;
            self.peers
                .insert(id, Peer::new(record.clone(), key, jitter, relay));
        }
        self.by_ip.insert(record.mesh_ip.0, id);
        self.by_key.insert(record.public_key, id);
    }

    /// Forgets a peer and its sessions (the coordinator's PeerRemoved).
    pub fn remove_peer(&mut self, peer: NodeId) {
        if let Some(mut p) = self.peers.remove(&peer) {
            p.clear_sessions(&mut self.shared);
            if self.by_ip.get(&p.record.mesh_ip.0) == Some(&peer) {
                self.by_ip.remove(&p.record.mesh_ip.0);
            }
            if self.by_key.get(&p.record.public_key) == Some(&peer) {
                self.by_key.remove(&p.record.public_key);
            }
        }
    }

    /// The coordinator's Punch order: probe `candidates` of `peer` now, with backoff.
    pub fn handle_punch(&mut self, peer: NodeId, candidates: &[SocketAddr], now: Instant) {
        let Some(p) = self.peers.get_mut(&peer) else {
            debug!(%peer, "punch order for unknown peer ignored");
            return;
        };
        for &c in candidates {
            p.add_candidate(c, false);
        }
        if p.round.is_some() {
            // Already probing: keep the backoff, but fire a volley now, in step with the peer
            // that has just been told to start.
            p.probe_volley(&mut self.shared, now);
        } else {
            p.start_round(&mut self.shared, now);
        }
    }

    /// A datagram arrived on the data socket (never a QUIC packet). Returns the length of a
    /// decrypted IP packet written to `tun_out`, if the datagram carried one. `tun_out` must
    /// hold the largest IP packet a peer may send (the TUN MTU).
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        tun_out: &mut [u8],
        now: Instant,
    ) -> Option<usize> {
        let packet = match Packet::parse(datagram) {
            Ok(p) => p,
            Err(e) => {
                self.shared.drops.malformed += 1;
                debug!(%from, error = %e, "malformed datagram dropped");
                return None;
            }
        };
        let source = Source::Udp(from);
        match packet {
            Packet::Transport(t) => return self.on_transport(source, &t, tun_out, now),
            Packet::HandshakeInit(h) => self.on_handshake_init(source, &h, now),
            Packet::HandshakeResp(h) => self.on_handshake_resp(source, &h, now),
            Packet::Probe(p) => {
                if let Some(peer) = authentic_peer(
                    &mut self.peers,
                    &mut self.shared,
                    p.sender,
                    p.authenticated,
                    p.mac,
                    from,
                ) {
                    peer.on_probe(from, &p, &mut self.shared, now);
                    peer.report_path(&mut self.shared);
                }
            }
            Packet::ProbeAck(a) => {
                if let Some(peer) = authentic_peer(
                    &mut self.peers,
                    &mut self.shared,
                    a.sender,
                    a.authenticated,
                    a.mac,
                    from,
                ) {
                    if !peer.on_probe_ack(&a, &mut self.shared, now) {
                        self.shared.drops.ack_unmatched += 1;
                        debug!(%from, "probe ack matches no probe");
                    }
                    peer.report_path(&mut self.shared);
                }
            }
        }
        None
    }

    /// An IP packet was read from TUN.
    pub fn handle_tun_packet(&mut self, packet: &[u8], now: Instant) {
        let Some(dst) = inner_destination(packet) else {
            self.shared.drops.tun_not_ipv4 += 1;
            return;
        };
        let Some(peer) = self.by_ip.get(&dst).and_then(|id| self.peers.get_mut(id)) else {
            self.shared.drops.tun_unknown_dst += 1;
            debug!(%dst, "TUN packet for unknown mesh address dropped");
            return;
        };
        peer.last_demand = Some(now);
        if peer.can_send(now)
            && peer.queue.is_empty()
            && peer.send_transport(packet, &mut self.shared, now)
        {
            return;
        }
        peer.enqueue(packet, &mut self.shared);
        peer.kick(&mut self.shared, now);
        if peer.endpoint.is_none() {
            // Start a round unless one runs or the next is scheduled (rounds back off to one
            // per ROUND_INTERVAL or more while no path is found). With a relay this runs in
            // the background while the relay carries the traffic.
            if peer.round.is_none() && peer.next_round_at.is_none() {
                peer.request_punch(&mut self.shared, now);
                peer.start_round(&mut self.shared, now);
            }
        }
        peer.report_path(&mut self.shared);
    }

    /// Allocation-free fast path for an IP packet read from TUN: when its peer has a session
    /// and a path, seals it straight into `out` (behind the relay header when the path is the
    /// relay) and says where the `len` bytes go.
    /// Otherwise behaves exactly like [`Engine::handle_tun_packet`] (queue while connecting,
    /// or drop and count) and returns `None`; drain [`Engine::poll_transmit`] and
    /// [`Engine::poll_relay_transmit`] as usual either way. `out` must hold
    /// `RELAY_HEADER_LEN + packet.len() + TRANSPORT_OVERHEAD` bytes.
    pub fn encapsulate(
        &mut self,
        packet: &[u8],
        out: &mut [u8],
        now: Instant,
    ) -> Option<Encapsulated> {
        let peer = inner_destination(packet)
            .and_then(|dst| self.by_ip.get(&dst))
            .and_then(|id| self.peers.get_mut(id));
        if let Some(peer) = peer {
            if peer.queue.is_empty() && peer.can_send(now) {
                if let Some(done) = peer.seal_framed(packet, out, &mut self.shared, now) {
                    peer.last_demand = Some(now);
                    return Some(done);
                }
            }
        }
        self.handle_tun_packet(packet, now);
        None
    }

    /// The shell noticed that this node's own network changed (new local address, interface
    /// up/down, re-registration showed a new reflexive address): re-confirm every path now
    /// instead of waiting for it to time out. Sends an authenticated keepalive (so peers roam to
    /// the new address when their NAT lets it in), asks the coordinator to make each such peer
    /// punch, and starts a probing round.
    pub fn network_changed(&mut self, now: Instant) {
        for peer in self.peers.values_mut() {
            if peer.endpoint.is_none() && !peer.has_demand(now) {
                continue;
            }
            peer.send_transport(&[], &mut self.shared, now);
            // The rate limit is for repeated demand, not for this one-off hint.
            peer.last_punch_request = None;
            peer.request_punch(&mut self.shared, now);
            peer.start_round(&mut self.shared, now);
        }
    }

    /// The deadline from [`Engine::poll_timeout`] passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        for peer in self.peers.values_mut() {
            if peer.next_deadline().is_some_and(|d| d <= now) {
                peer.on_timeout(&mut self.shared, now);
            }
        }
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.shared.transmits.pop_front()
    }

    /// Next datagram for the relay (send it on the control connection).
    pub fn poll_relay_transmit(&mut self) -> Option<RelayTransmit> {
        self.shared.relay_transmits.pop_front()
    }

    /// Next event for the shell.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.shared.events.pop_front()
    }

    /// When [`Engine::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers.values().filter_map(|p| p.next_deadline()).min()
    }

    /// Per-peer status.
    pub fn peer_status(&self, now: Instant) -> Vec<PeerStatus> {
        let mut v: Vec<PeerStatus> = self.peers.values().map(|p| p.status(now)).collect();
        if self.shared.udp_blocked {
            for s in &mut v {
                // Punching cannot work without UDP; say so instead of the punch state. Reasons
                // that the relay itself is not usable stay.
                if let Some(r) = &mut s.relay_reason {
                    if !matches!(r, RelayReason::PeerOffline | RelayReason::RelayUnavailable) {
                        *r = RelayReason::UdpBlocked;
                    }
                }
            }
        }
        v.sort_by_key(|s| s.node_id);
        v
    }

    /// Why inputs were dropped, since the engine started.
    pub fn drop_counters(&self) -> &DropCounters {
        &self.shared.drops
    }
}

/// The peer `sender` if `mac` authenticates `data` with its probe key (else counted).
fn authentic_peer<'a>(
    peers: &'a mut BTreeMap<NodeId, Peer>,
    shared: &mut Shared,
    sender: NodeId,
    data: &[u8],
    mac: &[u8],
    from: SocketAddr,
) -> Option<&'a mut Peer> {
    let Some(peer) = peers.get_mut(&sender) else {
        shared.drops.probe_unknown_peer += 1;
        debug!(%from, %sender, "probe from unknown node dropped");
        return None;
    };
    if !peer.probe_key.verify(data, mac) {
        shared.drops.probe_bad_mac += 1;
        debug!(%from, %sender, "probe with bad MAC dropped");
        return None;
    }
    Some(peer)
}
