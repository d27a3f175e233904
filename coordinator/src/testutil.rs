//! Test helpers: a mesh over a throwaway data directory, and a QUIC test client that speaks the
//! control protocol with a certificate pinned like a real node's.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use warren_proto::control::{self, CoordMessage, NodeMessage};

use crate::datadir::DataDir;
use crate::mesh::Mesh;
use crate::store::Store;

/// A data directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("warren-coord-test-{}", rand::random::<u64>()));
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A mesh over a fresh data directory, with its identity.
pub fn mesh() -> (TempDir, Arc<Mesh>, crate::datadir::Identity) {
    mesh_with(crate::relay::RelayLimits::default())
}

/// A mesh over a fresh data directory with the given relay limits, with its identity.
pub fn mesh_with(
    limits: crate::relay::RelayLimits,
) -> (TempDir, Arc<Mesh>, crate::datadir::Identity) {
    let dir = TempDir::new();
    let dd = DataDir::open_or_init(&dir.0).unwrap();
    let identity = dd.identity().unwrap();
    let store: Arc<dyn Store> = Arc::new(dd.store().unwrap());
    let mesh = Arc::new(
        Mesh::new(
            store,
            "10.99.0.0/24".parse().unwrap(),
            "127.0.0.1:7443".parse().unwrap(),
            identity.fingerprint,
            "test-admin-token-0123456789".into(),
        )
        .with_relay_limits(limits),
    );
    (dir, mesh, identity)
}

/// Accepts exactly the certificate with the given SHA-256 (what nodes do).
#[derive(Debug)]
struct Pinned([u8; 32], Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if <[u8; 32]>::from(Sha256::digest(end_entity.as_ref())) == self.0 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("fingerprint mismatch".into()))
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.1.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.1.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

/// A connected test client.
pub struct Client {
    pub ep: quinn::Endpoint,
    pub local: std::net::SocketAddr,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

/// A rustls client configuration pinned to `fingerprint` offering `alpn`.
pub fn pinned_tls(fingerprint: [u8; 32], alpn: &[u8]) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned(fingerprint, provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls
}

impl Client {
    pub async fn connect(server: std::net::SocketAddr, fingerprint: [u8; 32]) -> Self {
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        Self::connect_on(ep, server, fingerprint).await
    }

    /// Connects to `server` through endpoint `ep`.
    pub async fn connect_on(
        mut ep: quinn::Endpoint,
        server: std::net::SocketAddr,
        fingerprint: [u8; 32],
    ) -> Self {
        let tls = pinned_tls(fingerprint, crate::quic::ALPN);
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let conn = ep
            .connect(server, crate::datadir::SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (send, recv) = conn.open_bi().await.unwrap();
        let local = ep.local_addr().unwrap();
        Self {
            ep,
            local,
            conn,
            send,
            recv,
        }
    }

    /// Moves the client to a new UDP socket, as a NAT rebinding would; returns the new address.
    pub fn rebind(&mut self) -> std::net::SocketAddr {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        self.ep.rebind(socket).unwrap();
        self.local = self.ep.local_addr().unwrap();
        self.local
    }

    /// Next message that `pick` accepts, skipping others (None after 5 s without one).
    pub async fn wait_for<T>(
        &mut self,
        mut pick: impl FnMut(CoordMessage) -> Option<T>,
    ) -> Option<T> {
        loop {
            if let Some(t) = pick(self.recv().await?) {
                return Some(t);
            }
        }
    }

    /// Waits for a PeerRemoved and returns the node it names.
    pub async fn wait_removed(&mut self) -> Option<warren_proto::ids::NodeId> {
        self.wait_for(|m| match m {
            CoordMessage::PeerRemoved { node_id } => Some(node_id),
            _ => None,
        })
        .await
    }

    /// Sends Hello with this build's version and returns the Challenge's ephemeral key and
    /// nonce (panics on anything else: a test failure).
    pub async fn hello(
        &mut self,
        key: &warren_proto::ids::PublicKey,
    ) -> (warren_proto::ids::PublicKey, [u8; 32]) {
        self.send(&NodeMessage::Hello {
            version: warren_proto::control::CONTROL_VERSION,
            public_key: *key,
        })
        .await;
        match self.recv().await {
            Some(CoordMessage::Challenge {
                server_ephemeral,
                nonce,
            }) => (server_ephemeral, nonce),
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    pub async fn send(&mut self, msg: &NodeMessage) {
        self.send.write_all(&control::encode(msg)).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    /// Next message, or None if the stream or connection ended (bounded wait).
    pub async fn recv(&mut self) -> Option<CoordMessage> {
        let fut = async {
            let mut header = [0u8; 4];
            self.recv.read_exact(&mut header).await.ok()?;
            let mut body = vec![0u8; control::frame_len(header).ok()?];
            self.recv.read_exact(&mut body).await.ok()?;
            control::decode(&body).ok()
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), fut)
            .await
            .ok()
            .flatten()
    }

    pub fn binding(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        self.conn
            .export_keying_material(&mut b, warren_proto::proof::EXPORTER_LABEL, b"")
            .unwrap();
        b
    }
}

/// Panics unless `w` is the coordinator refusing an unregistered (e.g. removed) node.
pub fn assert_not_registered(w: &CoordMessage) {
    assert!(
        matches!(
            w,
            CoordMessage::Error {
                code: warren_proto::control::ErrorCode::NotRegistered,
                ..
            }
        ),
        "expected NotRegistered, got {w:?}"
    );
}
