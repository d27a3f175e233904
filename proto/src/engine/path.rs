//! Path choice between the direct UDP path and the coordinator's relay (sans-IO, engine layer;
//! DESIGN.md section 2.5).
//!
//! While the relay is usable (the shell said so through `set_relay_available` and the
//! coordinator lists the peer online), a peer without a *proven* direct path is reached through
//! the relay at once: handshakes and data go there while punching runs in the background.
//!
//! - *Verifying.* A punched address confirmed by a probe ack is not used yet: it is probed every
//!   [`VERIFY_INTERVAL`], and becomes the path (*promotion*) at the first ack that arrives at
//!   least [`prove_after`] after the confirmation (1 s at first, longer after each recent
//!   demotion, so that a flaky path cannot make traffic flap). An address that does not prove
//!   itself within [`VERIFY_GIVE_UP`] more is dropped.
//! - *Direct.* Data sent over UDP and nothing received over UDP for [`SUSPECT_AFTER`] starts a
//!   *check*: probes every [`CHECK_PROBE_INTERVAL`]; an ack (or any authenticated UDP packet)
//!   ends it, silence for [`CHECK_TIMEOUT`] *demotes* the path: traffic moves to the relay,
//!   sessions are kept (they do not depend on the path), and punching resumes.
//!
//! Without a usable relay the engine behaves as before: a confirmed address is used at once and
//! only the slow `PATH_DEAD_TIMEOUT` rules apply (there is nothing to fall back to).

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::debug;

use super::peer::Peer;
use super::shared::Shared;
use super::{Engine, PathKind};

/// Spacing of verification probes to a confirmed but unproven direct address.
pub const VERIFY_INTERVAL: Duration = Duration::from_millis(500);
/// Longest silence between verification acks that still counts as a stable path (three
/// verification probes lost in a row restart the proof).
pub const VERIFY_MAX_GAP: Duration = Duration::from_millis(1600);
/// How long past [`prove_after`] an unproven address is kept before it is dropped.
pub const VERIFY_GIVE_UP: Duration = Duration::from_secs(10);
/// Data sent over the direct path unanswered (over UDP) for this long starts a check. Two-way
/// traffic answers within an RTT; one-way traffic only costs a probe and its ack every 2 s.
pub const SUSPECT_AFTER: Duration = Duration::from_secs(2);
/// Spacing of the probes of a check.
pub const CHECK_PROBE_INTERVAL: Duration = Duration::from_millis(300);
/// A check without any answer for this long (5 probes) demotes the direct path: fallback to the
/// relay happens at most SUSPECT_AFTER + CHECK_TIMEOUT (3.5 s) after the first unanswered packet.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(1500);
/// A direct path that stayed up this long forgets earlier demotions (the hold-down resets).
pub const STABLE_RESET: Duration = Duration::from_secs(120);

/// How long a confirmed address must keep answering before traffic moves to it, after
/// `demotions` recent demotions: 1 s, 2 s, 8 s, then 30 s.
pub fn prove_after(demotions: u32) -> Duration {
    match demotions {
        0 => Duration::from_secs(1),
        1 => Duration::from_secs(2),
        2 => Duration::from_secs(8),
        _ => Duration::from_secs(30),
    }
}

/// Where a peer's packets go now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// The direct UDP path to this address.
    Udp(SocketAddr),
    /// The coordinator's relay.
    Relay,
}

/// Why a peer is not on a direct path (shown by `warren status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayReason {
    /// Punching is under way and has not found a path yet.
    Punching,
    /// A probing round ended without a confirmed address.
    PunchTimedOut,
    /// The coordinator knows no address of the peer.
    NoCandidates,
    /// The direct path stopped answering.
    DirectLost,
    /// The coordinator lists the peer as offline (the relay cannot reach it either).
    PeerOffline,
    /// A direct address answered and is being verified before traffic moves to it.
    Verifying,
    /// This node has no working relay (control connection down).
    RelayUnavailable,
    /// This node reaches the coordinator over TCP only (UDP is blocked on its network), so no
    /// direct path can exist; the shell says so with `Engine::set_udp_blocked`.
    UdpBlocked,
}

impl fmt::Display for RelayReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Punching => "punching",
            Self::PunchTimedOut => "punch timed out",
            Self::NoCandidates => "no candidates",
            Self::DirectLost => "direct path lost",
            Self::PeerOffline => "peer offline",
            Self::Verifying => "verifying direct path",
            Self::RelayUnavailable => "relay unavailable",
            Self::UdpBlocked => "udp blocked",
        })
    }
}

/// A liveness check of the direct path in progress.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Check {
    /// When it started.
    pub started: Instant,
    /// When its next probe is due.
    pub next_probe_at: Instant,
}

impl Peer {
    /// Whether the relay can carry packets to this peer now.
    pub fn relay_usable(&self) -> bool {
        self.relay_ok && self.record.online
    }

