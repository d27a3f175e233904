//! Relay fallback (DESIGN.md section 2.5): nodes that have no direct path hand their already
//! encrypted packets to the coordinator as QUIC datagrams on their control connection, and the
//! coordinator forwards them to the destination node's connection without looking inside.
//!
//! The datagram format is `warren_proto::relay` (an 8-byte big-endian node id, then the opaque
//! packet). From a node the id names the destination; the coordinator rewrites it to the
//! *source* node's id before forwarding, so the receiver knows which peer's session to decrypt
//! with and cannot be lied to about the sender.
//!
//! Relay is best effort like any UDP path. A datagram is dropped, and counted by reason in
//! [`RelayStats`], when it is shorter than its header, names its sender, names a node that is not
//! online in this mesh (the registry holds only logged-in, registered nodes), exceeds its
//! sender's rate limits ([`RelayLimits`]; one [`SourceLimiter`] per node, kept across its
//! reconnections), would overflow the destination connection's datagram send buffer (a slow
//! receiver: the new datagram is dropped rather than evicting older ones, possibly other
//! senders', and nothing ever waits), or does not fit the destination's current datagram size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tracing::trace;
use warren_proto::ids::NodeId;
use warren_proto::relay;

use crate::bucket::TokenBucket;
use crate::mesh::Mesh;
use crate::registry::Registry;

/// Default relay byte rate per source node, in Mbit/s (`serve --relay-rate-mbit`). Generous for
/// a fallback path: more than most residential uplinks a relayed node sends through, so relayed
/// peers are not throttled in practice, yet a single node can take no more than a fifth of a
/// typical 1 Gbit/s VPS link.
pub const DEFAULT_RELAY_MBIT: u32 = 200;
/// Default relay packet rate per source node, in packets/s (`serve --relay-rate-pps`). 200 Mbit/s
/// of 500-byte packets; it caps floods of tiny datagrams, whose cost to the coordinator is per
/// packet rather than per byte.
pub const DEFAULT_RELAY_PPS: u32 = 50_000;
/// How much of its rate a node may send at once (bucket depth): 100 ms worth, enough for the
/// bursts of a TCP flow's congestion window.
pub const RELAY_BURST: Duration = Duration::from_millis(100);
/// Smallest byte burst, in bytes, so that even a low `--relay-rate-mbit` passes any datagram a
/// QUIC connection can carry.
pub const MIN_BURST_BYTES: u64 = 64 * 1024;
/// Smallest packet burst, in packets.
pub const MIN_BURST_PACKETS: u64 = 16;

/// Per-source-node relay limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Bytes of relay datagrams (header included) one node may have forwarded per second.
    pub bytes_per_sec: u64,
    /// Relay datagrams one node may have forwarded per second.
    pub packets_per_sec: u64,
}

impl RelayLimits {
    /// Limits from a rate in Mbit/s (10^6 bits) and packets/s.
    pub fn new(mbit: u32, pps: u32) -> Self {
        Self {
            bytes_per_sec: u64::from(mbit) * 1_000_000 / 8,
            packets_per_sec: u64::from(pps),
        }
    }

    /// Bucket depth for bytes: [`RELAY_BURST`] worth, at least [`MIN_BURST_BYTES`].
    pub fn burst_bytes(&self) -> u64 {
        burst(self.bytes_per_sec).max(MIN_BURST_BYTES)
    }

    /// Bucket depth for packets: [`RELAY_BURST`] worth, at least [`MIN_BURST_PACKETS`].
    pub fn burst_packets(&self) -> u64 {
        burst(self.packets_per_sec).max(MIN_BURST_PACKETS)
    }
}

/// `RELAY_BURST` worth of `rate` per second.
fn burst(rate: u64) -> u64 {
    (u128::from(rate) * RELAY_BURST.as_millis() / 1000) as u64
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self::new(DEFAULT_RELAY_MBIT, DEFAULT_RELAY_PPS)
    }
}

