//! The control client (IO shell layer): one QUIC connection to the coordinator over the shared
//! data socket, one bidirectional stream of length-prefixed JSON frames
//! ([`warren_proto::control`]).
//!
//! [`connect`] performs Hello → Challenge → Join/Login → Welcome (or a typed [`NodeError`]).
//! [`supervise`] then keeps a session alive for the daemon: it forwards coordinator messages as
//! [`ControlEvent`]s, sends the daemon's [`NodeMessage`]s, reports local candidates at the start
//! of each session, and on a drop reconnects with `Login` and exponential backoff while the data
//! plane keeps running. It stops when the daemon drops its sender.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep, timeout};
use warren_proto::control::{self, CoordMessage, NodeMessage, PeerRecord, CONTROL_VERSION};
use warren_proto::ids::{MeshNetwork, PrivateKey};
use warren_proto::noise::CipherSuite;
use warren_proto::proof::{prove, EXPORTER_LABEL};
use warren_proto::token::CoordinatorAddr;

use crate::candidates;
use crate::error::NodeError;
use crate::socket::QuicInbox;
use crate::tls;
use crate::tunnel;

/// How long to wait for the QUIC handshake with one coordinator address, and for each reply.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the QUIC handshake over UDP may take before the TCP carrier is tried instead
/// (capped by [`Coordinator::timeout`]). A live coordinator answers within a few round trips;
/// this keeps the fallback quick on networks that drop UDP.
pub const UDP_TIMEOUT: Duration = Duration::from_secs(4);
/// First reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A session that lasted this long resets the backoff.
const STABLE_SESSION: Duration = Duration::from_secs(60);

/// How to find and trust the coordinator.
#[derive(Clone, Debug)]
pub struct Coordinator {
    /// Addresses from the invite token, tried in order.
    pub addrs: Vec<CoordinatorAddr>,
    /// SHA-256 of its certificate's DER (pinned).
    pub fingerprint: [u8; 32],
    /// How long to wait for the QUIC handshake with one address, and for the login replies
    /// ([`CONNECT_TIMEOUT`] outside tests).
    pub timeout: Duration,
    /// The shared socket's QUIC inbox: told which addresses the coordinator answers from.
    pub inbox: QuicInbox,
}

/// What the node asks for after the challenge.
#[derive(Clone, Debug)]
pub enum Credential {
    /// Redeem an invite (`warren join`).
    Join {
        /// The invite secret.
        secret: [u8; 32],
        /// Requested node name.
        name: String,
    },
    /// Log in with the registered key (`warren up`, reconnects).
    Login,
}

/// The coordinator's Welcome.
#[derive(Clone, Debug)]
pub struct Welcome {
    /// This node's record as the coordinator holds it.
    pub node: PeerRecord,
    /// The mesh network.
    pub network: MeshNetwork,
    /// This node's reflexive address (its data socket as the coordinator sees it).
    pub reflexive: SocketAddr,
    /// All other nodes.
    pub peers: Vec<PeerRecord>,
    /// The mesh-wide cipher for sessions this node starts.
    pub cipher: CipherSuite,
}

/// An established, logged-in control session.
#[derive(Debug)]
pub struct Session {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// Sending half of the control stream.
    send: quinn::SendStream,
    /// Receiving half of the control stream.
    recv: quinn::RecvStream,
    /// The Welcome that opened the session.
    pub welcome: Welcome,
    /// The TCP carrier the connection runs on, when UDP to the coordinator is blocked (`None`
    /// over UDP). Kept here so the tunnel lives exactly as long as the session.
    pub carrier: Option<tunnel::Carrier>,
}

/// What the control client tells the daemon.
#[derive(Debug)]
pub enum ControlEvent {
    /// A (re)connected session's Welcome: the full peer list.
    Welcome(Welcome),
    /// A coordinator message after the Welcome.
    Message(CoordMessage),
    /// The session's QUIC connection, sent right after its Welcome: relay datagrams travel on
    /// it (DESIGN.md section 2.5).
    Relay(quinn::Connection),
    /// Sent after `Relay`: whether the session runs on the TCP carrier because UDP to the
    /// coordinator is blocked.
    UdpBlocked(bool),
    /// The session dropped; reconnecting.
    Disconnected,
}

