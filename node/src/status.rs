//! `warren status` (IO shell layer): the report's JSON shape, the daemon's UNIX socket server
//! (`STATE_DIR/warren.sock`, mode 0600) and the CLI client.
//!
//! Protocol: the client connects, writes `status\n`; the daemon answers one JSON
//! [`StatusReport`] and closes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use warren_proto::control::PeerRecord;
use warren_proto::control::{NodeMessage, PathInfo, PathState};
use warren_proto::engine::{PathKind, PeerStatus};
use warren_proto::ids::{MeshIp, NodeId, PublicKey};
use warren_proto::noise::CipherSuite;

use crate::error::NodeError;
use crate::state::socket_path;

/// How long either side waits on the other.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What `warren status --json` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// This node.
    #[serde(rename = "self")]
    pub me: SelfReport,
    /// The other nodes of the mesh, by mesh address.
    pub peers: Vec<PeerLine>,
    /// Packets dropped since the daemon started, by reason (the engine's reasons, then the
    /// data path's own, see [`crate::dataio::ShellDrops`]); empty from an older daemon.
    #[serde(default)]
    pub dropped: BTreeMap<String, u64>,
}

/// The report's `self` section: what the daemon keeps about itself, plus what the engine
/// knows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelfReport {
    /// Identity and the control connection's state (flattened into the section).
    #[serde(flatten)]
    pub node: SelfStatus,
    /// Cipher of the sessions this node starts (the mesh-wide choice); `null` from an older
    /// daemon.
    #[serde(default, with = "cipher_name")]
    pub cipher: Option<CipherSuite>,
}

/// Serialises a cipher as its operator name (`chacha20-poly1305`, `aes-256-gcm`).
mod cipher_name {
    use serde::{Deserialize, Deserializer, Serializer};
    use warren_proto::noise::CipherSuite;

    /// Writes the operator name, or `null`.
    pub fn serialize<S: Serializer>(c: &Option<CipherSuite>, s: S) -> Result<S::Ok, S::Error> {
        match c {
            Some(c) => s.serialize_str(c.name()),
            None => s.serialize_none(),
        }
    }

    /// Reads an operator name; an unknown one (a newer daemon's) reads as `None`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<CipherSuite>, D::Error> {
        let name: Option<String> = Option::deserialize(d)?;
        Ok(name.and_then(|n| n.parse().ok()))
    }
}

/// What the daemon keeps about itself for the report's `self` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelfStatus {
    /// Name in the mesh.
    pub name: String,
    /// Mesh address.
    pub ip: MeshIp,
    /// Coordinator-assigned id.
    pub node_id: NodeId,
    /// Static public key (base64).
    pub public_key: PublicKey,
    /// The data socket's address as the coordinator last saw it.
    pub reflexive: Option<String>,
    /// Whether the control connection is up.
    pub coordinator: Link,
    /// What the control connection runs on (`tcp` when UDP to the coordinator is blocked).
    #[serde(default)]
    pub carrier: Carrier,
}

/// What carries the control connection (and so the relay).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Carrier {
    /// QUIC over UDP, sharing the data socket.
    #[default]
    Udp,
    /// QUIC tunnelled through TLS over TCP (UDP blocked).
    Tcp,
}

/// State of the control connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    /// Logged in.
    Connected,
    /// Reconnecting.
    Disconnected,
}

/// How packets to a peer travel, as shown to users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathName {
    /// Hole-punched or LAN UDP path.
    Direct,
    /// Through the coordinator's relay.
    Relay,
    /// No path yet.
    Connecting,
}

/// One peer in the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerLine {
    /// Name in the mesh.
    pub name: String,
    /// Coordinator-assigned id (`null` from an older daemon).
    #[serde(default)]
    pub node_id: Option<NodeId>,
    /// Mesh address.
    pub ip: MeshIp,
    /// Current path.
    pub path: PathName,
    /// Why the peer is not direct (`punch timed out`, `direct path lost`, `peer offline` ...);
    /// `null` when direct or not known to the engine.
    #[serde(default)]
    pub relay_reason: Option<String>,
    /// Remote address of the direct path.
    pub endpoint: Option<String>,
    /// Latest measured round-trip time, milliseconds.
    pub rtt_ms: Option<f64>,
    /// Decrypted bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Seconds since the last completed handshake.
    pub last_handshake_s: Option<u64>,
    /// Handshakes completed with the peer since the daemon started (0 from an older daemon).
    #[serde(default)]
    pub handshakes: u64,
    /// Cipher of the session packets to the peer are sealed with (`null` without a session).
    #[serde(default, with = "cipher_name")]
    pub cipher: Option<CipherSuite>,
    /// Whether the coordinator lists the peer as connected.
    pub online: bool,
}

/// The `PathReport` the coordinator shows operators: every peer's path, reason and endpoint.
pub fn path_report(peers: &[PeerStatus]) -> NodeMessage {
    NodeMessage::PathReport {
        paths: peers
            .iter()
            .map(|p| PathInfo {
                peer: p.node_id,
                path: match p.path {
                    PathKind::Direct => PathState::Direct,
                    PathKind::Relay => PathState::Relay,
                    PathKind::Connecting => PathState::Connecting,
                },
                reason: p.relay_reason.map(|r| r.to_string()),
                endpoint: p.endpoint,
            })
            .collect(),
    }
}

