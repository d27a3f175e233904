//! The embedded SQLite store (the default). One file, WAL journal and a busy timeout, so that
//! `warren-coordinator invite create` can write while `serve` runs. Registration runs in one
//! `BEGIN IMMEDIATE` transaction: a one-use invite can never register two nodes, even when
//! several processes race for it. The schema carries its version in `PRAGMA user_version`;
//! older databases are migrated in place when opened.
//!
//! The queries live by table: [`nodes`] (registration, rename, removal), [`invites`] and
//! [`tokens`].

mod invites;
mod nodes;
#[cfg(test)]
mod tests;
mod tokens;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use warren_proto::ids::{NodeId, PublicKey};

use super::{
    InviteError, InviteRow, NewInvite, NewToken, NodeName, NodeRow, RegisterError, Registration,
    RenameError, Store, StoreError, TokenRow,
};

/// How long a writer waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The first schema (version 0); created if missing, then migrated.
const SCHEMA_V0: &str = "
CREATE TABLE IF NOT EXISTS nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    public_key TEXT NOT NULL UNIQUE,
    mesh_ip TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS invites (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    secret_hash BLOB NOT NULL UNIQUE,
    uses_left INTEGER NOT NULL,
    expires_at INTEGER,
    created_at INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// Migrations; entry `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: invites with a fixed name and address; API tokens.
    "
    ALTER TABLE invites ADD COLUMN fixed_name TEXT;
    ALTER TABLE invites ADD COLUMN fixed_ip TEXT;
    CREATE TABLE api_tokens (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        secret_hash BLOB NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    ",
];

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    /// The connection; rusqlite connections are not `Sync`, so calls take turns.
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating or migrating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        create_private(path)?;
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions roll
        // back on drop), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Brings the schema to the latest version in one immediate transaction, so that two
/// processes opening an old database at once migrate it once.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA_V0)?;
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let version = usize::try_from(version)
        .map_err(|_| StoreError::Corrupt(format!("schema version {version}")))?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Corrupt(format!(
            "schema version {version} is newer than this build knows ({}); upgrade the coordinator",
            MIGRATIONS.len()
        )));
    }
    for m in &MIGRATIONS[version..] {
        tx.execute_batch(m)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    tx.commit()?;
    Ok(())
}

/// Creates the database file readable by its owner only, if it does not exist yet. SQLite gives
/// its `-wal` and `-shm` files the database file's permissions.
fn create_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Io(e)),
    }
}

impl Store for SqliteStore {
    fn create_invite(&self, new: &NewInvite) -> Result<i64, InviteError> {
        invites::create(&mut self.conn(), new)
    }

    fn invites(&self) -> Result<Vec<InviteRow>, StoreError> {
        invites::list(&self.conn())
    }

    fn revoke_invite(&self, id: i64) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("UPDATE invites SET revoked = 1 WHERE id = ?1", params![id])?;
        Ok(n > 0)
    }

    fn register(&self, reg: &Registration) -> Result<NodeRow, RegisterError> {
        nodes::register(&mut self.conn(), reg)
    }

    fn node(&self, id: NodeId) -> Result<Option<NodeRow>, StoreError> {
        nodes::by_id(&self.conn(), id)
    }

    fn node_by_key(&self, key: &PublicKey) -> Result<Option<NodeRow>, StoreError> {
        nodes::by_key(&self.conn(), key)
    }

    fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        nodes::list(&self.conn())
    }

    fn rename_node(&self, id: NodeId, name: &NodeName, now: i64) -> Result<NodeRow, RenameError> {
        nodes::rename(&mut self.conn(), id, name, now)
    }

    fn touch(&self, id: NodeId, now: i64) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE nodes SET last_seen = ?2 WHERE id = ?1",
            params![id.0 as i64, now],
        )?;
        Ok(())
    }

    fn remove_node(&self, id: NodeId) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("DELETE FROM nodes WHERE id = ?1", params![id.0 as i64])?;
        Ok(n > 0)
    }

    fn create_token(&self, new: &NewToken) -> Result<i64, StoreError> {
        tokens::create(&self.conn(), new)
    }

    fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        tokens::list(&self.conn())
    }

    fn token_by_hash(&self, secret_hash: &[u8; 32]) -> Result<Option<TokenRow>, StoreError> {
        tokens::by_hash(&self.conn(), secret_hash)
    }

    fn revoke_token(&self, id: i64) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE api_tokens SET revoked = 1 WHERE id = ?1",
            params![id],
        )?;
        Ok(n > 0)
    }

    fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }
}