    /// Where packets to this peer go now, if anywhere.
    pub fn route(&self) -> Option<Route> {
        match self.endpoint {
            Some(ep) if self.direct_active => Some(Route::Udp(ep)),
            _ if self.relay_usable() => Some(Route::Relay),
            Some(ep) => Some(Route::Udp(ep)),
            None => None,
        }
    }

    /// The path as status and events show it.
    pub fn path(&self) -> PathKind {
        match (self.route(), self.current.is_some()) {
            (Some(Route::Udp(_)), true) => PathKind::Direct,
            (Some(Route::Relay), true) => PathKind::Relay,
            _ => PathKind::Connecting,
        }
    }

    /// Why the peer is not on a direct path (`None` when it is).
    pub fn relay_reason(&self) -> Option<RelayReason> {
        if self.path() == PathKind::Direct {
            return None;
        }
        Some(if !self.record.online {
            RelayReason::PeerOffline
        } else if self.endpoint.is_none() && !self.relay_ok {
            RelayReason::RelayUnavailable
        } else if self.candidates.is_empty() {
            RelayReason::NoCandidates
        } else if self.endpoint.is_some() && !self.direct_active {
            RelayReason::Verifying
        } else {
            self.reason
        })
    }

    /// A new direct address was confirmed (probe ack or authenticated UDP packet from it).
    /// Without a usable relay it is used at once; otherwise it is verified first.
    pub fn on_new_endpoint(&mut self, now: Instant) {
        self.direct_awaiting_since = None;
        self.check = None;
        if self.direct_active {
            return; // roaming (or a faster address) on a proven path
        }
        if !self.relay_usable() {
            self.direct_active = true;
            self.promoted_at = Some(now);
            return;
        }
        debug!(peer = %self.id(), endpoint = ?self.endpoint, "direct path confirmed; verifying");
        self.confirmed_at = Some(now);
        self.last_verify_ack = Some(now);
        self.next_verify_at = Some(now + VERIFY_INTERVAL);
    }

    /// An ack of a probe sent to the current endpoint arrived: the path works both ways.
    pub fn on_endpoint_ack(&mut self, shared: &mut Shared, now: Instant) {
        self.direct_awaiting_since = None;
        self.check = None;
        if self.direct_active {
            return;
        }
        // A gap in the answers restarts the proof: the path must be stable for the whole
        // prove_after period.
        let gap = self
            .last_verify_ack
            .is_some_and(|t| now.saturating_duration_since(t) > VERIFY_MAX_GAP);
        self.last_verify_ack = Some(now);
        if gap {
            self.confirmed_at = Some(now);
        }
        let proven = self
            .confirmed_at
            .is_some_and(|t| now.saturating_duration_since(t) >= prove_after(self.demotions));
        if proven {
            self.promote(shared, now);
        }
    }

    /// Traffic moves to the (proven) direct path.
    fn promote(&mut self, shared: &mut Shared, now: Instant) {
        debug!(peer = %self.id(), endpoint = ?self.endpoint, "direct path proven; leaving the relay");
        self.direct_active = true;
        self.promoted_at = Some(now);
        self.confirmed_at = None;
        self.next_verify_at = None;
        self.failed_rounds = 0;
        self.reason = RelayReason::Punching;
        if self.current.is_none() && self.pending.is_none() {
            self.start_handshake(shared, now);
        }
        self.flush_queue(shared, now);
    }

    /// The direct path stopped answering: traffic moves to the relay (sessions stay), and
    /// punching starts again.
    pub fn demote(&mut self, reason: RelayReason, shared: &mut Shared, now: Instant) {
        debug!(peer = %self.id(), endpoint = ?self.endpoint, %reason, "direct path demoted; relaying");
        if self
            .promoted_at
            .is_some_and(|t| now.saturating_duration_since(t) >= STABLE_RESET)
        {
            self.demotions = 0;
        }
        self.demotions = self.demotions.saturating_add(1);
        self.direct_active = false;
        self.promoted_at = None;
        self.endpoint = None;
        self.rtt = None;
        self.direct_awaiting_since = None;
        self.check = None;
        self.confirmed_at = None;
        self.next_verify_at = None;
        self.failed_rounds = 0;
        self.reason = reason;
        if let Some(p) = self.pending.as_mut() {
            // The initiation in flight went over the dead path: retry over the relay now.
            p.attempts = p.attempts.saturating_sub(1);
            self.start_handshake(shared, now);
        }
        self.flush_queue(shared, now);
        self.last_punch_request = None;
        self.request_punch(shared, now);
        self.start_round(shared, now);
    }

    /// Sends what waits in the queue if there is a route, starting a handshake when there is
    /// no session.
    pub fn kick(&mut self, shared: &mut Shared, now: Instant) {
        if self.route().is_none() || self.queue.is_empty() {
            return;
        }
        if self.pending.is_none() && !self.can_send(now) {
            self.start_handshake(shared, now);
        }
        self.flush_queue(shared, now);
    }