/// Merges the coordinator's peer records with the engine's per-peer status.
pub fn peer_lines<'a>(
    records: impl Iterator<Item = &'a PeerRecord>,
    engine: &[PeerStatus],
) -> Vec<PeerLine> {
    let mut lines: Vec<PeerLine> = records
        .map(|r| {
            let st = engine.iter().find(|s| s.node_id == r.node_id);
            PeerLine {
                name: r.name.clone(),
                node_id: Some(r.node_id),
                ip: r.mesh_ip,
                path: match st.map(|s| s.path) {
                    Some(PathKind::Direct) => PathName::Direct,
                    Some(PathKind::Relay) => PathName::Relay,
                    Some(PathKind::Connecting) | None => PathName::Connecting,
                },
                relay_reason: st.and_then(|s| s.relay_reason).map(|r| r.to_string()),
                endpoint: st.and_then(|s| s.endpoint).map(|e| e.to_string()),
                rtt_ms: st
                    .and_then(|s| s.rtt)
                    .map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
                rx_bytes: st.map_or(0, |s| s.rx_bytes),
                tx_bytes: st.map_or(0, |s| s.tx_bytes),
                last_handshake_s: st.and_then(|s| s.last_handshake).map(|d| d.as_secs()),
                handshakes: st.map_or(0, |s| s.handshakes),
                cipher: st.and_then(|s| s.cipher),
                online: r.online,
            }
        })
        .collect();
    lines.sort_by_key(|l| l.ip);
    lines
}

/// A status request: the daemon answers on the oneshot.
pub type StatusRequest = oneshot::Sender<StatusReport>;

/// Binds the status socket, refusing if another daemon answers on it (a stale one is replaced).
pub fn bind(dir: &Path) -> anyhow::Result<(UnixListener, PathBuf)> {
    let path = socket_path(dir);
    if path.exists() {
        if StdUnixStream::connect(&path).is_ok() {
            return Err(NodeError::DaemonRunning(dir.to_path_buf()).into());
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting mode 0600 on {}", path.display()))?;
    Ok((listener, path))
}

/// Serves status requests until the daemon drops its receiver.
pub async fn serve(listener: UnixListener, requests: mpsc::Sender<StatusRequest>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "status accept failed");
                continue;
            }
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, requests).await {
                tracing::debug!(error = %e, "status request failed");
            }
        });
    }
}

/// Answers one connection.
async fn answer(
    stream: tokio::net::UnixStream,
    requests: mpsc::Sender<StatusRequest>,
) -> anyhow::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(tokio::io::AsyncReadExt::take(rd, 64));
    tokio::time::timeout(IO_TIMEOUT, rd.read_line(&mut line))
        .await
        .context("request timed out")??;
    if line.trim() != "status" {
        anyhow::bail!("unknown request {line:?}");
    }
    let (tx, rx) = oneshot::channel();
    requests.send(tx).await.context("daemon stopped")?;
    let report = rx.await.context("daemon stopped")?;
    let mut json = serde_json::to_vec(&report)?;
    json.push(b'\n');
    wr.write_all(&json).await?;
    wr.shutdown().await?;
    Ok(())
}

/// Asks the daemon serving `dir` for its status (blocking; used by the CLI).
pub fn query(dir: &Path) -> anyhow::Result<StatusReport> {
    let path = socket_path(dir);
    let mut stream = StdUnixStream::connect(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "cannot open {}: permission denied (run as root)",
            path.display()
        ),
        _ => NodeError::NoDaemon(dir.to_path_buf()).into(),
    })?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream
        .write_all(b"status\n")
        .context("sending the status request")?;
    let mut body = Vec::new();
    stream
        .read_to_end(&mut body)
        .context("reading the daemon's status")?;
    serde_json::from_slice(&body).context("the daemon's status reply is malformed")
}

/// Human-readable bytes (KiB, MiB, ...).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The table `warren status` prints without `--json`.
pub fn render(r: &StatusReport) -> String {
    let link = match r.me.node.coordinator {
        Link::Connected => "connected",
        Link::Disconnected => "disconnected",
    };
    let over = match r.me.node.carrier {
        Carrier::Udp => "",
        Carrier::Tcp => " over tcp (udp blocked)",
    };
    let cipher =
        r.me.cipher
            .map_or(String::new(), |c| format!(", cipher {c}"));
    let mut out = format!(
        "{} {} ({}), coordinator {link}{over}, reflexive {}{cipher}\n",
        r.me.node.name,
        r.me.node.ip,
        r.me.node.node_id,
        r.me.node.reflexive.as_deref().unwrap_or("-")
    );
    if r.peers.is_empty() {
        out.push_str("no peers\n");
        return out;
    }
    let rows: Vec<[String; 10]> = r
        .peers
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.ip.to_string(),
                format!("{:?}", p.path).to_lowercase(),
                p.relay_reason.clone().unwrap_or_else(|| "-".into()),
                p.endpoint.clone().unwrap_or_else(|| "-".into()),
                p.rtt_ms.map_or("-".into(), |v| format!("{v:.1} ms")),
                bytes(p.rx_bytes),
                bytes(p.tx_bytes),
                p.last_handshake_s
                    .map_or("-".into(), |s| format!("{s}s ago")),
                if p.online { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    let header: [&str; 10] = [
        "NAME",
        "IP",
        "PATH",
        "REASON",
        "ENDPOINT",
        "RTT",
        "RX",
        "TX",
        "HANDSHAKE",
        "ONLINE",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut line = |cells: &[&str]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
