//! The HTTP API through `oneshot`.

use super::*;

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
    let (s, body) = call(&mesh, "PUT", "/v1/peers", Some(TOKEN), "").await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed");
    let (s, _) = call(&mesh, "DELETE", "/v1/nodes/abc", Some(TOKEN), "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn path_reports_show_in_peers() {
    use warren_proto::control::{PathInfo, PathState};
    let (_d, mesh, _addr, a, b) = two_joined([1, 2]).await;
    let (mut a, na) = (a.c, a.rec);
    let (_b, nb) = (b.c, b.rec);
    a.send(&NodeMessage::PathReport {
        paths: vec![
            PathInfo {
                peer: nb.node_id,
                path: PathState::Relay,
                reason: Some("punch timed out".into()),
                endpoint: None,
            },
            // A report about itself is ignored.
            PathInfo {
                peer: na.node_id,
                path: PathState::Direct,
                reason: None,
                endpoint: None,
            },
        ],
    })
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (s, body) = call(&mesh, "GET", "/v1/peers", Some(TOKEN), "").await;
        assert_eq!(s, StatusCode::OK);
        let me = body
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "a")
            .unwrap()
            .clone();
        let paths = me["paths"].as_array().unwrap();
        if !paths.is_empty() {
            assert_eq!(paths.len(), 1);
            assert_eq!(paths[0]["peer"], "b");
            assert_eq!(paths[0]["path"], "relay");
            assert_eq!(paths[0]["reason"], "punch timed out");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "path report never showed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
