//! A scripted coordinator for driving the real `warren` binary: speaks the control protocol with
//! a real key-possession check, registers keys on Join, accepts Login for registered keys, and
//! brokers like the real one (peer upserts on candidate changes, Punch to both sides on a
//! PunchRequest). In-memory only.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use warren_proto::control::{self, CoordMessage, ErrorCode, NodeMessage, PeerRecord};
use warren_proto::ids::{MeshIp, MeshNetwork, NodeId, PrivateKey, PublicKey};
use warren_proto::proof::{self, EXPORTER_LABEL};
use warren_proto::token::{CoordinatorAddr, InviteToken};

/// Invite secret the fake accepts (any number of times).
pub const GOOD: [u8; 32] = [1; 32];
/// Invite secret the fake reports as expired.
pub const EXPIRED: [u8; 32] = [2; 32];
/// Node id of the fixed offline peer listed when `static_peer` is on.
pub const STATIC_PEER: u64 = 200;

/// The fake's mesh network (kept away from the default so tests do not clash with a real node).
pub fn network() -> MeshNetwork {
    "100.77.0.0/16".parse().unwrap()
}

/// One registered node.
struct Entry {
    record: PeerRecord,
    reflexive: Option<SocketAddr>,
    local: Vec<SocketAddr>,
    /// Pushes to the node's session while it is connected.
    push: Option<mpsc::UnboundedSender<CoordMessage>>,
}

/// Registered nodes by key.
#[derive(Default)]
pub struct Registry {
    nodes: HashMap<PublicKey, Entry>,
    next_id: u64,
    /// Every Candidates message received.
    pub candidates: Vec<Vec<SocketAddr>>,
    /// Successful logins (Join or Login) so far.
    pub logins: usize,
    /// Open connections, so a test can drop them all.
    conns: Vec<quinn::Connection>,
}

impl Registry {
    fn record_of(e: &Entry) -> PeerRecord {
        let mut r = e.record.clone();
        r.candidates = e
            .reflexive
            .into_iter()
            .chain(e.local.iter().copied())
            .collect();
        r
    }

    fn by_id(&self, id: NodeId) -> Option<&Entry> {
        self.nodes.values().find(|e| e.record.node_id == id)
    }

    fn broadcast_except(&self, except: NodeId, msg: &CoordMessage) {
        for e in self.nodes.values() {
            if e.record.node_id != except {
                if let Some(p) = &e.push {
                    let _ = p.send(msg.clone());
                }
            }
        }
    }
}

/// A fake coordinator.
pub struct Fake {
    /// Its UDP address.
    pub addr: SocketAddr,
    /// Its certificate's fingerprint.
    pub fingerprint: [u8; 32],
    /// Its state.
    pub registry: Arc<Mutex<Registry>>,
    /// Its QUIC endpoint.
    endpoint: quinn::Endpoint,
}

impl Fake {
    /// Takes the coordinator down for good: connections close, new ones are refused.
    pub fn shutdown(&self) {
        self.endpoint.close(0u32.into(), b"down");
    }

    /// Closes every node connection, as a coordinator restart would.
    pub fn kick_all(&self) {
        for c in self.registry.lock().unwrap().conns.drain(..) {
            c.close(0u32.into(), b"kicked");
        }
    }

    /// Successful logins so far.
    pub fn logins(&self) -> usize {
        self.registry.lock().unwrap().logins
    }

    /// A token for this coordinator with `secret` (and optionally a wrong fingerprint).
    pub fn token(&self, secret: [u8; 32], fingerprint: Option<[u8; 32]>) -> String {
        InviteToken {
            addrs: vec![CoordinatorAddr::Ip(self.addr.ip(), self.addr.port())],
            fingerprint: fingerprint.unwrap_or(self.fingerprint),
            secret,
        }
        .to_string()
    }
}

/// Starts the fake on `rt`, listening on `bind`. With `static_peer`, Welcome also lists an
/// offline node `peer-two` that never connects.
pub fn start(rt: &tokio::runtime::Runtime, bind: SocketAddr, static_peer: bool) -> Fake {
    let _guard = rt.enter();
    let ck = rcgen::generate_simple_self_signed(vec!["warren-coordinator".to_string()]).unwrap();
    let cert = ck.cert.der().to_vec();
    let fingerprint: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&cert).into();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.into()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()).into(),
        )
        .unwrap();
    tls.alpn_protocols = vec![b"warren/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let ep =
        quinn::Endpoint::server(quinn::ServerConfig::with_crypto(Arc::new(crypto)), bind).unwrap();
    let registry = Arc::new(Mutex::new(Registry {
        next_id: 1,
        ..Registry::default()
    }));
    if static_peer {
        let key = PublicKey([7; 32]);
        registry.lock().unwrap().nodes.insert(
            key,
            Entry {
                record: record(STATIC_PEER, key, "peer-two", false),
                reflexive: None,
                local: vec![],
                push: None,
            },
        );
    }
    let fake = Fake {
        addr: ep.local_addr().unwrap(),
        fingerprint,
        registry: registry.clone(),
        endpoint: ep.clone(),
    };
    rt.spawn(async move {
        while let Some(inc) = ep.accept().await {
            let registry = registry.clone();
            tokio::spawn(async move {
                if let Ok(conn) = inc.await {
                    let _ = session(conn, registry).await;
                }
            });
        }
    });
    fake
}

fn record(id: u64, key: PublicKey, name: &str, online: bool) -> PeerRecord {
    PeerRecord {
        node_id: NodeId(id),
        name: name.into(),
        public_key: key,
        mesh_ip: MeshIp(Ipv4Addr::new(100, 77, 0, id as u8)),
        online,
        candidates: vec![],
    }
}