    /// Deadline of the next verification probe.
    pub fn verify_deadline(&self) -> Option<Instant> {
        if self.direct_active || !self.relay_usable() {
            return None;
        }
        self.endpoint?;
        self.next_verify_at
    }

    /// Sends a verification probe, or drops an address that never proved itself.
    pub fn fire_verify(&mut self, shared: &mut Shared, now: Instant) {
        let give_up = self
            .confirmed_at
            .map(|t| t + prove_after(self.demotions) + VERIFY_GIVE_UP);
        if give_up.is_some_and(|t| now >= t) {
            debug!(peer = %self.id(), endpoint = ?self.endpoint, "direct address never proved itself");
            self.endpoint = None;
            self.rtt = None;
            self.confirmed_at = None;
            self.next_verify_at = None;
            self.reason = RelayReason::PunchTimedOut;
            if self.round.is_none() && self.next_round_at.is_none() && self.has_demand(now) {
                self.next_round_at = Some(now + self.round_interval());
            }
            return;
        }
        self.probe_endpoint(shared, now);
        self.next_verify_at = Some(now + VERIFY_INTERVAL);
    }

    /// Deadline of the direct path's liveness check.
    pub fn check_deadline(&self) -> Option<Instant> {
        if !self.direct_active || !self.relay_usable() {
            return None;
        }
        self.endpoint?;
        match self.check {
            None => Some(self.direct_awaiting_since? + SUSPECT_AFTER),
            Some(c) => Some(c.next_probe_at.min(c.started + CHECK_TIMEOUT)),
        }
    }

    /// Starts or continues the liveness check; demotes the path when it timed out.
    pub fn fire_check(&mut self, shared: &mut Shared, now: Instant) {
        match self.check {
            Some(c) if now >= c.started + CHECK_TIMEOUT => {
                self.demote(RelayReason::DirectLost, shared, now);
            }
            Some(c) => {
                self.probe_endpoint(shared, now);
                self.check = Some(Check {
                    next_probe_at: c.next_probe_at.max(now) + CHECK_PROBE_INTERVAL,
                    ..c
                });
            }
            None => {
                debug!(peer = %self.id(), endpoint = ?self.endpoint, "direct path quiet; checking");
                self.probe_endpoint(shared, now);
                self.check = Some(Check {
                    started: now,
                    next_probe_at: now + CHECK_PROBE_INTERVAL,
                });
            }
        }
    }

    /// Sends one probe to the current endpoint.
    fn probe_endpoint(&mut self, shared: &mut Shared, now: Instant) {
        if let Some(ep) = self.endpoint {
            let i = self.add_candidate(ep, true);
            self.send_probe(i, shared, now);
        }
    }

    /// Spacing of probing rounds while no direct path is found: 30 s without a relay (traffic
    /// waits), and backing off 30, 60, 120 s while the relay carries the traffic.
    pub fn round_interval(&self) -> Duration {
        let base = super::ROUND_INTERVAL;
        if self.relay_usable() {
            base * (1u32 << self.failed_rounds.saturating_sub(1).min(2))
        } else {
            base
        }
    }
}

/// How long a direct address stays unused after the local stack refused datagrams to it as too
/// large ([`Engine::send_refused`]); then it may be tried again (the route may have changed).
pub const REFUSED_HOLD_DOWN: Duration = Duration::from_secs(60);

impl Engine {
    /// The shell could not send to `dst` because the local stack refused the datagram as too
    /// large (`EMSGSIZE`): the route to `dst` has a smaller MTU than Warren's datagrams, e.g.
    /// it runs through another tunnel whose address was offered as a candidate. Small probes
    /// pass such a path, full-size data does not. Peers using `dst` leave it for the relay (or
    /// punch again) and do not take it for [`REFUSED_HOLD_DOWN`].
    pub fn send_refused(&mut self, dst: SocketAddr, now: Instant) {
        for peer in self.peers.values_mut() {
            if peer.endpoint == Some(dst) {
                debug!(peer = %peer.id(), %dst, "datagrams to the direct path refused as too large");
                peer.refused = Some((dst, now + REFUSED_HOLD_DOWN));
                peer.demote(RelayReason::DirectLost, &mut self.shared, now);
                peer.report_path(&mut self.shared);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_down_grows_with_demotions() {
        let s: Vec<u64> = (0..5).map(|d| prove_after(d).as_secs()).collect();
        assert_eq!(s, [1, 2, 8, 30, 30]);
        assert_eq!(RelayReason::PunchTimedOut.to_string(), "punch timed out");
        assert_eq!(RelayReason::DirectLost.to_string(), "direct path lost");
        assert_eq!(RelayReason::UdpBlocked.to_string(), "udp blocked");
    }
}
