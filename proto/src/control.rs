//! Control messages between a node and the coordinator, and their framing.
//!
//! They travel on one bidirectional QUIC stream that the node opens right after connecting. Each
//! frame is a 4-byte big-endian length followed by that many bytes of JSON (one message). The node
//! speaks first with [`NodeMessage::Hello`], which carries [`CONTROL_VERSION`]; a coordinator that
//! does not speak that version answers [`CoordMessage::Error`] with
//! [`ErrorCode::VersionUnsupported`] and closes. Unknown fields are rejected so that a mismatch is
//! loud rather than silently ignored.
//!
//! Session flow:
//! ```text
//! node                                   coordinator
//! Hello{version, public_key}        ->
//!                                   <-   Challenge{server_ephemeral, nonce}
//! Join{invite, name, proof}         ->   (or Login{proof} for a registered key)
//!                                   <-   Welcome{node, network, reflexive, peers}
//! Candidates{local}                 ->
//!                                   <-   PeerUpsert / PeerRemoved / Reflexive (any time)
//! PunchRequest{peer}                ->
//!                                   <-   Punch{peer, candidates}   (sent to both nodes at once)
//! ```

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::ids::{MeshIp, MeshNetwork, NodeId, PublicKey};
use crate::noise::CipherSuite;

/// Version of the control protocol spoken by this build.
pub const CONTROL_VERSION: u16 = 1;

/// Largest frame either side accepts, in bytes (a full peer list of a few thousand nodes fits).
pub const MAX_FRAME: usize = 4 * 1024 * 1024;

/// A 32-byte value carried as hex in JSON (nonces, proofs).
pub type Bytes32 = [u8; 32];

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// What a node sends to the coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeMessage {
    /// First message: protocol version and the node's static public key.
    Hello {
        /// Must equal [`CONTROL_VERSION`].
        version: u16,
        /// The node's static X25519 public key.
        public_key: PublicKey,
    },
    /// Redeem an invite and register (first contact, `warren join`).
    Join {
        /// The invite secret from the token, hex.
        #[serde(with = "hex32")]
        invite_secret: Bytes32,
        /// Requested node name; the coordinator may add a suffix if it is taken.
        name: String,
        /// Proof of possession of the private key, see [`crate::proof`].
        #[serde(with = "hex32")]
        proof: Bytes32,
    },
    /// Log in with an already registered key (`warren up`).
    Login {
        /// Proof of possession of the private key, see [`crate::proof`].
        #[serde(with = "hex32")]
        proof: Bytes32,
    },
    /// The node's local (LAN) candidate addresses for its data socket.
    Candidates {
        /// Interface addresses with the data socket's port.
        local: Vec<SocketAddr>,
    },
    /// Ask the coordinator to make `peer` and this node punch towards each other now.
    PunchRequest {
        /// The peer to reach.
        peer: NodeId,
    },
    /// How this node reaches each peer now (sent when a path changes), so an operator sees
    /// centrally which pairs are relayed and why.
    PathReport {
        /// One entry per peer the node has a path state for.
        paths: Vec<PathInfo>,
    },
}

/// How a node reaches one peer, as reported in [`NodeMessage::PathReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathInfo {
    /// The peer.
    pub peer: NodeId,
    /// Current path.
    pub path: PathState,
    /// Why the peer is relayed (or not yet connected), for humans; `None` when direct.
    pub reason: Option<String>,
    /// Remote address of the direct path, if any.
    pub endpoint: Option<SocketAddr>,
}

/// Path kinds as carried in control messages and shown by the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathState {
    /// A confirmed direct UDP path.
    Direct,
    /// Through the coordinator's relay.
    Relay,
    /// No path yet.
    Connecting,
}

/// What the coordinator sends to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum CoordMessage {
    /// Answer to `Hello`: the material the node proves key possession against.
    Challenge {
        /// Coordinator's ephemeral X25519 public key for this connection.
        server_ephemeral: PublicKey,
        /// Fresh random nonce.
        #[serde(with = "hex32")]
        nonce: Bytes32,
    },
    /// Registration or login succeeded.
    Welcome {
        /// This node's record as the mesh sees it.
        node: PeerRecord,
        /// The mesh network (for the TUN route).
        network: MeshNetwork,
        /// Where the coordinator sees this node's data socket (its reflexive candidate).
        reflexive: SocketAddr,
        /// Every other node of the mesh.
        peers: Vec<PeerRecord>,
        /// The mesh-wide cipher for the sessions this node starts (absent from coordinators
        /// older than the field: ChaCha20-Poly1305).
        #[serde(default)]
        cipher: CipherSuite,
    },
    /// The node's reflexive address changed.
    Reflexive {
        /// New reflexive address.
        addr: SocketAddr,
    },
    /// A peer joined, came online, went offline or changed its candidates.
    PeerUpsert {
        /// The peer's current record.
        peer: PeerRecord,
    },
    /// A peer was removed from the mesh; drop its sessions.
    PeerRemoved {
        /// The removed node.
        node_id: NodeId,
    },
    /// Punch towards `peer` now; the peer has been told the same at the same moment.
    Punch {
        /// The peer to punch towards.
        peer: NodeId,
        /// The peer's current candidates (reflexive first, then local).
        candidates: Vec<SocketAddr>,
    },
    /// A request failed; `code` is stable, `message` is for humans.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
}