/// Why a relay datagram was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Shorter than the header.
    TooShort,
    /// Addressed to the sending node itself.
    ToSelf,
    /// The destination is not an online node of this mesh.
    NoRoute,
    /// The sender is over its byte rate.
    RateBytes,
    /// The sender is over its packet rate.
    RatePackets,
    /// The destination's datagram send buffer is full (it is not keeping up).
    Congested,
    /// The destination's connection cannot carry a datagram this large (or no datagrams).
    TooLarge,
}

impl Dropped {
    /// Every reason, in declaration order (a reason's counter index is its discriminant).
    const ALL: [Dropped; 7] = [
        Dropped::TooShort,
        Dropped::ToSelf,
        Dropped::NoRoute,
        Dropped::RateBytes,
        Dropped::RatePackets,
        Dropped::Congested,
        Dropped::TooLarge,
    ];

    /// Name in `GET /v1/health`.
    pub fn name(self) -> &'static str {
        match self {
            Dropped::TooShort => "too_short",
            Dropped::ToSelf => "to_self",
            Dropped::NoRoute => "no_route",
            Dropped::RateBytes => "rate_bytes",
            Dropped::RatePackets => "rate_packets",
            Dropped::Congested => "congested",
            Dropped::TooLarge => "too_large",
        }
    }
}

/// One source node's relay budget: a byte bucket and a packet bucket.
#[derive(Debug, Clone)]
pub struct SourceLimiter {
    /// Bytes of datagrams.
    bytes: TokenBucket,
    /// Datagrams.
    packets: TokenBucket,
}

impl SourceLimiter {
    /// Full buckets for `limits`, as of `now`.
    pub fn new(limits: RelayLimits, now: Instant) -> Self {
        Self {
            bytes: TokenBucket::new(limits.bytes_per_sec, limits.burst_bytes(), now),
            packets: TokenBucket::new(limits.packets_per_sec, limits.burst_packets(), now),
        }
    }

    /// Charges one datagram of `len` bytes at `now`, or says which limit refuses it (a refused
    /// datagram is charged nothing).
    pub fn admit(&mut self, len: usize, now: Instant) -> Result<(), Dropped> {
        if !self.packets.has(1, now) {
            return Err(Dropped::RatePackets);
        }
        if !self.bytes.take(len as u64, now) {
            return Err(Dropped::RateBytes);
        }
        let taken = self.packets.take(1, now);
        debug_assert!(taken, "checked above at the same instant");
        Ok(())
    }
}

/// Relay counters since start, shared by every connection task.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Datagrams forwarded.
    forwarded_packets: AtomicU64,
    /// Bytes of datagrams forwarded, header included.
    forwarded_bytes: AtomicU64,
    /// Datagrams dropped, indexed like [`Dropped::ALL`].
    dropped: [AtomicU64; Dropped::ALL.len()],
}

