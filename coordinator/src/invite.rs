//! Invite creation, shared by the CLI (`invite create`) and the HTTP API: a random secret whose
//! SHA-256 goes into the store, wrapped in a token with the coordinator's public address and
//! certificate fingerprint. [`create_with`] adds the options of the HTTP API: a fixed name and
//! a fixed mesh address for the node that redeems the invite (reserved until then).

use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use warren_proto::ids::{MeshIp, MeshNetwork};
use warren_proto::token::{CoordinatorAddr, InviteToken};

use crate::store::{InviteError, NewInvite, NodeName, Store};

/// Meta key under which `serve` records the address tokens carry.
pub const META_PUBLIC_ADDR: &str = "public_addr";
/// Meta key of the mesh network, recorded by `serve` and fixed once nodes exist.
pub const META_NETWORK: &str = "network";

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
    let options = InviteOptions {
        uses,
        expires,
        name: None,
        ip: None,
    };
    let (_, token) = store_invite(store, public_addr, fingerprint, &options, now)
        .context("storing the invite")?;
    Ok(token)
}

/// What an invite allows.
#[derive(Clone, Debug)]
pub struct InviteOptions {
    /// Redemptions allowed (at least 1; exactly 1 with a fixed name or address).
    pub uses: u32,
    /// Lifetime from creation (none: valid until used up or revoked).
    pub expires: Option<Duration>,
    /// Name the redeeming node gets, instead of the one it asks for.
    pub name: Option<NodeName>,
    /// Mesh address the redeeming node gets.
    pub ip: Option<MeshIp>,
}

/// Why an invite with options was refused.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// `uses` is zero.
    #[error("uses must be at least 1")]
    NoUses,
    /// A fixed name or address can only be given to one node.
    #[error("an invite with a fixed name or ip can be used once (uses must be 1)")]
    FixedNeedsOneUse,
    /// The fixed address is not a host address of the mesh network.
    #[error("{ip} is not a host address of the mesh network {network}")]
    OutsideNetwork {
        /// The address asked for.
        ip: MeshIp,
        /// The mesh network.
        network: MeshNetwork,
    },
    /// The store refused it (name or address taken) or failed.
    #[error(transparent)]
    Store(#[from] InviteError),
}

impl From<crate::store::StoreError> for CreateError {
    fn from(e: crate::store::StoreError) -> Self {
        CreateError::Store(e.into())
    }
}

/// Creates an invite with `options` in a mesh over `network`; returns its id and token.
pub fn create_with(
    store: &dyn Store,
    public_addr: CoordinatorAddr,
    fingerprint: [u8; 32],
    network: MeshNetwork,
    options: &InviteOptions,
    now: i64,
) -> Result<(i64, InviteToken), CreateError> {
    if options.uses == 0 {
        return Err(CreateError::NoUses);
    }
    if (options.name.is_some() || options.ip.is_some()) && options.uses != 1 {
        return Err(CreateError::FixedNeedsOneUse);
    }
    if let Some(ip) = options.ip {
        let is_host = network
            .host_index(ip)
            .and_then(|i| network.host(i))
            .is_some();
        if !is_host {
            return Err(CreateError::OutsideNetwork { ip, network });
        }
    }
    Ok(store_invite(store, public_addr, fingerprint, options, now)?)
}

/// Stores an invite with a fresh secret; returns its id and token.
fn store_invite(
    store: &dyn Store,
    public_addr: CoordinatorAddr,
    fingerprint: [u8; 32],
    options: &InviteOptions,
    now: i64,
) -> Result<(i64, InviteToken), InviteError> {
    let secret: [u8; 32] = rand::random();
    let id = store.create_invite(&NewInvite {
        secret_hash: hash_secret(&secret),
        uses: options.uses,
        expires_at: expires_at(options.expires, now),
        name: options.name.clone(),
        ip: options.ip,
        now,
    })?;
    let token = InviteToken {
        addrs: vec![public_addr],
        fingerprint,
        secret,
    };
    Ok((id, token))
}

/// Expiry time of an invite created at `now` (at least one second later).
pub fn expires_at(expires: Option<Duration>, now: i64) -> Option<i64> {
    expires.map(|d| {
        let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX).max(1);
        now.saturating_add(secs)
    })
}

/// The public address `serve` recorded, for processes that are not `serve`.
pub fn recorded_public_addr(store: &dyn Store) -> Result<CoordinatorAddr> {
    recorded(store, META_PUBLIC_ADDR, "public address")
}

/// The mesh network `serve` recorded in this store.
pub fn recorded_network(store: &dyn Store) -> Result<MeshNetwork> {
    recorded(store, META_NETWORK, "network")
}

/// A value `serve` recorded under meta `key` (`what` names it in errors).
fn recorded<T>(store: &dyn Store, key: &str, what: &str) -> Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let raw = store
        .meta(key)?
        .context("the coordinator has not been started in this data directory yet; run `warren-coordinator serve` once first")?;
    raw.parse()
        .with_context(|| format!("stored {what} {raw:?} is invalid"))
}

/// Current time as Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