async fn read(recv: &mut quinn::RecvStream) -> Option<NodeMessage> {
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.ok()?;
    let mut body = vec![0u8; control::frame_len(header).ok()?];
    recv.read_exact(&mut body).await.ok()?;
    control::decode(&body).ok()
}

async fn write(send: &mut quinn::SendStream, msg: &CoordMessage) -> Option<()> {
    send.write_all(&control::encode(msg)).await.ok()
}

/// Handles Join/Login; on success registers the session and returns the Welcome.
fn login(
    reg: &mut Registry,
    request: NodeMessage,
    key: PublicKey,
    proof_ok: impl Fn(&[u8; 32]) -> bool,
    reflexive: SocketAddr,
    push: mpsc::UnboundedSender<CoordMessage>,
) -> Result<(NodeId, CoordMessage), ErrorCode> {
    let id = match request {
        NodeMessage::Join {
            invite_secret,
            name,
            proof: p,
        } => {
            if !proof_ok(&p) {
                return Err(ErrorCode::BadProof);
            }
            if invite_secret == EXPIRED {
                return Err(ErrorCode::InviteExpired);
            }
            if invite_secret != GOOD {
                return Err(ErrorCode::InviteUnknown);
            }
            if reg.nodes.contains_key(&key) {
                return Err(ErrorCode::AlreadyRegistered);
            }
            let id = reg.next_id;
            reg.next_id += 1;
            let rec = record(id, key, &name, true);
            reg.nodes.insert(
                key,
                Entry {
                    record: rec,
                    reflexive: None,
                    local: vec![],
                    push: None,
                },
            );
            NodeId(id)
        }
        NodeMessage::Login { proof: p } => {
            if !proof_ok(&p) {
                return Err(ErrorCode::BadProof);
            }
            reg.nodes
                .get(&key)
                .ok_or(ErrorCode::NotRegistered)?
                .record
                .node_id
        }
        _ => return Err(ErrorCode::Protocol),
    };
    reg.logins += 1;
    let entry = reg.nodes.get_mut(&key).expect("registered above");
    entry.reflexive = Some(reflexive);
    entry.record.online = true;
    entry.push = Some(push);
    let me = Registry::record_of(entry);
    let peers = reg
        .nodes
        .values()
        .filter(|e| e.record.node_id != id)
        .map(Registry::record_of)
        .collect();
    reg.broadcast_except(id, &CoordMessage::PeerUpsert { peer: me.clone() });
    Ok((
        id,
        CoordMessage::Welcome {
            node: me,
            network: network(),
            reflexive,
            peers,
            cipher: Default::default(),
        },
    ))
}

async fn session(conn: quinn::Connection, registry: Arc<Mutex<Registry>>) -> Option<()> {
    let (mut send, mut recv) = conn.accept_bi().await.ok()?;
    let NodeMessage::Hello { public_key, .. } = read(&mut recv).await? else {
        return None;
    };
    let eph = PrivateKey::from_random([9; 32]);
    let nonce = [4u8; 32];
    let challenge = CoordMessage::Challenge {
        server_ephemeral: eph.public_key(),
        nonce,
    };
    write(&mut send, &challenge).await?;
    let request = read(&mut recv).await?;
    let mut binding = [0u8; 32];
    conn.export_keying_material(&mut binding, EXPORTER_LABEL, b"")
        .ok()?;
    let proof_ok = |p: &[u8; 32]| proof::verify(&eph, &public_key, &nonce, &binding, p);
    let (push_tx, mut push_rx) = mpsc::unbounded_channel();
    registry.lock().unwrap().conns.push(conn.clone());
    let result = login(
        &mut registry.lock().unwrap(),
        request,
        public_key,
        proof_ok,
        conn.remote_address(),
        push_tx,
    );
    let id = match result {
        Ok((id, welcome)) => {
            write(&mut send, &welcome).await?;
            id
        }
        Err(code) => {
            let msg = CoordMessage::Error {
                code,
                message: "scripted".into(),
            };
            write(&mut send, &msg).await?;
            let _ = send.finish();
            conn.closed().await;
            return Some(());
        }
    };
    let writer = tokio::spawn(async move {
        while let Some(msg) = push_rx.recv().await {
            if write(&mut send, &msg).await.is_none() {
                break;
            }
        }
    });
    while let Some(msg) = read(&mut recv).await {
        let mut reg = registry.lock().unwrap();
        match msg {
            NodeMessage::Candidates { local } => {
                reg.candidates.push(local.clone());
                let entry = reg.nodes.get_mut(&public_key)?;
                entry.local = local;
                let me = Registry::record_of(entry);
                reg.broadcast_except(id, &CoordMessage::PeerUpsert { peer: me });
            }
            NodeMessage::PunchRequest { peer } => {
                let (Some(a), Some(b)) = (reg.nodes.get(&public_key), reg.by_id(peer)) else {
                    continue;
                };
                let (ra, rb) = (Registry::record_of(a), Registry::record_of(b));
                if let (Some(pa), Some(pb)) = (&a.push, &b.push) {
                    let _ = pa.send(CoordMessage::Punch {
                        peer,
                        candidates: rb.candidates,
                    });
                    let _ = pb.send(CoordMessage::Punch {
                        peer: id,
                        candidates: ra.candidates,
                    });
                }
            }
            _ => {}
        }
    }
    writer.abort();
    let mut reg = registry.lock().unwrap();
    if let Some(e) = reg.nodes.get_mut(&public_key) {
        e.push = None;
        e.record.online = false;
        let me = Registry::record_of(e);
        reg.broadcast_except(id, &CoordMessage::PeerUpsert { peer: me });
    }
    Some(())
}
