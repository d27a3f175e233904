//! Batched data-plane IO on the shared UDP socket (IO shell layer), through quinn-udp: receive
//! with `recvmmsg` and UDP GRO (many datagrams per syscall), send runs of equal-sized datagrams
//! to one destination as a single UDP GSO `sendmsg` (DESIGN.md section 5).
//!
//! Enabling GRO changes what a plain `recv_from` on the socket returns (coalesced datagrams), so
//! once a [`DataIo`] exists every read of the socket must go through it; `join`'s QUIC-only pump
//! stops before it is created.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState, BATCH_SIZE};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use warren_cli::sockbuf;

use crate::socket::MAX_DATAGRAM;

/// Largest UDP GSO send, in bytes (the UDP payload limit of one IPv4 datagram).
pub const MAX_GSO_BYTES: usize = 65_507;
/// Bytes per receive slot: room for one GRO-coalesced burst (the kernel caps it at 64 KiB).
const SLOT: usize = MAX_DATAGRAM;
/// Slots per receive call. Everything one call returns is decrypted before any of it reaches
/// TUN, so this bounds the delay a packet picks up behind a bulk transfer: 4 full GRO slots are
/// 256 KiB, a few hundred microseconds of decryption. With quinn-udp's 32 (2 MiB) a ping
/// behind a TCP stream waited 1.5-3.5 ms in the lab bench; bigger batches buy nothing here,
/// since one slot already carries up to 64 KiB.
const RECV_SLOTS: usize = if BATCH_SIZE < 4 { BATCH_SIZE } else { 4 };

/// Receive buffer of the shared socket once the data path runs, bytes (the kernel doubles it
/// for its bookkeeping). This queue sits in front of the receiving daemon's decryption, the
/// bottleneck of a bulk transfer. Its length is not what keeps latency down: CoDel does that
/// (`warren_proto::codel`, fed with the kernel's receive timestamps), dropping bulk datagrams
/// once they have waited longer than its target. The buffer only has to absorb bursts. With
/// 256 KiB (plain drop-tail, no CoDel) one TCP stream through the tunnel had 70k-150k
/// retransmits in 5 s; with 2 MiB and CoDel it had almost none (0-8), and ran 4.7-5.0 Gbit/s
/// with ChaCha20-Poly1305 and 6.2-7.5 with AES-256-GCM, against 4.0-4.8 and 5.3-5.9 (lab bench).
pub const RECV_QUEUE: usize = 2 * 1024 * 1024;

/// Sets the socket's receive buffer to [`RECV_QUEUE`], past net.core.rmem_max when the
/// process has CAP_NET_ADMIN (as `socket::bind` does for the larger one). Best effort.
fn bound_recv_queue(io: &UdpSocket) {
    sockbuf::set_buffer(io, sockbuf::Buffer::Recv, RECV_QUEUE);
}

/// Packets the IO shell dropped, by reason, since the process started. The engine counts what
/// it drops itself ([`warren_proto::engine::DropCounters`]); these are the drops only the shell
/// sees. Process-wide relaxed atomics, like the kernel's SNMP counters: the data path bumps them
/// from wherever a packet is lost without holding a handle to the status code, and the status
/// report reads them.
#[derive(Debug, Default)]
pub struct ShellDrops {
    /// Decrypted packets the TUN device refused (its queue is full, or the write failed).
    pub tun_write_failed: AtomicU64,
    /// Datagrams whose UDP send failed with an error other than would-block.
    pub udp_send_failed: AtomicU64,
    /// Relay datagrams larger than the control connection's current datagram size.
    pub relay_too_large: AtomicU64,
    /// Bulk packets CoDel dropped before any crypto because they had waited too long in the
    /// socket's receive queue or the TUN ring (see `crate::aqm`).
    pub queue_delay: AtomicU64,
}

/// The process's shell drop counters.
pub static SHELL_DROPS: ShellDrops = ShellDrops {
    tun_write_failed: AtomicU64::new(0),
    udp_send_failed: AtomicU64::new(0),
    relay_too_large: AtomicU64::new(0),
    queue_delay: AtomicU64::new(0),
};

