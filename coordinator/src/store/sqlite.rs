//! The embedded SQLite store (the default). One file, WAL journal and a busy timeout, so that
//! `warren-coordinator invite create` can write while `serve` runs. Registration runs in one
//! `BEGIN IMMEDIATE` transaction: a one-use invite can never register two nodes, even when
//! several processes race for it.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use warren_proto::ids::{MeshIp, NodeId, PublicKey};

use super::{InviteRow, NodeRow, RegisterError, Registration, Store, StoreError};

/// How long a writer waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
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

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    /// The connection; rusqlite connections are not `Sync`, so calls take turns.
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        create_private(path)?;
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
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

fn node_from_row(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<(i64, String, String, String, i64, i64)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn parse_node(raw: (i64, String, String, String, i64, i64)) -> Result<NodeRow, StoreError> {
    let (id, name, key, ip, created_at, last_seen) = raw;
    let public_key: PublicKey = key
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("public key of node {id}")))?;
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| StoreError::Corrupt(format!("mesh ip of node {id}")))?;
    Ok(NodeRow {
        id: NodeId(id as u64),
        name,
        public_key,
        mesh_ip: MeshIp(ip),
        created_at,
        last_seen,
    })
}

const NODE_COLUMNS: &str = "id, name, public_key, mesh_ip, created_at, last_seen";

/// Picks `base`, or `base-2`, `base-3`, ... whichever is free.
fn unique_name(tx: &rusqlite::Transaction<'_>, base: &str) -> Result<String, StoreError> {
    let mut stmt = tx.prepare("SELECT 1 FROM nodes WHERE name = ?1")?;
    let mut candidate = base.to_string();
    let mut n = 2;
    while stmt.exists(params![candidate])? {
        candidate = format!("{base}-{n}");
        n += 1;
    }
    Ok(candidate)
}

