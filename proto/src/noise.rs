//! Noise IK handshakes and transport sessions (sans-IO, data-plane layer).
//!
//! Warren uses `Noise_IK_25519_{ChaChaPoly,AESGCM}_SHA256` with prologue `warren-v1`: the
//! initiator knows the responder's static key from the coordinator, so one round trip
//! authenticates both sides. Message 1 carries a 12-byte TAI64N-like timestamp (u64 seconds + u32
//! nanoseconds, big-endian) that the responder requires to grow per peer, which stops replayed
//! initiations (WireGuard's scheme). After the handshake the keys move to snow's
//! [`snow::StatelessTransportState`]: every transport packet carries its counter explicitly, so
//! packets may be reordered and a [`ReplayWindow`] rejects duplicates after authentication.
//!
//! The snow handshake draws its ephemeral keys from a resolver fed by a caller-supplied seed, so
//! the crate reads no OS randomness and tests are deterministic. AEAD and hashing come from ring.

use std::time::{Duration, Instant};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use snow::params::{CipherChoice, DHChoice, HashChoice, NoiseParams};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{HandshakeState, StatelessTransportState};

use crate::ids::{PrivateKey, PublicKey, SessionIndex};
use crate::packet::{
    self, HandshakeInit, HandshakeResp, AEAD_TAG_LEN, INIT_NOISE_LEN, RESP_NOISE_LEN,
    TRANSPORT_HEADER_LEN,
};
use crate::replay::ReplayWindow;

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

    fn params(self) -> NoiseParams {
        let cipher = match self {
            CipherSuite::ChaChaPoly => CipherChoice::ChaChaPoly,
            CipherSuite::AesGcm => CipherChoice::AESGCM,
        };
        let name = match self {
            CipherSuite::ChaChaPoly => "Noise_IK_25519_ChaChaPoly_SHA256",
            CipherSuite::AesGcm => "Noise_IK_25519_AESGCM_SHA256",
        };
        let mut p: NoiseParams = name
            .parse()
            .expect("static Noise parameter string is valid");
        debug_assert!(p.cipher == cipher && p.hash == HashChoice::SHA256);
        debug_assert!(p.dh == DHChoice::Curve25519);
        p.cipher = cipher;
        p
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

/// An initiation we sent and whose response we await.
pub struct InitiatorHandshake {
    /// snow's handshake state after writing message 1.
    state: HandshakeState,
    /// Our index for the session this handshake will create.
    local_index: SessionIndex,
}

impl std::fmt::Debug for InitiatorHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitiatorHandshake")
            .field("local_index", &self.local_index)
            .finish_non_exhaustive()
    }
}

impl InitiatorHandshake {
    /// Starts a handshake towards `remote`; returns the state and the HandshakeInit datagram.
    pub fn start(
        suite: CipherSuite,
        local: &PrivateKey,
        remote: &PublicKey,
        local_index: SessionIndex,
        timestamp: Timestamp,
        seed: [u8; 32],
    ) -> Result<(Self, Vec<u8>), NoiseError> {
        let mut state = builder(suite, seed)
            .local_private_key(&local.0)
            .and_then(|b| b.remote_public_key(&remote.0))
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_initiator())
            .map_err(NoiseError::Handshake)?;
        let mut msg = [0u8; INIT_NOISE_LEN];
        let n = state
            .write_message(&timestamp.0, &mut msg)
            .map_err(NoiseError::Handshake)?;
        debug_assert_eq!(n, INIT_NOISE_LEN);
        let datagram = packet::encode_handshake_init(suite, local_index, &msg[..n]);
        Ok((Self { state, local_index }, datagram))
    }

    /// Our index of the pending session.
    pub fn local_index(&self) -> SessionIndex {
        self.local_index
    }

    /// Completes the handshake with the peer's response.
    pub fn finish(mut self, resp: &HandshakeResp<'_>, now: Instant) -> Result<Session, NoiseError> {
        let mut payload = [0u8; RESP_NOISE_LEN];
        self.state
            .read_message(resp.noise, &mut payload)
            .map_err(NoiseError::Handshake)?;
        let transport = self
            .state
            .into_stateless_transport_mode()
            .map_err(NoiseError::Handshake)?;
        Ok(Session::new(
            self.local_index,
            resp.sender_index,
            true,
            transport,
            now,
        ))
    }
}

