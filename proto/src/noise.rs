//! Noise IK sessions (STUB, in progress).

/// Which AEAD the mesh uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CipherSuite {
    /// ChaCha20-Poly1305 (default).
    #[default]
    ChaChaPoly,
    /// AES-256-GCM.
    AesGcm,
}
