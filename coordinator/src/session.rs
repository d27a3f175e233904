//! One node's control session over its QUIC connection: the Hello/Challenge/Join-or-Login
//! handshake, then candidate updates, punch brokering and reflexive-address changes until the
//! connection ends. Malformed input ends only this session, with an `Error{Protocol}` frame.
//! Registrations and logins, and why they were refused, are counted in [`crate::metrics`]. At
//! info level only registrations are logged (an administrative event); logins, presence and
//! addresses are debug.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use warren_proto::control::{self, CoordMessage, ErrorCode, NodeMessage, CONTROL_VERSION};
use warren_proto::ids::{NodeId, PrivateKey, PublicKey};
use warren_proto::proof;

use crate::bucket::TokenBucket;
use crate::invite::{hash_secret, unix_now};
use crate::mesh::Mesh;
use crate::registry::{OnlineNode, NODE_QUEUE};
use crate::store::{NodeName, NodeRow, RegisterError, Registration, StoreError};

/// How long a node has to open its stream and finish logging in.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the reflexive address is checked for changes (NAT rebinding).
const REFLEXIVE_CHECK: Duration = Duration::from_secs(1);
/// How often `last_seen` is written while a node stays online.
const LAST_SEEN_EVERY: Duration = Duration::from_secs(60);
/// Most local candidates a node may report.
const MAX_LOCAL_CANDIDATES: usize = 16;
/// Punch requests brokered per node per second (token bucket, bursts of one second's worth);
/// more are ignored. Nodes space requests per
/// peer (proto `engine::peer`), so this only bites a node asking for very many peers at once
/// or misbehaving.
const MAX_PUNCHES_PER_SEC: u64 = 64;
/// Control frames read ahead of the session loop.
const FRAME_QUEUE: usize = 8;
/// Most peers one path report may describe.
const MAX_PATH_REPORTS: usize = 4096;
/// Longest relay reason kept, in bytes.
const MAX_REASON: usize = 120;

/// A control-protocol failure to report to the node before closing.
struct Refusal(ErrorCode, String);

impl From<RegisterError> for Refusal {
    fn from(e: RegisterError) -> Self {
        let code = match &e {
            RegisterError::InviteUnknown => ErrorCode::InviteUnknown,
            RegisterError::InviteExpired => ErrorCode::InviteExpired,
            RegisterError::InviteUsedUp => ErrorCode::InviteUsedUp,
            RegisterError::InviteRevoked => ErrorCode::InviteRevoked,
            RegisterError::AlreadyRegistered => ErrorCode::AlreadyRegistered,
            RegisterError::NetworkFull => ErrorCode::NetworkFull,
            // The control protocol has no code of its own for this rare case (a reserved
            // address outside a changed network); the message says what happened.
            RegisterError::Reserved(_) => ErrorCode::NetworkFull,
            RegisterError::Store(_) => ErrorCode::Internal,
        };
        Refusal(code, e.to_string())
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal(ErrorCode::Internal, e.to_string())
    }
}

/// Reads one frame; `None` at a clean end of stream.
async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<NodeMessage>> {
    let mut header = [0u8; 4];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = control::frame_len(header)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(Some(control::decode(&body)?))
}

async fn write_frame(send: &mut quinn::SendStream, msg: &CoordMessage) -> Result<()> {
    send.write_all(&control::encode(msg)).await?;
    Ok(())
}