/// A received initiation that authenticated, awaiting the engine's decision.
pub struct ResponderHandshake {
    /// snow's handshake state after reading message 1.
    state: HandshakeState,
    /// The initiator's static key (authenticated by message 1).
    remote_static: PublicKey,
    /// The initiator's timestamp.
    timestamp: Timestamp,
    /// The initiator's session index.
    remote_index: SessionIndex,
}

impl std::fmt::Debug for ResponderHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponderHandshake")
            .field("remote_static", &self.remote_static)
            .finish_non_exhaustive()
    }
}

impl ResponderHandshake {
    /// Reads a HandshakeInit. The result is authenticated but not yet accepted: check
    /// [`Self::remote_static`] and [`Self::timestamp`] before calling [`Self::respond`].
    pub fn read_init(
        local: &PrivateKey,
        init: &HandshakeInit<'_>,
        seed: [u8; 32],
    ) -> Result<Self, NoiseError> {
        let mut state = builder(init.suite, seed)
            .local_private_key(&local.0)
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_responder())
            .map_err(NoiseError::Handshake)?;
        let mut payload = [0u8; INIT_NOISE_LEN];
        let n = state
            .read_message(init.noise, &mut payload)
            .map_err(NoiseError::Handshake)?;
        let timestamp: [u8; TIMESTAMP_LEN] =
            payload[..n].try_into().map_err(|_| NoiseError::Payload)?;
        let remote: [u8; 32] = state
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or(NoiseError::Payload)?;
        Ok(Self {
            state,
            remote_static: PublicKey(remote),
            timestamp: Timestamp(timestamp),
            remote_index: init.sender_index,
        })
    }

    /// The initiator's authenticated static key.
    pub fn remote_static(&self) -> PublicKey {
        self.remote_static
    }

    /// The initiator's timestamp.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// Accepts the initiation: returns the new session and the HandshakeResp datagram.
    pub fn respond(
        mut self,
        local_index: SessionIndex,
        now: Instant,
    ) -> Result<(Session, Vec<u8>), NoiseError> {
        let mut msg = [0u8; RESP_NOISE_LEN];
        let n = self
            .state
            .write_message(&[], &mut msg)
            .map_err(NoiseError::Handshake)?;
        let transport = self
            .state
            .into_stateless_transport_mode()
            .map_err(NoiseError::Handshake)?;
        let datagram = packet::encode_handshake_resp(local_index, self.remote_index, &msg[..n]);
        let session = Session::new(local_index, self.remote_index, false, transport, now);
        Ok((session, datagram))
    }
}

/// An established Noise transport session.
pub struct Session {
    /// Index the peer puts on packets for us.
    pub local_index: SessionIndex,
    /// Index we put on packets for the peer.
    pub remote_index: SessionIndex,
    /// When the handshake completed (age limits count from here).
    pub created_at: Instant,
    /// Whether we initiated (the initiator is the one who rekeys on time).
    pub is_initiator: bool,
    /// Next counter to send.
    send_counter: u64,
    /// The split keys.
    transport: StatelessTransportState,
    /// Counters already received.
    replay: ReplayWindow,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("local_index", &self.local_index)
            .field("remote_index", &self.remote_index)
            .field("is_initiator", &self.is_initiator)
            .field("send_counter", &self.send_counter)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn new(
        local_index: SessionIndex,
        remote_index: SessionIndex,
        is_initiator: bool,
        transport: StatelessTransportState,
        now: Instant,
    ) -> Self {
        Self {
            local_index,
            remote_index,
            created_at: now,
            is_initiator,
            send_counter: 0,
            transport,
            replay: ReplayWindow::new(),
        }
    }

