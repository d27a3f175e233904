//! One peer's state (sans-IO, engine layer): its record, sessions, path and traffic counters,
//! and the send side of the data path.
//!
//! Sessions follow WireGuard's three slots: `current` (newest completed, used to send),
//! `previous` (kept so packets in flight under the old keys still decrypt after a rekey) and
//! `next` (a session we completed as responder, promoted to `current` once the initiator proves
//! it has the keys by sending on it). Packets are received on any slot by index.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::debug;

use super::path::{Check, RelayReason, Route};
use super::punch::{Candidate, Round};
use super::shared::Shared;
use super::timers::RESPONDER_REKEY_AFTER;
use super::{Encapsulated, Event, PathKind, PeerStatus, RelayTransmit};
use crate::control::PeerRecord;
use crate::ids::NodeId;
use crate::noise::{
    InitiatorHandshake, NoiseError, Session, Timestamp, REKEY_AFTER_MESSAGES, REKEY_AFTER_TIME,
};
use crate::packet::TRANSPORT_OVERHEAD;
use crate::probe::ProbeKey;
use crate::relay::RELAY_HEADER_LEN;

/// Packets queued per peer while connecting; the oldest is dropped beyond this (a TCP
/// retransmits anyway; a deep queue only adds latency).
pub const MAX_QUEUED: usize = 32;
/// Largest per-peer jitter added to REKEY_AFTER_TIME.
pub const REKEY_JITTER_MAX: Duration = Duration::from_secs(3);
/// Minimum spacing of PunchRequest events per peer (the coordinator relays each to the peer).
pub const PUNCH_REQUEST_INTERVAL: Duration = Duration::from_secs(5);

/// An initiation in flight.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The handshake; `None` after a forged or broken response consumed it (the retry timer
    /// still fires).
    pub hs: Option<InitiatorHandshake>,
    /// When the latest attempt was sent.
    pub sent_at: Instant,
    /// Attempts sent so far in this series.
    pub attempts: u32,
}

/// Everything the engine knows about one peer.
#[derive(Debug)]
pub(crate) struct Peer {
    /// The coordinator's record (key, mesh address, candidates).
    pub record: PeerRecord,
    /// Pairwise key authenticating probes.
    pub probe_key: ProbeKey,
    /// Addresses to probe: the coordinator's plus peer-reflexive ones we learned.
    pub candidates: Vec<Candidate>,
    /// The probing round in progress.
    pub round: Option<Round>,
    /// When to start another round (set when a round failed while traffic is waiting).
    pub next_round_at: Option<Instant>,
    /// Confirmed remote address of the direct path (in use, or being verified while the relay
    /// carries the traffic).
    pub endpoint: Option<SocketAddr>,
    /// Traffic uses `endpoint` (it proved itself, or there is no relay to use instead).
    pub direct_active: bool,
    /// Whether the shell has a working relay (mirrors the engine-wide flag).
    pub relay_ok: bool,
    /// When the unproven `endpoint` was confirmed (verification running).
    pub confirmed_at: Option<Instant>,
    /// When the next verification probe is due.
    pub next_verify_at: Option<Instant>,
    /// When the last verification ack (or the confirmation) arrived.
    pub last_verify_ack: Option<Instant>,
    /// Liveness check of the active direct path in progress.
    pub check: Option<Check>,
    /// Since when data sent over UDP has seen nothing come back over UDP.
    pub direct_awaiting_since: Option<Instant>,
    /// When traffic last moved to the direct path.
    pub promoted_at: Option<Instant>,
    /// Recent demotions of the direct path (longer proof before the next promotion).
    pub demotions: u32,
    /// Probing rounds that failed since the last path change (round spacing backs off).
    pub failed_rounds: u32,
    /// Why the peer is not direct, as far as events tell (see `Peer::relay_reason`).
    pub reason: RelayReason,
    /// Round-trip time of the endpoint, measured by probes.
    pub rtt: Option<Duration>,
    /// Path last reported through `Event::PathChanged`.
    pub reported_path: PathKind,
    /// Our initiation in flight.
    pub pending: Option<Pending>,
    /// Newest completed session, used to send.
    pub current: Option<Session>,
    /// The session `current` replaced.
    pub previous: Option<Session>,
    /// Session completed as responder, not yet confirmed by the initiator.
    pub next: Option<Session>,
    /// Greatest initiation timestamp accepted from this peer.
    pub last_init_timestamp: Option<Timestamp>,
    /// IP packets waiting for a session.
    pub queue: VecDeque<Vec<u8>>,
    /// When we last asked the coordinator to make this peer punch.
    pub last_punch_request: Option<Instant>,
    /// When TUN last had a packet for this peer (demand for a path).
    pub last_demand: Option<Instant>,
    /// When we last sent anything to this peer (persistent keepalive).
    pub last_sent: Option<Instant>,
    /// When an authenticated packet last came from this peer.
    pub last_received: Option<Instant>,
    /// Since when we have sent data without hearing back (path death detection).
    pub awaiting_reply_since: Option<Instant>,
    /// Since when we received data without sending anything back (passive keepalive).
    pub keepalive_owed_since: Option<Instant>,
    /// Decrypted payload bytes received.
    pub rx_bytes: u64,
    /// Payload bytes sent.
    pub tx_bytes: u64,
    /// When the latest session was completed.
    pub last_handshake: Option<Instant>,
    /// Handshakes completed (either role), for metrics.
    pub handshakes: u64,
    /// A direct address the local stack refused to send full-size datagrams to, and until
    /// when it is not taken as the endpoint (see `Engine::send_refused`).
    pub refused: Option<(SocketAddr, Instant)>,
    /// Added to REKEY_AFTER_TIME for this peer (up to [`REKEY_JITTER_MAX`]), so that two
    /// initiators that keyed at the same moment do not rekey at the same moment again.
    pub rekey_jitter: Duration,
}

