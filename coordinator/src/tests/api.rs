//! The management API's access rules, API tokens and error answers, through `oneshot`.

use super::*;
use crate::http::routes::{self, Access, Verb};

/// Every route of the table with `{id}` filled in, and a body for those that take one.
fn every_route() -> Vec<(Verb, Access, String, &'static str)> {
    routes::all()
        .into_iter()
        .map(|r| {
            let body = if r.request.is_some() { "{}" } else { "" };
            (r.verb, r.access, r.path.replace("{id}", "1"), body)
        })
        .collect()
}

#[tokio::test]
async fn every_route_needs_a_token_and_write_routes_an_admin_one() {
    let (_d, mesh, _) = mesh();
    // Node 1 exists, so that the read routes on it answer 200.
    assert_eq!(register(&mesh, "one", 1).id.0, 1);
    let read = api_token(&mesh, "read").await;
    let app = roomy_app(&mesh);
    let mut writes = 0;
    for (verb, access, uri, body) in every_route() {
        let m = verb.as_str();
        let (s, v) = send_json(&app, m, &uri, None, body).await;
        if access == Access::Public {
            assert_eq!(s, StatusCode::OK, "{m} {uri} needs no token");
            continue;
        }
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {uri} without a token");
        assert_error(&v, "unauthorized");
        for bad in ["wrong-token", "wrn_00", &format!("{read}x")] {
            let (s, v) = send_json(&app, m, &uri, Some(bad), body).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {uri} with {bad}");
            assert_error(&v, "unauthorized");
        }
        let (s, v) = send_json(&app, m, &uri, Some(&read), body).await;
        if verb == Verb::Get {
            assert_eq!(s, StatusCode::OK, "{m} {uri} with a read token: {v}");
        } else {
            writes += 1;
            assert_eq!(s, StatusCode::FORBIDDEN, "{m} {uri} with a read token");
            assert_error(&v, "forbidden");
        }
    }
    assert!(writes >= 6, "the table lists the write routes");
    // The read token changed nothing.
    assert_eq!(mesh.store.nodes().unwrap().len(), 1);
    assert_eq!(mesh.store.tokens().unwrap().len(), 1);
}

