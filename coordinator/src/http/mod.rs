//! The HTTP management API (axum): JSON under `/v1/`, bearer tokens, plus `GET /metrics`
//! (Prometheus text) and `GET /openapi.json`.
//!
//! Layers, outside in: request counting for the metrics ([`observe::count`]), the per-client
//! rate limit ([`ratelimit`]), the router, then per route the token check its entry in the
//! route table asks for ([`auth`]) and the handler. Every route comes from the one table in
//! [`routes`], which the OpenAPI document ([`openapi`]) is generated from as well. Errors are
//! `{"error": {"code", "message"}}` with a stable code, produced by one [`ApiError`] type.
//!
//! Serve it with `into_make_service_with_connect_info::<SocketAddr>()` (see [`service`]) so that
//! the rate limit can tell clients apart.

mod auth;
mod error;
mod invites;
mod nodes;
mod observe;
pub mod openapi;
pub mod ratelimit;
pub mod routes;
mod tokens;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::middleware;
use axum::Router;

pub use error::{ApiError, Code};

use crate::mesh::Mesh;

/// Largest request body accepted, in bytes (bodies are small JSON objects).
pub const MAX_BODY: usize = 64 * 1024;

/// State the handlers share.
#[derive(Clone)]
pub struct Api {
    /// The coordinator's shared state.
    mesh: Arc<Mesh>,
}

impl FromRef<Api> for Arc<Mesh> {
    fn from_ref(api: &Api) -> Self {
        api.mesh.clone()
    }
}

/// The API router with the default rate limits.
pub fn app(mesh: Arc<Mesh>) -> Router {
    app_with(mesh, ratelimit::Limits::default())
}

/// The API router with the given rate limits.
pub fn app_with(mesh: Arc<Mesh>, limits: ratelimit::Limits) -> Router {
    let table = Arc::new(routes::all());
    let mut router: Router<Api> = Router::new();
    for r in table.iter() {
        let check = middleware::from_fn_with_state((mesh.clone(), r.access), auth::check);
        router = router.route(r.path, (r.handler)(r.verb.filter()).route_layer(check));
    }
    let limiter: ratelimit::Shared = Arc::new(Mutex::new(ratelimit::RateLimiter::new(
        limits,
        Instant::now(),
    )));
    router
        .fallback(|| async { ApiError::new(Code::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(Code::MethodNotAllowed, "method not allowed on this route")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(limiter, ratelimit::limit))
        .layer(middleware::from_fn_with_state(
            (mesh.clone(), table),
            observe::count,
        ))
        .with_state(Api { mesh })
}

/// `router` as a service that records each connection's peer address (for the rate limit):
/// `axum::serve(listener, http::service(http::app(mesh)))`.
// `serve` still serves `app` directly (the integrator switches it over); tests use this.
#[cfg_attr(not(test), allow(dead_code))]
pub fn service(router: Router) -> IntoMakeServiceWithConnectInfo<Router, SocketAddr> {
    router.into_make_service_with_connect_info::<SocketAddr>()
}

/// RFC 3339 (UTC, seconds) of a Unix time.
fn rfc3339(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}
