//! API token routes: create (`read` or `admin`, with a name), list and revoke. The secret is in
//! the creation answer only; the store keeps its SHA-256 ([`super::auth`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{hash_token, new_secret};
use super::error::{ApiError, ApiJson, Id};
use super::rfc3339;
use crate::invite::unix_now;
use crate::mesh::Mesh;
use crate::store::{NewToken, Role, TokenRow};

/// Longest token name, in bytes.
const MAX_NAME: usize = 64;

/// Body of `POST /v1/tokens`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// What the token is for (e.g. "grafana").
    name: String,
    /// `read` (default) or `admin`.
    #[serde(default = "read")]
    role: Role,
}

fn read() -> Role {
    Role::Read
}

/// The listed form of a token.
fn view(t: &TokenRow) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "role": t.role,
        "created_at": rfc3339(t.created_at),
        "revoked": t.revoked,
    })
}

/// `POST /v1/tokens`.
pub async fn create(
    State(mesh): State<Arc<Mesh>>,
    ApiJson(req): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let name = req.name.trim().to_string();
    if name.is_empty() || name.len() > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "name must be 1 to {MAX_NAME} printable characters"
        )));
    }
    let secret = new_secret();
    let new = NewToken {
        secret_hash: hash_token(&secret),
        name,
        role: req.role,
        now: unix_now(),
    };
    let row = TokenRow {
        id: 0,
        name: new.name.clone(),
        role: new.role,
        created_at: new.now,
        revoked: false,
    };
    let id = mesh.with_store(move |s| s.create_token(&new)).await?;
    tracing::info!(token = id, role = row.role.as_str(), "API token created");
    let mut body = view(&TokenRow { id, ..row });
    body["token"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(body)))
}

/// `GET /v1/tokens`.
pub async fn list(State(mesh): State<Arc<Mesh>>) -> Result<Json<Vec<Value>>, ApiError> {
    let rows = mesh.with_store(|s| s.tokens()).await?;
    Ok(Json(rows.iter().map(view).collect()))
}

/// `DELETE /v1/tokens/{id}`.
pub async fn revoke(State(mesh): State<Arc<Mesh>>, Id(id): Id) -> Result<StatusCode, ApiError> {
    let Ok(id) = i64::try_from(id) else {
        return Err(ApiError::not_found("token"));
    };
    if mesh.with_store(move |s| s.revoke_token(id)).await? {
        tracing::info!(token = id, "API token revoked");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("token"))
    }
}
