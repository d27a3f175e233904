//! The TCP carrier (IO shell layer): the control connection's QUIC packets tunnelled through
//! TLS over TCP, for networks that drop UDP.
//!
//! [`open`] connects TCP to the coordinator's QUIC address (same port number), runs TLS 1.3 with
//! the pinned certificate ([`crate::tls`]) and ALPN [`ALPN_TCP`], and builds a QUIC client
//! endpoint on a [`TunnelSocket`]: each QUIC packet travels as a frame of a big-endian u16 length
//! and the packet, both ways. Login, control stream and relay datagrams then run unchanged. The
//! tunnel has no MTU of its own, so the connection starts at [`TUNNEL_MTU`] and full-size relay
//! datagrams fit at once. When the TCP stream ends the endpoint is closed, which ends the session
//! at once (the supervisor reconnects, trying UDP first again).

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use warren_cli::quicfeed;

use crate::error::NodeError;
use crate::tls;

/// ALPN id of the TCP carrier (see `warren_proto::carrier`).
pub use warren_proto::carrier::ALPN_TCP;
/// QUIC packet size over the tunnel, in bytes: what a 1500-byte Ethernet path carries as UDP
/// over IPv6 (1500 - 40 - 8), so the tunnel never makes packets bigger than the UDP carrier would.
/// Relay datagrams (8 + 32 + 1280 bytes plus QUIC framing) fit.
pub const TUNNEL_MTU: u16 = 1452;
/// QUIC packets queued in each direction before further ones are dropped (QUIC resends).
const QUEUE: usize = 1024;

/// An open tunnel: the QUIC endpoint on it and the tasks moving its frames. Dropping it closes
/// the TCP connection.
pub struct Carrier {
    /// The QUIC client endpoint whose only socket is the tunnel.
    pub endpoint: quinn::Endpoint,
    /// Reader and writer tasks, aborted on drop.
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for Carrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Carrier")
            .field("local", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Drop for Carrier {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"tcp carrier closed");
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Opens the tunnel to `target`, waiting up to `wait` for TCP and for TLS each.
pub async fn open(
    target: SocketAddr,
    fingerprint: [u8; 32],
    wait: Duration,
) -> Result<Carrier, NodeError> {
    let unreachable = |why: String| NodeError::Unreachable {
        addr: format!("{target} (TCP)"),
        why,
    };
    let tcp = match timeout(wait, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable("timed out".into())),
    };
    tcp.set_nodelay(true)
        .map_err(|e| unreachable(e.to_string()))?;
    let local = tcp.local_addr().map_err(|e| unreachable(e.to_string()))?;
    let (config, mismatch) =
        tls::tcp_config(fingerprint).map_err(|e| NodeError::Protocol(e.to_string()))?;
    let name =
        ServerName::try_from(tls::SERVER_NAME).map_err(|e| NodeError::Protocol(e.to_string()))?;
    let stream = match timeout(wait, TlsConnector::from(config).connect(name, tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            if mismatch.load(Ordering::Relaxed) {
                return Err(NodeError::WrongCoordinator);
            }
            return Err(unreachable(format!("TLS: {e}")));
        }
        Err(_) => return Err(unreachable("TLS timed out".into())),
    };
    if stream.get_ref().1.alpn_protocol() != Some(ALPN_TCP) {
        return Err(NodeError::Protocol(
            "the coordinator does not offer the TCP carrier".into(),
        ));
    }
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let sock = TunnelSocket {
        out: out_tx,
        rx: Mutex::new(in_rx),
        peer: target,
        local,
    };
    let mut config = quinn::EndpointConfig::default();
    config.grease_quic_bit(false);
    let endpoint = quinn::Endpoint::new_with_abstract_socket(
        config,
        None,
        Arc::new(sock),
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|e| NodeError::Protocol(format!("creating the QUIC endpoint: {e}")))?;
    let (mut reader, writer) = tokio::io::split(stream);
    let closer = endpoint.clone();
    let read = tokio::spawn(async move {
        let res: io::Result<()> = async {
            let mut buf = Vec::new();
            loop {
                let len = reader.read_u16().await?;
                if len == 0 {
                    continue;
                }
                buf.resize(usize::from(len), 0);
                reader.read_exact(&mut buf).await?;
                if in_tx.try_send(std::mem::take(&mut buf)).is_err() {
                    tracing::debug!("tunnel inbound queue full, packet dropped");
                }
            }
        }
        .await;
        if let Err(e) = res {
            tracing::debug!(error = %e, "TCP carrier ended");
        }
        closer.close(0u32.into(), b"tcp carrier closed");
    });
    let closer = endpoint.clone();
    let write = tokio::spawn(async move {
        if let Err(e) = quicfeed::write_frames(writer, out_rx).await {
            tracing::debug!(error = %e, "TCP carrier write failed");
        }
        closer.close(0u32.into(), b"tcp carrier closed");
    });
    Ok(Carrier {
        endpoint,
        tasks: vec![read, write],
    })
}

/// Opens the tunnel to `target` and runs the QUIC handshake through it, waiting up to `wait`
/// for each step.
pub async fn connect(
    target: SocketAddr,
    fingerprint: [u8; 32],
    wait: Duration,
) -> Result<(quinn::Connection, Carrier), NodeError> {
    let carrier = open(target, fingerprint, wait).await?;
    let (config, mismatch) = tls::client_config_with_mtu(fingerprint, Some(TUNNEL_MTU))
        .map_err(|e| NodeError::Protocol(e.to_string()))?;
    let unreachable = |why: String| NodeError::Unreachable {
        addr: format!("{target} (TCP)"),
        why,
    };
    let connecting = carrier
        .endpoint
        .connect_with(config, target, tls::SERVER_NAME)
        .map_err(|e| unreachable(e.to_string()))?;
    match timeout(wait, connecting).await {
        Ok(Ok(conn)) => Ok((conn, carrier)),
        Ok(Err(e)) => {
            if mismatch.load(Ordering::Relaxed) {
                return Err(NodeError::WrongCoordinator);
            }
            Err(unreachable(e.to_string()))
        }
        Err(_) => Err(unreachable("timed out".into())),
    }
}

/// quinn's socket over the tunnel: every packet goes to (and comes from) the coordinator.
pub struct TunnelSocket {
    /// Packets for the writer task.
    out: mpsc::Sender<Vec<u8>>,
    /// Packets from the reader task. A mutex because quinn polls through `&self`; only the
    /// endpoint driver locks it.
    rx: Mutex<mpsc::Receiver<Vec<u8>>>,
    /// The coordinator's address, which quinn sees as the packets' source.
    peer: SocketAddr,
    /// The TCP connection's local address (quinn's "local address").
    local: SocketAddr,
}

impl fmt::Debug for TunnelSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelSocket")
            .field("peer", &self.peer)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for TunnelSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if transmit.destination != self.peer {
            return Ok(()); // nobody else is reachable through the tunnel
        }
        let size = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for packet in transmit.contents.chunks(size) {
            if self.out.try_send(packet.to_vec()).is_err() {
                tracing::debug!("tunnel queue full or closed, packet dropped");
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        // Closed: the tunnel ended and the endpoint is being closed.
        let peer = self.peer;
        quicfeed::poll_channel(&self.rx, cx, bufs, meta, |p| (peer, p)).map(Ok)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// TCP carries packets of any size whole.
    fn may_fragment(&self) -> bool {
        false
    }
}

/// Sends into the tunnel never block (a full queue drops), so the socket is always writable.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