impl ShellDrops {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Every counter with its reason name.
    pub fn reasons(&self) -> [(&'static str, u64); 4] {
        let Self {
            tun_write_failed,
            udp_send_failed,
            relay_too_large,
            queue_delay,
        } = self;
        [
            ("tun_write_failed", tun_write_failed.load(Ordering::Relaxed)),
            ("udp_send_failed", udp_send_failed.load(Ordering::Relaxed)),
            ("relay_too_large", relay_too_large.load(Ordering::Relaxed)),
            ("queue_delay", queue_delay.load(Ordering::Relaxed)),
        ]
    }
}

/// The shared socket's data-plane side.
#[derive(Debug)]
pub struct DataIo {
    /// The shared socket.
    io: Arc<UdpSocket>,
    /// quinn-udp's per-socket state (GSO/GRO support, cmsg handling).
    state: UdpSocketState,
}

/// Reusable receive buffers: [`RECV_SLOTS`] slots and their metadata.
pub struct RecvBufs {
    /// `RECV_SLOTS * SLOT` bytes.
    bytes: Vec<u8>,
    /// What each slot received.
    meta: [RecvMeta; RECV_SLOTS],
}

impl Default for RecvBufs {
    fn default() -> Self {
        Self {
            bytes: vec![0u8; RECV_SLOTS * SLOT],
            meta: [RecvMeta::default(); RECV_SLOTS],
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
    /// Takes over the socket's receive side (enables GRO, packet info, no fragmentation) and
    /// bounds its receive queue to [`RECV_QUEUE`].
    pub fn new(io: Arc<UdpSocket>) -> io::Result<Self> {
        let state = UdpSocketState::new((&*io).into())?;
        bound_recv_queue(&io);
        Ok(Self { io, state })
    }

    /// Most datagrams one GSO send may carry.
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }

    /// Whether a read that filled `n` slots may have left datagrams queued behind it.
    pub fn backlogged(n: usize) -> bool {
        n >= RECV_SLOTS
    }

    /// How long the last datagram read waited between the kernel receiving it and the read:
    /// the receive queue's sojourn time, for CoDel. Uses the socket's receive timestamp
    /// (`SIOCGSTAMPNS`, one ioctl per batch); the first call turns timestamping on and returns
    /// `None`, as does a kernel without it.
    pub fn sojourn(&self) -> Option<Duration> {
        let arrived = last_arrival(&self.io)?;
        Some(
            SystemTime::now()
                .duration_since(arrived)
                .unwrap_or_default(),
        )
    }

    /// Waits for datagrams and reads a batch; returns how many slots were filled. Cancel-safe:
    /// the read itself happens synchronously once the socket is ready.
    pub async fn recv(&self, bufs: &mut RecvBufs) -> io::Result<usize> {
        self.io
            .async_io(Interest::READABLE, || self.try_recv(bufs))
            .await
    }

    /// One `recvmmsg` into `bufs` if a batch is waiting, without waiting (`WouldBlock` if none
    /// is). Asks the socket itself rather than tokio's cached readiness, which a busy task
    /// refreshes only when it yields: the point is to see datagrams that arrived while it was
    /// busy.
    pub fn try_recv(&self, bufs: &mut RecvBufs) -> io::Result<usize> {
        let RecvBufs { bytes, meta } = bufs;
        let mut chunks = bytes.chunks_mut(SLOT);
        let mut iovs: [IoSliceMut<'_>; RECV_SLOTS] = std::array::from_fn(|_| {
            IoSliceMut::new(chunks.next().expect("RECV_SLOTS slots of SLOT bytes"))
        });
        self.state.recv((&*self.io).into(), &mut iovs, meta)
    }

    /// Sends a batch (one datagram, or a GSO run), waiting while the socket buffer is full.
    /// Other errors drop the batch like any lost datagram: they are counted
    /// ([`ShellDrops::udp_send_failed`], per datagram), logged at debug, and returned.
    pub async fn send(&self, batch: &GsoBatch) -> io::Result<()> {
        let Some(dst) = batch.dst() else {
            return Ok(());
        };
        let transmit = Transmit {
            destination: dst,
            ecn: None,
            contents: batch.contents(),
            segment_size: (batch.count > 1).then_some(batch.segment),
            src_ip: None,
        };
        let res = self
            .io
            .async_io(Interest::WRITABLE, || {
                self.state.try_send((&*self.io).into(), &transmit)
            })
            .await;
        if let Err(e) = &res {
            let before = SHELL_DROPS
                .udp_send_failed
                .fetch_add(batch.count as u64, Ordering::Relaxed);
            let total = before + batch.count as u64;
            // Logarithmically rate-limited: the first failure, then at each power of two.
            if before.checked_ilog2() != total.checked_ilog2() {
                let too_large = is_too_large(e);
                tracing::warn!(error = %e, %dst, datagrams = batch.count, total,
                    segment = batch.segment, too_large, "UDP send failed");
            } else {
                tracing::debug!(error = %e, %dst, datagrams = batch.count, "UDP send failed");
            }
        }
        res
    }
}

/// `SIOCGSTAMPNS` (linux/sockios.h): the receive time of the last datagram read, as a
/// `struct timespec`. The value of the "old" ioctl, whose timespec is 64-bit on 64-bit targets.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;

/// The kernel's receive time of the last datagram read from `sock`. The first call on a socket
/// enables its timestamping and finds none yet (`ENOENT`).
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn last_arrival(sock: &UdpSocket) -> Option<SystemTime> {
    use std::os::fd::AsRawFd;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ioctl(2) on a descriptor borrowed for this call, writing one `struct timespec`
    // into a live, correctly sized and aligned value.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGSTAMPNS, std::ptr::from_mut(&mut ts)) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Without the ioctl there is no sojourn time, and CoDel never drops.
#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn last_arrival(_sock: &UdpSocket) -> Option<SystemTime> {
    None
}

/// A run of datagrams to one destination that can go out as one GSO send: all the same size
/// except possibly a shorter last one. The next datagram can be written in place behind the run
/// ([`GsoBatch::tail`], e.g. sealed there by the engine) and then added without a copy.
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
    /// The run (`..used`) followed by room for one more datagram; never reallocated.
    buf: Vec<u8>,
    /// Bytes of the run.
    used: usize,
}