#[tokio::test]
async fn tokens_are_created_listed_revoked_and_stored_hashed() {
    let (_d, mesh, _) = mesh();
    let app = crate::http::app(mesh.clone());
    let (s, created) = send_json(
        &app,
        "POST",
        "/v1/tokens",
        Some(TOKEN),
        r#"{"name":"ci","role":"admin"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let secret = created["token"].as_str().unwrap().to_string();
    assert!(secret.starts_with("wrn_"));
    assert_eq!(created["role"], "admin");
    // An admin API token can do admin things, such as making a read token (the default role).
    let (s, read) = send_json(
        &app,
        "POST",
        "/v1/tokens",
        Some(&secret),
        r#"{"name":"grafana"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(read["role"], "read");
    let (s, list) = send_json(&app, "GET", "/v1/tokens", Some(&secret), "").await;
    assert_eq!(s, StatusCode::OK);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "grafana");
    assert_eq!(list[1]["name"], "ci");
    assert!(
        list.iter().all(|t| t.get("token").is_none()),
        "secrets are shown once"
    );
    // Only the hash is stored.
    let row = mesh
        .store
        .token_by_hash(
            &sha2::Digest::finalize(sha2::Digest::chain_update(
                <sha2::Sha256 as sha2::Digest>::new(),
                secret.as_bytes(),
            ))
            .into(),
        )
        .unwrap()
        .unwrap();
    assert_eq!(row.id, created["id"].as_i64().unwrap());
    // Revoked: 401 from then on; revoking again finds it, an unknown id does not.
    let uri = format!("/v1/tokens/{}", created["id"]);
    assert_eq!(
        send(&app, "DELETE", &uri, Some(TOKEN), "").await.0,
        StatusCode::NO_CONTENT
    );
    let (s, v) = send_json(&app, "GET", "/v1/health", Some(&secret), "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_error(&v, "unauthorized");
    let (_, list) = send_json(&app, "GET", "/v1/tokens", Some(TOKEN), "").await;
    assert_eq!(list[1]["revoked"], true);
    let (s, v) = send_json(&app, "DELETE", "/v1/tokens/999", Some(TOKEN), "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found");
    // The bootstrap admin token keeps working.
    assert_eq!(
        send(&app, "GET", "/v1/tokens", Some(TOKEN), "").await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn bad_token_requests_get_clear_4xx() {
    let (_d, mesh, _) = mesh();
    for (body, code) in [
        (r#"{"role":"admin"}"#, "bad_request"),
        (r#"{"name":"","role":"read"}"#, "bad_request"),
        (r#"{"name":"x","role":"root"}"#, "bad_request"),
        (r#"{"name":"x","extra":1}"#, "bad_request"),
        ("[", "bad_request"),
    ] {
        let (s, v) = call(&mesh, "POST", "/v1/tokens", Some(TOKEN), body).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
        assert_error(&v, code);
    }
    assert!(mesh.store.tokens().unwrap().is_empty());
}

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let (_d, mesh, _) = mesh();
    register(&mesh, "one", 1);
    let app = crate::http::app(mesh.clone());
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(100_000));
    let cases: &[(&str, &str, &str, StatusCode, &str)] = &[
        (
            "POST",
            "/v1/invites",
            "{not json",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "POST",
            "/v1/invites",
            r#"{"uses":"two"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "POST",
            "/v1/invites",
            r#"{"bogus":1}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "PATCH",
            "/v1/nodes/1",
            r#"{"name":"ok","x":1}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "PATCH",
            "/v1/nodes/1",
            r#"{}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "PATCH",
            "/v1/nodes/1",
            &big,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "POST",
            "/v1/tokens",
            &big,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "GET",
            "/v1/nodes/abc",
            "",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "GET",
            "/v1/nodes/-1",
            "",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "DELETE",
            "/v1/invites/1.5",
            "",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "DELETE",
            "/v1/tokens/x",
            "",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "GET",
            "/v1/nodes/99",
            "",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "PATCH",
            "/v1/nodes/99",
            r#"{"name":"x"}"#,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "DELETE",
            "/v1/nodes/99",
            "",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "DELETE",
            "/v1/invites/99",
            "",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "DELETE",
            "/v1/invites/18446744073709551615",
            "",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        ("GET", "/v1/nope", "", StatusCode::NOT_FOUND, "not_found"),
        (
            "PUT",
            "/v1/nodes/1",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (m, uri, body, status, code) in cases {
        let (s, v) = send_json(&app, m, uri, Some(TOKEN), body).await;
        assert_eq!(s, *status, "{m} {uri} {:.40}", body);
        assert_error(&v, code);
    }
    // A JSON body without the JSON content type.
    let req = Request::builder()
        .method("PATCH")
        .uri("/v1/nodes/1")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::from(r#"{"name":"x"}"#))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // None of it changed the node.
    assert_eq!(mesh.store.nodes().unwrap()[0].name, "one");
}

#[tokio::test]
async fn tokens_invites_and_nodes_survive_a_restart() {
    let (d, mesh, _) = mesh();
    register(&mesh, "kept", 1);
    let read = api_token(&mesh, "read").await;
    let (s, inv) = call(
        &mesh,
        "POST",
        "/v1/invites",
        Some(TOKEN),
        r#"{"name":"later","ip":"10.99.0.50","expires":"1h"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    drop(mesh);
    // A new coordinator over the same data directory.
    let dd = crate::datadir::DataDir::open_or_init(&d.0).unwrap();
    let store: Arc<dyn crate::store::Store> = Arc::new(dd.store().unwrap());
    let mesh2 = Arc::new(Mesh::new(
        store,
        "10.99.0.0/24".parse().unwrap(),
        "127.0.0.1:7443".parse().unwrap(),
        dd.identity().unwrap().fingerprint,
        TOKEN.into(),
    ));
    let (s, nodes) = call(&mesh2, "GET", "/v1/nodes", Some(&read), "").await;
    assert_eq!(s, StatusCode::OK, "the read token still works");
    assert_eq!(nodes[0]["name"], "kept");
    let (_, invites) = call(&mesh2, "GET", "/v1/invites", Some(&read), "").await;
    let listed = invites
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == inv["id"])
        .unwrap();
    assert_eq!(
        (&listed["name"], &listed["ip"], &listed["state"]),
        (
            &json_str("later"),
            &json_str("10.99.0.50"),
            &json_str("pending")
        )
    );
    // The invite token from before the restart still registers its node, as reserved.
    let token: warren_proto::InviteToken = inv["token"].as_str().unwrap().parse().unwrap();
    let row = mesh2
        .store
        .register(&crate::store::Registration {
            secret_hash: invite::hash_secret(&token.secret),
            name: "whatever".into(),
            public_key: PrivateKey::from_random([2; 32]).public_key(),
            network: mesh2.network,
            now: invite::unix_now(),
        })
        .unwrap();
    assert_eq!(
        (row.name.as_str(), row.mesh_ip.to_string()),
        ("later", "10.99.0.50".into())
    );
}

fn json_str(s: &str) -> serde_json::Value {
    serde_json::Value::String(s.into())
}
