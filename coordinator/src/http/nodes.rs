//! Node routes: list (`GET /v1/nodes`, and `GET /v1/peers` as it always was), get, rename and
//! remove. A node's view joins its stored row with its live state in the registry.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use warren_proto::control::PathState;
use warren_proto::ids::NodeId;

use super::error::{ApiError, ApiJson, Id};
use super::rfc3339;
use crate::invite::unix_now;
use crate::mesh::Mesh;
use crate::store::{NodeName, NodeRow, RenameError};

/// One node, as the API shows it.
#[derive(Serialize)]
pub struct NodeView {
    /// Node id.
    id: u64,
    /// Unique name.
    name: String,
    /// Mesh address.
    ip: String,
    /// Static public key (base64).
    public_key: String,
    /// Whether it is connected now.
    online: bool,
    /// Its candidates while online (reflexive first), empty otherwise.
    endpoints: Vec<String>,
    /// Now while online, else when it was last connected (RFC 3339).
    last_seen: String,
    /// Registration time (RFC 3339).
    created_at: String,
    /// How this node reaches each peer, as it last reported (empty while offline).
    paths: Vec<PathView>,
}

/// One entry of [`NodeView::paths`].
#[derive(Serialize)]
struct PathView {
    /// The peer's id.
    peer_id: u64,
    /// The peer's name, if it still exists.
    peer: Option<String>,
    /// `direct`, `relay` or `connecting`.
    path: PathState,
    /// Why the path is what it is (e.g. why relay), if the node said.
    reason: Option<String>,
    /// The peer's address on a direct path.
    endpoint: Option<String>,
}

/// The view of `n`; `names` resolves peer ids to names.
fn view(mesh: &Mesh, n: &NodeRow, names: &HashMap<NodeId, String>, now: i64) -> NodeView {
    let endpoints = mesh.registry.candidates(n.id);
    let online = endpoints.is_some();
    NodeView {
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
                peer: names.get(&p.peer).cloned(),
                path: p.path,
                reason: p.reason,
                endpoint: p.endpoint.map(|e| e.to_string()),
            })
            .collect(),
    }
}

/// Id-to-name map of `nodes`.
fn names(nodes: &[NodeRow]) -> HashMap<NodeId, String> {
    nodes.iter().map(|n| (n.id, n.name.clone())).collect()
}

/// `GET /v1/nodes` and `GET /v1/peers`.
pub async fn list(State(mesh): State<Arc<Mesh>>) -> Result<Json<Vec<NodeView>>, ApiError> {
    let nodes = mesh.with_store(|s| s.nodes()).await?;
    let (names, now) = (names(&nodes), unix_now());
    Ok(Json(
        nodes.iter().map(|n| view(&mesh, n, &names, now)).collect(),
    ))
}

/// `GET /v1/nodes/{id}`.
pub async fn get(State(mesh): State<Arc<Mesh>>, Id(id): Id) -> Result<Json<NodeView>, ApiError> {
    let nodes = mesh.with_store(|s| s.nodes()).await?;
    let node = nodes
        .iter()
        .find(|n| n.id == NodeId(id))
        .ok_or_else(|| ApiError::not_found("node"))?;
    Ok(Json(view(&mesh, node, &names(&nodes), unix_now())))
}

/// Body of `PATCH /v1/nodes/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    /// The new name (lowercase letters, digits and inner `-`, at most 63).
    name: String,
}

/// `PATCH /v1/nodes/{id}`.
pub async fn rename(
    State(mesh): State<Arc<Mesh>>,
    Id(id): Id,
    ApiJson(body): ApiJson<Rename>,
) -> Result<Json<NodeView>, ApiError> {
    let name = NodeName::parse(&body.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let row = mesh
        .rename_node(NodeId(id), name)
        .await
        .map_err(|e| match e {
            RenameError::NotFound => ApiError::not_found("node"),
            RenameError::NameTaken(_) => ApiError::conflict(e.to_string()),
            RenameError::Store(e) => e.into(),
        })?;
    tracing::info!(node = %row.id, "node renamed through the API");
    let nodes = mesh.with_store(|s| s.nodes()).await?;
    Ok(Json(view(&mesh, &row, &names(&nodes), unix_now())))
}

/// `DELETE /v1/nodes/{id}`.
pub async fn remove(State(mesh): State<Arc<Mesh>>, Id(id): Id) -> Result<StatusCode, ApiError> {
    if mesh.remove_node(NodeId(id)).await? {
        tracing::info!(node = %NodeId(id), "node removed through the API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("node"))
    }
}
