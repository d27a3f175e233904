//! Control sessions over a real QUIC endpoint on loopback.

use super::*;

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

    // Garbage on B's stream ends only B's session with Error{Protocol}; A stays online and is
    // told B went offline.
    b.send_raw(b"\x00\x00\x00\x05garbg").await;
    assert!(matches!(
        b.recv().await,
        Some(CoordMessage::Error {
            code: ErrorCode::Protocol,
            ..
        })
    ));
    assert!(b.recv().await.is_none(), "B's connection is closed");
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
    let (server_ephemeral, nonce) = c.hello(&key.public_key()).await;
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
    let (server_ephemeral, nonce) = c.hello(&key.public_key()).await;
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

#[tokio::test]
async fn oversized_frame_is_refused_with_a_protocol_error() {
    let (_d, mesh, identity) = mesh();
    let addr = start(&mesh, &identity);
    let secret = new_invite(&mesh, 1);
    let key = PrivateKey::from_random([8; 32]);
    let (mut a, w) = join(addr, &mesh, &key, secret, "a").await;
    assert!(matches!(w, CoordMessage::Welcome { .. }), "{w:?}");
    let huge = ((warren_proto::control::MAX_FRAME + 1) as u32).to_be_bytes();
    a.send_raw(&huge).await;
    assert!(matches!(
        a.recv().await,
        Some(CoordMessage::Error {
            code: ErrorCode::Protocol,
            ..
        })
    ));
    assert!(a.recv().await.is_none());
    assert_eq!(mesh.registry.online_count(), 0);
    // The coordinator still serves others: the node can log in again.
    let (_a2, w) = login(addr, &mesh, &key).await;
    assert!(matches!(w, CoordMessage::Welcome { .. }), "{w:?}");
}

#[tokio::test]
async fn rebinding_relogin_and_removal() {
    let (_d, mesh, addr, a, b) = two_joined([11, 12]).await;
    let (mut a, ka, na) = (a.c, a.key, a.rec);
    let (mut b, kb, nb) = (b.c, b.key, b.rec);
    let b_old = b.local;
    a.wait_for(|m| match m {
        CoordMessage::PeerUpsert { peer } if peer.node_id == nb.node_id => Some(()),
        _ => None,
    })
    .await
    .expect("A hears that B is online");

    // B's NAT mapping changes: B is told its new reflexive address, A gets B's new candidates.
    let b_new = b.rebind();
    assert_ne!(b_old, b_new);
    b.send(&NodeMessage::Candidates { local: vec![] }).await;
    let reflexive = b
        .wait_for(|m| match m {
            CoordMessage::Reflexive { addr } => Some(addr),
            _ => None,
        })
        .await
        .expect("B is told its new reflexive address");
    assert_eq!(reflexive, b_new);
    a.wait_for(|m| match m {
        CoordMessage::PeerUpsert { peer }
            if peer.node_id == nb.node_id && peer.candidates.first() == Some(&b_new) =>
        {
            Some(())
        }
        _ => None,
    })
    .await
    .expect("A learns B's new address");

    // B reconnects with Login: same identity and address, A sees it online again.
    b.conn.close(0u32.into(), b"bye");
    let (mut b2, w) = login(addr, &mesh, &kb).await;
    let CoordMessage::Welcome { node, peers, .. } = w else {
        panic!("{w:?}")
    };
    assert_eq!((node.node_id, node.mesh_ip), (nb.node_id, nb.mesh_ip));
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].node_id, na.node_id);
    assert!(peers[0].online);

    // Removing A closes its connection, tells B, and A can no longer log in.
    assert!(mesh.remove_node(na.node_id).await.unwrap());
    assert!(a.wait_for(|_| None::<()>).await.is_none());
    assert!(a.conn.close_reason().is_some());
    let gone = b2.wait_removed().await;
    assert_eq!(gone, Some(na.node_id));
    let (_a2, w) = login(addr, &mesh, &ka).await;
    assert_not_registered(&w);
    assert_eq!(mesh.registry.online_count(), 1);
}
