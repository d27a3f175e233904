//! A scripted coordinator for driving the real `warren` binary: speaks the control protocol
//! (with a real key-possession check), registers keys on Join, accepts Login for registered keys.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use warren_proto::control::{self, CoordMessage, ErrorCode, NodeMessage, PeerRecord};
use warren_proto::ids::{MeshIp, MeshNetwork, NodeId, PrivateKey, PublicKey};
use warren_proto::proof::{self, EXPORTER_LABEL};
use warren_proto::token::{CoordinatorAddr, InviteToken};

/// Invite secret the fake accepts.
pub const GOOD: [u8; 32] = [1; 32];
/// Invite secret the fake reports as expired.
pub const EXPIRED: [u8; 32] = [2; 32];

/// The fake's mesh network (kept away from the default so tests do not clash with a real node).
pub fn network() -> MeshNetwork {
    "100.77.0.0/16".parse().unwrap()
}

/// A fake coordinator running on loopback.
pub struct Fake {
    /// Its UDP address.
    pub addr: SocketAddr,
    /// Its certificate's fingerprint.
    pub fingerprint: [u8; 32],
    /// Registered keys → node ids.
    pub registered: Arc<Mutex<HashMap<PublicKey, u64>>>,
    /// Candidates the nodes reported.
    pub candidates: Arc<Mutex<Vec<Vec<SocketAddr>>>>,
}

impl Fake {
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

fn record(id: u64, key: PublicKey, name: &str) -> PeerRecord {
    PeerRecord {
        node_id: NodeId(id),
        name: name.into(),
        public_key: key,
        mesh_ip: MeshIp(Ipv4Addr::new(100, 77, 0, id as u8)),
        online: id == 1,
        candidates: vec![],
    }
}

/// Starts the fake on `rt`.
pub fn start(rt: &tokio::runtime::Runtime) -> Fake {
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
    let ep = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let fake = Fake {
        addr: ep.local_addr().unwrap(),
        fingerprint,
        registered: Arc::default(),
        candidates: Arc::default(),
    };
    let registered = fake.registered.clone();
    let candidates = fake.candidates.clone();
    rt.spawn(async move {
        while let Some(inc) = ep.accept().await {
            let registered = registered.clone();
            let candidates = candidates.clone();
            tokio::spawn(async move {
                if let Ok(conn) = inc.await {
                    let _ = session(conn, registered, candidates).await;
                }
            });
        }
    });
    fake
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

async fn session(
    conn: quinn::Connection,
    registered: Arc<Mutex<HashMap<PublicKey, u64>>>,
    candidates: Arc<Mutex<Vec<Vec<SocketAddr>>>>,
) -> Option<()> {
    let (mut send, mut recv) = conn.accept_bi().await.ok()?;
    let NodeMessage::Hello { public_key, .. } = read(&mut recv).await? else {
        return None;
    };
    let eph = PrivateKey::from_random([9; 32]);
    let nonce = [4u8; 32];
    write(
        &mut send,
        &CoordMessage::Challenge {
            server_ephemeral: eph.public_key(),
            nonce,
        },
    )
    .await?;
    let request = read(&mut recv).await?;
    let mut binding = [0u8; 32];
    conn.export_keying_material(&mut binding, EXPORTER_LABEL, b"")
        .ok()?;
    let reject = |code| CoordMessage::Error {
        code,
        message: "scripted".into(),
    };
    let reply = match request {
        NodeMessage::Join {
            invite_secret,
            name,
            proof: p,
        } => {
            if !proof::verify(&eph, &public_key, &nonce, &binding, &p) {
                reject(ErrorCode::BadProof)
            } else if invite_secret == EXPIRED {
                reject(ErrorCode::InviteExpired)
            } else if invite_secret != GOOD {
                reject(ErrorCode::InviteUnknown)
            } else {
                registered.lock().unwrap().insert(public_key, 1);
                welcome(&conn, public_key, &name)
            }
        }
        NodeMessage::Login { proof: p } => {
            let known = registered.lock().unwrap().contains_key(&public_key);
            if !proof::verify(&eph, &public_key, &nonce, &binding, &p) {
                reject(ErrorCode::BadProof)
            } else if !known {
                reject(ErrorCode::NotRegistered)
            } else {
                welcome(&conn, public_key, "joined")
            }
        }
        _ => reject(ErrorCode::Protocol),
    };
    let ok = matches!(reply, CoordMessage::Welcome { .. });
    write(&mut send, &reply).await?;
    if !ok {
        let _ = send.finish();
        conn.closed().await;
        return Some(());
    }
    while let Some(msg) = read(&mut recv).await {
        if let NodeMessage::Candidates { local } = msg {
            candidates.lock().unwrap().push(local);
        }
    }
    Some(())
}

fn welcome(conn: &quinn::Connection, key: PublicKey, name: &str) -> CoordMessage {
    CoordMessage::Welcome {
        node: record(1, key, name),
        network: network(),
        reflexive: conn.remote_address(),
        peers: vec![record(2, PublicKey([7; 32]), "peer-two")],
    }
}
