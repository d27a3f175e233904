//! Noise IK handshakes and transport sessions (sans-IO, data-plane layer).
//!
//! Warren uses `Noise_IK_25519_{ChaChaPoly,AESGCM}_SHA256` with prologue `warren-v1`: the
//! initiator knows the responder's static key from the coordinator, so one round trip
//! authenticates both sides. Message 1 carries a 12-byte TAI64N-like timestamp (u64 seconds + u32
//! nanoseconds, big-endian) that the responder requires to grow per peer, which stops replayed
//! initiations (WireGuard's scheme). After the handshake the keys move to snow's
//! [`snow::StatelessTransportState`]: every transport packet carries its counter explicitly, so
//! packets may be reordered and a [`crate::replay::ReplayWindow`] rejects duplicates after authentication.
//!
//! The snow handshake draws its ephemeral keys from a resolver fed by a caller-supplied seed, so
//! the crate reads no OS randomness and tests are deterministic. AEAD and hashing come from ring.

use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};

/// WireGuard `REKEY_AFTER_TIME`: the initiator of a session starts a new handshake once the
/// session is this old.
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// WireGuard `REJECT_AFTER_TIME`: a session this old neither sends nor receives.
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// WireGuard `REKEY_AFTER_MESSAGES`: send counter after which a new handshake is started.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
/// WireGuard `REJECT_AFTER_MESSAGES`: counters at or above this are never used nor accepted.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);
/// WireGuard's persistent keepalive interval as commonly configured (25 s): an idle direct path
/// sends an empty transport packet this often so that NAT mappings stay open.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(25);
/// WireGuard `KEEPALIVE_TIMEOUT` (10 s): after receiving data with nothing sent back for this
/// long, send a keepalive so the sender knows the path still works (passive keepalive).
pub const PASSIVE_KEEPALIVE: Duration = Duration::from_secs(10);
/// WireGuard `REKEY_TIMEOUT`: retry a handshake that got no response after this long.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// Replay window width (WireGuard's 8192); see [`crate::replay`].
pub const REPLAY_WINDOW: u64 = crate::replay::REPLAY_WINDOW;
/// Noise prologue binding handshakes to this protocol version.
pub const PROLOGUE: &[u8] = b"warren-v1";
/// Length of the handshake timestamp.
pub const TIMESTAMP_LEN: usize = 12;

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

impl CipherSuite {
    /// The suite's byte in HandshakeInit.
    pub fn to_wire(self) -> u8 {
        match self {
            CipherSuite::ChaChaPoly => 0,
            CipherSuite::AesGcm => 1,
        }
    }

    /// Parses the suite byte of a HandshakeInit.
    pub fn from_wire(b: u8) -> Option<Self> {
        match b {
            0 => Some(CipherSuite::ChaChaPoly),
            1 => Some(CipherSuite::AesGcm),
            _ => None,
        }
    }

    /// The Noise protocol name of this suite.
    pub fn noise_name(self) -> &'static str {
        match self {
            CipherSuite::ChaChaPoly => "Noise_IK_25519_ChaChaPoly_SHA256",
            CipherSuite::AesGcm => "Noise_IK_25519_AESGCM_SHA256",
        }
    }

    fn params(self) -> NoiseParams {
        self.noise_name()
            .parse()
            .expect("static Noise parameter strings are valid")
    }

    /// The name operators write in flags and config files.
    pub fn name(self) -> &'static str {
        match self {
            CipherSuite::ChaChaPoly => "chacha20-poly1305",
            CipherSuite::AesGcm => "aes-256-gcm",
        }
    }
}

impl std::fmt::Display for CipherSuite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A cipher name that is neither `chacha20-poly1305` nor `aes-256-gcm`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown cipher {0:?} (use chacha20-poly1305 or aes-256-gcm)")]
pub struct UnknownCipher(pub String);

impl std::str::FromStr for CipherSuite {
    type Err = UnknownCipher;

    /// Accepts the operator names, case-insensitively, with or without dashes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "chacha20poly1305" | "chachapoly" => Ok(CipherSuite::ChaChaPoly),
            "aes256gcm" | "aesgcm" => Ok(CipherSuite::AesGcm),
            _ => Err(UnknownCipher(s.to_string())),
        }
    }
}

/// Why a handshake or transport operation failed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NoiseError {
    /// Noise rejected the message (bad MAC, bad key, wrong length).
    #[error("handshake message rejected: {0}")]
    Handshake(snow::Error),
    /// The message 1 payload is not a 12-byte timestamp.
    #[error("handshake payload is not a timestamp")]
    Payload,
    /// The session is older than REJECT_AFTER_TIME.
    #[error("session expired")]
    Expired,
    /// The session used up its counters (REJECT_AFTER_MESSAGES).
    #[error("session counter exhausted")]
    Exhausted,
    /// The output buffer is too small.
    #[error("buffer too small")]
    BufferTooSmall,
    /// The transport packet did not authenticate.
    #[error("transport packet failed authentication")]
    Decrypt,
    /// The counter was already seen or is too old.
    #[error("replayed or too old counter")]
    Replay,
}

/// A handshake timestamp: 8 bytes of seconds and 4 of nanoseconds since the Unix epoch, both
/// big-endian so that byte order is time order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub [u8; TIMESTAMP_LEN]);

impl Timestamp {
    /// The timestamp of `nanos` since the Unix epoch.
    pub fn from_unix_nanos(nanos: u64) -> Self {
        let mut b = [0u8; TIMESTAMP_LEN];
        b[..8].copy_from_slice(&(nanos / 1_000_000_000).to_be_bytes());
        b[8..].copy_from_slice(&((nanos % 1_000_000_000) as u32).to_be_bytes());
        Self(b)
    }

    /// Nanoseconds since the Unix epoch (inverse of [`Self::from_unix_nanos`], saturating).
    pub fn to_unix_nanos(&self) -> u64 {
        let mut secs = [0u8; 8];
        secs.copy_from_slice(&self.0[..8]);
        let mut nanos = [0u8; 4];
        nanos.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(secs)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(u32::from_be_bytes(nanos)))
    }
}

/// A snow RNG that replays a ChaCha20 stream from a caller-supplied seed.
struct SeededRandom(ChaCha20Rng);

impl Random for SeededRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// ring for AEAD and hashing, snow's default for X25519, and a seeded RNG for ephemeral keys.
struct SeededResolver {
    /// Seed of the RNG handed to the handshake.
    seed: [u8; 32],
    /// ring with the default resolver as fallback (X25519 is not in ring's resolver).
    inner: FallbackResolver,
}

impl SeededResolver {
    fn new(seed: [u8; 32]) -> Self {
        Self {
            seed,
            inner: FallbackResolver::new(Box::new(RingResolver), Box::new(DefaultResolver)),
        }
    }
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeededRandom(ChaCha20Rng::from_seed(self.seed))))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        self.inner.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        self.inner.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        self.inner.resolve_cipher(choice)
    }
}

fn builder(suite: CipherSuite, seed: [u8; 32]) -> snow::Builder<'static> {
    snow::Builder::with_resolver(suite.params(), Box::new(SeededResolver::new(seed)))
}

mod handshake;
mod session;
#[cfg(test)]
mod tests;

pub use handshake::{InitiatorHandshake, ResponderHandshake};
pub use session::Session;
