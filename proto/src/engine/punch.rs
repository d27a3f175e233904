//! Hole punching and path choice (sans-IO, engine layer).
//!
//! A *round* sends an authenticated Probe to every candidate address of a peer at once, then
//! again with exponential backoff ([`probe_backoff`]) for [`ROUND_DURATION`]. Both peers run a
//! round at the same moment (the coordinator tells both), so each side's probes open its own NAT
//! for the other's. Every valid probe is acknowledged to its source address; a source we did not
//! know is a *peer-reflexive* candidate (the peer's NAT chose a port nobody could predict) and is
//! probed too. An ack confirms the address its probe went to and measures the round trip; during
//! a round the lowest-RTT confirmed address wins (a LAN address beats the NAT's), and the round
//! ends [`PATH_SETTLE`] after the first confirmation.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::debug;

use super::peer::Peer;
use super::shared::Shared;
use crate::packet::{self, Probe, ProbeAck};

/// How long one probing round lasts.
pub const ROUND_DURATION: Duration = Duration::from_secs(15);
/// Spacing of round starts while traffic is waiting and no path is found.
pub const ROUND_INTERVAL: Duration = Duration::from_secs(30);
/// First retry delay of a round; doubles per retry up to [`PROBE_BACKOFF_MAX`].
pub const PROBE_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Cap of the probe retry delay.
pub const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long a round keeps going after its first confirmation, so that a faster path (e.g. the
/// LAN) can still win.
pub const PATH_SETTLE: Duration = Duration::from_secs(1);
/// Candidates kept per peer (coordinator-given plus peer-reflexive).
pub const MAX_CANDIDATES: usize = 16;
/// Probe transaction ids remembered per candidate (late acks of earlier retries still match).
const MAX_OUTSTANDING: usize = 16;

/// Delay before probe retry number `attempt` (1-based): 100, 200, 400 ... ms, capped at 2 s.
pub fn probe_backoff(attempt: u32) -> Duration {
    let shift = attempt.saturating_sub(1).min(16);
    (PROBE_BACKOFF_MIN * (1u32 << shift)).min(PROBE_BACKOFF_MAX)
}

/// One address of a peer worth probing.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// The address.
    pub addr: SocketAddr,
    /// Learned from a probe's source rather than from the coordinator.
    pub peer_reflexive: bool,
    /// Probes sent and not yet acknowledged: (tx_id, sent at).
    pub outstanding: VecDeque<(u64, Instant)>,
}

impl Candidate {
    pub fn new(addr: SocketAddr, peer_reflexive: bool) -> Self {
        Self {
            addr,
            peer_reflexive,
            outstanding: VecDeque::new(),
        }
    }
}

/// A probing round in progress.
#[derive(Debug, Clone)]
pub(crate) struct Round {
    /// When it started.
    pub started: Instant,
    /// Probe volleys sent so far.
    pub attempt: u32,
    /// When the next volley is due (`None`: no more volleys this round).
    pub next_probe_at: Option<Instant>,
    /// Set at the first confirmation: the round ends then.
    pub settle_until: Option<Instant>,
}

impl Round {
    /// When the round ends.
    pub fn ends_at(&self) -> Instant {
        self.settle_until
            .unwrap_or(self.started + ROUND_DURATION)
            .min(self.started + ROUND_DURATION)
    }
}

impl Peer {
    /// Replaces the coordinator-given candidates, keeping peer-reflexive ones.
    pub fn set_candidates(&mut self, addrs: &[SocketAddr]) {
        self.candidates
            .retain(|c| c.peer_reflexive && !addrs.contains(&c.addr));
        for &a in addrs {
            self.add_candidate(a, false);
        }
    }

    /// Adds a candidate if new; returns its position.
    pub fn add_candidate(&mut self, addr: SocketAddr, peer_reflexive: bool) -> usize {
        if let Some(i) = self.candidates.iter().position(|c| c.addr == addr) {
            return i;
        }
        if self.candidates.len() >= MAX_CANDIDATES {
            // Evict the oldest peer-reflexive candidate, else the oldest of all.
            let victim = self
                .candidates
                .iter()
                .position(|c| c.peer_reflexive)
                .unwrap_or(0);
            self.candidates.remove(victim);
        }
        self.candidates.push(Candidate::new(addr, peer_reflexive));
        self.candidates.len() - 1
    }

    /// Starts (or restarts) a probing round and sends the first volley.
    pub fn start_round(&mut self, shared: &mut Shared, now: Instant) {
        debug!(peer = %self.id(), candidates = self.candidates.len(), "probing round starts");
        self.next_round_at = None;
        self.round = Some(Round {
            started: now,
            attempt: 0,
            next_probe_at: Some(now),
            settle_until: None,
        });
        self.probe_volley(shared, now);
    }

