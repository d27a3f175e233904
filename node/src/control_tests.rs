//! Tests of the control client against a scripted coordinator on loopback.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use warren_proto::control::ErrorCode;
use warren_proto::ids::{MeshIp, NodeId};
use warren_proto::proof;

use std::sync::Arc;

use super::*;
use crate::socket::{self, QuicInbox};
use crate::testutil::server;

/// What the scripted coordinator answers to Join/Login.
#[derive(Clone, Copy)]
enum Script {
    Welcome,
    Reject(ErrorCode),
}

fn record(id: u64) -> PeerRecord {
    PeerRecord {
        node_id: NodeId(id),
        name: format!("n{id}"),
        public_key: PrivateKey::from_random([id as u8; 32]).public_key(),
        mesh_ip: MeshIp(Ipv4Addr::new(100, 80, 0, id as u8)),
        online: true,
        candidates: vec![],
    }
}

async fn read_node(recv: &mut quinn::RecvStream) -> NodeMessage {
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.unwrap();
    let mut body = vec![0u8; control::frame_len(header).unwrap()];
    recv.read_exact(&mut body).await.unwrap();
    control::decode(&body).unwrap()
}

async fn write_coord(send: &mut quinn::SendStream, msg: &CoordMessage) {
    send.write_all(&control::encode(msg)).await.unwrap();
}

/// Accepts one connection, runs the login with a real proof check, then (on Welcome) expects
/// Candidates and pushes one PeerUpsert. Returns the request it received.
async fn scripted(srv: quinn::Endpoint, script: Script) -> (NodeMessage, Vec<SocketAddr>) {
    let conn = srv.accept().await.unwrap().await.unwrap();
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    let NodeMessage::Hello {
        version,
        public_key,
    } = read_node(&mut recv).await
    else {
        panic!("expected Hello")
    };
    assert_eq!(version, CONTROL_VERSION);
    let eph = PrivateKey::from_random([42; 32]);
    let nonce = [7u8; 32];
    write_coord(
        &mut send,
        &CoordMessage::Challenge {
            server_ephemeral: eph.public_key(),
            nonce,
        },
    )
    .await;
    let request = read_node(&mut recv).await;
    let proof_bytes = match &request {
        NodeMessage::Join { proof, .. } | NodeMessage::Login { proof } => *proof,
        other => panic!("unexpected {other:?}"),
    };
    let mut binding = [0u8; 32];
    conn.export_keying_material(&mut binding, EXPORTER_LABEL, b"")
        .unwrap();
    assert!(
        proof::verify(&eph, &public_key, &nonce, &binding, &proof_bytes),
        "proof must verify with the connection's exported binding"
    );
    let mut local = Vec::new();
    match script {
        Script::Reject(code) => {
            write_coord(
                &mut send,
                &CoordMessage::Error {
                    code,
                    message: "scripted".into(),
                },
            )
            .await;
            let _ = send.finish();
            conn.closed().await;
        }
        Script::Welcome => {
            let mut me = record(1);
            me.public_key = public_key;
            write_coord(
                &mut send,
                &CoordMessage::Welcome {
                    node: me,
                    network: MeshNetwork::default(),
                    reflexive: conn.remote_address(),
                    peers: vec![record(2)],
                    cipher: Default::default(),
                },
            )
            .await;
            if let NodeMessage::Candidates { local: l } = read_node(&mut recv).await {
                local = l;
            } else {
                panic!("expected Candidates");
            }
            write_coord(&mut send, &CoordMessage::PeerUpsert { peer: record(3) }).await;
            // Wait for the node to hang up.
            conn.closed().await;
        }
    }
    (request, local)
}

fn coordinator(addr: SocketAddr, fingerprint: [u8; 32], inbox: &QuicInbox) -> Coordinator {
    Coordinator {
        addrs: vec![CoordinatorAddr::Ip(addr.ip(), addr.port())],
        fingerprint,
        timeout: Duration::from_secs(5),
        inbox: inbox.clone(),
    }
}

fn node_endpoint() -> (quinn::Endpoint, QuicInbox) {
    let io = socket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let (endpoint, inbox) = socket::quic_endpoint(io.clone()).unwrap();
    tokio::spawn(socket::pump_quic_only(io, inbox.clone()));
    (endpoint, inbox)
}

