//! The `nodes` table: registration (invite redemption and address allocation in one
//! transaction), lookups and rename.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use warren_proto::ids::{MeshIp, NodeId, PublicKey};

use super::super::{NodeName, NodeRow, RegisterError, Registration, RenameError, StoreError};
use super::invites::{ip_taken, name_taken, parse_ip, reserved_ips};

/// Columns read by [`from_row`], in order.
const COLUMNS: &str = "id, name, public_key, mesh_ip, created_at, last_seen";

/// A node row as stored, before its key and address are parsed.
type RawNode = (i64, String, String, String, i64, i64);

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawNode> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
    ))
}

fn parse(raw: RawNode) -> Result<NodeRow, StoreError> {
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

/// The node with this id.
pub fn by_id(conn: &Connection, id: NodeId) -> Result<Option<NodeRow>, StoreError> {
    let Ok(id) = i64::try_from(id.0) else {
        return Ok(None);
    };
    let raw = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM nodes WHERE id = ?1"),
            params![id],
            from_row,
        )
        .optional()?;
    raw.map(parse).transpose()
}

/// The node with this key.
pub fn by_key(conn: &Connection, key: &PublicKey) -> Result<Option<NodeRow>, StoreError> {
    let raw = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM nodes WHERE public_key = ?1"),
            params![key.to_string()],
            from_row,
        )
        .optional()?;
    raw.map(parse).transpose()
}

/// Every node, by id.
pub fn list(conn: &Connection) -> Result<Vec<NodeRow>, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM nodes ORDER BY id"))?;
    let raws = stmt.query_map([], from_row)?;
    raws.map(|r| parse(r?)).collect()
}

/// Renames a node unless another node or a pending invite has the name.
pub fn rename(
    conn: &mut Connection,
    id: NodeId,
    name: &NodeName,
    now: i64,
) -> Result<NodeRow, RenameError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(StoreError::from)?;
    let Some(mut row) = by_id(&tx, id)? else {
        return Err(RenameError::NotFound);
    };
    if row.name == name.as_str() {
        return Ok(row);
    }
    if name_taken(&tx, name.as_str(), now, None)? {
        return Err(RenameError::NameTaken(name.to_string()));
    }
    tx.execute(
        "UPDATE nodes SET name = ?2 WHERE id = ?1",
        params![id.0 as i64, name.as_str()],
    )
    .map_err(StoreError::from)?;
    tx.commit().map_err(StoreError::from)?;
    row.name = name.to_string();
    Ok(row)
}

/// The invite columns registration needs.
struct Invite {
    id: i64,
    uses_left: u32,
    expires_at: Option<i64>,
    revoked: bool,
    name: Option<String>,
    ip: Option<String>,
}

/// Redeems the invite and inserts the node, in one immediate transaction.
pub fn register(conn: &mut Connection, reg: &Registration) -> Result<NodeRow, RegisterError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(StoreError::from)?;
    let invite = tx
        .query_row(
            "SELECT id, uses_left, expires_at, revoked, fixed_name, fixed_ip
             FROM invites WHERE secret_hash = ?1",
            params![reg.secret_hash.as_slice()],
            |r| {
                Ok(Invite {
                    id: r.get(0)?,
                    uses_left: r.get(1)?,
                    expires_at: r.get(2)?,
                    revoked: r.get::<_, i64>(3)? != 0,
                    name: r.get(4)?,
                    ip: r.get(5)?,
                })
            },
        )
        .optional()
        .map_err(StoreError::from)?;
    let Some(invite) = invite else {
        return Err(RegisterError::InviteUnknown);
    };
    if invite.revoked {
        return Err(RegisterError::InviteRevoked);
    }
    if invite.expires_at.is_some_and(|e| reg.now >= e) {
        return Err(RegisterError::InviteExpired);
    }
    if invite.uses_left == 0 {
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
    let mesh_ip = match &invite.ip {
        Some(raw) => fixed_ip(&tx, reg, raw, invite.id)?,
        None => free_ip(&tx, reg, invite.id)?,
    };
    let name = match invite.name {
        Some(fixed) => {
            if name_taken(&tx, &fixed, reg.now, Some(invite.id))? {
                return Err(RegisterError::Reserved("name"));
            }
            fixed
        }
        None => unique_name(&tx, &NodeName::clean(&reg.name), reg.now)?,
    };
    tx.execute(
        "UPDATE invites SET uses_left = uses_left - 1 WHERE id = ?1",
        params![invite.id],
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

/// The invite's fixed address, if it is still a free host address of the network.
fn fixed_ip(
    tx: &Transaction<'_>,
    reg: &Registration,
    raw: &str,
    invite: i64,
) -> Result<MeshIp, RegisterError> {
    let ip = parse_ip(raw, invite)?;
    let is_host = reg
        .network
        .host_index(ip)
        .and_then(|i| reg.network.host(i))
        .is_some();
    if !is_host || ip_taken(tx, ip, reg.now, Some(invite))? {
        return Err(RegisterError::Reserved("address"));
    }
    Ok(ip)
}

/// The lowest host address that no node has and no other pending invite reserves.
fn free_ip(tx: &Transaction<'_>, reg: &Registration, invite: i64) -> Result<MeshIp, RegisterError> {
    let mut used: HashSet<u32> = HashSet::new();
    {
        let mut stmt = tx
            .prepare("SELECT mesh_ip FROM nodes")
            .map_err(StoreError::from)?;
        let ips = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(StoreError::from)?;
        for ip in ips {
            let ip = ip.map_err(StoreError::from)?;
            if let Ok(ip) = ip.parse::<Ipv4Addr>() {
                used.extend(reg.network.host_index(MeshIp(ip)));
            }
        }
    }
    for ip in reserved_ips(tx, reg.now, Some(invite))? {
        used.extend(reg.network.host_index(ip));
    }
    (1..)
        .map_while(|i| reg.network.host(i).map(|ip| (i, ip)))
        .find(|(i, _)| !used.contains(i))
        .map(|(_, ip)| ip)
        .ok_or(RegisterError::NetworkFull)
}

/// Picks `base`, or `base-2`, `base-3`, ... whichever no node has and no pending invite
/// reserves.
fn unique_name(tx: &Transaction<'_>, base: &NodeName, now: i64) -> Result<String, StoreError> {
    let mut candidate = base.clone();
    let mut n = 2;
    while name_taken(tx, candidate.as_str(), now, None)? {
        candidate = base.with_suffix(n);
        n += 1;
    }
    Ok(candidate.to_string())
}