/// Serves one node connection to its end.
pub async fn serve_connection(mesh: Arc<Mesh>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    let login = tokio::time::timeout(LOGIN_TIMEOUT, login(&mesh, &conn)).await;
    let (row, mut send, recv) = match login {
        Ok(Ok(Ok(v))) => v,
        Ok(Ok(Err((mut send, Refusal(code, message))))) => {
            debug!(%remote, ?code, %message, "login refused");
            let _ = write_frame(&mut send, &CoordMessage::Error { code, message }).await;
            let _ = send.finish();
            // Give the frame time to leave before the connection goes.
            let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
            conn.close(1u32.into(), b"login refused");
            return;
        }
        Ok(Err(e)) => {
            debug!(%remote, error = %e, "login failed");
            conn.close(1u32.into(), b"login failed");
            return;
        }
        Err(_) => {
            debug!(%remote, "login timed out");
            conn.close(1u32.into(), b"login timed out");
            return;
        }
    };
    let id = row.id;
    // Presence (when a node comes and goes) is activity metadata: debug only, so that an
    // operator running at info can say the coordinator keeps no record of it.
    debug!(node = %id, "node online");

    // Welcome before the node appears online to others, so it never sees a Punch first.
    let peers = match mesh.with_store(|s| s.nodes()).await {
        Ok(nodes) => nodes
            .iter()
            .filter(|n| n.id != id)
            .map(|n| mesh.registry.record(n))
            .collect(),
        Err(e) => {
            warn!(error = %e, "listing nodes failed");
            conn.close(1u32.into(), b"internal error");
            return;
        }
    };
    let (tx, rx) = mpsc::channel(NODE_QUEUE);
    let conn_id = mesh.conn_id();
    mesh.registry.insert(
        id,
        OnlineNode {
            conn_id,
            name: row.name.clone(),
            tx,
            reflexive: remote,
            local: Vec::new(),
            paths: Vec::new(),
            connection: conn.clone(),
        },
    );
    // A rename or removal through the API between the login's read and the insert above would
    // be missed: read the row again, now that the API's changes reach the registry entry.
    let row = match mesh.with_store(move |s| s.node(id)).await {
        Ok(Some(fresh)) => {
            mesh.registry.rename(id, &fresh.name);
            fresh
        }
        Ok(None) => {
            debug!(node = %id, "node removed while logging in");
            mesh.registry.remove_if_current(id, conn_id);
            conn.close(1u32.into(), b"removed from the mesh");
            return;
        }
        Err(e) => {
            warn!(error = %e, "reading the node failed");
            mesh.registry.remove_if_current(id, conn_id);
            conn.close(1u32.into(), b"internal error");
            return;
        }
    };
    let welcome = CoordMessage::Welcome {
        node: mesh.registry.record(&row),
        network: mesh.network,
        reflexive: remote,
        peers,
        cipher: mesh.cipher,
    };
    if write_frame(&mut send, &welcome).await.is_ok() {
        mesh.registry.broadcast_except(
            id,
            &CoordMessage::PeerUpsert {
                peer: mesh.registry.record(&row),
            },
        );
        let writer = tokio::spawn(write_loop(send, rx));
        let relay = tokio::spawn(crate::relay::relay_loop(mesh.clone(), conn.clone(), id));
        if let Err(e) = run(&mesh, &conn, &row, recv).await {
            debug!(node = %id, error = %e, "control session ended with an error");
            // Tell the node why (best effort) before closing.
            mesh.registry.send(
                id,
                CoordMessage::Error {
                    code: ErrorCode::Protocol,
                    message: e.to_string(),
                },
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            conn.close(2u32.into(), b"protocol error");
        }
        writer.abort();
        relay.abort();
    }
    if let Some(gone) = mesh.registry.remove_if_current(id, conn_id) {
        debug!(node = %id, "node offline");
        // The name may have changed through the API while the node was online.
        let row = NodeRow {
            name: gone.name,
            ..row
        };
        let _ = mesh.with_store(move |s| s.touch(id, unix_now())).await;
        mesh.registry.broadcast_except(
            id,
            &CoordMessage::PeerUpsert {
                peer: mesh.registry.record(&row),
            },
        );
    }
}

type LoginResult =
    Result<(NodeRow, quinn::SendStream, quinn::RecvStream), (quinn::SendStream, Refusal)>;

/// Hello, Challenge, Join or Login. Outer error: the connection is unusable; inner error: a
/// refusal to send on the stream.
async fn login(mesh: &Arc<Mesh>, conn: &quinn::Connection) -> Result<LoginResult> {
    let (mut send, mut recv) = conn.accept_bi().await.context("accepting control stream")?;
    let Some(NodeMessage::Hello {
        version,
        public_key,
    }) = read_frame(&mut recv).await?
    else {
        return Ok(Err((
            send,
            Refusal(ErrorCode::Protocol, "expected hello".into()),
        )));
    };
    if version != CONTROL_VERSION {
        let msg = format!("coordinator speaks control version {CONTROL_VERSION}, node {version}");
        return Ok(Err((send, Refusal(ErrorCode::VersionUnsupported, msg))));
    }
    let ephemeral = PrivateKey::from_random(rand::random());
    let nonce: [u8; 32] = rand::random();
    write_frame(
        &mut send,
        &CoordMessage::Challenge {
            server_ephemeral: ephemeral.public_key(),
            nonce,
        },
    )
    .await?;
    let mut binding = [0u8; 32];
    conn.export_keying_material(&mut binding, proof::EXPORTER_LABEL, b"")
        .map_err(|_| anyhow!("exporting keying material"))?;
    let check = |p: &[u8; 32]| proof::verify(&ephemeral, &public_key, &nonce, &binding, p);
    let outcome = match read_frame(&mut recv).await? {
        Some(NodeMessage::Join {
            invite_secret,
            name,
            proof,
        }) => {
            if !check(&proof) {
                mesh.metrics.registration_failed("bad_proof");
                Err(Refusal(
                    ErrorCode::BadProof,
                    "key possession proof failed".into(),
                ))
            } else {
                join(mesh, public_key, invite_secret, name).await
            }
        }
        Some(NodeMessage::Login { proof }) => {
            if !check(&proof) {
                mesh.metrics.login_failed("bad_proof");
                Err(Refusal(
                    ErrorCode::BadProof,
                    "key possession proof failed".into(),
                ))
            } else {
                match mesh.with_store(move |s| s.node_by_key(&public_key)).await {
                    Ok(Some(row)) => {
                        mesh.metrics.logged_in();
                        Ok(row)
                    }
                    Ok(None) => {
                        mesh.metrics.login_failed("not_registered");
                        Err(Refusal(
                            ErrorCode::NotRegistered,
                            "this node is not registered with the coordinator (removed?); join again with a new invite".into(),
                        ))
                    }
                    Err(e) => {
                        mesh.metrics.login_failed("internal");
                        Err(e.into())
                    }
                }
            }
        }
        _ => Err(Refusal(
            ErrorCode::Protocol,
            "expected join or login".into(),
        )),
    };
    Ok(match outcome {
        Ok(row) => Ok((row, send, recv)),
        Err(r) => Err((send, r)),
    })
}

async fn join(
    mesh: &Arc<Mesh>,
    public_key: PublicKey,
    secret: [u8; 32],
    name: String,
) -> Result<NodeRow, Refusal> {
    let reg = Registration {
        secret_hash: hash_secret(&secret),
        name: NodeName::clean(&name).to_string(),
        public_key,
        network: mesh.network,
        now: unix_now(),
    };
    match mesh.with_store(move |s| s.register(&reg)).await {
        Ok(row) => {
            mesh.metrics.registered();
            info!(node = %row.id, name = %row.name, ip = %row.mesh_ip, "node registered");
            Ok(row)
        }
        Err(e) => {
            mesh.metrics.registration_failed(e.reason());
            Err(e.into())
        }
    }
}

/// Forwards queued messages to the node's stream.
async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::Receiver<CoordMessage>) {
    while let Some(msg) = rx.recv().await {
        if write_frame(&mut send, &msg).await.is_err() {
            break;
        }
    }
}