/// Where local candidates come from (the TUN name is excluded, the port is the data socket's).
#[derive(Clone, Debug)]
pub struct CandidateSource {
    /// TUN interface name.
    pub tun: String,
    /// The mesh network (its addresses are never candidates).
    pub network: MeshNetwork,
    /// The data socket's port.
    pub port: u16,
}

impl CandidateSource {
    /// Reads the current local candidates.
    pub fn read(&self) -> Vec<SocketAddr> {
        candidates::local_candidates(&self.tun, self.network, self.port)
    }
}

/// Resolves the coordinator's addresses to IPv4 socket addresses (the data socket is IPv4).
async fn resolve(addrs: &[CoordinatorAddr]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for a in addrs {
        match a {
            CoordinatorAddr::Ip(ip, port) => out.push(SocketAddr::new(*ip, *port)),
            CoordinatorAddr::Host(host, port) => {
                match timeout(
                    CONNECT_TIMEOUT,
                    tokio::net::lookup_host((host.as_str(), *port)),
                )
                .await
                {
                    Ok(Ok(found)) => out.extend(found),
                    Ok(Err(e)) => tracing::debug!(%host, error = %e, "cannot resolve coordinator"),
                    Err(_) => tracing::debug!(%host, "resolving the coordinator timed out"),
                }
            }
        }
    }
    out.retain(SocketAddr::is_ipv4);
    out.dedup();
    out
}

/// Connects to the first coordinator address that answers and completes the login handshake.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    coord: &Coordinator,
    key: &PrivateKey,
    cred: &Credential,
) -> Result<Session, NodeError> {
    let shown = coord
        .addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let targets = resolve(&coord.addrs).await;
    coord.inbox.allow(&targets);
    if targets.is_empty() {
        return Err(NodeError::Unreachable {
            addr: shown,
            why: "no usable IPv4 address".into(),
        });
    }
    let mut last = NodeError::Unreachable {
        addr: shown,
        why: "no address tried".into(),
    };
    for target in targets {
        match connect_udp(endpoint, coord, target).await {
            Ok(conn) => {
                tracing::debug!(coordinator = %target, "QUIC connection established");
                return login(conn, None, target, coord, key, cred).await;
            }
            Err(e @ NodeError::WrongCoordinator) => return Err(e),
            Err(udp_err) => {
                tracing::debug!(coordinator = %target, error = %udp_err, "no QUIC over UDP; trying TCP");
                match tunnel::connect(target, coord.fingerprint, coord.timeout).await {
                    Ok((conn, carrier)) => {
                        tracing::info!(coordinator = %target,
                            "UDP to the coordinator is blocked; connected over TCP");
                        return login(conn, Some(carrier), target, coord, key, cred).await;
                    }
                    Err(e @ NodeError::WrongCoordinator) => return Err(e),
                    Err(tcp_err) => {
                        // The UDP failure is the one to report ("timed out"): TCP is the fallback.
                        tracing::debug!(coordinator = %target, error = %tcp_err, "TCP carrier failed too");
                        last = udp_err;
                    }
                }
            }
        }
    }
    Err(last)
}

/// The QUIC handshake over UDP with one address, waiting at most [`UDP_TIMEOUT`].
async fn connect_udp(
    endpoint: &quinn::Endpoint,
    coord: &Coordinator,
    target: SocketAddr,
) -> Result<quinn::Connection, NodeError> {
    let (config, mismatch) =
        tls::client_config(coord.fingerprint).map_err(|e| NodeError::Protocol(e.to_string()))?;
    let unreachable = |why: String| NodeError::Unreachable {
        addr: target.to_string(),
        why,
    };
    let connecting = endpoint
        .connect_with(config, target, tls::SERVER_NAME)
        .map_err(|e| unreachable(e.to_string()))?;
    match timeout(coord.timeout.min(UDP_TIMEOUT), connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => {
            if mismatch.load(Ordering::Relaxed) {
                return Err(NodeError::WrongCoordinator);
            }
            Err(unreachable(e.to_string()))
        }
        Err(_) => Err(unreachable("timed out".into())),
    }
}

