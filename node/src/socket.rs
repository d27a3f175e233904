//! The node's one UDP socket, shared by QUIC (control) and the data plane (IO shell layer).
//!
//! DESIGN.md section 2: the coordinator reports the address it sees the node's QUIC packets come
//! from as the node's reflexive candidate, which is only useful for hole punching if it is the
//! NAT mapping of the socket that carries data. So there is exactly one socket. The data-plane
//! task owns its receive side and demultiplexes by first byte: QUIC v1 packets have the fixed bit
//! 0x40 set (greasing is off, RFC 9287), Warren's own packet types stay below 0x40. QUIC
//! datagrams go to quinn through a [`QuicInbox`] and [`QuicSocket`]; quinn sends directly on the
//! shared socket. The node's QUIC endpoint is only ever a client of the coordinator, so the inbox
//! admits QUIC datagrams from the coordinator's addresses only: nobody else can make quinn answer
//! (e.g. with a stateless reset) on the data port.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use anyhow::Context as _;
use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use warren_cli::quicfeed;

use crate::dataio::DatagramArena;

/// Socket buffer size asked of the kernel, in bytes; large buffers absorb bursts at multi-Gbit/s
/// (the kernel caps it at net.core.{r,w}mem_max).
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;
/// QUIC datagrams queued between the data-plane task and quinn; beyond this they are dropped and
/// QUIC's loss recovery resends them.
pub const QUIC_QUEUE: usize = 1024;
/// Largest UDP payload, in bytes.
pub const MAX_DATAGRAM: usize = 65_535;

/// A QUIC datagram handed from the data-plane task to quinn: source address and bytes.
pub type QuicDatagram = (SocketAddr, Bytes);

/// Where a received datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A QUIC packet (first byte has the 0x40 fixed bit): to quinn.
    Quic,
    /// A Warren data-plane packet (first byte below 0x40): to the engine.
    Data,
    /// An empty datagram: dropped.
    Drop,
}

/// Demultiplexes a datagram by its first byte.
pub fn route(datagram: &[u8]) -> Route {
    match datagram.first() {
        Some(&b) if b >= 0x40 => Route::Quic,
        Some(_) => Route::Data,
        None => Route::Drop,
    }
}

/// Binds the shared socket with large buffers.
pub fn bind(addr: SocketAddr) -> anyhow::Result<Arc<UdpSocket>> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .context("creating the UDP socket")?;
    grow_buffers(&sock);
    sock.bind(&addr.into())
        .with_context(|| format!("binding UDP {addr}"))?;
    sock.set_nonblocking(true)
        .context("making the UDP socket non-blocking")?;
    let std_sock: std::net::UdpSocket = sock.into();
    Ok(Arc::new(
        UdpSocket::from_std(std_sock).context("registering the UDP socket with tokio")?,
    ))
}

/// Asks for [`SOCKET_BUFFER`]-sized kernel buffers. With CAP_NET_ADMIN (the daemon has it for
/// TUN anyway) the `*BUFFORCE` options go past net.core.{r,w}mem_max, which defaults to 208 KiB
/// and otherwise drops bursts; without it the clamped size is used. Best effort either way.
fn grow_buffers(sock: &socket2::Socket) {
    warren_cli::sockbuf::set_buffers(sock, SOCKET_BUFFER);
}

/// The way from the demultiplexer into quinn, admitting only the coordinator's addresses.
#[derive(Debug)]
pub struct QuicInbox {
    /// Queue read by [`QuicSocket::poll_recv`].
    tx: mpsc::Sender<QuicDatagram>,
    /// Addresses QUIC datagrams are accepted from (the coordinator's, set before connecting).
    allowed: Arc<RwLock<Vec<SocketAddr>>>,
    /// Where queued datagrams are copied (relayed packets arrive this way: no allocation each).
    arena: DatagramArena,
}

