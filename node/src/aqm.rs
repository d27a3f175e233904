//! Queue management for the daemon's two queues (IO shell layer around
//! `warren_proto::codel`).
//!
//! Packets wait for the daemon in two kernel queues: the TUN device's ring, in front of
//! encryption, and the data socket's receive queue, in front of decryption. Whichever side's
//! CPU is the bottleneck of a bulk transfer, TCP fills that queue, and everything else through
//! the tunnel (pings, keystrokes, DNS) waits behind it. Each queue gets CoDel, which drops a
//! bulk packet before it costs any crypto once the queue has stood for an interval:
//! - the socket's sojourn time is measured: the kernel timestamps every datagram on arrival
//!   (`DataIo::sojourn`);
//! - the TUN ring has no timestamps, so [`Ring`] bounds the head packet's wait by the time since
//!   the ring was last seen empty, which is only counted while reads keep finding more queued.

use std::time::{Duration, Instant};

use warren_proto::codel::{Codel, BULK_MIN_LEN};

use crate::dataio::{ShellDrops, SHELL_DROPS};

/// How a batch of packets left its queue.
#[derive(Debug, Clone, Copy)]
pub struct Queue {
    /// How long the batch waited (`None`: unknown, nothing is dropped).
    pub sojourn: Option<Duration>,
    /// More packets were queued behind the batch (CoDel never drops from a near-empty queue).
    pub backlogged: bool,
}

/// CoDel on one queue, counting its drops as `queue_delay`.
#[derive(Debug, Default)]
pub struct Managed {
    /// The drop decisions.
    codel: Codel,
}

impl Managed {
    /// Whether a packet of the batch `queue` goes on (`true`) or is dropped. Only `bulk`
    /// packets are ever dropped.
    pub fn admit(&mut self, bulk: bool, queue: Queue, now: Instant) -> bool {
        let Some(sojourn) = queue.sojourn.filter(|_| bulk) else {
            return true;
        };
        let admitted = self.codel.admit(sojourn, queue.backlogged, now);
        if !admitted {
            ShellDrops::add(&SHELL_DROPS.queue_delay, 1);
        }
        admitted
    }
}

/// Whether an IP packet from TUN is bulk data the ring's CoDel may drop: full-size segments,
/// not acks, pings or DNS (the datagram rule of `warren_proto::codel::is_bulk`, before
/// encryption).
pub fn is_bulk_ip(packet: &[u8]) -> bool {
    packet.len() >= BULK_MIN_LEN
}

/// What the daemon knows of the TUN ring's backlog: when a read last found it empty, and
/// whether the last batch stopped with packets still queued.
#[derive(Debug, Clone, Copy)]
pub struct Ring {
    /// The last time a read found the ring empty.
    last_empty: Instant,
    /// The last batch stopped at its size limit, not on an empty ring.
    backlogged: bool,
}

impl Ring {
    /// A ring last seen empty at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            last_empty: now,
            backlogged: false,
        }
    }

    /// The queue a batch read at `now` comes from: if the previous batch left the ring empty,
    /// these packets arrived since and did not stand in a queue; otherwise the oldest of them
    /// has waited at most since the ring was last empty.
    pub fn queue(&self, now: Instant) -> Queue {
        Queue {
            sojourn: Some(now.saturating_duration_since(self.last_empty)),
            backlogged: self.backlogged,
        }
    }

    /// A batch ended at `now`: on an empty ring (`empty`), or at its size limit.
    pub fn batch_ended(&mut self, empty: bool, now: Instant) {
        if empty {
            self.last_empty = now;
        }
        self.backlogged = !empty;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn sparse_traffic_never_stands_in_the_ring() {
        let t0 = Instant::now();
        let mut ring = Ring::new(t0);
        let mut aqm = Managed::default();
        // A full-size packet every 20 ms, each batch emptying the ring.
        for i in 1..200u32 {
            let now = t0 + MS * 20 * i;
            let q = ring.queue(now);
            assert!(!q.backlogged);
            assert!(aqm.admit(true, q, now));
            ring.batch_ended(true, now);
        }
    }

    #[test]
    fn a_ring_that_never_empties_gets_drops_but_small_packets_pass() {
        let t0 = Instant::now();
        let mut ring = Ring::new(t0);
        ring.batch_ended(false, t0);
        let mut aqm = Managed::default();
        let (mut bulk_dropped, mut small_dropped) = (0, 0);
        // Batches every 0.1 ms for 100 ms, every one stopping with more queued.
        for i in 1..1000u32 {
            let now = t0 + MS / 10 * i;
            let q = ring.queue(now);
            assert!(q.backlogged);
            assert_eq!(q.sojourn, Some(now - t0));
            if !aqm.admit(true, q, now) {
                bulk_dropped += 1;
            }
            if !aqm.admit(false, q, now) {
                small_dropped += 1;
            }
            ring.batch_ended(false, now);
        }
        assert!(bulk_dropped >= 5, "{bulk_dropped}");
        assert_eq!(small_dropped, 0);
        // Once a read finds the ring empty, the next batch is not backlogged.
        let now = t0 + MS * 101;
        ring.batch_ended(true, now);
        assert!(!ring.queue(now + MS).backlogged);
        assert_eq!(ring.queue(now + MS).sojourn, Some(MS));
    }

    #[test]
    fn unknown_sojourn_drops_nothing() {
        let mut aqm = Managed::default();
        let q = Queue {
            sojourn: None,
            backlogged: true,
        };
        let t0 = Instant::now();
        assert!((0..1000u32).all(|i| aqm.admit(true, q, t0 + MS * i)));
        assert!(is_bulk_ip(&[0; 1280]));
        assert!(!is_bulk_ip(&[0; 84]), "a ping");
    }
}
