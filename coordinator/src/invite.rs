//! Invite creation, shared by the CLI (`invite create`) and the HTTP API: a random secret whose
//! SHA-256 goes into the store, wrapped in a token with the coordinator's public address and
//! certificate fingerprint.

use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use warren_proto::token::{CoordinatorAddr, InviteToken};

use crate::store::Store;

/// Meta key under which `serve` records the address tokens carry.
pub const META_PUBLIC_ADDR: &str = "public_addr";

/// What the store keeps of a secret.
pub fn hash_secret(secret: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Creates an invite valid for `uses` registrations until `expires` from `now` (Unix seconds).
pub fn create(
    store: &dyn Store,
    public_addr: CoordinatorAddr,
    fingerprint: [u8; 32],
    uses: u32,
    expires: Option<Duration>,
    now: i64,
) -> Result<InviteToken> {
    let secret: [u8; 32] = rand::random();
    let expires_at = expires.map(|d| now.saturating_add(d.as_secs().max(1) as i64));
    store
        .create_invite(hash_secret(&secret), uses, expires_at, now)
        .context("storing the invite")?;
    Ok(InviteToken {
        addrs: vec![public_addr],
        fingerprint,
        secret,
    })
}

/// The public address `serve` recorded, for processes that are not `serve`.
pub fn recorded_public_addr(store: &dyn Store) -> Result<CoordinatorAddr> {
    let raw = store
        .meta(META_PUBLIC_ADDR)?
        .context("the coordinator has not been started in this data directory yet; run `warren-coordinator serve` once first")?;
    raw.parse()
        .with_context(|| format!("stored public address {raw:?} is invalid"))
}

/// Current time as Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
