//! Coordinator tests: the HTTP API through `oneshot` (no server), and control sessions over a
//! real QUIC endpoint on loopback with test clients that speak the node's side of the protocol.
#![allow(clippy::unwrap_used)]

mod http;
mod relay;
mod session;
mod tcp;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;
use warren_proto::control::{CoordMessage, ErrorCode, NodeMessage};
use warren_proto::ids::PrivateKey;
use warren_proto::proof;

use crate::invite;
use crate::mesh::Mesh;
use crate::testutil::{mesh, Client};

const TOKEN: &str = "test-admin-token-0123456789";

async fn call(
    mesh: &Arc<Mesh>,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    let resp = crate::http::app(mesh.clone())
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, json)
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
