//! Many nodes racing for one one-use invite register exactly one node: through the real QUIC
//! session path, and through threads sharing the coordinator's own store.

use super::*;

/// Racers in each test.
const RACERS: u8 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_joins_with_a_one_use_invite_register_exactly_one() {
    let (_d, mesh, identity) = mesh();
    let addr = start(&mesh, &identity);
    let secret = new_invite(&mesh, 1);
    // Connect and say Hello first, so that the Joins go out as close together as possible.
    let mut ready = Vec::new();
    for i in 0..RACERS {
        let key = PrivateKey::from_random([100 + i; 32]);
        let mut c = Client::connect(addr, mesh.fingerprint).await;
        let (eph, nonce) = c.hello(&key.public_key()).await;
        let p = proof::prove(&key, &eph, &nonce, &c.binding());
        ready.push((c, p));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS as usize));
    let tasks: Vec<_> = ready
        .into_iter()
        .enumerate()
        .map(|(i, (mut c, p))| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                c.send(&NodeMessage::Join {
                    invite_secret: secret,
                    name: format!("racer{i}"),
                    proof: p,
                })
                .await;
                let reply = c.recv().await;
                (c, reply)
            })
        })
        .collect();
    let mut welcomes = 0;
    let mut used_up = 0;
    let mut clients = Vec::new();
    for t in tasks {
        let (c, reply) = t.await.unwrap();
        match reply {
            Some(CoordMessage::Welcome { .. }) => welcomes += 1,
            Some(CoordMessage::Error {
                code: ErrorCode::InviteUsedUp,
                ..
            }) => used_up += 1,
            other => panic!("unexpected reply {other:?}"),
        }
        clients.push(c);
    }
    assert_eq!((welcomes, used_up), (1, RACERS as usize - 1));
    assert_eq!(mesh.store.nodes().unwrap().len(), 1);
    assert_eq!(mesh.store.invites().unwrap()[0].uses_left, 0);
    let app = crate::http::app(mesh.clone());
    let (s, _, text) = send(&app, "GET", "/metrics", Some(TOKEN), "").await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("\nwarren_registrations_total 1\n"), "{text}");
    assert!(
        text.contains(&format!(
            "warren_registration_failures_total{{reason=\"invite_used_up\"}} {}\n",
            RACERS - 1
        )),
        "{text}"
    );
}

#[test]
fn threads_sharing_the_store_register_exactly_one() {
    let (_d, mesh, _) = mesh();
    let secret = new_invite(&mesh, 1);
    let barrier = Arc::new(std::sync::Barrier::new(RACERS as usize));
    let threads: Vec<_> = (0..RACERS)
        .map(|i| {
            let (store, barrier, network) = (mesh.store.clone(), barrier.clone(), mesh.network);
            std::thread::spawn(move || {
                barrier.wait();
                store.register(&crate::store::Registration {
                    secret_hash: invite::hash_secret(&secret),
                    name: "racer".into(),
                    public_key: PrivateKey::from_random([200 + i; 32]).public_key(),
                    network,
                    now: invite::unix_now(),
                })
            })
        })
        .collect();
    let wins = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|r| r.is_ok())
        .count();
    assert_eq!(wins, 1);
    assert_eq!(mesh.store.nodes().unwrap().len(), 1);
}