impl Store for SqliteStore {
    fn create_invite(
        &self,
        secret_hash: [u8; 32],
        uses: u32,
        expires_at: Option<i64>,
        now: i64,
    ) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO invites (secret_hash, uses_left, expires_at, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![secret_hash.as_slice(), uses, expires_at, now],
        )?;
        Ok(conn.last_insert_rowid())
    }

    fn invites(&self) -> Result<Vec<InviteRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, uses_left, expires_at, created_at, revoked FROM invites ORDER BY id DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(InviteRow {
                id: r.get(0)?,
                uses_left: r.get(1)?,
                expires_at: r.get(2)?,
                created_at: r.get(3)?,
                revoked: r.get::<_, i64>(4)? != 0,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn revoke_invite(&self, id: i64) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("UPDATE invites SET revoked = 1 WHERE id = ?1", params![id])?;
        Ok(n > 0)
    }

    fn register(&self, reg: &Registration) -> Result<NodeRow, RegisterError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let invite: Option<(i64, u32, Option<i64>, i64)> = tx
            .query_row(
                "SELECT id, uses_left, expires_at, revoked FROM invites WHERE secret_hash = ?1",
                params![reg.secret_hash.as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(StoreError::from)?;
        let Some((invite_id, uses_left, expires_at, revoked)) = invite else {
            return Err(RegisterError::InviteUnknown);
        };
        if revoked != 0 {
            return Err(RegisterError::InviteRevoked);
        }
        if expires_at.is_some_and(|e| reg.now >= e) {
            return Err(RegisterError::InviteExpired);
        }
        if uses_left == 0 {
            return Err(RegisterError::InviteUsedUp);
        }
        let key = reg.public_key.to_string();
        let known = tx
            .prepare("SELECT 1 FROM nodes WHERE public_key = ?1")
            .and_then(|mut s| s.exists(params![key]))
            .map_err(StoreError::from)?;
        if known {
            return Err(RegisterError::AlreadyRegistered);
        }
        // Lowest free host index in the network.
        let used: std::collections::HashSet<u32> = {
            let mut stmt = tx
                .prepare("SELECT mesh_ip FROM nodes")
                .map_err(StoreError::from)?;
            let ips = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(StoreError::from)?;
            let mut used = std::collections::HashSet::new();
            for ip in ips {
                let ip = ip.map_err(StoreError::from)?;
                if let Ok(ip) = ip.parse::<Ipv4Addr>() {
                    if let Some(i) = reg.network.host_index(MeshIp(ip)) {
                        used.insert(i);
                    }
                }
            }
            used
        };
        let mesh_ip = (1..)
            .map_while(|i| reg.network.host(i).map(|ip| (i, ip)))
            .find(|(i, _)| !used.contains(i))
            .map(|(_, ip)| ip)
            .ok_or(RegisterError::NetworkFull)?;
        let name = unique_name(&tx, &reg.name)?;
        tx.execute(
            "UPDATE invites SET uses_left = uses_left - 1 WHERE id = ?1",
            params![invite_id],
        )
        .map_err(StoreError::from)?;
        tx.execute(
            "INSERT INTO nodes (name, public_key, mesh_ip, created_at, last_seen) VALUES (?1, ?2, ?3, ?4, ?4)",
            params![name, key, mesh_ip.to_string(), reg.now],
        )
        .map_err(StoreError::from)?;
        let id = tx.last_insert_rowid();
        tx.commit().map_err(StoreError::from)?;
        Ok(NodeRow {
            id: NodeId(id as u64),
            name,
            public_key: reg.public_key,
            mesh_ip,
            created_at: reg.now,
            last_seen: reg.now,
        })
    }

    fn node_by_key(&self, key: &PublicKey) -> Result<Option<NodeRow>, StoreError> {
        let conn = self.conn();
        let raw = conn
            .query_row(
                &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE public_key = ?1"),
                params![key.to_string()],
                node_from_row,
            )
            .optional()?;
        raw.map(parse_node).transpose()
    }

    fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY id"))?;
        let raws = stmt.query_map([], node_from_row)?;
        raws.map(|r| parse_node(r?)).collect()
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use warren_proto::ids::{MeshNetwork, PrivateKey};

    fn key(n: u8) -> PublicKey {
        PrivateKey::from_random([n; 32]).public_key()
    }

    fn reg(secret: u8, name: &str, k: u8, now: i64) -> Registration {
        Registration {
            secret_hash: [secret; 32],
            name: name.into(),
            public_key: key(k),
            network: "10.9.0.0/29".parse::<MeshNetwork>().unwrap(),
            now,
        }
    }

    fn temp_store() -> (tempdir::Dir, SqliteStore) {
        let dir = tempdir::Dir::new();
        let store = SqliteStore::open(&dir.0.join("w.db")).unwrap();
        (dir, store)
    }

    /// A throwaway directory removed on drop (keeps dev-dependencies small).
    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "warren-store-test-{}-{}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn allocation_names_and_invite_errors() {
        let (_d, s) = temp_store();
        s.create_invite([1; 32], 3, None, 0).unwrap();
        let a = s.register(&reg(1, "a", 1, 10)).unwrap();
        let b = s.register(&reg(1, "a", 2, 10)).unwrap();
        assert_eq!(a.mesh_ip.to_string(), "10.9.0.1");
        assert_eq!(b.mesh_ip.to_string(), "10.9.0.2");
        assert_eq!(b.name, "a-2");
        assert!(matches!(
            s.register(&reg(1, "c", 1, 10)),
            Err(RegisterError::AlreadyRegistered)
        ));
        // Freed addresses are reused: remove a, the next node gets .1.
        assert!(s.remove_node(a.id).unwrap());
        let c = s.register(&reg(1, "c", 3, 10)).unwrap();
        assert_eq!(c.mesh_ip.to_string(), "10.9.0.1");
        assert!(c.id.0 > b.id.0, "ids are never reused");
        assert!(matches!(
            s.register(&reg(1, "d", 4, 10)),
            Err(RegisterError::InviteUsedUp)
        ));
        assert!(matches!(
            s.register(&reg(9, "d", 4, 10)),
            Err(RegisterError::InviteUnknown)
        ));
        s.create_invite([2; 32], 1, Some(100), 0).unwrap();
        assert!(matches!(
            s.register(&reg(2, "d", 4, 100)),
            Err(RegisterError::InviteExpired)
        ));
        let id = s.create_invite([3; 32], 1, None, 0).unwrap();
        assert!(s.revoke_invite(id).unwrap());
        assert!(matches!(
            s.register(&reg(3, "d", 4, 10)),
            Err(RegisterError::InviteRevoked)
        ));
        // A failed registration leaves no trace.
        assert_eq!(s.nodes().unwrap().len(), 2);
    }

    #[test]
    fn network_full() {
        let (_d, s) = temp_store();
        s.create_invite([1; 32], 100, None, 0).unwrap();
        // A /29 has hosts 1..=6.
        for k in 1..=6 {
            s.register(&reg(1, "n", k, 0)).unwrap();
        }
        assert!(matches!(
            s.register(&reg(1, "n", 7, 0)),
            Err(RegisterError::NetworkFull)
        ));
    }

    #[test]
    fn secrets_are_stored_hashed_only_and_the_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let (d, s) = temp_store();
        let token =
            crate::invite::create(&s, "127.0.0.1:7443".parse().unwrap(), [0; 32], 1, None, 0)
                .unwrap();
        drop(s);
        let path = d.0.join("w.db");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let conn = Connection::open(&path).unwrap();
        let stored: Vec<u8> = conn
            .query_row("SELECT secret_hash FROM invites", [], |r| r.get(0))
            .unwrap();
        assert_eq!(stored, crate::invite::hash_secret(&token.secret).to_vec());
        assert_ne!(stored, token.secret.to_vec());
        // The secret appears nowhere in the file (the WAL is checkpointed on close).
        drop(conn);
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(32).any(|w| w == token.secret));
        assert!(raw.windows(32).any(|w| w == stored.as_slice()));
    }

    #[test]
    fn concurrent_redemption_of_one_use_invite_registers_exactly_one() {
        let d = tempdir::Dir::new();
        let path = d.0.join("w.db");
        SqliteStore::open(&path)
            .unwrap()
            .create_invite([5; 32], 1, None, 0)
            .unwrap();
        let threads: Vec<_> = (0..16u8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    // Each racer has its own connection, as separate processes would.
                    let s = SqliteStore::open(&path).unwrap();
                    s.register(&reg(5, "racer", 100 + i, 0)).is_ok()
                })
            })
            .collect();
        let wins = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(wins, 1);
        assert_eq!(SqliteStore::open(&path).unwrap().nodes().unwrap().len(), 1);
    }
}