impl Peer {
    pub fn new(
        record: PeerRecord,
        probe_key: ProbeKey,
        rekey_jitter: Duration,
        relay_ok: bool,
    ) -> Self {
        let candidates = record
            .candidates
            .iter()
            .map(|&a| Candidate::new(a, false))
            .collect();
        Self {
            record,
            probe_key,
            candidates,
            round: None,
            next_round_at: None,
            endpoint: None,
            direct_active: false,
            relay_ok,
            confirmed_at: None,
            next_verify_at: None,
            last_verify_ack: None,
            check: None,
            direct_awaiting_since: None,
            promoted_at: None,
            demotions: 0,
            failed_rounds: 0,
            reason: RelayReason::Punching,
            rtt: None,
            reported_path: PathKind::Connecting,
            pending: None,
            current: None,
            previous: None,
            next: None,
            last_init_timestamp: None,
            queue: VecDeque::new(),
            last_punch_request: None,
            last_demand: None,
            last_sent: None,
            last_received: None,
            awaiting_reply_since: None,
            keepalive_owed_since: None,
            rx_bytes: 0,
            tx_bytes: 0,
            last_handshake: None,
            handshakes: 0,
            refused: None,
            rekey_jitter,
        }
    }

    pub fn id(&self) -> NodeId {
        self.record.node_id
    }

    /// Drops every session and the pending handshake, releasing their indices.
    pub fn clear_sessions(&mut self, shared: &mut Shared) {
        for s in [self.current.take(), self.previous.take(), self.next.take()]
            .into_iter()
            .flatten()
        {
            shared.free_index(s.local_index);
        }
        self.clear_pending(shared);
    }

    /// Forgets the handshake in flight.
    pub fn clear_pending(&mut self, shared: &mut Shared) {
        if let Some(hs) = self.pending.take().and_then(|p| p.hs) {
            shared.free_index(hs.local_index());
        }
    }

    /// Makes `session` the current one; the old current becomes previous.
    pub fn install_current(&mut self, session: Session, shared: &mut Shared, now: Instant) {
        if let Some(old) = self.previous.take() {
            shared.free_index(old.local_index);
        }
        self.previous = self.current.take();
        self.current = Some(session);
        self.last_handshake = Some(now);
    }

    /// When the keys should be replaced. The newest keys count, whether in `current` or still
    /// in `next` (the peer just rekeyed): if we initiated them we rekey after
    /// REKEY_AFTER_TIME (+ jitter), otherwise the peer is expected to, and we only step in at
    /// [`RESPONDER_REKEY_AFTER`], shortly before they expire.
    pub fn rekey_due_at(&self) -> Option<Instant> {
        self.current.as_ref()?;
        let newest = [self.current.as_ref(), self.next.as_ref()]
            .into_iter()
            .flatten()
            .max_by_key(|s| s.created_at)?;
        Some(if newest.is_initiator {
            newest.created_at + REKEY_AFTER_TIME + self.rekey_jitter
        } else {
            newest.created_at + RESPONDER_REKEY_AFTER
        })
    }

    /// Whether packets can be sent now.
    pub fn can_send(&self, now: Instant) -> bool {
        self.route().is_some() && self.current.as_ref().is_some_and(|s| !s.is_expired(now))
    }

    /// Whether `addr` is held down after the local stack refused datagrams to it.
    pub fn is_refused(&self, addr: SocketAddr, now: Instant) -> bool {
        self.refused
            .is_some_and(|(a, until)| a == addr && now < until)
    }

    /// Emits `PathChanged` if the path differs from the last reported one.
    pub fn report_path(&mut self, shared: &mut Shared) {
        let path = self.path();
        if path != self.reported_path {
            self.reported_path = path;
            debug!(peer = %self.id(), ?path, endpoint = ?self.endpoint, reason = ?self.relay_reason(), "path changed");
            shared.events.push_back(Event::PathChanged {
                peer: self.id(),
                path,
            });
        }
    }

