//! The TCP carrier on loopback: a client whose QUIC runs through TLS over TCP joins, its record
//! carries no virtual candidate, and relay datagrams flow between it and a UDP client.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio_rustls::TlsConnector;
use warren_proto::relay;

use super::*;
use crate::tunnel::{is_virtual, MergedSocket};

/// Starts the QUIC endpoint with its TCP carrier on one loopback port.
async fn start_with_tcp(mesh: &Arc<Mesh>, identity: &crate::datadir::Identity) -> SocketAddr {
    let (ep, tunnels) =
        crate::quic::endpoint_with_tunnels(identity, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = ep.local_addr().unwrap();
    let tcp = tokio::net::TcpListener::bind(addr).await.unwrap();
    let tls = Arc::new(crate::quic::tls_config(identity, crate::tcp::ALPN_TCP).unwrap());
    tokio::spawn(crate::tcp::accept_loop(tcp, tls, tunnels));
    tokio::spawn(crate::quic::accept_loop(ep, mesh.clone()));
    addr
}

/// A client endpoint whose only peer is the coordinator through a TLS-over-TCP tunnel. It reuses
/// the coordinator's own merged socket on the client side: the tunnel's virtual address stands
/// for the coordinator. Returns the endpoint and the address to connect to.
async fn tunnelled_endpoint(
    server: SocketAddr,
    fingerprint: [u8; 32],
) -> (quinn::Endpoint, SocketAddr) {
    let tcp = tokio::net::TcpStream::connect(server).await.unwrap();
    let tls = crate::testutil::pinned_tls(fingerprint, crate::tcp::ALPN_TCP);
    let name = rustls::pki_types::ServerName::try_from(crate::datadir::SERVER_NAME).unwrap();
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(
        stream.get_ref().1.alpn_protocol(),
        Some(crate::tcp::ALPN_TCP)
    );
    // An IPv6 socket so quinn accepts the (IPv6) virtual address as a destination; nothing is
    // ever sent on it.
    let udp = quinn::Runtime::wrap_udp_socket(
        &quinn::TokioRuntime,
        std::net::UdpSocket::bind("[::1]:0").unwrap(),
    )
    .unwrap();
    let (sock, tunnels) = MergedSocket::new(udp);
    let reg = tunnels.register().unwrap();
    let coordinator = reg.addr;
    let (mut reader, writer) = tokio::io::split(stream);
    tokio::spawn(warren_cli::quicfeed::write_frames(writer, reg.outbound));
    tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Ok(len) = reader.read_u16().await {
            buf.resize(usize::from(len), 0);
            if reader.read_exact(&mut buf).await.is_err() {
                break;
            }
            tunnels.deliver(coordinator, std::mem::take(&mut buf));
        }
    });
    let ep = quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        Arc::new(sock),
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    (ep, coordinator)
}

#[tokio::test]
async fn a_node_over_tcp_joins_and_relays_to_a_node_over_udp() {
    let (_d, mesh, identity) = mesh();
    let addr = start_with_tcp(&mesh, &identity).await;
    let secret = new_invite(&mesh, 2);

    let (ep, via) = tunnelled_endpoint(addr, mesh.fingerprint).await;
    let tcp_client = Client::connect_on(ep, via, mesh.fingerprint).await;
    let key_t = PrivateKey::from_random([41; 32]);
    let (mut t, w) = join_as(tcp_client, &key_t, secret, "over-tcp").await;
    let CoordMessage::Welcome {
        node, reflexive, ..
    } = w
    else {
        panic!("{w:?}")
    };
    let nt = node.node_id;
    assert!(is_virtual(&reflexive), "seen from a tunnel: {reflexive}");
    assert!(node.candidates.is_empty(), "{:?}", node.candidates);

    let key_u = PrivateKey::from_random([42; 32]);
    let (u, w) = join(addr, &mesh, &key_u, secret, "over-udp").await;
    let CoordMessage::Welcome { node, peers, .. } = w else {
        panic!("{w:?}")
    };
    let nu = node.node_id;
    assert_eq!(node.candidates, vec![u.local], "UDP node's reflexive stays");
    let seen = peers.iter().find(|p| p.node_id == nt).unwrap();
    assert!(seen.online);
    assert!(
        seen.candidates.iter().all(|c| !is_virtual(c)),
        "{:?}",
        seen.candidates
    );
    // The TCP node hears of the UDP node.
    let up = t
        .wait_for(|m| match m {
            CoordMessage::PeerUpsert { peer } if peer.node_id == nu => Some(peer),
            _ => None,
        })
        .await
        .unwrap();
    assert_eq!(up.candidates, vec![u.local]);

    // Relay datagrams both ways, up to full size once the path allows it.
    let wait = Duration::from_secs(5);
    t.conn
        .send_datagram(relay::build(nu, b"from tcp").into())
        .unwrap();
    let got = tokio::time::timeout(wait, u.conn.read_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(relay::parse(&got), Ok((nt, &b"from tcp"[..])));
    let payload = vec![0x5a; 1000];
    u.conn
        .send_datagram(relay::build(nt, &payload).into())
        .unwrap();
    let got = tokio::time::timeout(wait, t.conn.read_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(relay::parse(&got), Ok((nu, &payload[..])));
    assert_eq!(mesh.relay.stats.forwarded_packets(), 2);
    assert_eq!(mesh.registry.online_count(), 2);
}

#[tokio::test]
async fn the_tcp_carrier_refuses_bad_clients() {
    let (_d, mesh, identity) = mesh();
    let addr = start_with_tcp(&mesh, &identity).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = crate::testutil::pinned_tls(mesh.fingerprint, b"http/1.1");
    let name = rustls::pki_types::ServerName::try_from(crate::datadir::SERVER_NAME).unwrap();
    let res = TlsConnector::from(Arc::new(tls)).connect(name, tcp).await;
    assert!(res.is_err(), "no ALPN in common: handshake refused");
    // Garbage instead of TLS: the connection is dropped, the coordinator keeps serving.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &[0xff; 64])
        .await
        .unwrap();
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut b)).await;
    assert!(matches!(n, Ok(Ok(_)) | Ok(Err(_))), "closed promptly");
    // The right ALPN but an oversized frame: the tunnel is closed.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = crate::testutil::pinned_tls(mesh.fingerprint, crate::tcp::ALPN_TCP);
    let name = rustls::pki_types::ServerName::try_from(crate::datadir::SERVER_NAME).unwrap();
    let mut stream = TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    let mut frame = 4000u16.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0xc0; 4000]);
    tokio::io::AsyncWriteExt::write_all(&mut stream, &frame)
        .await
        .unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut b)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "closed after an oversized frame: {n:?}"
    );
    let key = PrivateKey::from_random([43; 32]);
    let (_c, w) = join(addr, &mesh, &key, new_invite(&mesh, 1), "after").await;
    assert!(matches!(w, CoordMessage::Welcome { .. }), "{w:?}");
}