impl Clone for QuicInbox {
    /// The same queue and addresses, with an arena of its own.
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            allowed: self.allowed.clone(),
            arena: DatagramArena::default(),
        }
    }
}

impl QuicInbox {
    /// Replaces the addresses QUIC datagrams are accepted from.
    pub fn allow(&self, addrs: &[SocketAddr]) {
        let mut allowed = match self.allowed.write() {
            Ok(a) => a,
            Err(poisoned) => poisoned.into_inner(),
        };
        allowed.clear();
        allowed.extend_from_slice(addrs);
    }

    /// Hands a QUIC datagram to quinn without waiting; drops it if it is not from the
    /// coordinator or if quinn is behind (QUIC resends).
    pub fn forward(&mut self, from: SocketAddr, datagram: &[u8]) {
        let admitted = match self.allowed.read() {
            Ok(a) => a.contains(&from),
            Err(poisoned) => poisoned.into_inner().contains(&from),
        };
        if !admitted {
            tracing::debug!(%from, "QUIC datagram from a stranger dropped");
            return;
        }
        if self
            .tx
            .try_send((from, self.arena.datagram(datagram)))
            .is_err()
        {
            tracing::debug!(%from, "QUIC queue full or closed, datagram dropped");
        }
    }
}

/// Before the engine exists (during `join`'s handshake), reads the socket and forwards only QUIC
/// datagrams; anything else is dropped. Runs until aborted. Reads through quinn-udp, like the
/// daemon's data plane: [`QuicSocket`] turns on UDP GRO, after which one read may return
/// several datagrams coalesced (split here at the reported stride).
pub async fn pump_quic_only(io: Arc<UdpSocket>, mut inbox: QuicInbox) {
    let state = match UdpSocketState::new((&*io).into()) {
        Ok(state) => state,
        Err(e) => {
            tracing::warn!(error = %e, "cannot prepare the UDP socket; QUIC gets no datagrams");
            return;
        }
    };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut meta = [RecvMeta::default()];
    loop {
        let read = io
            .async_io(Interest::READABLE, || {
                state.recv((&*io).into(), &mut [IoSliceMut::new(&mut buf)], &mut meta)
            })
            .await;
        match read {
            Ok(n) if n > 0 => {
                let [m] = meta;
                let received = buf.get(..m.len).unwrap_or_default();
                for datagram in received.chunks(m.stride.max(1)) {
                    if route(datagram) == Route::Quic {
                        inbox.forward(m.addr, datagram);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "UDP receive failed"),
        }
    }
}

/// quinn's view of the shared socket: receives from the demultiplexer's channel, sends directly.
pub struct QuicSocket {
    /// The shared socket (sending side for quinn).
    io: Arc<UdpSocket>,
    /// quinn-udp's send state for the shared socket: GSO runs of QUIC packets (relay datagrams
    /// leave a node in bursts), ECN and error handling as on quinn's own sockets.
    state: UdpSocketState,
    /// QUIC datagrams from the data-plane task. A mutex because quinn polls through `&self`;
    /// only quinn's endpoint driver task ever locks it, so it is uncontended.
    rx: Mutex<mpsc::Receiver<QuicDatagram>>,
}

impl QuicSocket {
    /// Wraps the shared socket; returns the wrapper and the inbox the demultiplexer uses
    /// (admitting nobody until [`QuicInbox::allow`]).
    pub fn new(io: Arc<UdpSocket>) -> io::Result<(Self, QuicInbox)> {
        let (tx, rx) = mpsc::channel(QUIC_QUEUE);
        let inbox = QuicInbox {
            tx,
            allowed: Arc::default(),
            arena: DatagramArena::default(),
        };
        let state = UdpSocketState::new((&*io).into())?;
        Ok((
            Self {
                io,
                state,
                rx: Mutex::new(rx),
            },
            inbox,
        ))
    }
}

impl fmt::Debug for QuicSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicSocket")
            .field("local", &self.io.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for QuicSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(WritablePoller {
            io: self.io.clone(),
            fut: None,
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // Like quinn's own sockets: only WouldBlock comes back (and clears tokio's readiness so
        // the poller waits); any other error (no route while the network changes, ICMP-reported
        // refusals) is a lost datagram that quinn-udp logs, not the end of the connection.
        self.io.try_io(Interest::WRITABLE, || {
            self.state.send((&*self.io).into(), transmit)
        })
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // A closed channel means the node is shutting down; quinn will be dropped shortly.
        quicfeed::poll_channel(&self.rx, cx, bufs, meta, |d| d).map(Ok)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// The shared socket does not fragment: quinn-udp's state (ours and `DataIo`'s) sets
    /// IP_PMTUDISC_PROBE, so every datagram carries DF. Saying so lets quinn run path MTU
    /// discovery on the control connection; without it the connection stays at QUIC's
    /// 1200-byte minimum and full-size relay datagrams (8 + 32 + 1280 bytes) never fit (see
    /// README, "Relay").
    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }
}

/// Future type behind [`WritablePoller`].
type WritableFuture = Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send + Sync>>;

/// Wakes quinn when the shared socket becomes writable again after `WouldBlock`.
struct WritablePoller {
    /// The shared socket.
    io: Arc<UdpSocket>,
    /// The pending `writable()` wait, if any.
    fut: Option<WritableFuture>,
}

impl fmt::Debug for WritablePoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WritablePoller").finish_non_exhaustive()
    }
}

impl UdpPoller for WritablePoller {
    fn poll_writable(mut self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let fut = this.fut.get_or_insert_with(|| {
            let io = this.io.clone();
            Box::pin(async move { io.writable().await })
        });
        let res = fut.as_mut().poll(cx);
        if res.is_ready() {
            this.fut = None;
        }
        res
    }
}

/// Builds a QUIC client endpoint on the shared socket, with QUIC bit greasing off so every QUIC
/// packet keeps the 0x40 bit the demultiplexer relies on.
pub fn quic_endpoint(io: Arc<UdpSocket>) -> anyhow::Result<(quinn::Endpoint, QuicInbox)> {
    let (sock, inbox) = QuicSocket::new(io).context("preparing the shared socket for QUIC")?;
    let mut config = quinn::EndpointConfig::default();
    config.grease_quic_bit(false);
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        config,
        None,
        Arc::new(sock),
        Arc::new(quinn::TokioRuntime),
    )
    .context("creating the QUIC endpoint")?;
    Ok((endpoint, inbox))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testutil::server;
    use crate::tls;
    use std::time::Duration;

    #[test]
    fn demultiplexes_by_first_byte() {
        assert_eq!(route(&[]), Route::Drop);
        for b in 0u8..0x40 {
            assert_eq!(route(&[b, 1, 2]), Route::Data, "byte {b:#x}");
        }
        for b in 0x40u8..=0xff {
            assert_eq!(route(&[b]), Route::Quic, "byte {b:#x}");
        }
    }

    #[tokio::test]
    async fn inbox_admits_only_the_coordinator() {
        let io = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (sock, mut inbox) = QuicSocket::new(io).unwrap();
        let coordinator: SocketAddr = "192.0.2.1:7443".parse().unwrap();
        let stranger: SocketAddr = "192.0.2.9:7443".parse().unwrap();
        inbox.forward(coordinator, &[0xc0, 1]);
        inbox.allow(&[coordinator]);
        inbox.forward(stranger, &[0xc0, 2]);
        inbox.forward(coordinator, &[0xc0, 3]);
        let mut rx = sock.rx.lock().unwrap();
        assert_eq!(
            rx.try_recv().unwrap(),
            (coordinator, Bytes::from_static(&[0xc0, 3]))
        );
        assert!(rx.try_recv().is_err(), "nothing else was admitted");
    }

    #[tokio::test]
    async fn queued_datagrams_share_one_buffer() {
        // Relayed packets reach quinn this way: one heap buffer per 64 KiB, not per packet.
        let io = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (sock, mut inbox) = QuicSocket::new(io).unwrap();
        let coordinator: SocketAddr = "192.0.2.1:7443".parse().unwrap();
        inbox.allow(&[coordinator]);
        inbox.forward(coordinator, &[0xc0; 1300]);
        inbox.forward(coordinator, &[0xc1; 1300]);
        let mut rx = sock.rx.lock().unwrap();
        let (_, a) = rx.try_recv().unwrap();
        let (_, b) = rx.try_recv().unwrap();
        assert_eq!((a[0], a.len(), b[0], b.len()), (0xc0, 1300, 0xc1, 1300));
        assert_eq!(a.as_ptr() as usize + a.len(), b.as_ptr() as usize);
    }

    #[tokio::test]
    async fn quic_runs_over_the_shared_socket_beside_data() {
        let (srv, fp) = server();
        let srv_addr = srv.local_addr().unwrap();
        let io = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let local = io.local_addr().unwrap();
        let (endpoint, mut inbox) = quic_endpoint(io.clone()).unwrap();
        inbox.allow(&[srv_addr]);
        // A demultiplexer like the daemon's: QUIC to quinn, the rest counted as data.
        let (data_tx, mut data_rx) = mpsc::channel::<Vec<u8>>(8);
        let demux_io = io.clone();
        let demux = tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                let (n, from) = demux_io.recv_from(&mut buf).await.unwrap();
                match route(&buf[..n]) {
                    Route::Quic => inbox.forward(from, &buf[..n]),
                    Route::Data => data_tx.send(buf[..n].to_vec()).await.unwrap(),
                    Route::Drop => {}
                }
            }
        });
        let accept = tokio::spawn(async move {
            let conn = srv.accept().await.unwrap().await.unwrap();
            let seen = conn.remote_address();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let mut b = [0u8; 5];
            recv.read_exact(&mut b).await.unwrap();
            send.write_all(&b).await.unwrap();
            send.finish().unwrap();
            let _ = recv.read_to_end(16).await;
            (seen, srv)
        });
        let (cfg, mismatch) = tls::client_config(fp).unwrap();
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            endpoint
                .connect_with(cfg, srv_addr, tls::SERVER_NAME)
                .unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        recv.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
        assert!(!mismatch.load(std::sync::atomic::Ordering::Relaxed));

        // A data-plane datagram on the same socket reaches the data side, not quinn.
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.send_to(&[0x01, 0xaa], local).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), data_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, vec![0x01, 0xaa]);

        send.finish().unwrap();
        let (seen, _srv) = accept.await.unwrap();
        assert_eq!(seen, local, "coordinator sees the shared socket's address");
        conn.close(0u32.into(), b"done");
        demux.abort();
    }

    #[tokio::test]
    async fn wrong_certificate_is_flagged() {
        let (srv, _) = server();
        let srv_addr = srv.local_addr().unwrap();
        let io = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let (endpoint, inbox) = quic_endpoint(io.clone()).unwrap();
        inbox.allow(&[srv_addr]);
        let pump = tokio::spawn(pump_quic_only(io, inbox));
        let accept = tokio::spawn(async move {
            if let Some(inc) = srv.accept().await {
                let _ = inc.await;
            }
            srv
        });
        let (cfg, mismatch) = tls::client_config([0u8; 32]).unwrap();
        let res = tokio::time::timeout(
            Duration::from_secs(10),
            endpoint
                .connect_with(cfg, srv_addr, tls::SERVER_NAME)
                .unwrap(),
        )
        .await
        .unwrap();
        assert!(res.is_err());
        assert!(mismatch.load(std::sync::atomic::Ordering::Relaxed));
        pump.abort();
        let _ = accept.await;
    }
}