impl Default for GsoBatch {
    fn default() -> Self {
        Self {
            dst: None,
            segment: 0,
            count: 0,
            closed: false,
            buf: vec![0u8; MAX_GSO_BYTES + MAX_DATAGRAM],
            used: 0,
        }
    }
}

/// Bytes of a [`DatagramArena`] buffer: about 48 full-size relay datagrams.
const ARENA: usize = 64 * 1024;

/// Where datagrams handed to quinn become `Bytes`: relay datagrams sealed by the engine's fast
/// path (for `send_datagram`), and QUIC packets demultiplexed from the data socket (for the
/// [`crate::socket::QuicInbox`]). Each is copied into one buffer and split off, so the heap is
/// touched once per [`ARENA`] bytes instead of once per datagram. quinn holds each datagram
/// until it has sent or read it; once all of a buffer's datagrams are gone the buffer is reused.
#[derive(Debug, Default)]
pub struct DatagramArena {
    /// The unsplit rest of the current buffer.
    buf: bytes::BytesMut,
}

impl DatagramArena {
    /// A datagram holding a copy of `datagram`.
    pub fn datagram(&mut self, datagram: &[u8]) -> bytes::Bytes {
        if self.buf.capacity() < datagram.len() {
            self.buf.reserve(ARENA.max(datagram.len()));
        }
        self.buf.extend_from_slice(datagram);
        self.buf.split().freeze()
    }
}

/// Whether a send error means the local stack refused the datagrams as too large for the route
/// (`EMSGSIZE`; the shared socket does not fragment): tell the engine with
/// `Engine::send_refused(batch.dst())`, small probes pass such a path but data never will.
pub fn is_too_large(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EMSGSIZE)
}

impl GsoBatch {
    /// Destination of the run (`None` when empty).
    pub fn dst(&self) -> Option<SocketAddr> {
        self.dst
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The bytes of the run.
    fn contents(&self) -> &[u8] {
        &self.buf[..self.used]
    }

    /// Room behind the run for the next datagram (at least [`MAX_DATAGRAM`] bytes).
    pub fn tail(&mut self) -> &mut [u8] {
        &mut self.buf[self.used..]
    }

    /// Adds the `len` bytes just written at [`GsoBatch::tail`] to the run. `false`: they do not
    /// extend it; send the run, then call [`GsoBatch::restart_with_tail`].
    pub fn push_tail(&mut self, dst: SocketAddr, len: usize, max_segments: usize) -> bool {
        if len == 0 {
            return true;
        }
        if self.count == 0 {
            self.dst = Some(dst);
            self.segment = len;
            self.count = 1;
            self.used = len;
            return true;
        }
        let fits = self.dst == Some(dst)
            && !self.closed
            && self.count < max_segments
            && len <= self.segment
            && self.used + len <= MAX_GSO_BYTES;
        if !fits {
            return false;
        }
        self.closed = len < self.segment;
        self.count += 1;
        self.used += len;
        true
    }

    /// After the run was sent: starts a new run with the `len` bytes at the old tail.
    pub fn restart_with_tail(&mut self, dst: SocketAddr, len: usize) {
        let start = self.used;
        self.buf.copy_within(start..start + len, 0);
        self.clear();
        self.push_tail(dst, len, 1);
    }

    /// Appends a datagram by copying it (for the engine's queued transmits).
    /// `false`: send the run, clear it, and push again.
    pub fn push(&mut self, dst: SocketAddr, payload: &[u8], max_segments: usize) -> bool {
        let Some(room) = self.tail().get_mut(..payload.len()) else {
            return false;
        };
        room.copy_from_slice(payload);
        self.push_tail(dst, payload.len(), max_segments)
    }

    /// Empties the batch, keeping its buffer.
    pub fn clear(&mut self) {
        self.dst = None;
        self.segment = 0;
        self.count = 0;
        self.closed = false;
        self.used = 0;
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
        assert_eq!((b.count, b.segment, b.contents().len()), (3, 100, 240));
        assert_eq!(&b.contents()[200..], &[4; 40][..]);
        assert_eq!(b.dst(), Some(addr(1)));
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.dst(), None);
        assert!(is_too_large(&io::Error::from_raw_os_error(libc::EMSGSIZE)));
        assert!(!is_too_large(&io::Error::from_raw_os_error(libc::EPERM)));
        assert!(b.push(addr(1), &[1; 10], 2));
        assert!(b.push(addr(1), &[1; 10], 2));
        assert!(!b.push(addr(1), &[1; 10], 2), "segment limit");
        b.clear();
        assert!(b.push(addr(1), &[0; 60_000], 64));
        assert!(!b.push(addr(1), &[0; 6_000], 64), "byte limit");

        // Written in place at the tail, then moved to the front of a new run.
        b.clear();
        assert!(b.push(addr(1), &[1; 10], 64));
        b.tail()[..20].copy_from_slice(&[9; 20]);
        assert!(
            !b.push_tail(addr(1), 20, 64),
            "larger than the run's segment"
        );
        b.restart_with_tail(addr(1), 20);
        assert_eq!(b.contents(), &[9; 20][..]);
        assert_eq!((b.count, b.dst), (1, Some(addr(1))));
    }