/// Logs in on an established connection, within [`Coordinator::timeout`].
async fn login(
    conn: quinn::Connection,
    carrier: Option<tunnel::Carrier>,
    target: SocketAddr,
    coord: &Coordinator,
    key: &PrivateKey,
    cred: &Credential,
) -> Result<Session, NodeError> {
    match timeout(coord.timeout, handshake(conn.clone(), key, cred)).await {
        Ok(res) => res.map(|mut s| {
            s.carrier = carrier;
            s
        }),
        Err(_) => {
            conn.close(0u32.into(), b"timeout");
            Err(NodeError::Protocol(format!(
                "{target} did not answer the login in time"
            )))
        }
    }
}

/// Hello → Challenge → Join/Login → Welcome on a fresh connection.
async fn handshake(
    conn: quinn::Connection,
    key: &PrivateKey,
    cred: &Credential,
) -> Result<Session, NodeError> {
    let proto = |e: &dyn std::fmt::Display| NodeError::Protocol(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| proto(&e))?;
    let mut buf = Vec::new();
    write_frame(
        &mut send,
        &NodeMessage::Hello {
            version: CONTROL_VERSION,
            public_key: key.public_key(),
        },
    )
    .await?;
    let (server_ephemeral, nonce) = match read_frame(&mut recv, &mut buf).await? {
        CoordMessage::Challenge {
            server_ephemeral,
            nonce,
        } => (server_ephemeral, nonce),
        CoordMessage::Error { code, message } => return Err(NodeError::Rejected { code, message }),
        other => return Err(proto(&format!("expected Challenge, got {other:?}"))),
    };
    let mut binding = [0u8; 32];
    conn.export_keying_material(&mut binding, EXPORTER_LABEL, b"")
        .map_err(|_| proto(&"TLS keying material export failed"))?;
    let proof = prove(key, &server_ephemeral, &nonce, &binding);
    let request = match cred {
        Credential::Join { secret, name } => NodeMessage::Join {
            invite_secret: *secret,
            name: name.clone(),
            proof,
        },
        Credential::Login => NodeMessage::Login { proof },
    };
    write_frame(&mut send, &request).await?;
    match read_frame(&mut recv, &mut buf).await? {
        CoordMessage::Welcome {
            node,
            network,
            reflexive,
            peers,
            cipher,
        } => Ok(Session {
            conn,
            send,
            recv,
            welcome: Welcome {
                node,
                network,
                reflexive,
                peers,
                cipher,
            },
            carrier: None,
        }),
        CoordMessage::Error { code, message } => Err(NodeError::Rejected { code, message }),
        other => Err(proto(&format!("expected Welcome, got {other:?}"))),
    }
}

/// Writes one frame.
async fn write_frame(send: &mut quinn::SendStream, msg: &NodeMessage) -> Result<(), NodeError> {
    send.write_all(&control::encode(msg))
        .await
        .map_err(|e| NodeError::Protocol(e.to_string()))
}

/// Reads one frame into `buf` (reused) and decodes it.
async fn read_frame(
    recv: &mut quinn::RecvStream,
    buf: &mut Vec<u8>,
) -> Result<CoordMessage, NodeError> {
    let proto = |e: &dyn std::fmt::Display| NodeError::Protocol(e.to_string());
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.map_err(|e| proto(&e))?;
    let len = control::frame_len(header).map_err(|e| proto(&e))?;
    buf.resize(len, 0);
    recv.read_exact(buf).await.map_err(|e| proto(&e))?;
    control::decode(buf).map_err(|e| proto(&e))
}

