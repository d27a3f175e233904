//! Durable state of the coordinator: nodes, invites, API tokens and settings.
//!
//! Behind the [`Store`] trait so that a shared PostgreSQL backend can later let several
//! coordinators serve one mesh; [`sqlite::SqliteStore`] is the embedded default. Store calls are
//! blocking: async code runs them through `tokio::task::spawn_blocking`. Times are Unix seconds
//! passed in by the caller, so tests control them. Secrets (invite secrets, API tokens) are never
//! stored, only their SHA-256.

mod name;
pub mod sqlite;

pub use name::NodeName;

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
    /// Name the node registering with this invite gets (instead of the one it asks for).
    pub name: Option<String>,
    /// Mesh address the node registering with this invite gets.
    pub ip: Option<MeshIp>,
}

impl InviteRow {
    /// Whether the invite can still be redeemed at `now` (and so reserves its fixed name and
    /// address).
    pub fn pending(&self, now: i64) -> bool {
        !self.revoked && self.uses_left > 0 && self.expires_at.is_none_or(|e| now < e)
    }
}

/// A new invite.
#[derive(Clone, Debug)]
pub struct NewInvite {
    /// SHA-256 of the secret.
    pub secret_hash: [u8; 32],
    /// Redemptions allowed.
    pub uses: u32,
    /// Expiry, Unix seconds, if any.
    pub expires_at: Option<i64>,
    /// Fixed name for the node that redeems it.
    pub name: Option<NodeName>,
    /// Fixed mesh address for the node that redeems it (checked to be a host address of the
    /// mesh network by the caller).
    pub ip: Option<MeshIp>,
    /// Creation time, Unix seconds.
    pub now: i64,
}

/// What a node asks for when it redeems an invite.
#[derive(Clone, Debug)]
pub struct Registration {
    /// SHA-256 of the invite secret presented.
    pub secret_hash: [u8; 32],
    /// Requested name (made unique by adding `-2`, `-3`, ...; an invite's fixed name wins).
    pub name: String,
    /// The node's static key.
    pub public_key: PublicKey,
    /// The mesh network to allocate from.
    pub network: MeshNetwork,
    /// Current time, Unix seconds.
    pub now: i64,
}

/// What an API token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read routes only (GET).
    Read,
    /// Every route.
    Admin,
}

impl Role {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// An API token as listed (its secret is never stored, only its SHA-256).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    /// Row id.
    pub id: i64,
    /// Operator's label for it.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Creation time, Unix seconds.
    pub created_at: i64,
    /// Whether it was revoked (a revoked token authenticates nothing).
    pub revoked: bool,
}

/// A new API token.
#[derive(Clone, Debug)]
pub struct NewToken {
    /// SHA-256 of the secret.
    pub secret_hash: [u8; 32],
    /// Operator's label.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Creation time, Unix seconds.
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
    /// The invite's fixed name or address cannot be given (outside the mesh network after a
    /// network change, or taken despite the reservation, e.g. by a hand-edited database).
    #[error("the {0} this invite reserves is no longer available; ask for a new invite")]
    Reserved(&'static str),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegisterError {
    /// Stable reason label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RegisterError::InviteUnknown => "invite_unknown",
            RegisterError::InviteExpired => "invite_expired",
            RegisterError::InviteUsedUp => "invite_used_up",
            RegisterError::InviteRevoked => "invite_revoked",
            RegisterError::AlreadyRegistered => "already_registered",
            RegisterError::NetworkFull => "network_full",
            RegisterError::Reserved(_) => "reserved_unavailable",
            RegisterError::Store(_) => "internal",
        }
    }
}

/// Why an invite could not be created.
#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    /// A node or another pending invite already has the fixed name.
    #[error("the name {0:?} is taken by a node or a pending invite")]
    NameTaken(String),
    /// A node or another pending invite already has the fixed address.
    #[error("the address {0} is taken by a node or a pending invite")]
    AddressTaken(MeshIp),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a node could not be renamed.
#[derive(Debug, thiserror::Error)]
pub enum RenameError {
    /// No node has this id.
    #[error("no such node")]
    NotFound,
    /// Another node or a pending invite has the name.
    #[error("the name {0:?} is taken by another node or a pending invite")]
    NameTaken(String),
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
    /// Records an invite. A fixed name or address must not belong to a node or another
    /// pending invite; the check and the insert are one atomic write.
    fn create_invite(&self, new: &NewInvite) -> Result<i64, InviteError>;

    /// Lists invites, newest first.
    fn invites(&self) -> Result<Vec<InviteRow>, StoreError>;

    /// Revokes an invite; false if there is no such invite.
    fn revoke_invite(&self, id: i64) -> Result<bool, StoreError>;

    /// Redeems an invite and registers the node in one atomic write.
    fn register(&self, reg: &Registration) -> Result<NodeRow, RegisterError>;

    /// The node with this id, if registered.
    fn node(&self, id: NodeId) -> Result<Option<NodeRow>, StoreError>;

    /// The node with this key, if registered.
    fn node_by_key(&self, key: &PublicKey) -> Result<Option<NodeRow>, StoreError>;

    /// All nodes, by id.
    fn nodes(&self) -> Result<Vec<NodeRow>, StoreError>;

    /// Renames a node; the name must not belong to another node or a pending invite at `now`.
    fn rename_node(&self, id: NodeId, name: &NodeName, now: i64) -> Result<NodeRow, RenameError>;

    /// Updates a node's last-seen time.
    fn touch(&self, id: NodeId, now: i64) -> Result<(), StoreError>;

    /// Removes a node; false if there is no such node.
    fn remove_node(&self, id: NodeId) -> Result<bool, StoreError>;

    /// Records an API token.
    fn create_token(&self, new: &NewToken) -> Result<i64, StoreError>;

    /// Lists API tokens, newest first.
    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError>;

    /// The token whose secret has this SHA-256, revoked or not.
    fn token_by_hash(&self, secret_hash: &[u8; 32]) -> Result<Option<TokenRow>, StoreError>;

    /// Revokes an API token; false if there is no such token.
    fn revoke_token(&self, id: i64) -> Result<bool, StoreError>;

    /// Reads a setting.
    fn meta(&self, key: &str) -> Result<Option<String>, StoreError>;

    /// Writes a setting.
    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError>;
}