#[tokio::test]
async fn join_then_supervise_forwards_messages() {
    let (srv, fp) = server();
    let (endpoint, inbox) = node_endpoint();
    let coord = coordinator(srv.local_addr().unwrap(), fp, &inbox);
    let srv_task = tokio::spawn(scripted(srv, Script::Welcome));
    let key = PrivateKey::from_random([5; 32]);
    let cred = Credential::Join {
        secret: [3; 32],
        name: "alpha".into(),
    };
    let session = connect(&endpoint, &coord, &key, &cred).await.unwrap();
    assert_eq!(session.welcome.node.public_key, key.public_key());
    assert_eq!(session.welcome.peers, vec![record(2)]);
    assert_eq!(
        session.welcome.reflexive,
        endpoint.local_addr().unwrap(),
        "reflexive is the shared socket's address"
    );

    let (sup, mut ev_rx, out_tx) = spawn_supervisor(endpoint, coord, key, session);
    assert!(matches!(ev_rx.recv().await, Some(ControlEvent::Welcome(_))));
    // The connection for relay datagrams follows the Welcome.
    match ev_rx.recv().await {
        Some(ControlEvent::Relay(conn)) => assert!(conn.max_datagram_size().is_some()),
        other => panic!("unexpected {other:?}"),
    }
    // Then the carrier: UDP worked here.
    assert!(matches!(
        ev_rx.recv().await,
        Some(ControlEvent::UdpBlocked(false))
    ));
    match ev_rx.recv().await {
        Some(ControlEvent::Message(CoordMessage::PeerUpsert { peer })) => {
            assert_eq!(peer, record(3))
        }
        other => panic!("unexpected {other:?}"),
    }
    drop(out_tx);
    sup.await.unwrap().unwrap();
    let (request, local) = srv_task.await.unwrap();
    match request {
        NodeMessage::Join {
            invite_secret,
            name,
            ..
        } => {
            assert_eq!(invite_secret, [3; 32]);
            assert_eq!(name, "alpha");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(local.iter().all(|a| a.port() == 4242));
}

#[tokio::test]
async fn rejected_invite_is_a_typed_error() {
    let (srv, fp) = server();
    let (endpoint, inbox) = node_endpoint();
    let coord = coordinator(srv.local_addr().unwrap(), fp, &inbox);
    let srv_task = tokio::spawn(scripted(srv, Script::Reject(ErrorCode::InviteExpired)));
    let key = PrivateKey::from_random([6; 32]);
    let err = connect(&endpoint, &coord, &key, &Credential::Login)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NodeError::Rejected {
                code: ErrorCode::InviteExpired,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("expired"));
    endpoint.close(0u32.into(), b"");
    let _ = srv_task.await;
}

#[tokio::test]
async fn wrong_fingerprint_and_silent_coordinator() {
    let (srv, _) = server();
    let (endpoint, inbox) = node_endpoint();
    let coord = coordinator(srv.local_addr().unwrap(), [1; 32], &inbox);
    let accept = tokio::spawn(async move {
        if let Some(inc) = srv.accept().await {
            let _ = inc.await;
        }
        srv
    });
    let key = PrivateKey::from_random([6; 32]);
    let err = connect(&endpoint, &coord, &key, &Credential::Login)
        .await
        .unwrap_err();
    assert!(matches!(err, NodeError::WrongCoordinator), "{err:?}");
    drop(accept);

    // A UDP socket that never answers: the connect times out with a clear message.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut coord = coordinator(silent.local_addr().unwrap(), [1; 32], &inbox);
    coord.timeout = Duration::from_millis(300);
    let err = connect(&endpoint, &coord, &key, &Credential::Login)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "cannot reach the coordinator at {}: timed out",
            silent.local_addr().unwrap()
        )
    );
    assert!(err.is_transient());
}

/// A coordinator address whose UDP port never answers, with the TCP carrier on the same port
/// bridged to the QUIC server `srv` (frames out of TLS become UDP datagrams to `srv` and back,
/// which is what the coordinator's merged socket does in-process). Returns the address and the
/// bridge task (aborting it cuts the TCP connection).
async fn udp_silent_tcp_bridged(
    srv: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
) -> (SocketAddr, std::net::UdpSocket, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (silent, listener) = loop {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        if let Ok(l) = tokio::net::TcpListener::bind(silent.local_addr().unwrap()).await {
            break (silent, l);
        }
    };
    let addr = silent.local_addr().unwrap();
    let bridge = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let stream = tokio_rustls::TlsAcceptor::from(tls)
            .accept(tcp)
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(tunnel::ALPN_TCP));
        let (mut r, mut w) = tokio::io::split(stream);
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut frame = Vec::new();
        let mut buf = vec![0u8; 65_535];
        loop {
            tokio::select! {
                len = r.read_u16() => {
                    let Ok(len) = len else { return };
                    frame.resize(usize::from(len), 0);
                    if r.read_exact(&mut frame).await.is_err() {
                        return;
                    }
                    udp.send_to(&frame, srv).await.unwrap();
                }
                got = udp.recv_from(&mut buf) => {
                    let (n, _) = got.unwrap();
                    w.write_u16(u16::try_from(n).unwrap()).await.unwrap();
                    w.write_all(&buf[..n]).await.unwrap();
                    w.flush().await.unwrap();
                }
            }
        }
    });
    (addr, silent, bridge)
}