/// One node of the mesh as other nodes see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRecord {
    /// Coordinator-assigned id.
    pub node_id: NodeId,
    /// Unique name within the mesh.
    pub name: String,
    /// Static public key (the Noise identity).
    pub public_key: PublicKey,
    /// Mesh address.
    pub mesh_ip: MeshIp,
    /// Whether the node is connected to the coordinator now.
    pub online: bool,
    /// Candidate addresses of its data socket: reflexive first, then local.
    pub candidates: Vec<SocketAddr>,
}

/// Stable reasons for [`CoordMessage::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The node speaks a control version the coordinator does not.
    VersionUnsupported,
    /// The invite secret is not known to this coordinator.
    InviteUnknown,
    /// The invite has expired.
    InviteExpired,
    /// The invite has no uses left.
    InviteUsedUp,
    /// The invite was revoked.
    InviteRevoked,
    /// The key-possession proof did not verify.
    BadProof,
    /// `Login` from a key that is not registered (or was removed).
    NotRegistered,
    /// `Join` from a key that is already registered.
    AlreadyRegistered,
    /// The mesh network has no free address.
    NetworkFull,
    /// A message arrived out of order or was malformed.
    Protocol,
    /// The coordinator failed internally.
    Internal,
}

/// Errors while framing or parsing control messages.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The declared frame length exceeds [`MAX_FRAME`].
    #[error("control frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The frame is not a valid message.
    #[error("malformed control message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes one message as a length-prefixed frame.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these plain enums to JSON cannot fail (no maps with non-string keys).
    let body = serde_json::to_vec(msg).expect("control messages always serialize");
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads the length from a 4-byte frame header, refusing oversized frames.
pub fn frame_len(header: [u8; 4]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(CodecError::TooLarge(len));
    }
    Ok(len)
}

/// Parses a frame body (without the length header).
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, CodecError> {
    Ok(serde_json::from_slice(body)?)
}

/// Tries to take one whole frame off the front of `buf`: `Ok(None)` if more bytes are needed,
/// otherwise the message and the number of bytes consumed.
pub fn decode_frame<'a, T: Deserialize<'a>>(
    buf: &'a [u8],
) -> Result<Option<(T, usize)>, CodecError> {
    let Some(header) = buf.get(..4) else {
        return Ok(None);
    };
    let len = frame_len(header.try_into().expect("slice of 4"))?;
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    Ok(Some((decode(body)?, 4 + len)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::Ipv4Addr;

    fn record() -> PeerRecord {
        PeerRecord {
            node_id: NodeId(3),
            name: "laptop".into(),
            public_key: PublicKey([5; 32]),
            mesh_ip: MeshIp(Ipv4Addr::new(100, 80, 0, 3)),
            online: true,
            candidates: vec!["198.51.100.2:4000".parse().unwrap()],
        }
    }

    #[test]
    fn round_trip_all_messages() {
        let node_msgs = vec![
            NodeMessage::Hello {
                version: CONTROL_VERSION,
                public_key: PublicKey([1; 32]),
            },
            NodeMessage::Join {
                invite_secret: [2; 32],
                name: "a".into(),
                proof: [3; 32],
            },
            NodeMessage::Login { proof: [4; 32] },
            NodeMessage::Candidates {
                local: vec!["10.0.0.2:5".parse().unwrap()],
            },
            NodeMessage::PunchRequest { peer: NodeId(9) },
            NodeMessage::PathReport {
                paths: vec![PathInfo {
                    peer: NodeId(2),
                    path: PathState::Relay,
                    reason: Some("punch timed out".into()),
                    endpoint: None,
                }],
            },
        ];
        for m in node_msgs {
            let frame = encode(&m);
            let (back, used) = decode_frame::<NodeMessage>(&frame).unwrap().unwrap();
            assert_eq!(back, m);
            assert_eq!(used, frame.len());
        }
        let coord_msgs = vec![
            CoordMessage::Challenge {
                server_ephemeral: PublicKey([1; 32]),
                nonce: [8; 32],
            },
            CoordMessage::Welcome {
                node: record(),
                network: MeshNetwork::default(),
                reflexive: "198.51.100.2:4000".parse().unwrap(),
                peers: vec![record()],
                cipher: CipherSuite::AesGcm,
            },
            CoordMessage::Reflexive {
                addr: "198.51.100.2:4001".parse().unwrap(),
            },
            CoordMessage::PeerUpsert { peer: record() },
            CoordMessage::PeerRemoved { node_id: NodeId(1) },
            CoordMessage::Punch {
                peer: NodeId(3),
                candidates: vec![],
            },
            CoordMessage::Error {
                code: ErrorCode::InviteUsedUp,
                message: "used".into(),
            },
        ];
        for m in coord_msgs {
            let frame = encode(&m);
            let (back, _) = decode_frame::<CoordMessage>(&frame).unwrap().unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn partial_oversized_and_garbage_frames() {
        let frame = encode(&NodeMessage::PunchRequest { peer: NodeId(1) });
        for cut in 0..frame.len() {
            assert!(decode_frame::<NodeMessage>(&frame[..cut])
                .unwrap()
                .is_none());
        }
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(
            decode_frame::<NodeMessage>(&huge),
            Err(CodecError::TooLarge(_))
        ));
        let mut garbage = 5u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(b"\xff{]x!");
        assert!(matches!(
            decode_frame::<NodeMessage>(&garbage),
            Err(CodecError::Json(_))
        ));
        let unknown = br#"{"type":"punch_request","peer":1,"extra":2}"#;
        assert!(decode::<NodeMessage>(unknown).is_err());
    }
}
