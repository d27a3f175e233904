//! State every peer's logic needs besides its own (sans-IO, engine layer): our identity, the
//! RNG, the session-index table, the output queues and the drop counters.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;

use super::path::Route;
use super::{EngineConfig, Event, RelayTransmit, Transmit};
use crate::ids::{NodeId, SessionIndex};
use crate::noise::Timestamp;

/// Why inputs were dropped, counted since the engine started. Every dropped input increments
/// exactly one counter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// Datagram that does not parse (truncated, unknown type, QUIC byte, reserved bits).
    pub malformed: u64,
    /// Probe or ack from a node id that is not a listed peer.
    pub probe_unknown_peer: u64,
    /// Probe or ack whose MAC does not verify.
    pub probe_bad_mac: u64,
    /// Authentic ack that matches no outstanding probe.
    pub ack_unmatched: u64,
    /// Handshake message that Noise rejected.
    pub handshake_invalid: u64,
    /// Initiation not processed because more than MAX_INITS_PER_SEC arrived this second.
    pub handshake_rate_limited: u64,
    /// Authentic initiation from a key the coordinator has not listed.
    pub handshake_unknown_key: u64,
    /// Initiation whose timestamp is not newer than the last accepted one (replay).
    pub handshake_replay: u64,
    /// Response that matches no initiation in flight.
    pub handshake_unexpected: u64,
    /// Transport packet for a session index we do not have.
    pub unknown_index: u64,
    /// Transport packet that failed authentication.
    pub decrypt_failed: u64,
    /// Transport packet whose counter was already seen or is too old.
    pub replayed: u64,
    /// Transport packet for a session older than REJECT_AFTER_TIME (or counter exhausted).
    pub expired: u64,
    /// Decrypted packet whose inner source is not the sending peer's mesh address.
    pub inner_src_mismatch: u64,
    /// Decrypted packet larger than the caller's TUN buffer.
    pub tun_out_too_small: u64,
    /// TUN packet that is not IPv4.
    pub tun_not_ipv4: u64,
    /// TUN packet to a mesh address no peer has.
    pub tun_unknown_dst: u64,
    /// TUN packet dropped because the peer's connect queue was full (oldest dropped).
    pub queue_overflow: u64,
    /// TUN packet dropped because no path was found while it waited in the connect queue.
    pub queue_expired: u64,
    /// Relay datagram shorter than its header.
    pub relay_malformed: u64,
    /// Probe or ack that arrived through the relay (probes test direct paths only).
    pub relay_probe: u64,
}

impl DropCounters {
    /// Every counter with its reason name (the field name), in declaration order, for metrics
    /// and status output.
    pub fn reasons(&self) -> [(&'static str, u64); 21] {
        // Destructured so that a new counter cannot be forgotten here.
        let Self {
            malformed,
            probe_unknown_peer,
            probe_bad_mac,
            ack_unmatched,
            handshake_invalid,
            handshake_rate_limited,
            handshake_unknown_key,
            handshake_replay,
            handshake_unexpected,
            unknown_index,
            decrypt_failed,
            replayed,
            expired,
            inner_src_mismatch,
            tun_out_too_small,
            tun_not_ipv4,
            tun_unknown_dst,
            queue_overflow,
            queue_expired,
            relay_malformed,
            relay_probe,
        } = *self;
        [
            ("malformed", malformed),
            ("probe_unknown_peer", probe_unknown_peer),
            ("probe_bad_mac", probe_bad_mac),
            ("ack_unmatched", ack_unmatched),
            ("handshake_invalid", handshake_invalid),
            ("handshake_rate_limited", handshake_rate_limited),
            ("handshake_unknown_key", handshake_unknown_key),
            ("handshake_replay", handshake_replay),
            ("handshake_unexpected", handshake_unexpected),
            ("unknown_index", unknown_index),
            ("decrypt_failed", decrypt_failed),
            ("replayed", replayed),
            ("expired", expired),
            ("inner_src_mismatch", inner_src_mismatch),
            ("tun_out_too_small", tun_out_too_small),
            ("tun_not_ipv4", tun_not_ipv4),
            ("tun_unknown_dst", tun_unknown_dst),
            ("queue_overflow", queue_overflow),
            ("queue_expired", queue_expired),
            ("relay_malformed", relay_malformed),
            ("relay_probe", relay_probe),
        ]
    }
}

/// Engine-wide state shared by the per-peer logic.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The engine's settings.
    pub config: EngineConfig,
    /// The `now` given to `Engine::new`; wall-clock timestamps count from it.
    pub start: Instant,
    /// Deterministic randomness (session indices, probe ids, ephemeral key seeds).
    pub rng: ChaCha20Rng,
    /// Which peer owns each of our live session indices (pending handshakes included).
    pub by_index: HashMap<SessionIndex, NodeId>,
    /// Datagrams for the shell.
    pub transmits: VecDeque<Transmit>,
    /// Relay datagrams for the shell.
    pub relay_transmits: VecDeque<RelayTransmit>,
    /// Whether the shell has a working relay (control connection with datagrams).
    pub relay_available: bool,
    /// Whether the shell reaches the coordinator over TCP only (`Engine::set_udp_blocked`).
    pub udp_blocked: bool,
    /// Events for the shell.
    pub events: VecDeque<Event>,
    /// Drop statistics.
    pub drops: DropCounters,
    /// Last handshake timestamp issued (they must strictly grow).
    pub last_timestamp: Option<Timestamp>,
    /// Budget of initiations we are willing to process (each costs two X25519 operations).
    pub init_budget: InitBudget,
}