    /// Encrypts and queues one packet (empty = keepalive) on the current session. Returns false
    /// if there is no usable session or path.
    pub fn send_transport(&mut self, plaintext: &[u8], shared: &mut Shared, now: Instant) -> bool {
        let mut buf = vec![0u8; RELAY_HEADER_LEN + plaintext.len() + TRANSPORT_OVERHEAD];
        match self.seal_framed(plaintext, &mut buf, shared, now) {
            Some(Encapsulated::Udp { dst, len }) => {
                buf.truncate(len);
                shared.send(dst, buf);
                true
            }
            Some(Encapsulated::Relay { peer, len }) => {
                buf.truncate(len);
                shared.relay_transmits.push_back(RelayTransmit {
                    peer,
                    datagram: buf,
                });
                true
            }
            None => false,
        }
    }

    /// Encrypts one packet into `out` ready for its path: the datagram itself for a direct
    /// path, or behind the relay header naming this peer (sealed in place, no copy) for the
    /// relay. `None` if there is no usable session or path or `out` is too small.
    pub fn seal_framed(
        &mut self,
        plaintext: &[u8],
        out: &mut [u8],
        shared: &mut Shared,
        now: Instant,
    ) -> Option<Encapsulated> {
        let body = match self.route()? {
            Route::Udp(_) => &mut *out,
            Route::Relay => out.get_mut(RELAY_HEADER_LEN..)?,
        };
        match self.seal_into(plaintext, body, shared, now)? {
            (Route::Udp(dst), len) => Some(Encapsulated::Udp { dst, len }),
            (Route::Relay, n) => {
                crate::relay::write_header(self.id(), out).ok()?;
                Some(Encapsulated::Relay {
                    peer: self.id(),
                    len: RELAY_HEADER_LEN + n,
                })
            }
        }
    }

    /// Encrypts one packet into `out` on the current session and does the bookkeeping of a
    /// send; returns the destination and datagram length, or `None` if there is no usable
    /// session or path or `out` is too small.
    pub fn seal_into(
        &mut self,
        plaintext: &[u8],
        out: &mut [u8],
        shared: &mut Shared,
        now: Instant,
    ) -> Option<(Route, usize)> {
        let (Some(route), Some(session)) = (self.route(), self.current.as_mut()) else {
            return None;
        };
        let n = match session.seal(plaintext, out, now) {
            Ok(n) => n,
            Err(NoiseError::BufferTooSmall) => return None,
            Err(e) => {
                debug!(peer = %self.record.node_id, error = %e, "session unusable for sending");
                if let Some(s) = self.current.take() {
                    shared.free_index(s.local_index);
                }
                return None;
            }
        };
        self.last_sent = Some(now);
        self.keepalive_owed_since = None;
        if !plaintext.is_empty() {
            self.tx_bytes += plaintext.len() as u64;
            self.awaiting_reply_since.get_or_insert(now);
            if matches!(route, Route::Udp(_)) {
                self.direct_awaiting_since.get_or_insert(now);
            }
        }
        let by_count = self
            .current
            .as_ref()
            .is_some_and(|s| s.sent_count() >= REKEY_AFTER_MESSAGES);
        let by_time = self.rekey_due_at().is_some_and(|t| t <= now);
        if (by_count || by_time) && self.pending.is_none() {
            self.start_handshake(shared, now);
        }
        Some((route, n))
    }

    /// Sends everything queued, if a session and path are up.
    pub fn flush_queue(&mut self, shared: &mut Shared, now: Instant) {
        while self.can_send(now) {
            let Some(pkt) = self.queue.pop_front() else {
                break;
            };
            self.send_transport(&pkt, shared, now);
        }
    }

    /// Queues a packet while connecting, dropping the oldest beyond [`MAX_QUEUED`].
    pub fn enqueue(&mut self, packet: &[u8], shared: &mut Shared) {
        if self.queue.len() >= MAX_QUEUED {
            self.queue.pop_front();
            shared.drops.queue_overflow += 1;
        }
        self.queue.push_back(packet.to_vec());
    }

    /// Emits a PunchRequest unless one went out within [`PUNCH_REQUEST_INTERVAL`].
    pub fn request_punch(&mut self, shared: &mut Shared, now: Instant) {
        let due = self
            .last_punch_request
            .is_none_or(|t| now.saturating_duration_since(t) >= PUNCH_REQUEST_INTERVAL);
        if due {
            self.last_punch_request = Some(now);
            shared.events.push_back(Event::PunchRequest(self.id()));
        }
    }

    /// Status for `warren status`.
    pub fn status(&self, now: Instant) -> PeerStatus {
        let path = self.path();
        PeerStatus {
            node_id: self.record.node_id,
            name: self.record.name.clone(),
            mesh_ip: self.record.mesh_ip,
            path,
            endpoint: if path == PathKind::Direct {
                self.endpoint
            } else {
                None
            },
            rtt: self.rtt,
            relay_reason: self.relay_reason(),
            rx_bytes: self.rx_bytes,
            tx_bytes: self.tx_bytes,
            last_handshake: self
                .last_handshake
                .map(|t| now.saturating_duration_since(t)),
            handshakes: self.handshakes,
            cipher: self.current.as_ref().map(|s| s.suite),
        }
    }
}
