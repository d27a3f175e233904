//! Proof that a node holds the private key of the static public key it registers with.
//!
//! X25519 keys cannot sign, so the proof is a MAC under a Diffie-Hellman secret: the coordinator
//! sends a fresh ephemeral public key `E` and a nonce for each connection; the node answers
//! `HMAC-SHA256(DH(node_static, E), "warren-proof-v1" || nonce || binding)`. Only the holder of
//! the node's private key (or of `E`'s private key, which the coordinator keeps) can compute it.
//! `binding` is keying material exported from the QUIC/TLS connection, so a proof cannot be
//! replayed on another connection.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::{PrivateKey, PublicKey};

/// Domain-separation label.
const LABEL: &[u8] = b"warren-proof-v1";

/// Label for the TLS keying-material exporter the shells use to derive `binding`.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-warren-proof-v1";

fn mac(shared: &[u8; 32], nonce: &[u8; 32], binding: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(shared).expect("HMAC takes any key length");
    m.update(LABEL);
    m.update(nonce);
    m.update(binding);
    m.finalize().into_bytes().into()
}

/// Node side: computes the proof for a challenge.
pub fn prove(
    node: &PrivateKey,
    server_ephemeral: &PublicKey,
    nonce: &[u8; 32],
    binding: &[u8],
) -> [u8; 32] {
    mac(&node.diffie_hellman(server_ephemeral), nonce, binding)
}

/// Coordinator side: checks a proof in constant time.
pub fn verify(
    server_ephemeral: &PrivateKey,
    node: &PublicKey,
    nonce: &[u8; 32],
    binding: &[u8],
    proof: &[u8; 32],
) -> bool {
    let shared = server_ephemeral.diffie_hellman(node);
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&shared).expect("HMAC takes any key length");
    m.update(LABEL);
    m.update(nonce);
    m.update(binding);
    m.verify_slice(proof).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_verifies_only_for_the_key_holder_and_binding() {
        let node = PrivateKey::from_random([1; 32]);
        let other = PrivateKey::from_random([2; 32]);
        let eph = PrivateKey::from_random([3; 32]);
        let nonce = [4; 32];
        let p = prove(&node, &eph.public_key(), &nonce, b"conn-a");
        assert!(verify(&eph, &node.public_key(), &nonce, b"conn-a", &p));
        assert!(!verify(&eph, &other.public_key(), &nonce, b"conn-a", &p));
        assert!(!verify(&eph, &node.public_key(), &nonce, b"conn-b", &p));
        assert!(!verify(&eph, &node.public_key(), &[5; 32], b"conn-a", &p));
        let forged = prove(&other, &eph.public_key(), &nonce, b"conn-a");
        assert!(!verify(
            &eph,
            &node.public_key(),
            &nonce,
            b"conn-a",
            &forged
        ));
    }
}
