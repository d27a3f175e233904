//! The `api_tokens` table: API tokens by the SHA-256 of their secret (the secret itself is shown
//! once, when created, and never stored).

use rusqlite::{params, Connection, OptionalExtension};

use super::super::{NewToken, Role, StoreError, TokenRow};

/// Columns read by [`from_row`], in order.
const COLUMNS: &str = "id, name, role, created_at, revoked";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(TokenRow, String)> {
    Ok((
        TokenRow {
            id: r.get(0)?,
            name: r.get(1)?,
            role: Role::Read,
            created_at: r.get(3)?,
            revoked: r.get::<_, i64>(4)? != 0,
        },
        r.get(2)?,
    ))
}

fn parse((mut row, role): (TokenRow, String)) -> Result<TokenRow, StoreError> {
    row.role = Role::parse(&role)
        .ok_or_else(|| StoreError::Corrupt(format!("role of API token {}", row.id)))?;
    Ok(row)
}

/// Records a token.
pub fn create(conn: &Connection, new: &NewToken) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO api_tokens (name, role, secret_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![
            new.name,
            new.role.as_str(),
            new.secret_hash.as_slice(),
            new.now
        ],
    )?;
    Ok(conn.last_insert_rowid())
}

/// Every token, newest first.
pub fn list(conn: &Connection) -> Result<Vec<TokenRow>, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM api_tokens ORDER BY id DESC"
    ))?;
    let raws = stmt.query_map([], from_row)?;
    raws.map(|r| parse(r?)).collect()
}

/// The token with this secret hash.
pub fn by_hash(conn: &Connection, hash: &[u8; 32]) -> Result<Option<TokenRow>, StoreError> {
    let raw = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM api_tokens WHERE secret_hash = ?1"
        ))?
        .query_row(params![hash.as_slice()], from_row)
        .optional()?;
    raw.map(parse).transpose()
}
