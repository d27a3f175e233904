//! Handshakes and the receive side of transport packets (sans-IO, engine layer).
//!
//! Either side may initiate, and both may do so at the same moment (both confirm the path
//! together); that is harmless: each completed handshake is a valid session, packets are
//! received on any live session by index and sent on the newest. A responder only answers an
//! initiation that authenticates with a key the coordinator listed and carries a timestamp newer
//! than the last one accepted from that key; anything else gets no reply at all.

use std::net::Ipv4Addr;
use std::time::Instant;

use tracing::debug;

use super::path::Route;
use super::peer::{Peer, Pending};
use super::shared::Shared;
use super::{Engine, Source};
use crate::noise::{InitiatorHandshake, NoiseError, ResponderHandshake};
use crate::packet::{HandshakeInit, HandshakeResp, Transport};

impl Peer {
    /// Sends a (new) initiation over the current route (direct path or relay).
    pub fn start_handshake(&mut self, shared: &mut Shared, now: Instant) {
        let Some(route) = self.route() else {
            self.clear_pending(shared);
            return;
        };
        let attempts = self.pending.as_ref().map_or(0, |p| p.attempts);
        self.clear_pending(shared);
        let idx = shared.alloc_index(self.id());
        let ts = shared.next_timestamp(now);
        let seed = shared.seed();
        match InitiatorHandshake::start(
            shared.config.suite,
            &shared.config.private_key,
            &self.record.public_key,
            idx,
            ts,
            seed,
        ) {
            Ok((hs, datagram)) => {
                debug!(peer = %self.id(), ?route, attempt = attempts + 1, "handshake initiation sent");
                shared.send_via(route, self.id(), datagram);
                if matches!(route, Route::Udp(_)) {
                    self.direct_awaiting_since.get_or_insert(now);
                }
                self.last_sent = Some(now);
                self.pending = Some(Pending {
                    hs: Some(hs),
                    sent_at: now,
                    attempts: attempts + 1,
                });
            }
            Err(e) => {
                // Only a broken peer key (e.g. a low-order point) gets here; the retry timer
                // still runs so that this is not retried in a busy loop.
                debug!(peer = %self.id(), error = %e, "cannot start handshake");
                shared.free_index(idx);
                self.pending = Some(Pending {
                    hs: None,
                    sent_at: now,
                    attempts: attempts + 1,
                });
            }
        }
    }

    /// Any authenticated packet from `source`: roam to a new UDP address and note the peer is
    /// alive (a relayed packet says nothing about the direct path).
    fn authenticated_from(&mut self, source: Source, now: Instant) {
        if let Source::Udp(from) = source {
            if self.endpoint != Some(from) && !self.is_refused(from, now) {
                debug!(peer = %self.id(), old = ?self.endpoint, new = %from, "endpoint updated");
                self.endpoint = Some(from);
                self.round = None;
                self.next_round_at = None;
                self.on_new_endpoint(now);
            }
            self.direct_awaiting_since = None;
            self.check = None;
        }
        self.last_received = Some(now);
        self.awaiting_reply_since = None;
    }
}

