//! QUIC over TCP tunnels, merged into the QUIC endpoint's socket (IO shell layer).
//!
//! Nodes on networks that drop UDP reach the coordinator over a TLS-over-TCP stream on the same
//! port number (see `tcp.rs`) and run their unchanged QUIC connection inside it. quinn sees one
//! socket, [`MergedSocket`]: the real UDP socket plus every tunnel. Each tunnel gets a unique
//! *virtual* peer address from [`VIRTUAL_PREFIX`], an IPv6 ULA /64 reserved for this and never
//! routed: packets read from the tunnel reach quinn as if they came from that address, and
//! quinn's packets to it are queued to the tunnel's writer (bounded; a full queue drops the
//! packet, which QUIC treats as loss). A virtual address is no punch candidate
//! ([`is_virtual`]): the registry leaves it out of the node's record.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::mpsc;
use warren_cli::quicfeed;

/// The first 64 bits of every virtual address: `fd57:6172:7265:6e00::/64` (ULA, "Warren" in
/// ASCII). The low 64 bits count tunnels.
pub const VIRTUAL_PREFIX: [u16; 4] = [0xfd57, 0x6172, 0x7265, 0x6e00];
/// Port of every virtual address (any non-zero value would do; quinn rejects port 0).
const VIRTUAL_PORT: u16 = 1;
/// QUIC packets queued towards one tunnel before further ones are dropped (about 2 MB of
/// full-size packets, enough for a relay burst at the default rate limit).
pub const TUNNEL_QUEUE: usize = 1024;
/// QUIC packets queued from all tunnels towards quinn before further ones are dropped.
const INBOUND_QUEUE: usize = 4096;
/// Tunnels open at once at most; further TCP connections are refused (each costs two tasks
/// and a queue).
pub const MAX_TUNNELS: usize = 10_000;

/// Whether `addr` is a tunnel's virtual address (not reachable over UDP).
pub fn is_virtual(addr: &SocketAddr) -> bool {
    match addr {
        SocketAddr::V6(a) => a.ip().segments()[..4] == VIRTUAL_PREFIX,
        SocketAddr::V4(_) => false,
    }
}

/// A QUIC packet from a tunnel: its virtual source address and bytes.
type Packet = (SocketAddr, Vec<u8>);

/// The open tunnels: their outbound queues by virtual address, and the shared way to quinn.
pub struct Tunnels {
    /// Counter for the low 64 bits of virtual addresses (never reused).
    next: AtomicU64,
    /// Outbound queue of each open tunnel.
    out: RwLock<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>,
    /// Packets read from any tunnel, for [`MergedSocket::poll_recv`].
    inbound: mpsc::Sender<Packet>,
}

impl fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnels")
            .field("open", &self.open())
            .finish_non_exhaustive()
    }
}

/// One registered tunnel: its virtual address and the packets quinn sends to it.
#[derive(Debug)]
pub struct Registration {
    /// The tunnel's virtual address.
    pub addr: SocketAddr,
    /// QUIC packets for the tunnel's writer.
    pub outbound: mpsc::Receiver<Vec<u8>>,
}

impl Tunnels {
    /// Number of open tunnels.
    pub fn open(&self) -> usize {
        match self.out.read() {
            Ok(m) => m.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        }
    }

    /// Opens a tunnel, or `None` when [`MAX_TUNNELS`] are open.
    pub fn register(&self) -> Option<Registration> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let [a, b, c, d] = VIRTUAL_PREFIX;
        let low = n.to_be_bytes();
        let seg = |i: usize| u16::from_be_bytes([low[i], low[i + 1]]);
        let ip = Ipv6Addr::new(a, b, c, d, seg(0), seg(2), seg(4), seg(6));
        let addr = SocketAddr::V6(SocketAddrV6::new(ip, VIRTUAL_PORT, 0, 0));
        let (tx, outbound) = mpsc::channel(TUNNEL_QUEUE);
        let mut out = match self.out.write() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if out.len() >= MAX_TUNNELS {
            return None;
        }
        out.insert(addr, tx);
        Some(Registration { addr, outbound })
    }

    /// Closes a tunnel: quinn's packets to it are dropped from now on.
    pub fn unregister(&self, addr: SocketAddr) {
        let mut out = match self.out.write() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        out.remove(&addr);
    }

    /// Hands a packet read from tunnel `from` to quinn; drops it if quinn is behind.
    pub fn deliver(&self, from: SocketAddr, packet: Vec<u8>) {
        if self.inbound.try_send((from, packet)).is_err() {
            tracing::debug!(%from, "tunnel inbound queue full, packet dropped");
        }
    }

    /// Queues a packet for tunnel `to`; unknown tunnels and full queues drop it.
    fn send(&self, to: SocketAddr, packet: &[u8]) {
        let tx = match self.out.read() {
            Ok(m) => m.get(&to).cloned(),
            Err(poisoned) => poisoned.into_inner().get(&to).cloned(),
        };
        match tx {
            Some(tx) => {
                if tx.try_send(packet.to_vec()).is_err() {
                    tracing::debug!(%to, "tunnel queue full or closed, packet dropped");
                }
            }
            None => tracing::debug!(%to, "packet for a closed tunnel dropped"),
        }
    }
}

