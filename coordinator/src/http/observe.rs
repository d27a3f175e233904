//! Routes that describe the coordinator rather than change it: `GET /v1/health`,
//! `GET /metrics` (Prometheus text, [`crate::metrics`]) and `GET /openapi.json`; and the
//! middleware that counts every API request by method, route template and status.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::routes::{self, Route};
use crate::mesh::Mesh;
use crate::metrics::{self, Gauges};

/// `GET /v1/health`.
pub async fn health(State(mesh): State<Arc<Mesh>>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "nodes_online": mesh.registry.online_count(),
        "relay": mesh.relay.stats.to_json(&mesh.relay.limits),
    }))
}

/// `GET /metrics`.
pub async fn metrics(State(mesh): State<Arc<Mesh>>) -> Result<Response, ApiError> {
    let nodes_registered = mesh.with_store(|s| s.nodes()).await?.len();
    let gauges = Gauges {
        nodes_registered,
        nodes_online: mesh.registry.online_count(),
        relay: mesh.relay.stats.to_json(&mesh.relay.limits),
    };
    let text = metrics::render(&mesh.metrics, &gauges);
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

/// `GET /openapi.json`.
pub async fn openapi() -> Json<Value> {
    Json(super::openapi::document(&routes::all()))
}

/// The method label of a request (a fixed set, so that odd methods cannot grow the series).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// State of [`count`]: the mesh (its metrics) and the route table.
pub type CountState = (Arc<Mesh>, Arc<Vec<Route>>);

/// Middleware: counts the request with its answer's status.
pub async fn count(State((mesh, table)): State<CountState>, req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let route = routes::template(&table, req.uri().path()).unwrap_or("unmatched");
    let resp = next.run(req).await;
    mesh.metrics
        .api_request(method, route, resp.status().as_u16());
    resp
}
