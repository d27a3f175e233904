//! Test helpers shared by the node's unit tests: self-signed coordinator certificates and a
//! loopback QUIC server speaking Warren's ALPN.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use crate::tls;

/// A self-signed certificate for `warren-coordinator`: (DER cert, PKCS#8 DER key).
pub(crate) fn self_signed() -> (Vec<u8>, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec![tls::SERVER_NAME.to_string()]).unwrap();
    (ck.cert.der().to_vec(), ck.key_pair.serialize_der())
}

/// A loopback QUIC server with a fresh self-signed certificate; returns it and the certificate's
/// fingerprint.
pub(crate) fn server() -> (quinn::Endpoint, [u8; 32]) {
    let (ep, fp, _) = server_with_tls();
    (ep, fp)
}

/// [`server`], plus a TLS-over-TCP server configuration with the same certificate and the TCP
/// carrier's ALPN (what the coordinator's TCP listener offers).
pub(crate) fn server_with_tls() -> (quinn::Endpoint, [u8; 32], Arc<rustls::ServerConfig>) {
    let (cert, key) = self_signed();
    let fp = tls::fingerprint_of(&cert);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tcp_cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.clone().into()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.clone()).into(),
        )
        .unwrap();
    tcp_cfg.alpn_protocols = vec![crate::tunnel::ALPN_TCP.to_vec()];
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls_cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.into()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key).into(),
        )
        .unwrap();
    tls_cfg.alpn_protocols = vec![tls::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls_cfg).unwrap();
    let cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let ep = quinn::Endpoint::server(cfg, "127.0.0.1:0".parse().unwrap()).unwrap();
    (ep, fp, Arc::new(tcp_cfg))
}
