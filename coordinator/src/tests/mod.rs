//! Coordinator tests: the HTTP API through `oneshot` (no server), and control sessions over a
//! real QUIC endpoint on loopback with test clients that speak the node's side of the protocol.
#![allow(clippy::unwrap_used)]

mod api;
mod api_nodes;
mod concurrency;
mod http;
mod metrics;
mod openapi;
mod ratelimit;
mod relay;
mod session;
mod tcp;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;
use warren_proto::control::{CoordMessage, ErrorCode, NodeMessage, PeerRecord};
use warren_proto::ids::PrivateKey;
use warren_proto::proof;

use crate::invite;
use crate::mesh::Mesh;
use crate::testutil::{assert_not_registered, mesh, Client};

const TOKEN: &str = "test-admin-token-0123456789";

async fn call(
    mesh: &Arc<Mesh>,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let app = crate::http::app(mesh.clone());
    let (status, _, bytes) = send(&app, method, uri, token, body).await;
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// One request through `app` (a clone, so the router's state such as its rate limiter is
/// shared between calls); the status, headers and body.
async fn send(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, headers, bytes.to_vec())
}

/// The API router with rate limits no test reaches (for tests that make many calls).
fn roomy_app(mesh: &Arc<Mesh>) -> axum::Router {
    crate::http::app_with(
        mesh.clone(),
        crate::http::ratelimit::Limits {
            read_per_sec: 10_000,
            read_burst: 10_000,
            write_per_sec: 10_000,
            write_burst: 10_000,
            ..Default::default()
        },
    )
}

/// Like [`send`], with the body parsed as JSON (Null if it is not JSON).
async fn send_json(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let (status, _, bytes) = send(app, method, uri, token, body).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// Creates an API token with `role` through the API; its secret.
async fn api_token(mesh: &Arc<Mesh>, role: &str) -> String {
    let body = format!(r#"{{"name":"test-{role}","role":"{role}"}}"#);
    let (s, v) = call(mesh, "POST", "/v1/tokens", Some(TOKEN), &body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["token"].as_str().unwrap().to_string()
}

/// Registers a node directly in the store (offline); its row.
fn register(mesh: &Arc<Mesh>, name: &str, key: u8) -> crate::store::NodeRow {
    let secret = new_invite(mesh, 1);
    mesh.store
        .register(&crate::store::Registration {
            secret_hash: invite::hash_secret(&secret),
            name: name.into(),
            public_key: PrivateKey::from_random([key; 32]).public_key(),
            network: mesh.network,
            now: 1_700_000_000,
        })
        .unwrap()
}

/// Asserts that `body` is the API's error shape with `code`.
fn assert_error(body: &serde_json::Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// Starts a QUIC endpoint for `mesh` on loopback.
fn start(mesh: &Arc<Mesh>, identity: &crate::datadir::Identity) -> std::net::SocketAddr {
    let ep = crate::quic::endpoint(identity, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    tokio::spawn(crate::quic::accept_loop(ep, mesh.clone()));
    addr
}

/// Connects and joins with `key` and invite `secret`; returns the client and the Welcome.
async fn join(
    addr: std::net::SocketAddr,
    mesh: &Arc<Mesh>,
    key: &PrivateKey,
    secret: [u8; 32],
    name: &str,
) -> (Client, CoordMessage) {
    let c = Client::connect(addr, mesh.fingerprint).await;
    join_as(c, key, secret, name).await
}

/// Joins over an already connected client.
async fn join_as(
    mut c: Client,
    key: &PrivateKey,
    secret: [u8; 32],
    name: &str,
) -> (Client, CoordMessage) {
    let (server_ephemeral, nonce) = c.hello(&key.public_key()).await;
    let p = proof::prove(key, &server_ephemeral, &nonce, &c.binding());
    c.send(&NodeMessage::Join {
        invite_secret: secret,
        name: name.into(),
        proof: p,
    })
    .await;
    let reply = c.recv().await.expect("a reply to join");
    (c, reply)
}

/// Connects and logs in with an already registered `key`; returns the client and the reply.
async fn login(
    addr: std::net::SocketAddr,
    mesh: &Arc<Mesh>,
    key: &PrivateKey,
) -> (Client, CoordMessage) {
    let mut c = Client::connect(addr, mesh.fingerprint).await;
    let (server_ephemeral, nonce) = c.hello(&key.public_key()).await;
    let p = proof::prove(key, &server_ephemeral, &nonce, &c.binding());
    c.send(&NodeMessage::Login { proof: p }).await;
    let reply = c.recv().await.expect("a reply to login");
    (c, reply)
}

/// A node joined to a test coordinator.
struct Joined {
    /// Its control client.
    c: Client,
    /// Its key (to log in again).
    key: PrivateKey,
    /// Its record, from the Welcome.
    rec: PeerRecord,
}

/// A fresh coordinator on loopback with nodes named `a` and `b` joined through one two-use
/// invite, their keys made from `seeds`.
async fn two_joined(
    seeds: [u8; 2],
) -> (
    crate::testutil::TempDir,
    Arc<Mesh>,
    std::net::SocketAddr,
    Joined,
    Joined,
) {
    let (dir, mesh, identity) = mesh();
    let addr = start(&mesh, &identity);
    let secret = new_invite(&mesh, 2);
    let mut joined = Vec::new();
    for (seed, name) in seeds.into_iter().zip(["a", "b"]) {
        let key = PrivateKey::from_random([seed; 32]);
        let (c, w) = join(addr, &mesh, &key, secret, name).await;
        let CoordMessage::Welcome { node: rec, .. } = w else {
            panic!("{name} should join: {w:?}")
        };
        joined.push(Joined { c, key, rec });
    }
    let b = joined.pop().expect("two joined");
    let a = joined.pop().expect("two joined");
    (dir, mesh, addr, a, b)
}

fn new_invite(mesh: &Arc<Mesh>, uses: u32) -> [u8; 32] {
    let t = invite::create(
        mesh.store.as_ref(),
        mesh.public_addr.clone(),
        mesh.fingerprint,
        uses,
        None,
        invite::unix_now(),
    )
    .unwrap();
    t.secret
}
