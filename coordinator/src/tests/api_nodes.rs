//! Node and invite management through the API, checked against what real QUIC sessions see.

use super::*;

/// The PeerUpsert about `id` that `c` receives next (None after 5 s).
async fn upsert_of(
    c: &mut Client,
    id: warren_proto::ids::NodeId,
) -> Option<warren_proto::control::PeerRecord> {
    c.wait_for(|m| match m {
        CoordMessage::PeerUpsert { peer } if peer.node_id == id => Some(peer),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn rename_reaches_the_other_nodes_at_once_and_sticks() {
    let (_d, mesh, addr, a, b) = two_joined([1, 2]).await;
    let (mut a, na) = (a.c, a.rec);
    let (mut b, kb, nb) = (b.c, b.key, b.rec);
    upsert_of(&mut a, nb.node_id).await.expect("A hears B");

    let uri = format!("/v1/nodes/{}", nb.node_id.0);
    let (s, v) = call(&mesh, "PATCH", &uri, Some(TOKEN), r#"{"name":"builder"}"#).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["name"], "builder");
    assert_eq!(v["online"], true);
    let up = upsert_of(&mut a, nb.node_id)
        .await
        .expect("A hears the rename");
    assert_eq!(up.name, "builder");
    // B's own session announces the new name from now on (here: a candidate change).
    b.send(&NodeMessage::Candidates {
        local: vec!["192.0.2.9:4000".parse().unwrap()],
    })
    .await;
    let up = upsert_of(&mut a, nb.node_id).await.expect("candidate news");
    assert_eq!(up.name, "builder");
    // Conflicts and invalid names change nothing.
    let (s, v) = call(&mesh, "PATCH", &uri, Some(TOKEN), r#"{"name":"a"}"#).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&v, "conflict");
    for bad in [
        r#"{"name":"Has Space"}"#,
        r#"{"name":""}"#,
        r#"{"name":"-x"}"#,
    ] {
        let (s, v) = call(&mesh, "PATCH", &uri, Some(TOKEN), bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert_error(&v, "bad_request");
    }
    let (_, v) = call(&mesh, "GET", &uri, Some(TOKEN), "").await;
    assert_eq!(v["name"], "builder");
    // B goes offline: A is told with the new name too; and B logs in again as "builder".
    b.conn.close(0u32.into(), b"bye");
    let down = a
        .wait_for(|m| match m {
            CoordMessage::PeerUpsert { peer } if peer.node_id == nb.node_id && !peer.online => {
                Some(peer)
            }
            _ => None,
        })
        .await
        .expect("B offline");
    assert_eq!(down.name, "builder");
    let (_b2, w) = login(addr, &mesh, &kb).await;
    let CoordMessage::Welcome { node, peers, .. } = w else {
        panic!("{w:?}")
    };
    assert_eq!(node.name, "builder");
    assert_eq!(peers[0].node_id, na.node_id);
}

#[tokio::test]
async fn fixed_name_and_address_invites_over_the_api_and_a_real_join() {
    let (_d, mesh, identity) = mesh();
    let addr = start(&mesh, &identity);
    register(&mesh, "taken", 1); // 10.99.0.1
    let post = |body: &'static str| {
        let mesh = mesh.clone();
        async move { call(&mesh, "POST", "/v1/invites", Some(TOKEN), body).await }
    };
    for (body, status, code) in [
        (r#"{"name":"taken"}"#, StatusCode::CONFLICT, "conflict"),
        (r#"{"ip":"10.99.0.1"}"#, StatusCode::CONFLICT, "conflict"),
        (
            r#"{"ip":"10.98.0.7"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"ip":"10.99.0.0"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"ip":"10.99.0.255"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"ip":"not-an-ip"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"name":"Bad Name"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            r#"{"name":"x","uses":2}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (r#"{"uses":0}"#, StatusCode::BAD_REQUEST, "bad_request"),
        (
            r#"{"expires":"soon"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ] {
        let (s, v) = post(body).await;
        assert_eq!(s, status, "{body}: {v}");
        assert_error(&v, code);
    }
    let (s, v) = post(r#"{"name":"db","ip":"10.99.0.20","expires":"1h"}"#).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(
        (&v["name"], &v["ip"], &v["uses"]),
        (&"db".into(), &"10.99.0.20".into(), &1.into())
    );
    // Reserved for this invite: no second invite and no rename may take them.
    let (s, _) = post(r#"{"name":"db"}"#).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = post(r#"{"ip":"10.99.0.20"}"#).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = call(
        &mesh,
        "PATCH",
        "/v1/nodes/1",
        Some(TOKEN),
        r#"{"name":"db"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (_, list) = call(&mesh, "GET", "/v1/invites", Some(TOKEN), "").await;
    assert_eq!(list[0]["state"], "pending");
    assert_eq!(list[0]["name"], "db");

    // A node asking for another name gets exactly the reserved name and address.
    let token: warren_proto::InviteToken = v["token"].as_str().unwrap().parse().unwrap();
    let key = PrivateKey::from_random([9; 32]);
    let (_c, w) = join(addr, &mesh, &key, token.secret, "laptop").await;
    let CoordMessage::Welcome { node, .. } = w else {
        panic!("{w:?}")
    };
    assert_eq!(node.name, "db");
    assert_eq!(node.mesh_ip.to_string(), "10.99.0.20");
    let (_, list) = call(&mesh, "GET", "/v1/invites", Some(TOKEN), "").await;
    assert_eq!(list[0]["state"], "used");

    // Revoke as before.
    let (s, v) = post(r#"{"name":"spare"}"#).await;
    assert_eq!(s, StatusCode::CREATED);
    let uri = format!("/v1/invites/{}", v["id"]);
    assert_eq!(
        call(&mesh, "DELETE", &uri, Some(TOKEN), "").await.0,
        StatusCode::NO_CONTENT
    );
    let (_, list) = call(&mesh, "GET", "/v1/invites", Some(TOKEN), "").await;
    assert_eq!(list[0]["state"], "revoked");
    // A revoked invite reserves nothing.
    let (s, _) = call(
        &mesh,
        "PATCH",
        "/v1/nodes/1",
        Some(TOKEN),
        r#"{"name":"spare"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn removal_through_the_api_cuts_the_node_off() {
    let (_d, mesh, addr, a, b) = two_joined([3, 4]).await;
    let mut a = a.c;
    let (_b, kb, nb) = (b.c, b.key, b.rec);
    let (s, list) = call(&mesh, "GET", "/v1/nodes", Some(TOKEN), "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let uri = format!("/v1/nodes/{}", nb.node_id.0);
    assert_eq!(
        call(&mesh, "DELETE", &uri, Some(TOKEN), "").await.0,
        StatusCode::NO_CONTENT
    );
    let gone = a.wait_removed().await;
    assert_eq!(gone, Some(nb.node_id));
    let (_b2, w) = login(addr, &mesh, &kb).await;
    assert_not_registered(&w);
    assert_eq!(
        call(&mesh, "GET", &uri, Some(TOKEN), "").await.0,
        StatusCode::NOT_FOUND
    );
}
