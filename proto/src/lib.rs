//! warren-proto: the pure core of Warren.
//!
//! Wire formats, identifiers, invite tokens, control messages and the sans-IO protocol state
//! machines (Noise sessions, replay window, punching and path choice). Nothing in this crate
//! touches a socket, reads a clock or asks the OS for randomness: time comes in as a `now:
//! Instant` parameter and randomness as caller-supplied seeds, so every state machine can be
//! driven deterministically by tests and by the IO shells in `warren-node` and
//! `warren-coordinator`.

pub mod carrier;
pub mod codel;
pub mod control;
pub mod engine;
pub mod ids;
pub mod noise;
pub mod packet;
pub mod probe;
pub mod proof;
pub mod relay;
pub mod replay;
pub mod token;

pub use ids::{MeshIp, MeshNetwork, NodeId, PublicKey, SessionIndex};
pub use token::InviteToken;
