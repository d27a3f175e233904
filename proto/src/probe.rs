//! Authentication of path probes (sans-IO, data-plane layer).
//!
//! Probes and their acks must be cheap (they are sent many times while punching) yet impossible
//! to forge, or an attacker could steer a peer's traffic to an address of its choice. Both sides
//! derive the same pairwise key from their static keys, which the coordinator distributed:
//! `K_ab = SHA-256("warren-probe-v1" || X25519(static_self, static_peer))`, and append
//! `HMAC-SHA256(K_ab, packet)[..16]` to every probe and ack.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::ids::{PrivateKey, PublicKey};
use crate::packet::PROBE_MAC_LEN;

/// Domain-separation label of the probe key derivation.
const PROBE_KEY_LABEL: &[u8] = b"warren-probe-v1";

/// The pairwise probe key of two nodes (identical on both sides).
#[derive(Clone)]
pub struct ProbeKey([u8; 32]);

impl std::fmt::Debug for ProbeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeKey(..)")
    }
}

impl ProbeKey {
    /// Derives the key shared with `peer`.
    pub fn derive(local: &PrivateKey, peer: &PublicKey) -> Self {
        let dh = local.diffie_hellman(peer);
        let mut h = Sha256::new();
        h.update(PROBE_KEY_LABEL);
        h.update(dh);
        Self(h.finalize().into())
    }

    fn hmac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }

    /// The truncated MAC of `data`.
    pub fn mac(&self, data: &[u8]) -> [u8; PROBE_MAC_LEN] {
        let mut m = self.hmac();
        m.update(data);
        let full = m.finalize().into_bytes();
        let mut out = [0u8; PROBE_MAC_LEN];
        out.copy_from_slice(&full[..PROBE_MAC_LEN]);
        out
    }

    /// Appends the MAC of `body` to it, completing a probe or ack.
    pub fn seal(&self, mut body: Vec<u8>) -> Vec<u8> {
        let mac = self.mac(&body);
        body.extend_from_slice(&mac);
        body
    }

    /// Constant-time check of a truncated MAC.
    pub fn verify(&self, data: &[u8], mac: &[u8]) -> bool {
        let mut m = self.hmac();
        m.update(data);
        mac.len() == PROBE_MAC_LEN && m.verify_truncated_left(mac).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_and_verifies() {
        let a = PrivateKey::from_random([1; 32]);
        let b = PrivateKey::from_random([2; 32]);
        let c = PrivateKey::from_random([3; 32]);
        let kab = ProbeKey::derive(&a, &b.public_key());
        let kba = ProbeKey::derive(&b, &a.public_key());
        let kac = ProbeKey::derive(&a, &c.public_key());
        let mac = kab.mac(b"hello");
        assert!(kba.verify(b"hello", &mac));
        assert!(!kba.verify(b"hellO", &mac));
        assert!(!kac.verify(b"hello", &mac));
        assert!(!kba.verify(b"hello", &mac[..8]));
    }
}