/// Initiations processed per second at most, across all sources. Legitimate initiations are
/// rare (one per peer per two minutes, plus retries), so this only bites under a flood, where it
/// caps the CPU an unauthenticated sender can burn (WireGuard answers floods with cookies;
/// Warren has no cookie reply yet).
pub const MAX_INITS_PER_SEC: u32 = 200;

/// A token bucket for handshake initiations.
#[derive(Debug)]
pub(crate) struct InitBudget {
    /// Initiations still allowed in the current one-second window.
    left: u32,
    /// Start of the current window.
    window_start: Option<Instant>,
}

impl InitBudget {
    /// An untouched budget.
    pub fn new() -> Self {
        Self {
            left: MAX_INITS_PER_SEC,
            window_start: None,
        }
    }

    /// Takes one initiation from the budget; false if it is used up for this second.
    pub fn take(&mut self, now: Instant) -> bool {
        let fresh = self
            .window_start
            .is_none_or(|t| now.saturating_duration_since(t) >= std::time::Duration::from_secs(1));
        if fresh {
            self.window_start = Some(now);
            self.left = MAX_INITS_PER_SEC;
        }
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }
}

impl Shared {
    /// A fresh, unused, non-zero session index owned by `peer`.
    pub fn alloc_index(&mut self, peer: NodeId) -> SessionIndex {
        loop {
            let idx = SessionIndex(self.rng.next_u32());
            if idx.0 != 0 && !self.by_index.contains_key(&idx) {
                self.by_index.insert(idx, peer);
                return idx;
            }
        }
    }

    /// Releases a session index.
    pub fn free_index(&mut self, idx: SessionIndex) {
        self.by_index.remove(&idx);
    }

    /// 32 random bytes (seed for one handshake's ephemeral key).
    pub fn seed(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.rng.fill_bytes(&mut s);
        s
    }

    /// A random probe transaction id.
    pub fn tx_id(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// The handshake timestamp for `now`: wall-clock base plus elapsed time, strictly greater
    /// than any issued before.
    pub fn next_timestamp(&mut self, now: Instant) -> Timestamp {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let mut nanos = self
            .config
            .wall_clock_base_nanos
            .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX));
        if let Some(last) = self.last_timestamp {
            let last_nanos = last.to_unix_nanos();
            if nanos <= last_nanos {
                nanos = last_nanos.saturating_add(1);
            }
        }
        let ts = Timestamp::from_unix_nanos(nanos);
        self.last_timestamp = Some(ts);
        ts
    }

    /// Queues a datagram.
    pub fn send(&mut self, dst: SocketAddr, payload: Vec<u8>) {
        self.transmits.push_back(Transmit { dst, payload });
    }

    /// Queues `packet` for `peer` on `route`.
    pub fn send_via(&mut self, route: Route, peer: NodeId, packet: Vec<u8>) {
        match route {
            Route::Udp(dst) => self.send(dst, packet),
            Route::Relay => {
                let datagram = crate::relay::build(peer, &packet);
                self.relay_transmits
                    .push_back(RelayTransmit { peer, datagram });
            }
        }
    }
}
