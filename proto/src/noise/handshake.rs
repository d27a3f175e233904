//! The two sides of a Noise IK handshake (sans-IO, data-plane layer).

use std::time::Instant;

use snow::HandshakeState;

use super::{builder, CipherSuite, NoiseError, Session, Timestamp, PROLOGUE, TIMESTAMP_LEN};
use crate::ids::{PrivateKey, PublicKey, SessionIndex};
use crate::packet::{self, HandshakeInit, HandshakeResp, INIT_NOISE_LEN, RESP_NOISE_LEN};

/// An initiation we sent and whose response we await.
pub struct InitiatorHandshake {
    /// snow's handshake state after writing message 1.
    state: HandshakeState,
    /// Our index for the session this handshake will create.
    local_index: SessionIndex,
    /// The cipher we proposed (and the session will use).
    suite: CipherSuite,
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
        Ok((
            Self {
                state,
                local_index,
                suite,
            },
            datagram,
        ))
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
            self.suite,
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
    /// The initiator's cipher (the responder always answers in it).
    suite: CipherSuite,
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
            suite: init.suite,
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
        let session = Session::new(
            local_index,
            self.remote_index,
            false,
            self.suite,
            transport,
            now,
        );
        Ok((session, datagram))
    }
}