impl RelayStats {
    /// Counts the outcome of one datagram of `len` bytes.
    pub fn record(&self, outcome: Result<(), Dropped>, len: usize) {
        match outcome {
            Ok(()) => {
                self.forwarded_packets.fetch_add(1, Ordering::Relaxed);
                self.forwarded_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
            }
            Err(why) => {
                self.dropped[why as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Datagrams forwarded so far.
    pub fn forwarded_packets(&self) -> u64 {
        self.forwarded_packets.load(Ordering::Relaxed)
    }

    /// Datagrams dropped for `why` so far.
    pub fn dropped(&self, why: Dropped) -> u64 {
        self.dropped[why as usize].load(Ordering::Relaxed)
    }

    /// The `relay` object of `GET /v1/health`.
    pub fn to_json(&self, limits: &RelayLimits) -> serde_json::Value {
        let dropped: serde_json::Map<String, serde_json::Value> = Dropped::ALL
            .iter()
            .map(|d| (d.name().to_string(), self.dropped(*d).into()))
            .collect();
        serde_json::json!({
            "forwarded_packets": self.forwarded_packets(),
            "forwarded_bytes": self.forwarded_bytes.load(Ordering::Relaxed),
            "dropped": dropped,
            "limits": {
                "bytes_per_sec": limits.bytes_per_sec,
                "packets_per_sec": limits.packets_per_sec,
                "burst_bytes": limits.burst_bytes(),
                "burst_packets": limits.burst_packets(),
            },
        })
    }
}

/// Relay settings, per-node budgets and counters of a running coordinator.
#[derive(Debug, Default)]
pub struct Relay {
    /// Limits applied to each source node.
    pub limits: RelayLimits,
    /// Counters.
    pub stats: RelayStats,
    /// Each node's budget, kept across its reconnections (a node must not get a fresh burst
    /// by logging in again); one entry per registered node that has been online.
    limiters: DashMap<NodeId, Arc<Mutex<SourceLimiter>>>,
}

impl Relay {
    /// Node `id`'s budget (full buckets as of `now` if it has none yet).
    pub fn limiter(&self, id: NodeId, now: Instant) -> Arc<Mutex<SourceLimiter>> {
        self.limiters
            .entry(id)
            .or_insert_with(|| Arc::new(Mutex::new(SourceLimiter::new(self.limits, now))))
            .clone()
    }

    /// Forgets a removed node's budget.
    pub fn forget(&self, id: NodeId) {
        self.limiters.remove(&id);
    }
}

/// Decides where a datagram of node `from` goes: its destination's connection, or why not.
/// Charges the datagram to `limiter` first (whatever it carries, it cost the coordinator work).
pub fn route(
    registry: &Registry,
    limiter: &mut SourceLimiter,
    from: NodeId,
    datagram: &[u8],
    now: Instant,
) -> Result<quinn::Connection, Dropped> {
    limiter.admit(datagram.len(), now)?;
    let (to, _) = relay::parse(datagram).map_err(|_| Dropped::TooShort)?;
    if to == from {
        return Err(Dropped::ToSelf);
    }
    let conn = registry.connection(to).ok_or(Dropped::NoRoute)?;
    // Best effort: a receiver that is not keeping up loses the new datagram; quinn would
    // otherwise evict the oldest queued one, which may be another sender's.
    if conn.datagram_send_buffer_space() < datagram.len() {
        return Err(Dropped::Congested);
    }
    Ok(conn)
}

/// Forwards node `from`'s relay datagrams until its connection ends. Runs as its own task, so
/// the control session never waits on relay work, and relay never waits on anything: sending a
/// QUIC datagram only queues it.
pub async fn relay_loop(mesh: Arc<Mesh>, conn: quinn::Connection, from: NodeId) {
    let limiter = mesh.relay.limiter(from, Instant::now());
    let header = from.0.to_be_bytes();
    while let Ok(datagram) = conn.read_datagram().await {
        let len = datagram.len();
        // Uncontended but for the moment a reconnecting node has two connections.
        let routed = {
            let mut limiter = limiter.lock().unwrap_or_else(|e| e.into_inner());
            route(
                &mesh.registry,
                &mut limiter,
                from,
                &datagram,
                Instant::now(),
            )
        };
        let outcome = routed.and_then(|dest| {
            // Rewrite the id in place when the buffer is ours alone (no allocation), else
            // build one new datagram.
            let out = match datagram.try_into_mut() {
                Ok(mut m) => {
                    m[..relay::RELAY_HEADER_LEN].copy_from_slice(&header);
                    m.freeze()
                }
                Err(shared) => relay::build(from, &shared[relay::RELAY_HEADER_LEN..]).into(),
            };
            dest.send_datagram(out).map_err(|e| match e {
                quinn::SendDatagramError::ConnectionLost(_) => Dropped::NoRoute,
                _ => Dropped::TooLarge,
            })
        });
        if let Err(why) = outcome {
            trace!(node = %from, ?why, len, "relay datagram dropped");
        }
        mesh.relay.stats.record(outcome, len);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn limits_from_flags_and_bursts() {
        let l = RelayLimits::default();
        assert_eq!(l.bytes_per_sec, 25_000_000, "200 Mbit/s");
        assert_eq!(l.packets_per_sec, 50_000);
        assert_eq!(l.burst_bytes(), 2_500_000);
        assert_eq!(l.burst_packets(), 5_000);
        let small = RelayLimits::new(1, 10);
        assert_eq!(small.burst_bytes(), MIN_BURST_BYTES);
        assert_eq!(small.burst_packets(), MIN_BURST_PACKETS);
    }

    #[test]
    fn limiter_enforces_both_rates_with_a_simulated_clock() {
        let t0 = Instant::now();
        // 8 Mbit/s = 1 MB/s (burst 100 kB), 1000 packets/s (burst 100).
        let mut l = SourceLimiter::new(RelayLimits::new(8, 1000), t0);
        // Small packets: the packet bucket runs out first.
        let ok = (0..1000).filter(|_| l.admit(10, t0).is_ok()).count();
        assert_eq!(ok, 100);
        assert_eq!(l.admit(10, t0), Err(Dropped::RatePackets));
        // 100 ms later: 100 more packets, or 100 kB of bytes, whichever runs out first.
        let t1 = t0 + Duration::from_millis(100);
        let ok = (0..1000).filter(|_| l.admit(1200, t1).is_ok()).count();
        assert_eq!(
            ok,
            100_000 / 1200,
            "the byte bucket refilled to its burst only"
        );
        assert_eq!(l.admit(1200, t1), Err(Dropped::RateBytes));
        // A byte refusal charged no packet: packets are still there for tiny datagrams.
        assert!(l.admit(1, t1).is_ok());
    }

    #[test]
    fn flood_is_held_to_rate_plus_burst_over_time() {
        let t0 = Instant::now();
        let limits = RelayLimits::new(4, 2000);
        let mut l = SourceLimiter::new(limits, t0);
        let mut bytes = 0u64;
        // 1000-byte datagrams every 50 µs (20k/s, 160 Mbit/s) for 2 s.
        for i in 0..40_000u64 {
            if l.admit(1000, t0 + Duration::from_micros(i * 50)).is_ok() {
                bytes += 1000;
            }
        }
        let bound = limits.burst_bytes() + limits.bytes_per_sec * 2;
        assert!(bytes <= bound, "{bytes} > {bound}");
        assert!(bytes >= limits.bytes_per_sec * 2, "{bytes}");
    }

    #[test]
    fn a_node_keeps_its_budget_across_reconnections_until_removed() {
        let t0 = Instant::now();
        let relay = Relay {
            limits: RelayLimits::new(1, 10),
            ..Relay::default()
        };
        let id = NodeId(7);
        let first = relay.limiter(id, t0);
        let granted = (0..100)
            .filter(|_| first.lock().unwrap().admit(100, t0).is_ok())
            .count();
        assert_eq!(granted as u64, MIN_BURST_PACKETS);
        // A second connection of the same node finds the bucket as the first left it.
        let again = relay.limiter(id, t0);
        assert_eq!(
            again.lock().unwrap().admit(100, t0),
            Err(Dropped::RatePackets)
        );
        // Another node has its own.
        assert!(relay
            .limiter(NodeId(8), t0)
            .lock()
            .unwrap()
            .admit(100, t0)
            .is_ok());
        relay.forget(id);
        assert!(relay.limiter(id, t0).lock().unwrap().admit(100, t0).is_ok());
    }

    #[test]
    fn stats_count_by_reason() {
        let s = RelayStats::default();
        s.record(Ok(()), 100);
        s.record(Ok(()), 50);
        s.record(Err(Dropped::RateBytes), 9);
        s.record(Err(Dropped::NoRoute), 9);
        s.record(Err(Dropped::NoRoute), 9);
        let j = s.to_json(&RelayLimits::default());
        assert_eq!(j["forwarded_packets"], 2);
        assert_eq!(j["forwarded_bytes"], 150);
        assert_eq!(j["dropped"]["rate_bytes"], 1);
        assert_eq!(j["dropped"]["no_route"], 2);
        assert_eq!(j["dropped"]["too_short"], 0);
        assert_eq!(j["limits"]["packets_per_sec"], 50_000);
    }
}