    /// Whether the session is too old to use at all (REJECT_AFTER_TIME).
    pub fn is_expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created_at) >= REJECT_AFTER_TIME
    }

    /// Whether a new handshake should replace this session (by age or message count).
    pub fn wants_rekey(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.created_at) >= REKEY_AFTER_TIME
            || self.send_counter >= REKEY_AFTER_MESSAGES
    }

    /// Packets sealed so far.
    pub fn sent_count(&self) -> u64 {
        self.send_counter
    }

    /// Encrypts `plaintext` into a complete Transport datagram in `out`; returns its length.
    /// `out` must hold `plaintext.len() + TRANSPORT_OVERHEAD` bytes.
    pub fn seal(
        &mut self,
        plaintext: &[u8],
        out: &mut [u8],
        now: Instant,
    ) -> Result<usize, NoiseError> {
        if self.is_expired(now) {
            return Err(NoiseError::Expired);
        }
        if self.send_counter >= REJECT_AFTER_MESSAGES {
            return Err(NoiseError::Exhausted);
        }
        let need = TRANSPORT_HEADER_LEN + plaintext.len() + AEAD_TAG_LEN;
        if out.len() < need {
            return Err(NoiseError::BufferTooSmall);
        }
        let counter = self.send_counter;
        let n = self
            .transport
            .write_message(counter, plaintext, &mut out[TRANSPORT_HEADER_LEN..need])
            .map_err(|_| NoiseError::BufferTooSmall)?;
        packet::write_transport_header(out, self.remote_index, counter);
        self.send_counter += 1;
        Ok(TRANSPORT_HEADER_LEN + n)
    }

    /// Decrypts a transport payload into `out`, then checks and updates the replay window.
    /// Returns the plaintext length (0 for a keepalive). `out` must hold the plaintext; if it
    /// also has room for the 16-byte tag, decryption happens in place without allocating.
    pub fn open(
        &mut self,
        counter: u64,
        ciphertext: &[u8],
        out: &mut [u8],
        now: Instant,
    ) -> Result<usize, NoiseError> {
        if self.is_expired(now) {
            return Err(NoiseError::Expired);
        }
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(NoiseError::Exhausted);
        }
        // Cheap pre-check; the authoritative update happens after authentication.
        if !self.replay.would_accept(counter) {
            return Err(NoiseError::Replay);
        }
        let plain_len = ciphertext.len().saturating_sub(AEAD_TAG_LEN);
        if out.len() < plain_len {
            return Err(NoiseError::BufferTooSmall);
        }
        // ring decrypts in place: given room for the whole ciphertext it needs no temporary
        // buffer, so hand it up to `ciphertext.len()` bytes.
        let room = out.len().min(ciphertext.len());
        let n = self
            .transport
            .read_message(counter, ciphertext, &mut out[..room])
            .map_err(|_| NoiseError::Decrypt)?;
        if !self.replay.check_and_update(counter) {
            return Err(NoiseError::Replay);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::packet::{Packet, TRANSPORT_OVERHEAD};

    fn handshake(suite: CipherSuite) -> (Session, Session, Instant) {
        let a = PrivateKey::from_random([1; 32]);
        let b = PrivateKey::from_random([2; 32]);
        let ts = Timestamp::from_unix_nanos(1_700_000_000_123_456_789);
        let (init, m1) =
            InitiatorHandshake::start(suite, &a, &b.public_key(), SessionIndex(10), ts, [7; 32])
                .unwrap();
        let Packet::HandshakeInit(p1) = Packet::parse(&m1).unwrap() else {
            panic!("not an init")
        };
        let resp = ResponderHandshake::read_init(&b, &p1, [8; 32]).unwrap();
        assert_eq!(resp.remote_static(), a.public_key());
        assert_eq!(resp.timestamp(), ts);
        let now = Instant::now();
        let (sb, m2) = resp.respond(SessionIndex(20), now).unwrap();
        let Packet::HandshakeResp(p2) = Packet::parse(&m2).unwrap() else {
            panic!("not a resp")
        };
        let sa = init.finish(&p2, now).unwrap();
        assert_eq!(
            (sa.remote_index, sb.remote_index),
            (SessionIndex(20), SessionIndex(10))
        );
        (sa, sb, now)
    }

    fn transfer(from: &mut Session, to: &mut Session, msg: &[u8], now: Instant) -> Vec<u8> {
        let mut wire = vec![0u8; msg.len() + TRANSPORT_OVERHEAD];
        let n = from.seal(msg, &mut wire, now).unwrap();
        assert_eq!(n, wire.len());
        let Packet::Transport(t) = Packet::parse(&wire).unwrap() else {
            panic!("not transport")
        };
        let mut out = vec![0u8; 2000];
        let m = to.open(t.counter, t.ciphertext, &mut out, now).unwrap();
        out.truncate(m);
        out
    }

    #[test]
    fn both_suites_carry_data_both_ways() {
        for suite in [CipherSuite::ChaChaPoly, CipherSuite::AesGcm] {
            let (mut a, mut b, now) = handshake(suite);
            assert_eq!(transfer(&mut a, &mut b, b"ping", now), b"ping");
            assert_eq!(transfer(&mut b, &mut a, b"pong", now), b"pong");
            assert_eq!(transfer(&mut a, &mut b, b"", now), b"");
        }
    }

    #[test]
    fn replay_and_tamper_rejected() {
        let (mut a, mut b, now) = handshake(CipherSuite::ChaChaPoly);
        let mut wire = [0u8; 4 + TRANSPORT_OVERHEAD];
        a.seal(b"data", &mut wire, now).unwrap();
        let mut out = [0u8; 64];
        assert_eq!(b.open(0, &wire[16..], &mut out, now), Ok(4));
        assert_eq!(
            b.open(0, &wire[16..], &mut out, now),
            Err(NoiseError::Replay)
        );
        let mut bad = wire;
        bad[20] ^= 1;
        a.seal(b"data", &mut bad, now).unwrap();
        bad[20] ^= 1;
        assert_eq!(
            b.open(1, &bad[16..], &mut out, now),
            Err(NoiseError::Decrypt)
        );
        // A failed decryption must not have consumed counter 1.
        a.send_counter = 1;
        a.seal(b"data", &mut wire, now).unwrap();
        assert_eq!(b.open(1, &wire[16..], &mut out, now), Ok(4));
    }

    #[test]
    fn expiry() {
        let (mut a, mut b, now) = handshake(CipherSuite::ChaChaPoly);
        let later = now + REJECT_AFTER_TIME;
        assert!(a.wants_rekey(now + REKEY_AFTER_TIME));
        let mut wire = [0u8; TRANSPORT_OVERHEAD];
        assert_eq!(a.seal(b"", &mut wire, later), Err(NoiseError::Expired));
        a.seal(b"", &mut wire, now).unwrap();
        let mut out = [0u8; 8];
        assert_eq!(
            b.open(0, &wire[16..], &mut out, later),
            Err(NoiseError::Expired)
        );
    }

    #[test]
    fn wrong_responder_key_fails() {
        let a = PrivateKey::from_random([1; 32]);
        let b = PrivateKey::from_random([2; 32]);
        let c = PrivateKey::from_random([3; 32]);
        let (_, m1) = InitiatorHandshake::start(
            CipherSuite::ChaChaPoly,
            &a,
            &b.public_key(),
            SessionIndex(1),
            Timestamp::from_unix_nanos(1),
            [0; 32],
        )
        .unwrap();
        let Packet::HandshakeInit(p1) = Packet::parse(&m1).unwrap() else {
            panic!("not an init")
        };
        assert!(ResponderHandshake::read_init(&c, &p1, [0; 32]).is_err());
    }

    #[test]
    fn timestamps_order() {
        let t1 = Timestamp::from_unix_nanos(1_999_999_999);
        let t2 = Timestamp::from_unix_nanos(2_000_000_000);
        assert!(t1 < t2);
    }
}
