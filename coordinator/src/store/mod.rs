//! Durable state of the coordinator: nodes, invites and settings.
//!
//! Behind the [`Store`] trait so that a shared PostgreSQL backend can later let several
//! coordinators serve one mesh; [`sqlite::SqliteStore`] is the embedded default. Store calls are
//! blocking: async code runs them through `tokio::task::spawn_blocking`. Times are Unix seconds
//! passed in by the caller, so tests control them.

pub mod sqlite;

use warren_proto::ids::{MeshIp, MeshNetwork, NodeId, PublicKey};

/// A registered node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRow {
    /// Id, never reused.
    pub id: NodeId,
    /// Unique name in the mesh.
    pub name: String,
    /// Static public key (unique).
    pub public_key: PublicKey,
    /// Mesh address (unique).
    pub mesh_ip: MeshIp,
    /// Registration time, Unix seconds.
    pub created_at: i64,
    /// Last time the node was connected, Unix seconds.
    pub last_seen: i64,
}

/// An invite as listed (the secret itself is never stored, only its SHA-256).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InviteRow {
    /// Row id.
    pub id: i64,
    /// Remaining redemptions.
    pub uses_left: u32,
    /// Expiry, Unix seconds, if any.
    pub expires_at: Option<i64>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Whether an operator revoked it.
    pub revoked: bool,
}

/// What a node asks for when it redeems an invite.
#[derive(Clone, Debug)]
pub struct Registration {
    /// SHA-256 of the invite secret presented.
    pub secret_hash: [u8; 32],
    /// Requested name (made unique by adding `-2`, `-3`, ...).
    pub name: String,
    /// The node's static key.
    pub public_key: PublicKey,
    /// The mesh network to allocate from.
    pub network: MeshNetwork,
    /// Current time, Unix seconds.
    pub now: i64,
}

/// Why a registration was refused (each maps to a control-protocol error code).
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// No invite has this secret.
    #[error("this invite is not known to this coordinator")]
    InviteUnknown,
    /// The invite's expiry has passed.
    #[error("this invite has expired")]
    InviteExpired,
    /// The invite has no uses left.
    #[error("this invite has already been used")]
    InviteUsedUp,
    /// The invite was revoked.
    #[error("this invite was revoked")]
    InviteRevoked,
    /// The key is already registered.
    #[error("this node's key is already registered; use `warren up`")]
    AlreadyRegistered,
    /// No free address left in the mesh network.
    #[error("the mesh network has no free address left")]
    NetworkFull,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A failure of the database itself.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database file could not be created.
    #[error("database file: {0}")]
    Io(#[from] std::io::Error),
    /// A row holds a value this build cannot read (a corrupted or foreign database).
    #[error("database holds an invalid value: {0}")]
    Corrupt(String),
}

/// The coordinator's durable state.
pub trait Store: Send + Sync + 'static {
    /// Records an invite; `secret_hash` is SHA-256 of the secret.
    fn create_invite(
        &self,
        secret_hash: [u8; 32],
        uses: u32,
        expires_at: Option<i64>,
        now: i64,
    ) -> Result<i64, StoreError>;

    /// Lists invites, newest first.
    fn invites(&self) -> Result<Vec<InviteRow>, StoreError>;

    /// Revokes an invite; false if there is no such invite.
    fn revoke_invite(&self, id: i64) -> Result<bool, StoreError>;

    /// Redeems an invite and registers the node in one atomic write.
    fn register(&self, reg: &Registration) -> Result<NodeRow, RegisterError>;

    /// The node with this key, if registered.
    fn node_by_key(&self, key: &PublicKey) -> Result<Option<NodeRow>, StoreError>;

    /// All nodes, by id.
    fn nodes(&self) -> Result<Vec<NodeRow>, StoreError>;

    /// Updates a node's last-seen time.
    fn touch(&self, id: NodeId, now: i64) -> Result<(), StoreError>;

    /// Removes a node; false if there is no such node.
    fn remove_node(&self, id: NodeId) -> Result<bool, StoreError>;

    /// Reads a setting.
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Writes a setting.
    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError>;
}
