//! The coordinator's QUIC endpoint: TLS 1.3 with the self-signed certificate that invite tokens
//! pin, ALPN `warren/1`, and QUIC bit greasing off (nodes share their data socket with QUIC and
//! tell the two apart by the packet's first byte, DESIGN.md section 2). Its socket merges the UDP
//! socket with the TCP carrier's tunnels ([`crate::tunnel`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::datadir::Identity;
use crate::mesh::Mesh;
use crate::tunnel::{MergedSocket, Tunnels};

/// ALPN id of Warren's control protocol.
pub use warren_proto::carrier::ALPN_QUIC as ALPN;
/// QUIC keepalive: keeps NAT mappings of the node's data socket open and detects dead nodes.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// A node silent this long is considered gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Kernel buffer size asked for the QUIC socket, in bytes. Every relayed packet crosses this
/// socket twice; with Linux's default 208 KiB the receive side overflowed under one relayed TCP
/// stream (0.7 % of datagrams lost, which the TCP inside reads as congestion). 8 MiB is about
/// 65 ms at 1 Gbit/s, like the nodes' data socket.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// TLS 1.3 (ring) with the coordinator's certificate, offering `alpn`. QUIC and the TCP carrier
/// use the same certificate, so the node's pin covers both.
pub fn tls_config(identity: &Identity, alpn: &[u8]) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("configuring TLS")?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(identity.cert_der.clone())],
            PrivatePkcs8KeyDer::from(identity.key_der.clone()).into(),
        )
        .context("loading the coordinator certificate")?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// Binds the endpoint on `listen` (tunnels are accepted but none will come).
#[cfg(test)]
pub fn endpoint(identity: &Identity, listen: SocketAddr) -> Result<quinn::Endpoint> {
    Ok(endpoint_with_tunnels(identity, listen)?.0)
}

/// Binds the endpoint on UDP `listen`; returns it and the tunnel registry the TCP carrier
/// ([`crate::tcp`]) feeds.
pub fn endpoint_with_tunnels(
    identity: &Identity,
    listen: SocketAddr,
) -> Result<(quinn::Endpoint, Arc<Tunnels>)> {
    let tls = tls_config(identity, ALPN)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .context("building the QUIC TLS config")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().context("idle timeout")?));
    server.transport_config(Arc::new(transport));
    let mut config = quinn::EndpointConfig::default();
    config.grease_quic_bit(false);
    let socket =
        std::net::UdpSocket::bind(listen).with_context(|| format!("binding UDP {listen}"))?;
    grow_buffers(&socket);
    let runtime = Arc::new(quinn::TokioRuntime);
    let udp = quinn::Runtime::wrap_udp_socket(runtime.as_ref(), socket)
        .with_context(|| format!("registering UDP {listen}"))?;
    let (merged, tunnels) = MergedSocket::new(udp);
    let endpoint =
        quinn::Endpoint::new_with_abstract_socket(config, Some(server), Arc::new(merged), runtime)
            .with_context(|| format!("starting QUIC on {listen}"))?;
    Ok((endpoint, tunnels))
}

/// Asks for [`SOCKET_BUFFER`]-sized kernel buffers on the QUIC socket. With CAP_NET_ADMIN the
/// `*BUFFORCE` options go past net.core.{r,w}mem_max; without it the kernel clamps the plain
/// options to that maximum (raise it with sysctl for heavy relaying). Best effort either way:
/// a small buffer only costs throughput.
fn grow_buffers(socket: &std::net::UdpSocket) {
    warren_cli::sockbuf::set_buffers(socket, SOCKET_BUFFER);
}

/// Accepts node connections until the endpoint closes.
pub async fn accept_loop(endpoint: quinn::Endpoint, mesh: Arc<Mesh>) {
    while let Some(incoming) = endpoint.accept().await {
        let mesh = mesh.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => crate::session::serve_connection(mesh, conn).await,
                Err(e) => tracing::debug!(error = %e, "incoming connection failed"),
            }
        });
    }
}
