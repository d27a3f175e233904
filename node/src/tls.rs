//! TLS trust for the control connection (IO shell layer): the coordinator's certificate is pinned
//! by the SHA-256 of its DER encoding, as carried in the invite token. No CA and no trust on
//! first use: exactly one certificate is accepted, and the TLS handshake signatures are still
//! checked with the ring provider's algorithms, so only the holder of that certificate's private
//! key can complete the handshake.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// ALPN protocol id of Warren's control protocol.
pub use warren_proto::carrier::ALPN_QUIC as ALPN;
/// TLS server name the node asks for; the coordinator's self-signed certificate carries it.
pub use warren_proto::carrier::SERVER_NAME;
/// QUIC keep-alive on the control connection; well under typical NAT UDP timeouts (30 s+), so the
/// data socket's mapping towards the coordinator stays put.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// The control connection is declared dead after this long without any packet.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts exactly one certificate: the one whose DER SHA-256 equals `fingerprint`.
#[derive(Debug)]
pub struct PinnedVerifier {
    /// SHA-256 of the expected certificate's DER encoding.
    fingerprint: [u8; 32],
    /// Signature algorithms used to check the handshake signatures.
    algorithms: WebPkiSupportedAlgorithms,
    /// Set when a presented certificate did not match, so the caller can say "wrong coordinator"
    /// instead of a generic handshake failure.
    mismatch: Arc<AtomicBool>,
}

impl PinnedVerifier {
    /// A verifier pinned to `fingerprint`.
    pub fn new(fingerprint: [u8; 32]) -> Self {
        Self {
            fingerprint,
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
            mismatch: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A flag that becomes true once a non-matching certificate was presented.
    pub fn mismatch_flag(&self) -> Arc<AtomicBool> {
        self.mismatch.clone()
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if digest == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            self.mismatch.store(true, Ordering::Relaxed);
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A rustls client configuration pinned to `fingerprint` offering `alpn`, with the verifier's
/// mismatch flag.
fn pinned(
    fingerprint: [u8; 32],
    alpn: &[u8],
) -> anyhow::Result<(rustls::ClientConfig, Arc<AtomicBool>)> {
    let verifier = PinnedVerifier::new(fingerprint);
    let mismatch = verifier.mismatch_flag();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("configuring TLS 1.3")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok((tls, mismatch))
}

/// Builds the QUIC client configuration for a coordinator pinned by `fingerprint`. Returns it
/// with the verifier's mismatch flag.
pub fn client_config(
    fingerprint: [u8; 32],
) -> anyhow::Result<(quinn::ClientConfig, Arc<AtomicBool>)> {
    client_config_with_mtu(fingerprint, None)
}

/// [`client_config`], optionally with a fixed packet size `mtu` in bytes (no path MTU discovery),
/// for the TCP carrier whose tunnel has no MTU of its own.
pub fn client_config_with_mtu(
    fingerprint: [u8; 32],
    mtu: Option<u16>,
) -> anyhow::Result<(quinn::ClientConfig, Arc<AtomicBool>)> {
    let (tls, mismatch) = pinned(fingerprint, ALPN)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .context("building the QUIC TLS configuration")?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).context("idle timeout out of range")?,
    ));
    if let Some(mtu) = mtu {
        transport.initial_mtu(mtu);
        transport.min_mtu(mtu);
        transport.mtu_discovery_config(None);
    }
    config.transport_config(Arc::new(transport));
    Ok((config, mismatch))
}

/// The TLS-over-TCP configuration of the TCP carrier ([`crate::tunnel`]): the same pin, ALPN
/// `warren-tcp/1`.
pub fn tcp_config(
    fingerprint: [u8; 32],
) -> anyhow::Result<(Arc<rustls::ClientConfig>, Arc<AtomicBool>)> {
    let (tls, mismatch) = pinned(fingerprint, crate::tunnel::ALPN_TCP)?;
    Ok((Arc::new(tls), mismatch))
}

#[cfg(test)]
/// SHA-256 of a certificate's DER encoding (what invite tokens carry).
#[cfg(test)]
pub fn fingerprint_of(cert: &[u8]) -> [u8; 32] {
    Sha256::digest(cert).into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testutil::self_signed;

    #[test]
    fn accepts_only_the_pinned_certificate() {
        let (good, _) = self_signed();
        let (other, _) = self_signed();
        let verifier = PinnedVerifier::new(fingerprint_of(&good));
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let now = UnixTime::now();
        assert!(verifier
            .verify_server_cert(&CertificateDer::from(good.clone()), &[], &name, &[], now)
            .is_ok());
        assert!(!verifier.mismatch_flag().load(Ordering::Relaxed));
        let err = verifier
            .verify_server_cert(&CertificateDer::from(other), &[], &name, &[], now)
            .unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)));
        assert!(verifier.mismatch_flag().load(Ordering::Relaxed));
        assert!(!verifier.supported_verify_schemes().is_empty());
    }

    #[test]
    fn client_config_builds() {
        let (cert, _) = self_signed();
        let (_, flag) = client_config(fingerprint_of(&cert)).unwrap();
        assert!(!flag.load(Ordering::Relaxed));
    }
}
