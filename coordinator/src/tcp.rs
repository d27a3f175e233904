//! The TCP carrier for nodes whose network blocks UDP (IO shell layer).
//!
//! A TCP listener on the QUIC port number accepts TLS 1.3 with the coordinator's own certificate
//! (the one invite tokens pin) and ALPN [`ALPN_TCP`]. Inside, both directions carry frames of a
//! big-endian u16 length followed by one QUIC packet; an empty frame is ignored. Each connection
//! becomes a tunnel of [`crate::tunnel::Tunnels`], so the node's QUIC connection (login, control
//! stream, relay datagrams) runs unchanged inside it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::debug;
use warren_cli::quicfeed;

use crate::tunnel::{Registration, Tunnels};

/// ALPN id of the TCP carrier.
pub use warren_proto::carrier::ALPN_TCP;
/// A client that has not finished the TLS handshake by then is dropped.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest QUIC packet accepted from a tunnel, in bytes: nodes send at most 1452 (their tunnel
/// packet size), and quinn takes no UDP payload above 1472 (`EndpointConfig` default). A longer
/// frame ends the tunnel, so one client cannot park 64 KiB buffers in the shared queue.
use warren_proto::carrier::MAX_TCP_FRAME as MAX_FRAME;
/// TCP connections served at once (handshaking or tunnelling); more are closed on accept.
const MAX_CONNECTIONS: usize = crate::tunnel::MAX_TUNNELS + 1000;
/// A tunnel silent this long is closed. QUIC keep-alives (every 10 s) keep a live one busy; the
/// QUIC connection inside is idle-timed-out after 30 s anyway.
const READ_IDLE: Duration = Duration::from_secs(60);

/// Accepts TCP connections until the listener fails; each runs in its own task.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    tunnels: Arc<Tunnels>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                debug!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%from, "too many TCP connections, closed");
            continue;
        };
        let acceptor = acceptor.clone();
        let tunnels = tunnels.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = serve(stream, acceptor, &tunnels).await {
                debug!(%from, error = %e, "TCP tunnel closed");
            }
        });
    }
}

/// Errors ending one tunnel.
#[derive(Debug, thiserror::Error)]
enum TunnelError {
    /// TCP or TLS failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake did not finish in time.
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    /// The client did not ask for the tunnel protocol.
    #[error("client did not negotiate ALPN warren-tcp/1")]
    WrongAlpn,
    /// [`crate::tunnel::MAX_TUNNELS`] are open.
    #[error("too many tunnels")]
    Full,
    /// Nothing arrived for [`READ_IDLE`].
    #[error("idle")]
    Idle,
    /// A frame longer than [`MAX_FRAME`].
    #[error("frame of {0} bytes is too long")]
    TooLong(u16),
}

/// Serves one TCP connection to its end.
async fn serve(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    tunnels: &Tunnels,
) -> Result<(), TunnelError> {
    stream.set_nodelay(true)?;
    let tls = tokio::time::timeout(TLS_TIMEOUT, acceptor.accept(stream))
        .await
        .map_err(|_| TunnelError::HandshakeTimeout)??;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_TCP) {
        return Err(TunnelError::WrongAlpn);
    }
    let Registration { addr, outbound } = tunnels.register().ok_or(TunnelError::Full)?;
    debug!(%addr, "TCP tunnel open");
    let (mut reader, writer) = tokio::io::split(tls);
    let read = async {
        let mut buf = Vec::new();
        loop {
            let len = tokio::time::timeout(READ_IDLE, reader.read_u16())
                .await
                .map_err(|_| TunnelError::Idle)??;
            if len == 0 {
                continue;
            }
            if len > MAX_FRAME {
                return Err(TunnelError::TooLong(len));
            }
            buf.resize(usize::from(len), 0);
            reader.read_exact(&mut buf).await?;
            tunnels.deliver(addr, std::mem::take(&mut buf));
        }
    };
    let res = tokio::select! {
        r = read => r,
        r = quicfeed::write_frames(writer, outbound) => r.map_err(TunnelError::from),
    };
    tunnels.unregister(addr);
    res
}
