//! CoDel (RFC 8289) for the queues in front of a node's encryption and decryption (sans-IO
//! core).
//!
//! When a bulk transfer comes faster than a node can encrypt or decrypt it, the packets wait in
//! a kernel queue (the TUN device's ring, or the data socket's receive queue), and TCP keeps
//! that queue as full as it is allowed to be: every other packet through the tunnel (a ping, an
//! SSH keystroke, a DNS answer) waits behind it. CoDel watches how long packets have waited
//! (their sojourn time) and, once it has stayed above a target for a whole interval, drops one
//! bulk packet, then more at a rate that grows with the square root of the drops, until the
//! wait falls below the target again. A loss-based TCP (Reno, CUBIC) reads each drop as
//! congestion and slows just enough to keep the queue short.
//!
//! This module is the decision only: the IO shell measures or bounds sojourn times and asks
//! [`Codel::admit`] per bulk packet before it costs any crypto (the node's `aqm` module). Which
//! datagrams are bulk is [`is_bulk`]: small packets (TCP acks, pings, DNS, handshakes, probes)
//! are never dropped, which keeps sparse flows' latency low the way fq_codel's new-flow queue
//! does.

use std::time::{Duration, Instant};

use crate::packet::TYPE_TRANSPORT;

/// Sojourn time CoDel holds the queue to. RFC 8289 suggests 5-10 % of the interval; the queue
/// here drains at the speed of a CPU, not of a WAN link, so it is short: half a millisecond is
/// about 300 KB at 5 Gbit/s, enough for TCP to keep the crypto busy. Lab, one CUBIC stream
/// through a direct tunnel at 4.6-5.3 Gbit/s: a ping behind it waited 2.0-2.9 ms on average
/// without CoDel and 0.53-0.58 ms with it, for 8-10 % of the stream's throughput; a target of
/// 1 ms did no better on either count.
pub const TARGET: Duration = Duration::from_micros(500);
/// How long the sojourn time must stay above [`TARGET`] before the first drop, and the base of
/// the drop spacing (interval / sqrt(drops)). RFC 8289 uses 100 ms for the Internet's worst-case
/// RTT; shorter here so that a standing queue is cut within a few round trips of a LAN or a
/// nearby VPS.
pub const INTERVAL: Duration = Duration::from_millis(10);
/// Smallest datagram [`is_bulk`] counts as bulk, in bytes: above a full-size TCP ack or ping
/// through the tunnel, below any MSS-sized segment.
pub const BULK_MIN_LEN: usize = 512;

/// Whether `datagram` is bulk data CoDel may drop: a transport packet of at least
/// [`BULK_MIN_LEN`] bytes. Handshakes, probes and small packets always pass.
pub fn is_bulk(datagram: &[u8]) -> bool {
    datagram.len() >= BULK_MIN_LEN && datagram.first() == Some(&TYPE_TRANSPORT)
}

/// One queue's CoDel state.
#[derive(Debug, Clone)]
pub struct Codel {
    /// Sojourn time to hold the queue to.
    target: Duration,
    /// Grace period above target before dropping, and the drop spacing's base.
    interval: Duration,
    /// When the sojourn time, above target since then, makes dropping allowed.
    first_above: Option<Instant>,
    /// In the dropping state.
    dropping: bool,
    /// Drops in the current dropping state (sets the drop rate).
    count: u32,
    /// `count` when the last dropping state ended, to resume near that rate.
    last_count: u32,
    /// Next drop while dropping.
    drop_next: Option<Instant>,
    /// Datagrams dropped since creation.
    dropped: u64,
}

impl Default for Codel {
    fn default() -> Self {
        Self::new(TARGET, INTERVAL)
    }
}

impl Codel {
    /// A queue held to `target`, with `interval` as CoDel's interval.
    pub fn new(target: Duration, interval: Duration) -> Self {
        Self {
            target,
            interval,
            first_above: None,
            dropping: false,
            count: 0,
            last_count: 0,
            drop_next: None,
            dropped: 0,
        }
    }

    /// Datagrams dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Decides one bulk datagram leaving the queue at `now` after waiting `sojourn`;
    /// `backlogged` says whether more datagrams were still queued behind it (CoDel never drops
    /// when the queue holds less than a packet, RFC 8289 section 4.2). `true`: deliver it;
    /// `false`: drop it.
    pub fn admit(&mut self, sojourn: Duration, backlogged: bool, now: Instant) -> bool {
        let ok_to_drop = self.ok_to_drop(sojourn, backlogged, now);
        if self.dropping {
            if !ok_to_drop {
                self.dropping = false;
                return true;
            }
            let next = self.drop_next.unwrap_or(now);
            if now < next {
                return true;
            }
            self.count = self.count.saturating_add(1);
            self.drop_next = Some(self.control_law(next));
            self.dropped += 1;
            return false;
        }
        if !ok_to_drop {
            return true;
        }
        // Enter the dropping state. If it ended only recently, resume near the old drop rate
        // (RFC 8289 section 5.6) instead of starting over from one drop per interval.
        self.dropping = true;
        let delta = self.count.saturating_sub(self.last_count);
        let recent = self
            .drop_next
            .is_some_and(|t| now.saturating_duration_since(t) < self.interval * 16);
        self.count = if delta > 1 && recent { delta } else { 1 };
        self.last_count = self.count;
        self.drop_next = Some(self.control_law(now));
        self.dropped += 1;
        false
    }

