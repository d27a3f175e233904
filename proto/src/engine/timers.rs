//! Per-peer timers as data (sans-IO, engine layer).
//!
//! There is no polling tick: each [`Timer`] derives its deadline from the peer's state, the
//! engine reports the earliest one through `poll_timeout`, and `handle_timeout` fires every timer
//! that is due. Firing a timer always changes the state its deadline derives from, so a due timer
//! can never fire in a loop.

use std::time::{Duration, Instant};

use tracing::debug;

use super::path::RelayReason;
use super::peer::Peer;
use super::punch::ROUND_INTERVAL;
use super::shared::Shared;
use super::PathKind;
use crate::noise::{KEEPALIVE_TIMEOUT, PASSIVE_KEEPALIVE, REJECT_AFTER_TIME, REKEY_TIMEOUT};

/// A direct path on which we sent data and heard nothing back for this long is dead: the peer
/// owes us a passive keepalive after [`PASSIVE_KEEPALIVE`] (10 s), plus one [`REKEY_TIMEOUT`]
/// (5 s) of slack for latency and loss. WireGuard uses the same sum to trigger a new handshake.
pub const PATH_DEAD_TIMEOUT: Duration = Duration::from_secs(15);
/// A direct path that brought nothing at all for this long is dead even if we sent no data: the
/// peer sends a persistent keepalive at least every [`KEEPALIVE_TIMEOUT`] (25 s), so this is two
/// missed keepalives plus one [`REKEY_TIMEOUT`] of slack (55 s). Keeps `warren status` honest
/// when a peer vanishes while idle.
pub const PATH_SILENCE_TIMEOUT: Duration = Duration::from_secs(55);
/// Initiations sent over a path without any response before the path is declared dead
/// (3 × REKEY_TIMEOUT = 15 s, matching [`PATH_DEAD_TIMEOUT`]).
pub const MAX_HANDSHAKE_ATTEMPTS: u32 = 3;
/// A responder starts its own rekey this late if the initiator did not rekey
/// (WireGuard's receive-side margin: REJECT_AFTER_TIME − KEEPALIVE_TIMEOUT − REKEY_TIMEOUT).
pub const RESPONDER_REKEY_AFTER: Duration = Duration::from_secs(165);

/// Everything a peer may be waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Next probe volley of the running round.
    ProbeVolley,
    /// End of the running round.
    RoundEnd,
    /// Start of the next round (traffic waiting, no path).
    NextRound,
    /// Initiation unanswered for REKEY_TIMEOUT.
    HandshakeRetry,
    /// Idle direct path: keep the NAT mapping open.
    PersistentKeepalive,
    /// Data received and nothing sent back: tell the sender we are alive.
    PassiveKeepalive,
    /// Data sent and nothing received for PATH_DEAD_TIMEOUT.
    PathDead,
    /// Nothing at all received on a direct path for PATH_SILENCE_TIMEOUT.
    PathSilent,
    /// Current session old enough to replace.
    Rekey,
    /// Some session reaches REJECT_AFTER_TIME.
    SessionExpiry,
    /// Next verification probe of an unproven direct address (relay in use).
    DirectVerify,
    /// Liveness check of the active direct path (relay available as fallback).
    DirectCheck,
}

const ALL: [Timer; 12] = [
    Timer::ProbeVolley,
    Timer::RoundEnd,
    Timer::NextRound,
    Timer::HandshakeRetry,
    Timer::PersistentKeepalive,
    Timer::PassiveKeepalive,
    Timer::PathDead,
    Timer::PathSilent,
    Timer::Rekey,
    Timer::SessionExpiry,
    Timer::DirectVerify,
    Timer::DirectCheck,
];

impl Peer {
    /// Whether traffic for this peer was recent (worth punching for).
    pub fn has_demand(&self, now: Instant) -> bool {
        self.last_demand
            .is_some_and(|t| now.saturating_duration_since(t) < ROUND_INTERVAL)
    }

    /// Nobody is waiting any more: queued packets are stale.
    fn expire_queue(&mut self, shared: &mut Shared) {
        shared.drops.queue_expired += self.queue.len() as u64;
        self.queue.clear();
    }

    fn deadline(&self, timer: Timer) -> Option<Instant> {
        let direct = self.path() == PathKind::Direct;
        match timer {
            Timer::ProbeVolley => self.round.as_ref().and_then(|r| r.next_probe_at),
            Timer::RoundEnd => self.round.as_ref().map(|r| r.ends_at()),
            Timer::NextRound => self.next_round_at,
            Timer::HandshakeRetry => self.pending.as_ref().map(|p| p.sent_at + REKEY_TIMEOUT),
            Timer::PersistentKeepalive => {
                let since = self
                    .last_sent
                    .or(self.current.as_ref().map(|s| s.created_at))?;
                direct.then_some(since + KEEPALIVE_TIMEOUT)
            }
            Timer::PassiveKeepalive => (self.path() != PathKind::Connecting)
                .then_some(self.keepalive_owed_since? + PASSIVE_KEEPALIVE),
            Timer::PathDead => {
                self.route()?;
                Some(self.awaiting_reply_since? + PATH_DEAD_TIMEOUT)
            }
            Timer::PathSilent => {
                let since = self.last_received.or(self.last_handshake)?;
                direct.then_some(since + PATH_SILENCE_TIMEOUT)
            }
            Timer::Rekey => {
                if self.route().is_none() || self.pending.is_some() {
                    return None;
                }
                self.rekey_due_at()
            }
            Timer::SessionExpiry => [&self.current, &self.previous, &self.next]
                .into_iter()
                .filter_map(|s| s.as_ref().map(|s| s.created_at + REJECT_AFTER_TIME))
                .min(),
            Timer::DirectVerify => self.verify_deadline(),
            Timer::DirectCheck => self.check_deadline(),
        }
    }

