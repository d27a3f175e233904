//! Batched data-plane IO on the shared UDP socket (IO shell layer), through quinn-udp: receive
//! with `recvmmsg` and UDP GRO (many datagrams per syscall), send runs of equal-sized datagrams
//! to one destination as a single UDP GSO `sendmsg` (DESIGN.md section 5).
//!
//! Enabling GRO changes what a plain `recv_from` on the socket returns (coalesced datagrams), so
//! once a [`DataIo`] exists every read of the socket must go through it; `join`'s QUIC-only pump
//! stops before it is created.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;

use quinn::udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::socket::MAX_DATAGRAM;

/// Largest UDP GSO send, in bytes (the UDP payload limit of one IPv4 datagram).
pub const MAX_GSO_BYTES: usize = 65_507;
/// Bytes per receive slot: room for one GRO-coalesced burst (the kernel caps it at 64 KiB).
const SLOT: usize = MAX_DATAGRAM;

/// The shared socket's data-plane side.
#[derive(Debug)]
pub struct DataIo {
    /// The shared socket.
    io: Arc<UdpSocket>,
    /// quinn-udp's per-socket state (GSO/GRO support, cmsg handling).
    state: UdpSocketState,
}

/// Reusable receive buffers: [`BATCH_SIZE`] slots and their metadata.
pub struct RecvBufs {
    /// `BATCH_SIZE * SLOT` bytes.
    bytes: Vec<u8>,
    /// What each slot received.
    meta: [RecvMeta; BATCH_SIZE],
}

impl Default for RecvBufs {
    fn default() -> Self {
        Self {
            bytes: vec![0u8; BATCH_SIZE * SLOT],
            meta: [RecvMeta::default(); BATCH_SIZE],
        }
    }
}

impl RecvBufs {
    /// Calls `f(source, datagram)` for every datagram of the first `n` slots, splitting
    /// GRO-coalesced slots at their stride.
    pub fn for_each(&self, n: usize, mut f: impl FnMut(SocketAddr, &[u8])) {
        for (i, meta) in self.meta.iter().enumerate().take(n) {
            let Some(slot) = self.bytes.get(i * SLOT..i * SLOT + meta.len.min(SLOT)) else {
                continue;
            };
            let stride = if meta.stride == 0 {
                slot.len()
            } else {
                meta.stride
            };
            for datagram in slot.chunks(stride.max(1)) {
                f(meta.addr, datagram);
            }
        }
    }
}

impl DataIo {
    /// Takes over the socket's receive side (enables GRO, packet info, no fragmentation).
    pub fn new(io: Arc<UdpSocket>) -> io::Result<Self> {
        let state = UdpSocketState::new((&*io).into())?;
        Ok(Self { io, state })
    }

    /// Most datagrams one GSO send may carry.
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }

    /// Waits for datagrams and reads a batch; returns how many slots were filled. Cancel-safe:
    /// the read itself happens synchronously once the socket is ready.
    pub async fn recv(&self, bufs: &mut RecvBufs) -> io::Result<usize> {
        let RecvBufs { bytes, meta } = bufs;
        self.io
            .async_io(Interest::READABLE, || {
                let mut chunks = bytes.chunks_mut(SLOT);
                let mut iovs: [IoSliceMut<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
                    IoSliceMut::new(chunks.next().expect("BATCH_SIZE slots of SLOT bytes"))
                });
                self.state.recv((&*self.io).into(), &mut iovs, meta)
            })
            .await
    }

    /// Sends a batch (one datagram, or a GSO run). Errors other than would-block are logged by
    /// quinn-udp and dropped, as for any lost datagram.
    pub async fn send(&self, batch: &GsoBatch) -> io::Result<()> {
        let Some(dst) = batch.dst else {
            return Ok(());
        };
        let transmit = Transmit {
            destination: dst,
            ecn: None,
            contents: &batch.buf,
            segment_size: (batch.count > 1).then_some(batch.segment),
            src_ip: None,
        };
        self.io
            .async_io(Interest::WRITABLE, || {
                self.state.send((&*self.io).into(), &transmit)
            })
            .await
    }
}