/// Runs one session until it breaks (`Err`) or the daemon goes away (`Ok`). Reading and writing
/// run as two futures so that a partly read frame is never cancelled by a write.
async fn serve(
    session: Session,
    events: &mpsc::Sender<ControlEvent>,
    outbox: &mut mpsc::Receiver<NodeMessage>,
    source: &CandidateSource,
) -> Result<(), NodeError> {
    let Session {
        conn,
        mut send,
        mut recv,
        carrier,
        ..
    } = session;
    // Dropped (closing the tunnel) when this session ends.
    let _carrier = carrier;
    let reader = async {
        let mut buf = Vec::new();
        loop {
            match read_frame(&mut recv, &mut buf).await? {
                CoordMessage::Error { code, message } => {
                    return Err(NodeError::Rejected { code, message })
                }
                msg => {
                    if events.send(ControlEvent::Message(msg)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    };
    let writer = async {
        // Each session starts with the current local addresses; later changes come from the
        // daemon (which also tells the engine) through the outbox.
        let local = source.read();
        write_frame(&mut send, &NodeMessage::Candidates { local }).await?;
        loop {
            match outbox.recv().await {
                Some(msg) => write_frame(&mut send, &msg).await?,
                None => {
                    conn.close(0u32.into(), b"shutdown");
                    return Ok(());
                }
            }
        }
    };
    tokio::select! {
        r = reader => r,
        w = writer => w,
    }
}

/// The delay before reconnect attempt number `attempt` (0-based): 1 s doubling to 30 s, ±20 %.
pub fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(1u32 << attempt.min(5))
        .min(BACKOFF_MAX);
    let jitter = 0.8 + 0.4 * rand::random::<f64>();
    base.mul_f64(jitter)
}

/// Keeps the daemon connected: serves `first` (if `join` already made a session), then
/// reconnects with `Login` forever. Returns `Ok` when the daemon drops `outbox`'s sender and `Err`
/// on a failure that retrying cannot fix (e.g. the node was removed).
pub async fn supervise(
    endpoint: quinn::Endpoint,
    coord: Coordinator,
    key: PrivateKey,
    mut first: Option<Session>,
    source: CandidateSource,
    events: mpsc::Sender<ControlEvent>,
    mut outbox: mpsc::Receiver<NodeMessage>,
) -> Result<(), NodeError> {
    let mut attempt = 0u32;
    loop {
        let session = match first.take() {
            Some(s) => Ok(s),
            None => {
                tokio::select! {
                    res = connect(&endpoint, &coord, &key, &Credential::Login) => res,
                    closed = drain_until_closed(&mut outbox) => { let () = closed; return Ok(()); }
                }
            }
        };
        match session {
            Ok(session) => {
                let started = std::time::Instant::now();
                tracing::info!(ip = %session.welcome.node.mesh_ip,
                    max_datagram_size = ?session.conn.max_datagram_size(),
                    "connected to the coordinator");
                if events
                    .send(ControlEvent::Welcome(session.welcome.clone()))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                if events
                    .send(ControlEvent::Relay(session.conn.clone()))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                let blocked = session.carrier.is_some();
                if events
                    .send(ControlEvent::UdpBlocked(blocked))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                let res = serve(session, &events, &mut outbox, &source).await;
                if events.send(ControlEvent::Disconnected).await.is_err() {
                    return Ok(());
                }
                match res {
                    Ok(()) => return Ok(()),
                    Err(e) if e.is_transient() => {
                        tracing::warn!(error = %e, "control connection lost; reconnecting");
                    }
                    Err(e) => return Err(e),
                }
                if started.elapsed() >= STABLE_SESSION {
                    attempt = 0;
                }
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "cannot log in to the coordinator; will retry");
            }
            Err(e) => return Err(e),
        }
        let delay = backoff(attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = sleep(delay) => {}
            () = drain_until_closed(&mut outbox) => return Ok(()),
        }
    }
}

/// While disconnected, discards the daemon's messages (punch requests make no sense without a
/// coordinator) and returns once the daemon has gone away.
async fn drain_until_closed(outbox: &mut mpsc::Receiver<NodeMessage>) {
    while let Some(msg) = outbox.recv().await {
        tracing::debug!(?msg, "not connected to the coordinator; message dropped");
    }
}

#[cfg(test)]
#[path = "control_tests.rs"]
mod tests;