    /// Sends one probe to every candidate and schedules the next volley.
    pub fn probe_volley(&mut self, shared: &mut Shared, now: Instant) {
        for i in 0..self.candidates.len() {
            self.send_probe(i, shared, now);
        }
        if let Some(round) = self.round.as_mut() {
            round.attempt += 1;
            let next = now + probe_backoff(round.attempt);
            round.next_probe_at = (next < round.ends_at()).then_some(next);
        }
    }

    /// Sends one probe to candidate `i`.
    pub fn send_probe(&mut self, i: usize, shared: &mut Shared, now: Instant) {
        let tx_id = shared.tx_id();
        let body = packet::encode_probe_body(shared.config.node_id, tx_id);
        let datagram = self.probe_key.seal(body);
        let c = &mut self.candidates[i];
        if c.outstanding.len() >= MAX_OUTSTANDING {
            c.outstanding.pop_front();
        }
        c.outstanding.push_back((tx_id, now));
        shared.send(c.addr, datagram);
    }

    /// An authentic probe from this peer arrived from `from`: ack it, learn `from` if new.
    pub fn on_probe(
        &mut self,
        from: SocketAddr,
        probe: &Probe<'_>,
        shared: &mut Shared,
        now: Instant,
    ) {
        let body = packet::encode_probe_ack_body(shared.config.node_id, probe.tx_id, from);
        shared.send(from, self.probe_key.seal(body));
        let known = self.candidates.iter().any(|c| c.addr == from);
        if !known {
            debug!(peer = %self.id(), %from, "peer-reflexive candidate");
            let i = self.add_candidate(from, true);
            self.send_probe(i, shared, now);
        }
        // The peer is punching towards us: punch back unless we already have a path.
        if self.endpoint.is_none() && self.round.is_none() {
            self.start_round(shared, now);
        }
    }

    /// An authentic ack from this peer. Returns false if it matched no probe of ours.
    pub fn on_probe_ack(&mut self, ack: &ProbeAck<'_>, shared: &mut Shared, now: Instant) -> bool {
        let mut found = None;
        for c in &mut self.candidates {
            if let Some(pos) = c.outstanding.iter().position(|&(id, _)| id == ack.tx_id) {
                let (_, sent) = c.outstanding[pos];
                c.outstanding.drain(..=pos);
                found = Some((c.addr, now.saturating_duration_since(sent)));
                break;
            }
        }
        let Some((addr, rtt)) = found else {
            return false;
        };
        if self.is_refused(addr, now) {
            debug!(peer = %self.id(), %addr, "ack from a held-down address ignored");
            return true;
        }
        debug!(peer = %self.id(), %addr, ?rtt, observed = %ack.observed, "path confirmed");
        let better = match (self.endpoint, self.rtt) {
            (None, _) => true,
            (Some(cur), _) if cur == addr => true,
            // A path confirmed in the same round wins on RTT.
            (Some(_), Some(cur_rtt)) => self.round.is_some() && rtt < cur_rtt,
            (Some(_), None) => self.round.is_some(),
        };
        if better {
            let changed = self.endpoint != Some(addr);
            self.endpoint = Some(addr);
            self.rtt = Some(rtt);
            if changed {
                self.awaiting_reply_since = None;
                self.on_new_endpoint(now);
                self.on_path_confirmed(shared, now);
            } else {
                self.on_endpoint_ack(shared, now);
            }
        }
        if let Some(round) = self.round.as_mut() {
            round.settle_until.get_or_insert(now + PATH_SETTLE);
        }
        true
    }

    /// A direct path is known: use the session if there is one, else handshake over it.
    pub fn on_path_confirmed(&mut self, shared: &mut Shared, now: Instant) {
        self.next_round_at = None;
        if self.can_send(now) {
            self.flush_queue(shared, now);
        } else if self.pending.is_none() && !(self.relay_usable() && self.next.is_some()) {
            // (A responder session reached over the relay is confirmed by the initiator's
            // first data packet; a second handshake would only race it.)
            self.start_handshake(shared, now);
        }
    }

    /// Nothing came back over the path: forget it, and the sessions (the peer may have lost
    /// them, e.g. after a restart), and punch again. The next confirmed path gets a fresh
    /// handshake.
    pub fn path_dead(&mut self, shared: &mut Shared, now: Instant) {
        debug!(peer = %self.id(), endpoint = ?self.endpoint, "path dead");
        self.endpoint = None;
        self.direct_active = false;
        self.confirmed_at = None;
        self.next_verify_at = None;
        self.check = None;
        self.direct_awaiting_since = None;
        self.rtt = None;
        self.awaiting_reply_since = None;
        self.keepalive_owed_since = None;
        self.clear_sessions(shared);
        // Deaths are at least PATH_DEAD_TIMEOUT apart: always tell the peer to punch back.
        self.last_punch_request = None;
        self.request_punch(shared, now);
        self.start_round(shared, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_schedule() {
        let ms: Vec<u128> = (1..=8).map(|a| probe_backoff(a).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(probe_backoff(u32::MAX), PROBE_BACKOFF_MAX);
    }
}