impl Engine {
    /// A HandshakeInit arrived.
    pub(super) fn on_handshake_init(
        &mut self,
        from: Source,
        init: &HandshakeInit<'_>,
        now: Instant,
    ) {
        if !self.shared.init_budget.take(now) {
            self.shared.drops.handshake_rate_limited += 1;
            debug!(%from, "initiation over the rate limit dropped");
            return;
        }
        let seed = self.shared.seed();
        let resp = match ResponderHandshake::read_init(&self.shared.config.private_key, init, seed)
        {
            Ok(r) => r,
            Err(e) => {
                self.shared.drops.handshake_invalid += 1;
                debug!(%from, error = %e, "invalid handshake initiation dropped");
                return;
            }
        };
        let Some(&id) = self.by_key.get(&resp.remote_static()) else {
            self.shared.drops.handshake_unknown_key += 1;
            debug!(%from, key = %resp.remote_static(), "initiation from unlisted key dropped");
            return;
        };
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if peer
            .last_init_timestamp
            .is_some_and(|last| resp.timestamp() <= last)
        {
            self.shared.drops.handshake_replay += 1;
            debug!(peer = %id, %from, "replayed initiation dropped");
            return;
        }
        let timestamp = resp.timestamp();
        let idx = self.shared.alloc_index(id);
        match resp.respond(idx, now) {
            Ok((session, datagram)) => {
                peer.last_init_timestamp = Some(timestamp);
                let back = match from {
                    Source::Udp(a) => Route::Udp(a),
                    Source::Relay(_) => Route::Relay,
                };
                self.shared.send_via(back, id, datagram);
                peer.authenticated_from(from, now);
                peer.last_sent = Some(now);
                if let Some(old) = peer.next.replace(session) {
                    self.shared.free_index(old.local_index);
                }
                peer.last_handshake = Some(now);
                peer.handshakes += 1;
                debug!(peer = %id, %from, "handshake response sent");
            }
            Err(e) => {
                self.shared.free_index(idx);
                self.shared.drops.handshake_invalid += 1;
                debug!(peer = %id, error = %e, "cannot respond");
            }
        }
        peer.report_path(&mut self.shared);
    }

    /// A HandshakeResp arrived.
    pub(super) fn on_handshake_resp(
        &mut self,
        from: Source,
        resp: &HandshakeResp<'_>,
        now: Instant,
    ) {
        let peer = self
            .shared
            .by_index
            .get(&resp.receiver_index)
            .and_then(|id| self.peers.get_mut(id));
        let Some(peer) = peer else {
            self.shared.drops.handshake_unexpected += 1;
            debug!(%from, "response for unknown index dropped");
            return;
        };
        let matches = peer
            .pending
            .as_ref()
            .and_then(|p| p.hs.as_ref())
            .is_some_and(|hs| hs.local_index() == resp.receiver_index);
        if !matches {
            self.shared.drops.handshake_unexpected += 1;
            debug!(peer = %peer.id(), %from, "unexpected handshake response dropped");
            return;
        }
        let hs = peer.pending.as_mut().and_then(|p| p.hs.take());
        let Some(hs) = hs else {
            return;
        };
        match hs.finish(resp, now) {
            Ok(session) => {
                debug!(peer = %peer.id(), %from, "handshake complete (initiator)");
                let sent_at = peer.pending.take().map(|p| p.sent_at);
                if let Source::Udp(a) = from {
                    if peer.rtt.is_none() || peer.endpoint != Some(a) {
                        // No probe measured this path (the peer's handshake found it first).
                        peer.rtt = sent_at.map(|t| now.saturating_duration_since(t));
                    }
                }
                peer.install_current(session, &mut self.shared, now);
                peer.handshakes += 1;
                peer.authenticated_from(from, now);
                let queued = peer.queue.len();
                peer.flush_queue(&mut self.shared, now);
                if queued == 0 {
                    // Confirm the keys to the responder so it starts sending on them.
                    peer.send_transport(&[], &mut self.shared, now);
                }
            }
            Err(e) => {
                self.shared.free_index(resp.receiver_index);
                self.shared.drops.handshake_invalid += 1;
                debug!(peer = %peer.id(), error = %e, "bad handshake response dropped");
            }
        }
        peer.report_path(&mut self.shared);
    }

    /// A peer sends transport on a session we do not have: we restarted (e.g. `warren up`)
    /// and it still uses the old one. Rather than wait for its handshake timeout (~15 s), start
    /// a handshake now if we have a route to it, or a punch round if we have none. Only a
    /// source that is already a known peer's endpoint, candidate or relay label counts, and the
    /// pending-handshake and round guards keep this to one attempt at a time, so unauthenticated
    /// packets can at most make us handshake with a listed peer.
    fn resync_from(&mut self, from: Source, now: Instant) {
        let Some(peer) = self.peers.values_mut().find(|p| match from {
            Source::Relay(id) => p.id() == id,
            Source::Udp(addr) => p.endpoint == Some(addr) || p.record.candidates.contains(&addr),
        }) else {
            return;
        };
        if peer.pending.is_some() || peer.can_send(now) {
            return;
        }
        if peer.route().is_some() {
            debug!(peer = %peer.id(), %from, "peer uses a session we lost; handshaking");
            peer.start_handshake(&mut self.shared, now);
        } else if peer.round.is_none() {
            debug!(peer = %peer.id(), %from, "peer uses a session we lost; punching");
            peer.request_punch(&mut self.shared, now);
            peer.start_round(&mut self.shared, now);
        }
        peer.report_path(&mut self.shared);
    }

