//! Invite routes: create (uses, expiry, optional fixed name and address), list and revoke. The
//! token is in the creation answer only; the store keeps the SHA-256 of its secret.

use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use warren_proto::ids::MeshIp;

use super::error::{ApiError, ApiJson, Id};
use super::rfc3339;
use crate::invite::{self, unix_now, CreateError, InviteOptions};
use crate::mesh::Mesh;
use crate::store::{InviteError, InviteRow, NodeName};

/// Body of `POST /v1/invites`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateInvite {
    /// Redemptions allowed (default 1).
    #[serde(default = "one")]
    uses: u32,
    /// Lifetime like "1h" or "7d" (default: until used up or revoked).
    expires: Option<String>,
    /// Name the redeeming node gets.
    name: Option<String>,
    /// Mesh address the redeeming node gets.
    ip: Option<String>,
}

fn one() -> u32 {
    1
}

/// `POST /v1/invites`.
pub async fn create(
    State(mesh): State<Arc<Mesh>>,
    ApiJson(req): ApiJson<CreateInvite>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let expires = req
        .expires
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("expires: {e} (try 30m, 1h or 7d)")))?;
    if expires.is_some_and(|d| d.is_zero()) {
        return Err(ApiError::bad_request("expires must be longer than zero"));
    }
    let name = req
        .name
        .as_deref()
        .map(NodeName::parse)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("name: {e}")))?;
    let ip = req
        .ip
        .as_deref()
        .map(|s| s.parse::<Ipv4Addr>().map(MeshIp))
        .transpose()
        .map_err(|_| ApiError::bad_request("ip: not an IPv4 address"))?;
    let options = InviteOptions {
        uses: req.uses,
        expires,
        name,
        ip,
    };
    let (addr, fp, network, now) = (
        mesh.public_addr.clone(),
        mesh.fingerprint,
        mesh.network,
        unix_now(),
    );
    let opts = options.clone();
    let (id, token) = mesh
        .with_store(move |s| invite::create_with(s, addr, fp, network, &opts, now))
        .await
        .map_err(|e| match e {
            CreateError::Store(InviteError::Store(e)) => e.into(),
            CreateError::Store(e) => ApiError::conflict(e.to_string()),
            e => ApiError::bad_request(e.to_string()),
        })?;
    tracing::info!(
        invite = id,
        uses = options.uses,
        "invite created through the API"
    );
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": id,
            "token": token.to_string(),
            "uses": options.uses,
            "expires_at": invite::expires_at(options.expires, now).map(rfc3339),
            "name": options.name.map(|n| n.to_string()),
            "ip": options.ip.map(|ip| ip.to_string()),
        })),
    ))
}

/// The listed form of an invite at `now`.
fn view(r: &InviteRow, now: i64) -> Value {
    let state = if r.revoked {
        "revoked"
    } else if r.uses_left == 0 {
        "used"
    } else if !r.pending(now) {
        "expired"
    } else {
        "pending"
    };
    json!({
        "id": r.id,
        "uses_left": r.uses_left,
        "expires_at": r.expires_at.map(rfc3339),
        "created_at": rfc3339(r.created_at),
        "revoked": r.revoked,
        "state": state,
        "name": r.name,
        "ip": r.ip.map(|ip| ip.to_string()),
    })
}

/// `GET /v1/invites`.
pub async fn list(State(mesh): State<Arc<Mesh>>) -> Result<Json<Vec<Value>>, ApiError> {
    let rows = mesh.with_store(|s| s.invites()).await?;
    let now = unix_now();
    Ok(Json(rows.iter().map(|r| view(r, now)).collect()))
}

/// `DELETE /v1/invites/{id}`.
pub async fn revoke(State(mesh): State<Arc<Mesh>>, Id(id): Id) -> Result<StatusCode, ApiError> {
    let Ok(id) = i64::try_from(id) else {
        return Err(ApiError::not_found("invite"));
    };
    if mesh.with_store(move |s| s.revoke_invite(id)).await? {
        tracing::info!(invite = id, "invite revoked through the API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("invite"))
    }
}