    /// Two shared sockets on loopback with their data-plane sides: (a, b, a's, b's).
    fn loopback_pair() -> (Arc<UdpSocket>, Arc<UdpSocket>, DataIo, DataIo) {
        let a = crate::socket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = crate::socket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (tx, rx) = (
            DataIo::new(a.clone()).unwrap(),
            DataIo::new(b.clone()).unwrap(),
        );
        (a, b, tx, rx)
    }

    #[test]
    fn relay_datagrams_share_one_buffer() {
        let mut arena = DatagramArena::default();
        let a = arena.datagram(&[1; 1300]);
        let b = arena.datagram(&[2; 1300]);
        assert_eq!((&a[..], &b[..]), (&[1; 1300][..], &[2; 1300][..]));
        // Split off one buffer, back to back: no allocation per datagram.
        assert_eq!(b.as_ptr(), a.as_ptr().wrapping_add(1300));
        // A datagram larger than a buffer still fits.
        let big = arena.datagram(&[3; ARENA + 1]);
        assert_eq!(big.len(), ARENA + 1);
        // Once quinn has dropped every datagram of a buffer, it is reused.
        drop((a, b, big));
        let mut arena = DatagramArena::default();
        let first = arena.datagram(&[4; 60_000]);
        let start = first.as_ptr();
        drop(first);
        let again = arena.datagram(&[5; 10_000]);
        assert_eq!(again.as_ptr(), start, "the drained buffer is reclaimed");
    }

    #[tokio::test]
    async fn gso_and_gro_round_trip_over_loopback() {
        let (a, b, tx, rx) = loopback_pair();
        let to = b.local_addr().unwrap();
        // The receive queue is bounded once the data path owns the socket (the kernel doubles
        // the size asked for).
        let rcvbuf = socket2::SockRef::from(&*b).recv_buffer_size().unwrap();
        assert!(rcvbuf <= 2 * RECV_QUEUE, "{rcvbuf}");
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

    #[tokio::test]
    async fn sojourn_is_the_wait_in_the_receive_queue() {
        let (_a, b, tx, rx) = loopback_pair();
        let to = b.local_addr().unwrap();
        let mut bufs = RecvBufs::default();
        let mut batch = GsoBatch::default();
        // The first call turns timestamps on; datagrams received from then on carry one.
        let _ = rx.sojourn();
        for wait in [Duration::ZERO, Duration::from_millis(30)] {
            batch.clear();
            assert!(batch.push(to, &[7; 100], tx.max_segments()));
            tx.send(&batch).await.unwrap();
            tokio::time::sleep(wait).await;
            let n = rx.recv(&mut bufs).await.unwrap();
            assert_eq!(n, 1);
            assert!(!DataIo::backlogged(n));
            let sojourn = rx.sojourn().expect("a receive timestamp");
            assert!(sojourn >= wait, "{sojourn:?} < {wait:?}");
            assert!(sojourn < wait + Duration::from_secs(1), "{sojourn:?}");
        }
    }
}