    /// A Transport packet arrived; decrypts into `tun_out`.
    pub(super) fn on_transport(
        &mut self,
        from: Source,
        t: &Transport<'_>,
        tun_out: &mut [u8],
        now: Instant,
    ) -> Option<usize> {
        let peer = self
            .shared
            .by_index
            .get(&t.receiver_index)
            .and_then(|id| self.peers.get_mut(id));
        let Some(peer) = peer else {
            self.shared.drops.unknown_index += 1;
            debug!(%from, "transport for unknown index dropped");
            self.resync_from(from, now);
            return None;
        };
        let idx = t.receiver_index;
        let is =
            |s: &Option<crate::noise::Session>| s.as_ref().is_some_and(|s| s.local_index == idx);
        let (slot, promote) = if is(&peer.current) {
            (peer.current.as_mut(), false)
        } else if is(&peer.previous) {
            (peer.previous.as_mut(), false)
        } else if is(&peer.next) {
            (peer.next.as_mut(), true)
        } else {
            // A pending handshake's index: the initiator never receives transport on it first.
            self.shared.drops.unknown_index += 1;
            return None;
        };
        let session = slot?;
        let n = match session.open(t.counter, t.ciphertext, tun_out, now) {
            Ok(n) => n,
            Err(e) => {
                let d = &mut self.shared.drops;
                match e {
                    NoiseError::Replay => d.replayed += 1,
                    NoiseError::Expired | NoiseError::Exhausted => d.expired += 1,
                    NoiseError::BufferTooSmall => d.tun_out_too_small += 1,
                    _ => d.decrypt_failed += 1,
                }
                debug!(peer = %peer.id(), %from, error = %e, "transport packet dropped");
                return None;
            }
        };
        // Promote the responder session unless our own newer initiation already replaced it
        // (both sides initiated at once); a session not promoted stays usable for receiving
        // in `previous`.
        // Tie-break for sessions initiated at once: both sides settle on the one initiated by
        // the lower node id, so that both send on the same keys and the next rekey can retire
        // the other session without loss.
        let newer = match (&peer.next, &peer.current) {
            (Some(n), Some(c)) => {
                n.created_at >= c.created_at || peer.record.node_id < self.shared.config.node_id
            }
            _ => true,
        };
        if promote {
            if let Some(s) = peer.next.take() {
                if newer {
                    debug!(peer = %peer.id(), "handshake complete (responder confirmed)");
                    peer.install_current(s, &mut self.shared, now);
                } else {
                    // Keep receiving on it, but free `next` for the peer's next rekey.
                    if let Some(old) = peer.previous.replace(s) {
                        self.shared.free_index(old.local_index);
                    }
                }
            }
        }
        peer.authenticated_from(from, now);
        peer.flush_queue(&mut self.shared, now);
        peer.report_path(&mut self.shared);
        if n == 0 {
            return None;
        }
        if inner_source(&tun_out[..n]) != Some(peer.record.mesh_ip.0) {
            self.shared.drops.inner_src_mismatch += 1;
            debug!(peer = %peer.id(), "inner source is not the peer's mesh address");
            return None;
        }
        peer.rx_bytes += n as u64;
        peer.keepalive_owed_since.get_or_insert(now);
        Some(n)
    }
}

/// Source address of an IPv4 packet.
pub(crate) fn inner_source(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    Some(Ipv4Addr::new(
        packet[12], packet[13], packet[14], packet[15],
    ))
}

/// Destination address of an IPv4 packet.
pub(crate) fn inner_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    Some(Ipv4Addr::new(
        packet[16], packet[17], packet[18], packet[19],
    ))
}