    /// Whether the sojourn time has been above target for at least an interval.
    fn ok_to_drop(&mut self, sojourn: Duration, backlogged: bool, now: Instant) -> bool {
        if sojourn < self.target || !backlogged {
            self.first_above = None;
            return false;
        }
        match self.first_above {
            None => {
                self.first_above = Some(now + self.interval);
                false
            }
            Some(t) => now >= t,
        }
    }

    /// The next drop time: `t + interval / sqrt(count)`.
    fn control_law(&self, t: Instant) -> Instant {
        let count = f64::from(self.count.max(1));
        t + self.interval.div_f64(count.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds `n` datagrams spaced `gap` apart with a fixed sojourn; returns the drop times
    /// (offsets from `start`).
    fn run(
        c: &mut Codel,
        start: Instant,
        n: u32,
        gap: Duration,
        sojourn: Duration,
    ) -> Vec<Duration> {
        (0..n)
            .filter_map(|i| {
                let now = start + gap * i;
                (!c.admit(sojourn, true, now)).then(|| now - start)
            })
            .collect()
    }

    #[test]
    fn short_queue_is_never_dropped() {
        let mut c = Codel::default();
        let t0 = Instant::now();
        assert!(run(&mut c, t0, 10_000, MS / 10, TARGET / 2).is_empty());
        // Above target but never backlogged: a lone datagram that waited is no standing queue.
        assert!((0..10_000).all(|i| c.admit(TARGET * 5, false, t0 + MS * i)));
        assert_eq!(c.dropped(), 0);
    }

    #[test]
    fn standing_queue_drops_after_an_interval_then_faster() {
        let mut c = Codel::default();
        let t0 = Instant::now();
        // 1 datagram every 0.1 ms, all waiting 3 ms, for 200 ms.
        let drops = run(&mut c, t0, 2_000, MS / 10, TARGET * 3);
        // The first drop comes one interval after the sojourn time went above target.
        assert_eq!(drops[0], INTERVAL);
        // Then at interval / sqrt(count): the gaps shrink.
        let gaps: Vec<Duration> = drops.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() >= 8, "{drops:?}");
        // (Drops fall on the 0.1 ms packet grid, so a gap may exceed the one before by a tick.)
        assert!(gaps.windows(2).all(|g| g[1] <= g[0] + MS / 10), "{gaps:?}");
        assert!(gaps[0] >= INTERVAL - MS / 10 && gaps[0] <= INTERVAL + MS / 10);
        let last = *gaps.last().expect("gaps");
        assert!(last < INTERVAL / 2, "{gaps:?}");
        assert_eq!(c.dropped(), drops.len() as u64);
    }

    #[test]
    fn leaves_dropping_when_the_queue_drains_and_resumes_near_the_old_rate() {
        let mut c = Codel::default();
        let t0 = Instant::now();
        let first = run(&mut c, t0, 2_000, MS / 10, TARGET * 3);
        let rate_before = first.len();
        // The queue drains: below target, nothing is dropped and the state is left.
        let t1 = t0 + MS * 200;
        assert!(run(&mut c, t1, 100, MS / 10, TARGET / 2).is_empty());
        // It builds again soon after: the first drop comes one interval later again, and the
        // drops resume near the old rate (count carried over) rather than one per interval.
        let t2 = t1 + MS * 10;
        let second = run(&mut c, t2, 1_000, MS / 10, TARGET * 3);
        assert_eq!(second[0], INTERVAL);
        let early = second.iter().filter(|&&d| d < INTERVAL * 2).count();
        assert!(early > 2, "{second:?} (first run dropped {rate_before})");
    }

    #[test]
    fn only_large_transport_packets_are_bulk() {
        let mut transport = vec![0u8; 1300];
        transport[0] = TYPE_TRANSPORT;
        assert!(is_bulk(&transport));
        assert!(!is_bulk(&transport[..BULK_MIN_LEN - 1]), "ack-sized");
        let mut handshake = transport.clone();
        handshake[0] = crate::packet::TYPE_HANDSHAKE_INIT;
        assert!(!is_bulk(&handshake));
        assert!(!is_bulk(&[]));
    }
}
