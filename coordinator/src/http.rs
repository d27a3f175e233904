//! The HTTP API (JSON under `/v1/`, bearer token). Every route needs
//! `Authorization: Bearer <admin token>`; errors are `{"error": {"code", "message"}}` with a
//! stable code, produced by one [`ApiError`] type.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use warren_proto::control::PathState;
use warren_proto::ids::NodeId;

use crate::invite::{self, unix_now};
use crate::mesh::Mesh;
use crate::store::StoreError;

/// Largest request body accepted, in bytes.
const MAX_BODY: usize = 64 * 1024;

/// An API failure: HTTP status, stable code and message.
#[derive(Debug)]
pub struct ApiError {
    /// Status to answer with.
    status: StatusCode,
    /// Stable machine-readable code.
    code: &'static str,
    /// Human-readable message.
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure in API");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!(error = %e, "API failure");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "bad_request"
        };
        Self::new(status, code, e.body_text())
    }
}

/// The API router.
pub fn app(mesh: Arc<Mesh>) -> Router {
    let v1 = Router::new()
        .route("/health", get(health))
        .route("/peers", get(peers))
        .route("/nodes/{id}", delete(remove_node))
        .route("/invites", get(list_invites).post(create_invite))
        .route("/invites/{id}", delete(revoke_invite))
        .route_layer(middleware::from_fn_with_state(mesh.clone(), require_admin));
    Router::new()
        .nest("/v1", v1)
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(mesh)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_admin(
    State(mesh): State<Arc<Mesh>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(t) if same(t.as_bytes(), mesh.admin_token.as_bytes()) => Ok(next.run(req).await),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token",
        )),
    }
}

fn rfc3339(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn health(State(mesh): State<Arc<Mesh>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "nodes_online": mesh.registry.online_count(),
        "relay": mesh.relay.stats.to_json(&mesh.relay.limits),
    }))
}

/// One node in `GET /v1/peers`.
#[derive(Serialize)]
struct PeerView {
    id: u64,
    name: String,
    ip: String,
    public_key: String,
    online: bool,
    endpoints: Vec<String>,
    last_seen: String,
    created_at: String,
    /// How this node reaches each peer, as it last reported (empty while offline).
    paths: Vec<PathView>,
}

/// One entry of [`PeerView::paths`].
#[derive(Serialize)]
struct PathView {
    peer_id: u64,
    peer: Option<String>,
    path: PathState,
    reason: Option<String>,
    endpoint: Option<String>,
}

async fn peers(State(mesh): State<Arc<Mesh>>) -> Result<Json<Vec<PeerView>>, ApiError> {
    let nodes = mesh.with_store(|s| s.nodes()).await?;
    let now = unix_now();
    let names: std::collections::HashMap<NodeId, &str> =
        nodes.iter().map(|n| (n.id, n.name.as_str())).collect();
    let views = nodes
        .iter()
        .map(|n| {
            let endpoints = mesh.registry.candidates(n.id);
            let online = endpoints.is_some();
            PeerView {
                id: n.id.0,
                name: n.name.clone(),
                ip: n.mesh_ip.to_string(),
                public_key: n.public_key.to_string(),
                online,
                endpoints: endpoints
                    .unwrap_or_default()
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                last_seen: rfc3339(if online { now } else { n.last_seen }),
                created_at: rfc3339(n.created_at),
                paths: mesh
                    .registry
                    .paths(n.id)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| PathView {
                        peer_id: p.peer.0,
                        peer: names.get(&p.peer).map(|s| s.to_string()),
                        path: p.path,
                        reason: p.reason,
                        endpoint: p.endpoint.map(|e| e.to_string()),
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(Json(views))
}

async fn remove_node(
    State(mesh): State<Arc<Mesh>>,
    Path(id): Path<u64>,
) -> Result<StatusCode, ApiError> {
    if mesh.remove_node(NodeId(id)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("node"))
    }
}

/// Body of `POST /v1/invites`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateInvite {
    /// Redemptions allowed (default 1).
    #[serde(default = "one")]
    uses: u32,
    /// Lifetime like "1h" or "7d" (default: none).
    expires: Option<String>,
}

fn one() -> u32 {
    1
}

async fn create_invite(
    State(mesh): State<Arc<Mesh>>,
    body: Result<Json<CreateInvite>, JsonRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Json(req) = body?;
    if req.uses == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "uses must be at least 1",
        ));
    }
    let expires = req
        .expires
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expires: {e}"),
            )
        })?;
    let (addr, fp, uses) = (mesh.public_addr.clone(), mesh.fingerprint, req.uses);
    let token = mesh
        .with_store(move |s| invite::create(s, addr, fp, uses, expires, unix_now()))
        .await?;
    let expires_at = expires.map(|d| rfc3339(unix_now() + d.as_secs() as i64));
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token.to_string(), "uses": uses, "expires_at": expires_at})),
    ))
}

async fn list_invites(
    State(mesh): State<Arc<Mesh>>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let rows = mesh.with_store(|s| s.invites()).await?;
    Ok(Json(
        rows.iter()
            .map(|r| {
                json!({
                    "id": r.id,
                    "uses_left": r.uses_left,
                    "expires_at": r.expires_at.map(rfc3339),
                    "created_at": rfc3339(r.created_at),
                    "revoked": r.revoked,
                })
            })
            .collect(),
    ))
}

async fn revoke_invite(
    State(mesh): State<Arc<Mesh>>,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    if mesh.with_store(move |s| s.revoke_invite(id)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("invite"))
    }
}