/// quinn's socket: the real UDP socket and the tunnels behind one interface.
pub struct MergedSocket {
    /// quinn's own socket wrapper around the UDP socket.
    udp: Arc<dyn AsyncUdpSocket>,
    /// The tunnels (outbound side).
    tunnels: Arc<Tunnels>,
    /// Packets from the tunnels. A mutex because quinn polls through `&self`; only the endpoint
    /// driver locks it.
    rx: Mutex<mpsc::Receiver<Packet>>,
    /// Which source is polled first next time, so neither can starve the other.
    tunnel_first: AtomicBool,
}

impl fmt::Debug for MergedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MergedSocket")
            .field("udp", &self.udp.local_addr().ok())
            .field("tunnels", &self.tunnels)
            .finish_non_exhaustive()
    }
}

impl MergedSocket {
    /// Wraps quinn's UDP socket; returns the socket and the tunnel registry that feeds it.
    pub fn new(udp: Arc<dyn AsyncUdpSocket>) -> (Self, Arc<Tunnels>) {
        let (inbound, rx) = mpsc::channel(INBOUND_QUEUE);
        let tunnels = Arc::new(Tunnels {
            next: AtomicU64::new(1),
            out: RwLock::default(),
            inbound,
        });
        let sock = Self {
            udp,
            tunnels: tunnels.clone(),
            rx: Mutex::new(rx),
            tunnel_first: AtomicBool::new(false),
        };
        (sock, tunnels)
    }

    /// Fills receive slots from the tunnels' queue.
    fn poll_tunnels(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<usize> {
        // Closed cannot happen (we hold `tunnels`, which holds the sender).
        quicfeed::poll_channel(&self.rx, cx, bufs, meta, |p| p)
    }
}

impl AsyncUdpSocket for MergedSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        // Tunnel sends never block, so only the UDP socket's writability matters.
        self.udp.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if !is_virtual(&transmit.destination) {
            return self.udp.try_send(transmit);
        }
        // With GSO quinn may hand over several equal-sized packets at once.
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for packet in transmit.contents.chunks(size) {
            self.tunnels.send(transmit.destination, packet);
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Both sources register the waker when pending, so either wakes the driver.
        if self.tunnel_first.fetch_xor(true, Ordering::Relaxed) {
            if let Poll::Ready(n) = self.poll_tunnels(cx, bufs, meta) {
                return Poll::Ready(Ok(n));
            }
            self.udp.poll_recv(cx, bufs, meta)
        } else {
            if let Poll::Ready(r) = self.udp.poll_recv(cx, bufs, meta) {
                return Poll::Ready(r);
            }
            self.poll_tunnels(cx, bufs, meta).map(Ok)
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.udp.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.udp.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.udp.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn virtual_addresses_are_unique_and_recognised() {
        let udp = quinn::Runtime::wrap_udp_socket(
            &quinn::TokioRuntime,
            std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
        )
        .unwrap();
        let (_sock, tunnels) = MergedSocket::new(udp);
        let a = tunnels.register().unwrap();
        let b = tunnels.register().unwrap();
        assert_ne!(a.addr, b.addr);
        assert!(is_virtual(&a.addr) && is_virtual(&b.addr));
        assert!(!is_virtual(&"192.0.2.1:7443".parse().unwrap()));
        assert!(!is_virtual(&"[fd00::1]:7443".parse().unwrap()));
        assert_eq!(tunnels.open(), 2);
        tunnels.unregister(a.addr);
        assert_eq!(tunnels.open(), 1);
    }
}
