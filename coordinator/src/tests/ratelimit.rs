//! Per-client rate limits of the API: through `oneshot` with the client address set, and
//! through a real server on loopback with clients on two addresses.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::http::ratelimit::Limits;

fn tight() -> Limits {
    Limits {
        read_per_sec: 1,
        read_burst: 3,
        write_per_sec: 1,
        write_burst: 2,
        ..Default::default()
    }
}

/// One request from `client` through `app`; status, Retry-After and JSON body.
async fn from(
    app: &axum::Router,
    client: &str,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, Option<String>, serde_json::Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let addr: SocketAddr = client.parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(addr));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        retry,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn writes_are_limited_per_client_with_retry_after() {
    let (_d, mesh, _) = mesh();
    let app = crate::http::app_with(mesh.clone(), tight());
    let a = "192.0.2.1:5000";
    for _ in 0..2 {
        let (s, _, _) = from(&app, a, "POST", "/v1/invites", "{}").await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (s, retry, v) = from(&app, a, "POST", "/v1/invites", "{}").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry.as_deref(), Some("1"));
    assert_error(&v, "rate_limited");
    assert_eq!(
        mesh.store.invites().unwrap().len(),
        2,
        "the refused one did nothing"
    );
    // The same client may still read; every route counts, including unknown ones and 401s.
    let (s, _, _) = from(&app, a, "GET", "/v1/invites", "").await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, _) = from(&app, a, "DELETE", "/v1/nope", "").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    // Another client (another port of the same address is the same client) is not affected.
    let (s, _, _) = from(&app, "192.0.2.1:6000", "POST", "/v1/invites", "{}").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    let (s, _, _) = from(&app, "192.0.2.2:5000", "POST", "/v1/invites", "{}").await;
    assert_eq!(s, StatusCode::CREATED);
    // Reads have their own, larger budget.
    let b = "198.51.100.1:1";
    let codes: Vec<StatusCode> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(from(&app, b, "GET", "/v1/health", "").await.0);
        }
        v
    };
    assert_eq!(
        codes,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    // The 429s are counted in the metrics like every answer.
    let text = crate::metrics::render(
        &mesh.metrics,
        &crate::metrics::Gauges {
            nodes_registered: 0,
            nodes_online: 0,
            relay: serde_json::json!({}),
        },
    );
    assert!(
        text.contains(
            "warren_api_requests_total{method=\"POST\",route=\"/v1/invites\",status=\"429\"} 2\n"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn failed_authentication_costs_a_write() {
    let (_d, mesh, _) = mesh();
    let app = crate::http::app_with(mesh.clone(), tight());
    let c = "203.0.113.5:1";
    let guess = |token: &'static str| {
        let mut req = Request::builder()
            .uri("/v1/health")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        req.extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(c.parse().unwrap()));
        let app = app.clone();
        async move { app.oneshot(req).await.unwrap().status() }
    };
    // Two wrong guesses use up the write burst of 2 (and two of the three reads).
    assert_eq!(guess("wrn_guess1").await, StatusCode::UNAUTHORIZED);
    assert_eq!(guess("wrn_guess2").await, StatusCode::UNAUTHORIZED);
    let (s, _, _) = from(&app, c, "POST", "/v1/invites", "{}").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    // A correct token still reads (reads are a separate budget).
    let (s, _, _) = from(&app, c, "GET", "/v1/health", "").await;
    assert_eq!(s, StatusCode::OK);
}

/// A raw HTTP/1.1 request from local address `src` to `server`; the status code.
async fn raw(src: &str, server: SocketAddr, method: &str, path: &str) -> u16 {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(server).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_real_server_tells_clients_apart_by_address() {
    let (_d, mesh, _) = mesh();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = listener.local_addr().unwrap();
    let service = crate::http::service(crate::http::app_with(mesh.clone(), tight()));
    tokio::spawn(async move { axum::serve(listener, service).await });
    let first: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(raw("127.0.0.1", server, "POST", "/v1/invites").await);
        }
        v
    };
    assert_eq!(first, [201, 201, 429]);
    // 127.0.0.2 is loopback too, but another client.
    assert_eq!(raw("127.0.0.2", server, "POST", "/v1/invites").await, 201);
}