    /// The earliest deadline of any timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        ALL.iter().filter_map(|&t| self.deadline(t)).min()
    }

    /// Fires every due timer.
    pub fn on_timeout(&mut self, shared: &mut Shared, now: Instant) {
        for timer in ALL {
            if self.deadline(timer).is_some_and(|d| d <= now) {
                self.fire(timer, shared, now);
            }
        }
        self.report_path(shared);
    }

    fn fire(&mut self, timer: Timer, shared: &mut Shared, now: Instant) {
        match timer {
            Timer::ProbeVolley => self.probe_volley(shared, now),
            Timer::RoundEnd => {
                if let Some(round) = self.round.take() {
                    if self.endpoint.is_none() {
                        self.failed_rounds = self.failed_rounds.saturating_add(1);
                        if self.reason == RelayReason::Punching {
                            self.reason = RelayReason::PunchTimedOut;
                        }
                    }
                    if self.endpoint.is_none() && self.has_demand(now) {
                        debug!(peer = %self.id(), "probing round found no path");
                        self.next_round_at = Some(round.started + self.round_interval());
                    } else if self.endpoint.is_none() && self.route().is_none() {
                        self.expire_queue(shared);
                    }
                }
            }
            Timer::NextRound => {
                self.next_round_at = None;
                if self.endpoint.is_none() && self.has_demand(now) {
                    self.request_punch(shared, now);
                    self.start_round(shared, now);
                } else if self.endpoint.is_none() && self.route().is_none() {
                    self.expire_queue(shared);
                }
            }
            Timer::HandshakeRetry => {
                let attempts = self.pending.as_ref().map_or(0, |p| p.attempts);
                let heard_recently = self
                    .last_received
                    .is_some_and(|t| now.saturating_duration_since(t) < PATH_DEAD_TIMEOUT);
                if attempts < MAX_HANDSHAKE_ATTEMPTS {
                    self.start_handshake(shared, now);
                } else if heard_recently && self.can_send(now) {
                    // A rekey keeps failing (loss) but the path demonstrably works: keep the
                    // session and start a fresh series of attempts.
                    self.clear_pending(shared);
                    self.start_handshake(shared, now);
                } else if self.relay_usable() {
                    debug!(peer = %self.id(), attempts, "handshake unanswered; relay kept");
                    self.clear_pending(shared);
                    if self.direct_active {
                        self.demote(RelayReason::DirectLost, shared, now);
                    }
                } else {
                    debug!(peer = %self.id(), attempts, "handshake unanswered");
                    self.path_dead(shared, now);
                }
            }
            Timer::PersistentKeepalive => {
                self.send_transport(&[], shared, now);
                // A probe alongside refreshes the RTT shown in `warren status`.
                if let Some(ep) = self.endpoint {
                    let i = self.add_candidate(ep, true);
                    self.send_probe(i, shared, now);
                }
            }
            Timer::PassiveKeepalive => {
                self.send_transport(&[], shared, now);
            }
            Timer::PathDead if self.relay_usable() => {
                // Nothing came back on any path: the peer may have lost its sessions (e.g. a
                // restart). Drop ours; the next packet handshakes again over the relay.
                debug!(peer = %self.id(), "peer unresponsive; sessions dropped");
                self.awaiting_reply_since = None;
                self.clear_sessions(shared);
                if self.direct_active {
                    self.demote(RelayReason::DirectLost, shared, now);
                }
            }
            Timer::PathSilent if self.relay_usable() => {
                self.demote(RelayReason::DirectLost, shared, now);
            }
            Timer::PathDead | Timer::PathSilent => self.path_dead(shared, now),
            Timer::DirectVerify => self.fire_verify(shared, now),
            Timer::DirectCheck => self.fire_check(shared, now),
            Timer::Rekey => {
                debug!(peer = %self.id(), "rekey");
                self.start_handshake(shared, now);
            }
            Timer::SessionExpiry => {
                for slot in [&mut self.current, &mut self.previous, &mut self.next] {
                    if slot.as_ref().is_some_and(|s| s.is_expired(now)) {
                        if let Some(s) = slot.take() {
                            debug!(peer = %self.record.node_id, index = s.local_index.0, "session expired");
                            shared.free_index(s.local_index);
                        }
                    }
                }
                if self.current.is_none() && self.route().is_some() && self.pending.is_none() {
                    self.start_handshake(shared, now);
                }
            }
        }
    }
}