/// A run of datagrams to one destination that can go out as one GSO send: all the same size
/// except possibly a shorter last one.
#[derive(Debug)]
pub struct GsoBatch {
    /// Destination of the run (`None` when empty).
    dst: Option<SocketAddr>,
    /// Size of every datagram but the last.
    segment: usize,
    /// Datagrams in the run.
    count: usize,
    /// A shorter datagram ended the run.
    closed: bool,
    /// The datagrams back to back (capacity [`MAX_GSO_BYTES`], reused).
    buf: Vec<u8>,
}

impl Default for GsoBatch {
    fn default() -> Self {
        Self {
            dst: None,
            segment: 0,
            count: 0,
            closed: false,
            buf: Vec::with_capacity(MAX_GSO_BYTES),
        }
    }
}

impl GsoBatch {
    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends `payload` if it extends the run; `false` means: send the batch, clear it, retry.
    pub fn push(&mut self, dst: SocketAddr, payload: &[u8], max_segments: usize) -> bool {
        if payload.is_empty() {
            return true;
        }
        if self.count == 0 {
            self.dst = Some(dst);
            self.segment = payload.len();
            self.count = 1;
            self.buf.extend_from_slice(payload);
            return true;
        }
        let fits = self.dst == Some(dst)
            && !self.closed
            && self.count < max_segments
            && payload.len() <= self.segment
            && self.buf.len() + payload.len() <= MAX_GSO_BYTES;
        if !fits {
            return false;
        }
        self.closed = payload.len() < self.segment;
        self.count += 1;
        self.buf.extend_from_slice(payload);
        true
    }

    /// Empties the batch, keeping its buffer.
    pub fn clear(&mut self) {
        self.dst = None;
        self.segment = 0;
        self.count = 0;
        self.closed = false;
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], p))
    }

    #[test]
    fn batches_equal_runs_to_one_destination() {
        let mut b = GsoBatch::default();
        assert!(b.is_empty());
        assert!(b.push(addr(1), &[1; 100], 64));
        assert!(b.push(addr(1), &[2; 100], 64));
        assert!(!b.push(addr(2), &[3; 100], 64), "other destination");
        assert!(!b.push(addr(1), &[3; 101], 64), "larger datagram");
        assert!(b.push(addr(1), &[4; 40], 64), "shorter last one");
        assert!(!b.push(addr(1), &[5; 40], 64), "run closed");
        assert_eq!((b.count, b.segment, b.buf.len()), (3, 100, 240));
        b.clear();
        assert!(b.is_empty());
        assert!(b.push(addr(1), &[1; 10], 2));
        assert!(b.push(addr(1), &[1; 10], 2));
        assert!(!b.push(addr(1), &[1; 10], 2), "segment limit");
        b.clear();
        assert!(b.push(addr(1), &[0; 60_000], 64));
        assert!(!b.push(addr(1), &[0; 6_000], 64), "byte limit");
    }

    #[tokio::test]
    async fn gso_and_gro_round_trip_over_loopback() {
        let a = crate::socket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = crate::socket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (tx, rx) = (
            DataIo::new(a.clone()).unwrap(),
            DataIo::new(b.clone()).unwrap(),
        );
        let to = b.local_addr().unwrap();
        let mut batch = GsoBatch::default();
        for i in 0..5u8 {
            let payload = vec![i; if i == 4 { 500 } else { 1200 }];
            if !batch.push(to, &payload, tx.max_segments()) {
                tx.send(&batch).await.unwrap();
                batch.clear();
                assert!(batch.push(to, &payload, tx.max_segments()));
            }
        }
        tx.send(&batch).await.unwrap();
        let mut bufs = RecvBufs::default();
        let mut got: Vec<(u8, usize)> = Vec::new();
        while got.len() < 5 {
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv(&mut bufs))
                .await
                .unwrap()
                .unwrap();
            bufs.for_each(n, |from, d| {
                assert_eq!(from, a.local_addr().unwrap());
                assert!(d.iter().all(|&x| x == d[0]));
                got.push((d[0], d.len()));
            });
        }
        assert_eq!(
            got,
            vec![(0, 1200), (1, 1200), (2, 1200), (3, 1200), (4, 500)]
        );
    }
}
