//! Tests of the SQLite store: allocation, invites and their reservations, rename, tokens,
//! migration of an old database, restart safety and concurrent redemption.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::store::{InviteError, NewInvite, NewToken, NodeName, RenameError, Role};
use warren_proto::ids::{MeshIp, MeshNetwork, PrivateKey};

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

fn inv(secret: u8, uses: u32, expires_at: Option<i64>) -> NewInvite {
    NewInvite {
        secret_hash: [secret; 32],
        uses,
        expires_at,
        name: None,
        ip: None,
        now: 0,
    }
}

fn fixed(secret: u8, name: Option<&str>, ip: Option<&str>) -> NewInvite {
    NewInvite {
        name: name.map(|n| NodeName::parse(n).unwrap()),
        ip: ip.map(|ip| MeshIp(ip.parse().unwrap())),
        ..inv(secret, 1, None)
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
    s.create_invite(&inv(1, 3, None)).unwrap();
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
    s.create_invite(&inv(2, 1, Some(100))).unwrap();
    assert!(matches!(
        s.register(&reg(2, "d", 4, 100)),
        Err(RegisterError::InviteExpired)
    ));
    let id = s.create_invite(&inv(3, 1, None)).unwrap();
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
    s.create_invite(&inv(1, 100, None)).unwrap();
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
        crate::invite::create(&s, "127.0.0.1:7443".parse().unwrap(), [0; 32], 1, None, 0).unwrap();
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
        .create_invite(&inv(5, 1, None))
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

#[test]
fn fixed_name_and_address_are_reserved_then_given() {
    let (_d, s) = temp_store();
    s.create_invite(&fixed(1, Some("db"), Some("10.9.0.2")))
        .unwrap();
    // Another invite cannot reserve the same name or address.
    assert!(matches!(
        s.create_invite(&fixed(2, Some("db"), None)),
        Err(InviteError::NameTaken(n)) if n == "db"
    ));
    assert!(matches!(
        s.create_invite(&fixed(2, None, Some("10.9.0.2"))),
        Err(InviteError::AddressTaken(_))
    ));
    // A plain registration asking for the reserved name gets a suffix and skips the address.
    s.create_invite(&inv(3, 5, None)).unwrap();
    let a = s.register(&reg(3, "db", 1, 10)).unwrap();
    let b = s.register(&reg(3, "x", 2, 10)).unwrap();
    assert_eq!(
        (a.name.as_str(), a.mesh_ip.to_string()),
        ("db-2", "10.9.0.1".into())
    );
    assert_eq!(b.mesh_ip.to_string(), "10.9.0.3");
    // The fixed invite gives exactly its name and address, whatever the node asks for.
    let c = s.register(&reg(1, "laptop", 3, 10)).unwrap();
    assert_eq!(
        (c.name.as_str(), c.mesh_ip.to_string()),
        ("db", "10.9.0.2".into())
    );
    let listed = &s.invites().unwrap()[1];
    assert_eq!(listed.name.as_deref(), Some("db"));
    assert_eq!(
        listed.ip.map(|i| i.to_string()).as_deref(),
        Some("10.9.0.2")
    );
    assert!(!listed.pending(10));
    // Now taken by a node, the name and address cannot be reserved again.
    assert!(matches!(
        s.create_invite(&fixed(4, Some("db"), None)),
        Err(InviteError::NameTaken(_))
    ));
    assert!(matches!(
        s.create_invite(&fixed(4, None, Some("10.9.0.2"))),
        Err(InviteError::AddressTaken(_))
    ));
}

#[test]
fn expired_or_revoked_invites_reserve_nothing() {
    let (_d, s) = temp_store();
    let mut e = fixed(1, Some("db"), Some("10.9.0.1"));
    e.expires_at = Some(50);
    s.create_invite(&e).unwrap();
    let mut again = fixed(2, Some("db"), Some("10.9.0.1"));
    again.now = 60;
    let id = s.create_invite(&again).unwrap();
    assert!(s.revoke_invite(id).unwrap());
    s.create_invite(&inv(3, 1, None)).unwrap();
    let n = s.register(&reg(3, "db", 1, 60)).unwrap();
    assert_eq!(
        (n.name.as_str(), n.mesh_ip.to_string()),
        ("db", "10.9.0.1".into())
    );
}

#[test]
fn a_fixed_address_outside_the_network_is_refused_at_registration() {
    let (_d, s) = temp_store();
    s.create_invite(&fixed(1, None, Some("10.9.0.6"))).unwrap();
    let mut r = reg(1, "x", 1, 10);
    r.network = "10.8.0.0/29".parse().unwrap();
    assert!(matches!(
        s.register(&r),
        Err(RegisterError::Reserved("address"))
    ));
    assert_eq!(s.invites().unwrap()[0].uses_left, 1, "nothing was used up");
}

#[test]
fn rename_checks_nodes_and_pending_invites() {
    let (_d, s) = temp_store();
    s.create_invite(&inv(1, 5, None)).unwrap();
    let a = s.register(&reg(1, "a", 1, 10)).unwrap();
    s.register(&reg(1, "b", 2, 10)).unwrap();
    s.create_invite(&fixed(2, Some("kept"), None)).unwrap();
    let name = |n: &str| NodeName::parse(n).unwrap();
    assert!(matches!(
        s.rename_node(a.id, &name("b"), 10),
        Err(RenameError::NameTaken(_))
    ));
    assert!(matches!(
        s.rename_node(a.id, &name("kept"), 10),
        Err(RenameError::NameTaken(_))
    ));
    assert!(matches!(
        s.rename_node(NodeId(999), &name("z"), 10),
        Err(RenameError::NotFound)
    ));
    assert!(matches!(
        s.rename_node(NodeId(u64::MAX), &name("z"), 10),
        Err(RenameError::NotFound)
    ));
    let r = s.rename_node(a.id, &name("alpha"), 10).unwrap();
    assert_eq!(r.name, "alpha");
    assert_eq!(s.node(a.id).unwrap().unwrap().name, "alpha");
    // Renaming to its own name is a no-op, not a conflict.
    assert_eq!(
        s.rename_node(a.id, &name("alpha"), 10).unwrap().name,
        "alpha"
    );
}

#[test]
fn tokens_are_found_by_hash_and_revoked() {
    let (_d, s) = temp_store();
    let new = |h: u8, role| NewToken {
        secret_hash: [h; 32],
        name: format!("t{h}"),
        role,
        now: 5,
    };
    let r = s.create_token(&new(1, Role::Read)).unwrap();
    let a = s.create_token(&new(2, Role::Admin)).unwrap();
    let found = s.token_by_hash(&[2; 32]).unwrap().unwrap();
    assert_eq!(
        (found.id, found.role, found.revoked),
        (a, Role::Admin, false)
    );
    assert!(s.token_by_hash(&[3; 32]).unwrap().is_none());
    assert!(s.revoke_token(r).unwrap());
    assert!(!s.revoke_token(999).unwrap());
    assert!(s.token_by_hash(&[1; 32]).unwrap().unwrap().revoked);
    let names: Vec<_> = s.tokens().unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["t2", "t1"]);
}

#[test]
fn tokens_invites_and_nodes_survive_reopening() {
    let d = tempdir::Dir::new();
    let path = d.0.join("w.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.create_invite(&inv(1, 2, None)).unwrap();
        s.register(&reg(1, "keep", 1, 10)).unwrap();
        s.create_invite(&fixed(2, Some("later"), Some("10.9.0.4")))
            .unwrap();
        s.create_token(&NewToken {
            secret_hash: [9; 32],
            name: "ci".into(),
            role: Role::Read,
            now: 10,
        })
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let nodes = s.nodes().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        (nodes[0].name.as_str(), nodes[0].mesh_ip.to_string()),
        ("keep", "10.9.0.1".into())
    );
    assert_eq!(s.node_by_key(&key(1)).unwrap().unwrap().id, nodes[0].id);
    let invites = s.invites().unwrap();
    assert_eq!(invites.len(), 2);
    assert_eq!(invites[0].name.as_deref(), Some("later"));
    assert_eq!(invites[1].uses_left, 1);
    assert_eq!(s.token_by_hash(&[9; 32]).unwrap().unwrap().name, "ci");
    // The reopened store still honours the reservation and redeems the fixed invite.
    let n = s.register(&reg(2, "x", 2, 20)).unwrap();
    assert_eq!(
        (n.name.as_str(), n.mesh_ip.to_string()),
        ("later", "10.9.0.4".into())
    );
}

#[test]
fn an_old_database_is_migrated_in_place() {
    let d = tempdir::Dir::new();
    let path = d.0.join("w.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_V0).unwrap();
        conn.execute(
            "INSERT INTO invites (secret_hash, uses_left, created_at) VALUES (?1, 1, 0)",
            params![[7u8; 32].as_slice()],
        )
        .unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let invites = s.invites().unwrap();
    assert_eq!(invites.len(), 1);
    assert_eq!((invites[0].name.clone(), invites[0].ip), (None, None));
    assert!(s.tokens().unwrap().is_empty());
    let n = s.register(&reg(7, "old", 1, 10)).unwrap();
    assert_eq!(n.name, "old");
    drop(s);
    // Opening again does not migrate twice.
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.nodes().unwrap().len(), 1);
}

#[test]
fn concurrent_redemption_of_a_fixed_invite_registers_exactly_one() {
    let d = tempdir::Dir::new();
    let path = d.0.join("w.db");
    SqliteStore::open(&path)
        .unwrap()
        .create_invite(&fixed(6, Some("only"), Some("10.9.0.3")))
        .unwrap();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(16));
    let threads: Vec<_> = (0..16u8)
        .map(|i| {
            let (path, barrier) = (path.clone(), barrier.clone());
            std::thread::spawn(move || {
                let s = SqliteStore::open(&path).unwrap();
                barrier.wait();
                s.register(&reg(6, "racer", 100 + i, 0))
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let wins: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(wins.len(), 1);
    assert_eq!(wins[0].name, "only");
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, RegisterError::InviteUsedUp)));
    assert_eq!(SqliteStore::open(&path).unwrap().nodes().unwrap().len(), 1);
}
