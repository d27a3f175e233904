//! An established transport session: explicit-counter AEAD and replay window (sans-IO,
//! data-plane layer).

use std::time::Instant;

use snow::StatelessTransportState;

use super::{
    CipherSuite, NoiseError, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
};
use crate::ids::SessionIndex;
use crate::packet::{self, AEAD_TAG_LEN, TRANSPORT_HEADER_LEN};
use crate::replay::ReplayWindow;

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
    /// The AEAD the session runs on.
    pub suite: CipherSuite,
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
            .field("suite", &self.suite)
            .field("send_counter", &self.send_counter)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(super) fn new(
        local_index: SessionIndex,
        remote_index: SessionIndex,
        is_initiator: bool,
        suite: CipherSuite,
        transport: StatelessTransportState,
        now: Instant,
    ) -> Self {
        Self {
            local_index,
            remote_index,
            created_at: now,
            is_initiator,
            suite,
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
