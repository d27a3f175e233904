//! Coordinator tests: the HTTP API through `oneshot` (no server), and control sessions over a
//! real QUIC endpoint on loopback with test clients that speak the node's side of the protocol.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;
use warren_proto::control::{CoordMessage, ErrorCode, NodeMessage, CONTROL_VERSION};
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

#[tokio::test]
async fn every_v1_route_needs_the_admin_token() {
    let (_d, mesh, _) = mesh();
    for (m, uri) in [
        ("GET", "/v1/health"),
        ("GET", "/v1/peers"),
        ("GET", "/v1/invites"),
        ("POST", "/v1/invites"),
        ("DELETE", "/v1/invites/1"),
        ("DELETE", "/v1/nodes/1"),
    ] {
        let (s, body) = call(&mesh, m, uri, None, "").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {uri}");
        assert_eq!(body["error"]["code"], "unauthorized");
        let (s, _) = call(&mesh, m, uri, Some("wrong-token"), "").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {uri} with a wrong token");
    }
    let (s, body) = call(&mesh, "GET", "/v1/health", Some(TOKEN), "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["status"], "ok");
}

#[tokio::test]
async fn invites_and_peers_over_http() {
    let (_d, mesh, _) = mesh();
    let (s, body) = call(
        &mesh,
        "POST",
        "/v1/invites",
        Some(TOKEN),
        r#"{"uses":2,"expires":"1h"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let token: warren_proto::InviteToken = body["token"].as_str().unwrap().parse().unwrap();
    assert_eq!(token.fingerprint, mesh.fingerprint);
    let (s, body) = call(&mesh, "GET", "/v1/invites", Some(TOKEN), "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body[0]["uses_left"], 2);

    // Register a node directly in the store; it is listed offline.
    let key = PrivateKey::from_random([7; 32]).public_key();
    let reg = crate::store::Registration {
        secret_hash: invite::hash_secret(&token.secret),
        name: "box".into(),
        public_key: key,
        network: mesh.network,
        now: 1_700_000_000,
    };
    let row = mesh.store.register(&reg).unwrap();
    let (s, body) = call(&mesh, "GET", "/v1/peers", Some(TOKEN), "").await;
    assert_eq!(s, StatusCode::OK);
    let p = &body[0];
    assert_eq!(p["name"], "box");
    assert_eq!(p["ip"], "10.99.0.1");
    assert_eq!(p["public_key"], key.to_string());
    assert_eq!(p["online"], false);
    assert_eq!(p["endpoints"], serde_json::json!([]));
    assert_eq!(p["last_seen"], "2023-11-14T22:13:20Z");

    // Removal, then 404 for the second try.
    let uri = format!("/v1/nodes/{}", row.id.0);
    assert_eq!(
        call(&mesh, "DELETE", &uri, Some(TOKEN), "").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&mesh, "DELETE", &uri, Some(TOKEN), "").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn bad_requests_get_clear_4xx() {
    let (_d, mesh, _) = mesh();
    let (s, body) = call(&mesh, "POST", "/v1/invites", Some(TOKEN), "{not json").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "bad_request");
    let (s, _) = call(&mesh, "POST", "/v1/invites", Some(TOKEN), r#"{"uses":0}"#).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(
        &mesh,
        "POST",
        "/v1/invites",
        Some(TOKEN),
        r#"{"expires":"soon"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = call(&mesh, "POST", "/v1/invites", Some(TOKEN), r#"{"bogus":1}"#).await;
    assert_eq!(s.as_u16() / 100, 4);
    let big = format!(r#"{{"expires":"{}"}}"#, "x".repeat(100_000));
    let (s, _) = call(&mesh, "POST", "/v1/invites", Some(TOKEN), &big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, body) = call(&mesh, "GET", "/v1/nope", Some(TOKEN), "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    let (s, _) = call(&mesh, "DELETE", "/v1/nodes/abc", Some(TOKEN), "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
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
    let mut c = Client::connect(addr, mesh.fingerprint).await;
    c.send(&NodeMessage::Hello {
        version: CONTROL_VERSION,
        public_key: key.public_key(),
    })
    .await;
    let Some(CoordMessage::Challenge {
        server_ephemeral,
        nonce,
    }) = c.recv().await
    else {
        panic!("expected a challenge")
    };
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

#[tokio::test]
async fn two_nodes_join_see_each_other_and_get_punch_orders() {
    let (_d, mesh, identity) = mesh();
    let addr = start(&mesh, &identity);
    let secret = new_invite(&mesh, 2);
    let (ka, kb) = (
        PrivateKey::from_random([1; 32]),
        PrivateKey::from_random([2; 32]),
    );
    let (mut a, wa) = join(addr, &mesh, &ka, secret, "Alpha").await;
    let CoordMessage::Welcome {
        node,
        reflexive,
        peers,
        ..
    } = wa
    else {
        panic!("{wa:?}")
    };
    assert_eq!(node.name, "alpha");
    // The reflexive address is where the coordinator sees the client's socket.
    assert_eq!(reflexive, a.local);
    assert!(peers.is_empty());
    a.send(&NodeMessage::Candidates {
        local: vec!["192.0.2.5:4000".parse().unwrap()],
    })
    .await;

    let (mut b, wb) = join(addr, &mesh, &kb, secret, "alpha").await;
    let CoordMessage::Welcome {
        node: nb, peers, ..
    } = wb
    else {
        panic!("{wb:?}")
    };
    assert_eq!(nb.name, "alpha-2", "duplicate names get a suffix");
    assert_eq!(peers.len(), 1);
    assert!(peers[0].online);
    assert!(peers[0]
        .candidates
        .contains(&"192.0.2.5:4000".parse().unwrap()));

    // A learns that B came online.
    let up = loop {
        match a.recv().await.expect("peer upsert") {
            CoordMessage::PeerUpsert { peer } if peer.node_id == nb.node_id => break peer,
            _ => continue,
        }
    };
    assert!(up.online);

    // B asks to reach A: both get a Punch order with the other's candidates.
    b.send(&NodeMessage::PunchRequest { peer: node.node_id })
        .await;
    let to_b = loop {
        match b.recv().await.expect("punch for b") {
            CoordMessage::Punch { peer, candidates } => break (peer, candidates),
            _ => continue,
        }
    };
    assert_eq!(to_b.0, node.node_id);
    assert!(to_b.1.contains(&"192.0.2.5:4000".parse().unwrap()));
    let to_a = loop {
        match a.recv().await.expect("punch for a") {
            CoordMessage::Punch { peer, candidates } => break (peer, candidates),
            _ => continue,
        }
    };
    assert_eq!(to_a.0, nb.node_id);
    assert!(!to_a.1.is_empty());

    // Invite had two uses: a third join is refused, and nothing is registered.
    let kc = PrivateKey::from_random([3; 32]);
    let (_c, reply) = join(addr, &mesh, &kc, secret, "c").await;
    assert!(
        matches!(
            reply,
            CoordMessage::Error {
                code: ErrorCode::InviteUsedUp,
                ..
            }
        ),
        "{reply:?}"
    );
    assert_eq!(mesh.store.nodes().unwrap().len(), 2);

    // Garbage on B's stream ends only B's session; A stays online and is told B went offline.
    b.send_raw(b"\x00\x00\x00\x05garbg").await;
    let down = loop {
        match a.recv().await.expect("offline upsert") {
            CoordMessage::PeerUpsert { peer } if peer.node_id == nb.node_id && !peer.online => {
                break peer
            }
            _ => continue,
        }
    };
    assert!(!down.online);
    assert_eq!(mesh.registry.online_count(), 1);
}

#[tokio::test]
async fn wrong_proof_unknown_invite_and_unregistered_login_are_refused() {
    let (_d, mesh, identity) = mesh();
    let addr = start(&mesh, &identity);
    let secret = new_invite(&mesh, 1);
    let key = PrivateKey::from_random([4; 32]);

    // A proof made with another key.
    let mut c = Client::connect(addr, mesh.fingerprint).await;
    c.send(&NodeMessage::Hello {
        version: CONTROL_VERSION,
        public_key: key.public_key(),
    })
    .await;
    let Some(CoordMessage::Challenge {
        server_ephemeral,
        nonce,
    }) = c.recv().await
    else {
        panic!()
    };
    let other = PrivateKey::from_random([5; 32]);
    let p = proof::prove(&other, &server_ephemeral, &nonce, &c.binding());
    c.send(&NodeMessage::Join {
        invite_secret: secret,
        name: "x".into(),
        proof: p,
    })
    .await;
    assert!(matches!(
        c.recv().await,
        Some(CoordMessage::Error {
            code: ErrorCode::BadProof,
            ..
        })
    ));

    let (_c, reply) = join(addr, &mesh, &key, [0xEE; 32], "x").await;
    assert!(matches!(
        reply,
        CoordMessage::Error {
            code: ErrorCode::InviteUnknown,
            ..
        }
    ));

    // Login with an unregistered key.
    let mut c = Client::connect(addr, mesh.fingerprint).await;
    c.send(&NodeMessage::Hello {
        version: CONTROL_VERSION,
        public_key: key.public_key(),
    })
    .await;
    let Some(CoordMessage::Challenge {
        server_ephemeral,
        nonce,
    }) = c.recv().await
    else {
        panic!()
    };
    let p = proof::prove(&key, &server_ephemeral, &nonce, &c.binding());
    c.send(&NodeMessage::Login { proof: p }).await;
    assert!(matches!(
        c.recv().await,
        Some(CoordMessage::Error {
            code: ErrorCode::NotRegistered,
            ..
        })
    ));

    // Wrong version.
    let mut c = Client::connect(addr, mesh.fingerprint).await;
    c.send(&NodeMessage::Hello {
        version: 999,
        public_key: key.public_key(),
    })
    .await;
    assert!(matches!(
        c.recv().await,
        Some(CoordMessage::Error {
            code: ErrorCode::VersionUnsupported,
            ..
        })
    ));

    // The invite is still unused after all that.
    assert_eq!(mesh.store.invites().unwrap()[0].uses_left, 1);
}