/// The logged-in part of the session (relay datagrams are served by their own task).
async fn run(
    mesh: &Arc<Mesh>,
    conn: &quinn::Connection,
    row: &NodeRow,
    mut recv: quinn::RecvStream,
) -> Result<()> {
    // Frames are read by their own task: `read_exact` is not cancel-safe, so it must not sit in
    // the select below, whose other branches would drop a half-read frame.
    let (frames_tx, mut frames) = mpsc::channel(FRAME_QUEUE);
    let reader = tokio::spawn(async move {
        loop {
            let frame = read_frame(&mut recv).await;
            let more = matches!(frame, Ok(Some(_)));
            if frames_tx.send(frame).await.is_err() || !more {
                break;
            }
        }
    });
    let result = control_loop(mesh, conn, row, &mut frames).await;
    reader.abort();
    result
}

/// The session's event loop: control frames, reflexive-address checks and `last_seen` writes.
async fn control_loop(
    mesh: &Arc<Mesh>,
    conn: &quinn::Connection,
    row: &NodeRow,
    frames: &mut mpsc::Receiver<Result<Option<NodeMessage>>>,
) -> Result<()> {
    let id = row.id;
    let mut reflexive = conn.remote_address();
    let mut check = tokio::time::interval(REFLEXIVE_CHECK);
    let mut seen = tokio::time::interval(LAST_SEEN_EVERY);
    let mut punches = TokenBucket::new(
        MAX_PUNCHES_PER_SEC,
        MAX_PUNCHES_PER_SEC,
        std::time::Instant::now(),
    );
    loop {
        tokio::select! {
            frame = frames.recv() => {
                match frame.transpose()? {
                    None | Some(None) => return Ok(()),
                    Some(Some(msg)) => handle(mesh, row, msg, &mut punches)?,
                }
            }
            _ = check.tick() => {
                let now = conn.remote_address();
                if now != reflexive {
                    debug!(node = %id, old = %reflexive, new = %now, "reflexive address changed");
                    reflexive = now;
                    mesh.registry.update(id, |n| n.reflexive = now);
                    mesh.registry.send(id, CoordMessage::Reflexive { addr: now });
                    announce(mesh, row);
                }
            }
            _ = seen.tick() => {
                let _ = mesh.with_store(move |s| s.touch(id, unix_now())).await;
            }
            reason = conn.closed() => {
                debug!(node = %id, %reason, "connection closed");
                return Ok(());
            }
        }
    }
}

