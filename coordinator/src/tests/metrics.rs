//! `GET /metrics`: access, the Prometheus text format, and the values it reports.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::relay::Dropped;

/// Checks `text` against the Prometheus text format 0.0.4 as Warren writes it: HELP and TYPE
/// once per family and before its samples, counters named `*_total`, well-formed labels and
/// values. Returns the samples by their full series name (`name{labels}`).
fn parse(text: &str) -> HashMap<String, f64> {
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut help = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect("HELP has text");
            assert!(name_ok(name) && !doc.is_empty(), "{line}");
            assert!(help.insert(name.to_string()), "HELP twice: {line}");
            assert!(!types.contains_key(name), "HELP after TYPE: {line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(help.contains(name), "TYPE without HELP: {line}");
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            if kind == "counter" {
                assert!(
                    name.ends_with("_total"),
                    "counter {name} must end in _total"
                );
            }
            assert!(types.insert(name.into(), kind.into()).is_none(), "{line}");
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let name = series.split('{').next().unwrap();
            assert!(types.contains_key(name), "sample before TYPE: {line}");
            let labels = &series[name.len()..];
            if !labels.is_empty() {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .expect("labels in braces");
                check_labels(inner, line);
            }
            let v: f64 = value.parse().expect("numeric value");
            assert!(samples.insert(series.to_string(), v).is_none(), "{line}");
        }
    }
    samples
}

/// Checks `k="v",k="v"` with `\\`, `\"` and `\n` escapes in the values.
fn check_labels(inner: &str, line: &str) {
    let mut rest = inner;
    while !rest.is_empty() {
        let (k, after) = rest.split_once("=\"").expect("label k=\"v\"");
        assert!(
            !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (_, '\\') => {
                    let (_, e) = chars.next().expect("escaped char");
                    assert!(matches!(e, '\\' | '"' | 'n'), "bad escape in {line}");
                }
                (i, '"') => break i,
                (_, c) => assert_ne!(c, '\n'),
            }
        };
        rest = &after[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else {
            assert!(rest.is_empty(), "{line}");
        }
    }
}

#[tokio::test]
async fn metrics_need_a_token_and_are_valid_prometheus_text() {
    let (_d, mesh, identity) = mesh();
    let addr = start(&mesh, &identity);
    let app = crate::http::app(mesh.clone());
    assert_eq!(
        send(&app, "GET", "/metrics", None, "").await.0,
        StatusCode::UNAUTHORIZED
    );
    // Some activity: a registration, a refused one, a login, relay traffic, API calls.
    let secret = new_invite(&mesh, 1);
    let key = PrivateKey::from_random([1; 32]);
    let (a, w) = join(addr, &mesh, &key, secret, "a").await;
    assert!(matches!(w, CoordMessage::Welcome { .. }));
    let (_x, w) = join(addr, &mesh, &PrivateKey::from_random([2; 32]), secret, "x").await;
    assert!(matches!(w, CoordMessage::Error { .. }));
    a.conn.close(0u32.into(), b"bye");
    let (_a2, w) = login(addr, &mesh, &key).await;
    assert!(matches!(w, CoordMessage::Welcome { .. }));
    let (_l, w) = login(addr, &mesh, &PrivateKey::from_random([3; 32])).await;
    assert!(matches!(w, CoordMessage::Error { .. }));
    mesh.relay.stats.record(Ok(()), 1000);
    mesh.relay.stats.record(Ok(()), 500);
    mesh.relay.stats.record(Err(Dropped::NoRoute), 10);
    send(&app, "GET", "/v1/nodes/99", Some(TOKEN), "").await;
    send(&app, "GET", "/v1/nodes/98", Some(TOKEN), "").await;
    send(&app, "GET", "/v1/nodes", None, "").await;
    send(&app, "GET", "/nowhere", None, "").await;

    let read = api_token(&mesh, "read").await;
    let (s, headers, body) = send(&app, "GET", "/metrics", Some(&read), "").await;
    assert_eq!(s, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(body).unwrap();
    let m = parse(&text);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
    assert_eq!(get("warren_nodes_registered"), 1.0);
    assert_eq!(get("warren_nodes_online"), 1.0);
    assert_eq!(get("warren_registrations_total"), 1.0);
    assert_eq!(
        get("warren_registration_failures_total{reason=\"invite_used_up\"}"),
        1.0
    );
    assert_eq!(get("warren_logins_total"), 1.0);
    assert_eq!(
        get("warren_login_failures_total{reason=\"not_registered\"}"),
        1.0
    );
    assert_eq!(get("warren_relay_forwarded_packets_total"), 2.0);
    assert_eq!(get("warren_relay_forwarded_bytes_total"), 1500.0);
    assert_eq!(
        get("warren_relay_dropped_packets_total{reason=\"no_route\"}"),
        1.0
    );
    assert_eq!(
        get("warren_relay_dropped_packets_total{reason=\"too_short\"}"),
        0.0
    );
    let api = |method: &str, route: &str, status: u16| {
        format!("warren_api_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}")
    };
    assert_eq!(get(&api("GET", "/v1/nodes/{id}", 404)), 2.0);
    assert_eq!(get(&api("GET", "/v1/nodes", 401)), 1.0);
    assert_eq!(get(&api("GET", "/metrics", 401)), 1.0);
    assert_eq!(get(&api("GET", "unmatched", 404)), 1.0);
    // Nothing identifying a node or its traffic is in the labels.
    assert!(!text.contains("10.99.0."), "no mesh addresses in metrics");
    assert!(!text.contains(&key.public_key().to_string()));
}

#[test]
fn label_values_and_help_are_escaped() {
    let m = crate::metrics::Metrics::default();
    m.login_failed("odd\"reason\\with\nnewline");
    let text = crate::metrics::render(
        &m,
        &crate::metrics::Gauges {
            nodes_registered: 0,
            nodes_online: 0,
            relay: serde_json::json!({}),
        },
    );
    assert!(
        text.contains(r#"warren_login_failures_total{reason="odd\"reason\\with\nnewline"} 1"#),
        "{text}"
    );
    // Empty families still carry HELP and TYPE, and the whole text parses.
    parse(&text);
}
