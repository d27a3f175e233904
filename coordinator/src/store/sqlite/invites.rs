//! The `invites` table: creation (with the reservation checks of a fixed name or address),
//! listing, and the reservation queries registration and rename share. A *pending* invite (not
//! revoked, uses left, not expired) reserves its fixed name and address.

use std::net::Ipv4Addr;

use rusqlite::{params, Connection, TransactionBehavior};
use warren_proto::ids::MeshIp;

use super::super::{InviteError, InviteRow, NewInvite, StoreError};

/// SQL condition for a pending invite, with the current time as `?now`.
const PENDING: &str = "revoked = 0 AND uses_left > 0 AND (expires_at IS NULL OR expires_at > :now)";

/// Records an invite after checking its fixed name and address are free, in one transaction.
pub fn create(conn: &mut Connection, new: &NewInvite) -> Result<i64, InviteError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(StoreError::from)?;
    if let Some(name) = &new.name {
        if name_taken(&tx, name.as_str(), new.now, None)? {
            return Err(InviteError::NameTaken(name.to_string()));
        }
    }
    if let Some(ip) = new.ip {
        if ip_taken(&tx, ip, new.now, None)? {
            return Err(InviteError::AddressTaken(ip));
        }
    }
    tx.execute(
        "INSERT INTO invites (secret_hash, uses_left, expires_at, created_at, fixed_name, fixed_ip)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            new.secret_hash.as_slice(),
            new.uses,
            new.expires_at,
            new.now,
            new.name.as_ref().map(|n| n.as_str()),
            new.ip.map(|ip| ip.to_string()),
        ],
    )
    .map_err(StoreError::from)?;
    let id = tx.last_insert_rowid();
    tx.commit().map_err(StoreError::from)?;
    Ok(id)
}

/// Every invite, newest first.
pub fn list(conn: &Connection) -> Result<Vec<InviteRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, uses_left, expires_at, created_at, revoked, fixed_name, fixed_ip
         FROM invites ORDER BY id DESC",
    )?;
    let raws = stmt.query_map([], |r| {
        Ok((
            InviteRow {
                id: r.get(0)?,
                uses_left: r.get(1)?,
                expires_at: r.get(2)?,
                created_at: r.get(3)?,
                revoked: r.get::<_, i64>(4)? != 0,
                name: r.get(5)?,
                ip: None,
            },
            r.get::<_, Option<String>>(6)?,
        ))
    })?;
    raws.map(|raw| {
        let (mut row, ip) = raw?;
        row.ip = ip.map(|ip| parse_ip(&ip, row.id)).transpose()?;
        Ok(row)
    })
    .collect()
}

/// Parses a stored fixed address.
pub fn parse_ip(raw: &str, invite: i64) -> Result<MeshIp, StoreError> {
    raw.parse::<Ipv4Addr>()
        .map(MeshIp)
        .map_err(|_| StoreError::Corrupt(format!("fixed ip of invite {invite}")))
}

/// Whether a node, or a pending invite other than `except`, has `name`.
pub fn name_taken(
    conn: &Connection,
    name: &str,
    now: i64,
    except: Option<i64>,
) -> Result<bool, StoreError> {
    let node = conn
        .prepare_cached("SELECT 1 FROM nodes WHERE name = ?1")?
        .exists(params![name])?;
    Ok(node || reserved(conn, "fixed_name", name, now, except)?)
}

/// Whether a node, or a pending invite other than `except`, has `ip`.
pub fn ip_taken(
    conn: &Connection,
    ip: MeshIp,
    now: i64,
    except: Option<i64>,
) -> Result<bool, StoreError> {
    let ip = ip.to_string();
    let node = conn
        .prepare_cached("SELECT 1 FROM nodes WHERE mesh_ip = ?1")?
        .exists(params![ip])?;
    Ok(node || reserved(conn, "fixed_ip", &ip, now, except)?)
}

/// Whether a pending invite other than `except` holds `value` in `column`.
fn reserved(
    conn: &Connection,
    column: &'static str,
    value: &str,
    now: i64,
    except: Option<i64>,
) -> Result<bool, StoreError> {
    let sql =
        format!("SELECT 1 FROM invites WHERE {column} = :value AND id != :except AND {PENDING}");
    Ok(conn.prepare_cached(&sql)?.exists(rusqlite::named_params! {
        ":value": value,
        ":except": except.unwrap_or(-1),
        ":now": now,
    })?)
}

/// Addresses reserved by pending invites other than `except`.
pub fn reserved_ips(
    conn: &Connection,
    now: i64,
    except: Option<i64>,
) -> Result<Vec<MeshIp>, StoreError> {
    let sql = format!(
        "SELECT id, fixed_ip FROM invites WHERE fixed_ip IS NOT NULL AND id != :except AND {PENDING}"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let raws = stmt.query_map(
        rusqlite::named_params! {":except": except.unwrap_or(-1), ":now": now},
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
    )?;
    raws.map(|raw| {
        let (id, ip) = raw?;
        parse_ip(&ip, id)
    })
    .collect()
}