#[tokio::test]
async fn falls_back_to_tcp_when_udp_is_silent_and_ends_the_session_when_it_drops() {
    let (srv, fp, tls) = crate::testutil::server_with_tls();
    let (addr, _silent, bridge) = udp_silent_tcp_bridged(srv.local_addr().unwrap(), tls).await;
    let srv_task = tokio::spawn(scripted(srv, Script::Welcome));
    let (endpoint, inbox) = node_endpoint();
    let mut coord = coordinator(addr, fp, &inbox);
    coord.timeout = Duration::from_secs(2);
    let key = PrivateKey::from_random([8; 32]);
    let cred = Credential::Join {
        secret: [3; 32],
        name: "alpha".into(),
    };
    let t0 = std::time::Instant::now();
    let session = connect(&endpoint, &coord, &key, &cred).await.unwrap();
    let took = t0.elapsed();
    assert!(
        session.carrier.is_some(),
        "the session runs on the TCP carrier"
    );
    assert!(
        took < Duration::from_secs(4),
        "UDP gave up after 2 s: {took:?}"
    );
    assert_eq!(session.welcome.peers, vec![record(2)]);
    // The tunnel has no MTU: a full-size relay datagram (8 + 32 + 1280) fits from the start.
    let max = session.conn.max_datagram_size().unwrap();
    assert!(max >= 1320, "max datagram size {max}");

    let (sup, mut ev_rx, out_tx) = spawn_supervisor(endpoint, coord, key, session);
    assert!(matches!(ev_rx.recv().await, Some(ControlEvent::Welcome(_))));
    assert!(matches!(ev_rx.recv().await, Some(ControlEvent::Relay(_))));
    assert!(matches!(
        ev_rx.recv().await,
        Some(ControlEvent::UdpBlocked(true))
    ));
    match ev_rx.recv().await {
        Some(ControlEvent::Message(CoordMessage::PeerUpsert { peer })) => {
            assert_eq!(peer, record(3))
        }
        other => panic!("unexpected {other:?}"),
    }
    // Cutting the TCP connection ends the session at once (not after the 30 s idle timeout).
    bridge.abort();
    let ev = tokio::time::timeout(Duration::from_secs(5), ev_rx.recv()).await;
    assert!(matches!(ev, Ok(Some(ControlEvent::Disconnected))), "{ev:?}");
    drop(out_tx);
    sup.await.unwrap().unwrap();
    srv_task.abort();
}

#[test]
fn backoff_doubles_to_thirty_seconds_with_jitter() {
    for attempt in 0..10 {
        let d = backoff(attempt);
        let base = Duration::from_secs(1u64 << attempt.min(5)).min(Duration::from_secs(30));
        assert!(
            d >= base.mul_f64(0.79) && d <= base.mul_f64(1.21),
            "{attempt}: {d:?}"
        );
    }
}

/// Runs [`supervise`] from an established `session`; returns its task, the events it sends and
/// the sender of its outbox.
fn spawn_supervisor(
    endpoint: quinn::Endpoint,
    coord: Coordinator,
    key: PrivateKey,
    session: Session,
) -> (
    tokio::task::JoinHandle<Result<(), NodeError>>,
    mpsc::Receiver<ControlEvent>,
    mpsc::Sender<NodeMessage>,
) {
    let (ev_tx, ev_rx) = mpsc::channel(8);
    let (out_tx, out_rx) = mpsc::channel(8);
    let source = CandidateSource {
        tun: "warren-test".into(),
        network: MeshNetwork::default(),
        port: 4242,
    };
    let sup = tokio::spawn(supervise(
        endpoint,
        coord,
        key,
        Some(session),
        source,
        ev_tx,
        out_rx,
    ));
    (sup, ev_rx, out_tx)
}