/// Tells every other node the current record of `row`.
fn announce(mesh: &Mesh, row: &NodeRow) {
    mesh.registry.broadcast_except(
        row.id,
        &CoordMessage::PeerUpsert {
            peer: mesh.registry.record(row),
        },
    );
}

fn handle(
    mesh: &Arc<Mesh>,
    row: &NodeRow,
    msg: NodeMessage,
    punches: &mut TokenBucket,
) -> Result<()> {
    let id = row.id;
    match msg {
        NodeMessage::Candidates { local } => {
            let local: Vec<SocketAddr> = local
                .into_iter()
                .filter(|a| a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast())
                .take(MAX_LOCAL_CANDIDATES)
                .collect();
            let mut changed = false;
            mesh.registry.update(id, |n| {
                changed = n.local != local;
                n.local = local;
            });
            // Nodes re-send their candidates periodically; only news is broadcast.
            if changed {
                announce(mesh, row);
            }
        }
        NodeMessage::PunchRequest { peer } => {
            if punches.take(1, std::time::Instant::now()) {
                broker_punch(mesh, id, peer);
            } else {
                debug!(node = %id, %peer, "punch request over budget ignored");
            }
        }
        NodeMessage::PathReport { mut paths } => {
            // One entry per peer at most; a node cannot grow the coordinator's memory unboundedly.
            paths.retain(|p| p.peer != id);
            paths.truncate(MAX_PATH_REPORTS);
            for p in &mut paths {
                if let Some(r) = &mut p.reason {
                    r.truncate(MAX_REASON);
                }
            }
            mesh.registry.update(id, |n| n.paths = paths);
        }
        NodeMessage::Hello { .. } | NodeMessage::Join { .. } | NodeMessage::Login { .. } => {
            bail!("unexpected login message after login")
        }
    }
    Ok(())
}

/// Tells both nodes at the same moment to punch towards each other.
fn broker_punch(mesh: &Mesh, a: NodeId, b: NodeId) {
    if a == b {
        return;
    }
    let (Some(cand_a), Some(cand_b)) = (mesh.registry.candidates(a), mesh.registry.candidates(b))
    else {
        debug!(node = %a, peer = %b, "punch request for an offline or unknown peer ignored");
        return;
    };
    debug!(node = %a, peer = %b, "brokering punch");
    mesh.registry.send(
        b,
        CoordMessage::Punch {
            peer: a,
            candidates: cand_a,
        },
    );
    mesh.registry.send(
        a,
        CoordMessage::Punch {
            peer: b,
            candidates: cand_b,
        },
    );
}
