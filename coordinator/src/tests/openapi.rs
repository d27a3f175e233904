//! The OpenAPI document is true: everything it documents is routed, everything routed is
//! documented, its references resolve, and real answers carry the fields it promises.

use super::*;
use serde_json::Value;

/// The document, fetched without a token.
async fn document(app: &axum::Router) -> Value {
    let (s, doc) = send_json(app, "GET", "/openapi.json", None, "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.0.3");
    doc
}

/// Whether an answer came from the router's own fallbacks (no such route or method).
fn unrouted(s: StatusCode, body: &Value) -> bool {
    s == StatusCode::METHOD_NOT_ALLOWED
        || (s == StatusCode::NOT_FOUND && body["error"]["message"] == "no such route")
}

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

#[tokio::test]
async fn every_documented_operation_is_routed_and_nothing_else() {
    let (_d, mesh, _) = mesh();
    register(&mesh, "one", 1);
    let app = roomy_app(&mesh);
    let doc = document(&app).await;
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, ops) in paths {
        let uri = path.replace("{id}", "1");
        for m in METHODS {
            let documented = ops.get(m.to_ascii_lowercase()).is_some();
            let body = if documented && ops[m.to_ascii_lowercase()]["requestBody"].is_object() {
                "{}"
            } else {
                ""
            };
            let (s, v) = send_json(&app, m, &uri, Some(TOKEN), body).await;
            if documented {
                operations += 1;
                assert!(
                    !unrouted(s, &v),
                    "{m} {path} is documented but not routed: {s}"
                );
            } else if m != "HEAD" {
                // HEAD is answered wherever GET is (HTTP semantics); other methods must not be.
                assert!(
                    unrouted(s, &v),
                    "{m} {path} is routed but not documented: {s}"
                );
            }
        }
    }
    // Every route of the table is in the document (the router is built from that table), each
    // with its own operation id.
    let table = crate::http::routes::all();
    assert_eq!(operations, table.len());
    let ids: std::collections::HashSet<&str> = paths
        .values()
        .flat_map(|ops| ops.as_object().unwrap().values())
        .map(|op| op["operationId"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), table.len());
    assert!(ids.contains("patch_v1_nodes_id") && ids.contains("get_openapi_json"));
    for r in &table {
        let op = &doc["paths"][r.path][r.verb.as_str().to_ascii_lowercase()];
        assert!(
            op.is_object(),
            "{} {} undocumented",
            r.verb.as_str(),
            r.path
        );
        let role = op["x-warren-role"].as_str().unwrap();
        let expected = match r.access {
            crate::http::routes::Access::Public => "none",
            crate::http::routes::Access::Read => "read",
            crate::http::routes::Access::Admin => "admin",
        };
        assert_eq!(role, expected, "{}", r.path);
    }
    // Paths outside the document are not routed either.
    for uri in [
        "/",
        "/v1",
        "/v1/node",
        "/v1/nodes/1/x",
        "/v2/nodes",
        "/metrics/x",
    ] {
        let (s, v) = send_json(&app, "GET", uri, Some(TOKEN), "").await;
        assert!(unrouted(s, &v), "{uri}");
    }
}

/// Every `$ref` in `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// Asserts `value` has every field the schema `name` requires (following `allOf`).
fn check(doc: &Value, name: &str, value: &Value) {
    let schema = &doc["components"]["schemas"][name];
    assert!(schema.is_object(), "no schema {name}");
    let parts: Vec<&Value> = match schema["allOf"].as_array() {
        Some(all) => all
            .iter()
            .map(|p| match p["$ref"].as_str() {
                Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap()],
                None => p,
            })
            .collect(),
        None => vec![schema],
    };
    for part in parts {
        for field in part["required"].as_array().into_iter().flatten() {
            let field = field.as_str().unwrap();
            assert!(value.get(field).is_some(), "{name} lacks {field}: {value}");
        }
    }
}

#[tokio::test]
async fn references_resolve_and_answers_match_their_schemas() {
    let (_d, mesh, _) = mesh();
    let app = crate::http::app(mesh.clone());
    let doc = document(&app).await;
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        assert!(doc["components"]["schemas"][name].is_object(), "{r}");
    }
    register(&mesh, "one", 1);
    let (_, health) = send_json(&app, "GET", "/v1/health", Some(TOKEN), "").await;
    check(&doc, "Health", &health);
    let (_, nodes) = send_json(&app, "GET", "/v1/nodes", Some(TOKEN), "").await;
    check(&doc, "Node", &nodes[0]);
    let (_, node) = send_json(&app, "GET", "/v1/nodes/1", Some(TOKEN), "").await;
    check(&doc, "Node", &node);
    let (_, peers) = send_json(&app, "GET", "/v1/peers", Some(TOKEN), "").await;
    check(&doc, "Node", &peers[0]);
    let (_, created) = send_json(&app, "POST", "/v1/invites", Some(TOKEN), r#"{"name":"x"}"#).await;
    check(&doc, "InviteCreated", &created);
    let (_, invites) = send_json(&app, "GET", "/v1/invites", Some(TOKEN), "").await;
    check(&doc, "Invite", &invites[0]);
    let (_, token) = send_json(&app, "POST", "/v1/tokens", Some(TOKEN), r#"{"name":"t"}"#).await;
    check(&doc, "TokenCreated", &token);
    let (_, tokens) = send_json(&app, "GET", "/v1/tokens", Some(TOKEN), "").await;
    check(&doc, "Token", &tokens[0]);
    let (_, err) = send_json(&app, "GET", "/v1/nodes/7", Some(TOKEN), "").await;
    check(&doc, "Error", &err);
    let codes =
        &doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"];
    assert!(codes.as_array().unwrap().contains(&err["error"]["code"]));
}
