//! The lab's own plumbing, proved without Warren: every site kind's router does what
//! DESIGN.md section 4 says (mapping, filtering, UDP blocking), using plain sockets opened
//! inside the namespaces. If this fails, the Warren lab results mean nothing.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use warren_lab::netns::{in_namespace, udp_socket_in};
use warren_lab::{Lab, SiteKind, COORDINATOR_IP, SPARE_IP};

/// How long to wait for a datagram that should arrive (or to conclude one will not).
const RECV_WAIT: Duration = Duration::from_millis(800);
/// Port the "public servers" listen on.
const SERVER_PORT: u16 = 9000;

fn sock(ns: &str, ip: Ipv4Addr, port: u16) -> Result<UdpSocket> {
    let s = udp_socket_in(ns, SocketAddr::from((ip, port)))?;
    s.set_read_timeout(Some(RECV_WAIT))?;
    Ok(s)
}

/// Receives one datagram, or `None` on timeout.
fn recv(s: &UdpSocket) -> Result<Option<(Vec<u8>, SocketAddr)>> {
    let mut buf = [0u8; 2048];
    match s.recv_from(&mut buf) {
        Ok((n, from)) => Ok(Some((buf[..n].to_vec(), from))),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Sends `msg` from `from` to `to_addr` and returns the source address `to` saw, if any.
fn seen_from(
    from: &UdpSocket,
    to: &UdpSocket,
    to_addr: SocketAddr,
    msg: &[u8],
) -> Result<Option<SocketAddr>> {
    from.send_to(msg, to_addr)?;
    Ok(recv(to)?.filter(|(m, _)| m == msg).map(|(_, a)| a))
}

#[test]
fn lab_routers_behave_as_their_kind() {
    Lab::run_test("plumbing", |lab| {
        let eim = lab.add_site(SiteKind::Eim)?;
        let sym = lab.add_site(SiteKind::Sym)?;
        let block = lab.add_site(SiteKind::UdpBlock)?;
        let lan = lab.add_site(SiteKind::Lan)?;
        let open = lab.add_site(SiteKind::Open)?;
        let spare = lab.add_internet_host("spare", SPARE_IP)?;
        let co_ns = lab.coordinator_host.ns.clone();
        let server1 = sock(&co_ns, COORDINATOR_IP, SERVER_PORT)?;
        let server2 = sock(&spare.ns, SPARE_IP, SERVER_PORT)?;
        let s1 = SocketAddr::from((COORDINATOR_IP, SERVER_PORT));
        let s2 = SocketAddr::from((SPARE_IP, SERVER_PORT));

        // Every node reaches the internet (ICMP through NAT, default routes right).
        for host in [
            &eim.hosts[0],
            &sym.hosts[0],
            &block.hosts[0],
            &lan.hosts[0],
            &lan.hosts[1],
            &open.hosts[0],
        ] {
            ensure!(
                lab.ping(host, COORDINATOR_IP, 1)?,
                "{} cannot ping the coordinator",
                host.ns
            );
        }

        // eim: port-preserving, same mapping for every destination.
        let e = &eim.hosts[0];
        let node = sock(&e.ns, e.ip, 40001)?;
        let a1 = seen_from(&node, &server1, s1, b"eim-1")?
            .context("eim: nothing arrived at server 1")?;
        let a2 = seen_from(&node, &server2, s2, b"eim-2")?
            .context("eim: nothing arrived at server 2")?;
        ensure!(
            a1 == SocketAddr::from((e.public_ip, 40001)),
            "eim mapping not port-preserving: {a1}"
        );
        ensure!(a1 == a2, "eim mapping depends on destination: {a1} vs {a2}");
        // Replies from a contacted endpoint come back...
        server1.send_to(b"reply", a1)?;
        ensure!(
            recv(&node)?.is_some(),
            "eim: reply from a contacted server was dropped"
        );
        // ...but a third party's packet to the same mapping is filtered.
        let stranger = sock(&spare.ns, SPARE_IP, 9100)?;
        stranger.send_to(b"unsolicited", a1)?;
        ensure!(
            recv(&node)?.is_none(),
            "eim: unsolicited packet from a stranger got through"
        );

        // Renumbering the router: the same socket's traffic now comes from the new address.
        let renumbered = Ipv4Addr::new(198, 51, 100, 77);
        lab.renumber_site(&eim, renumbered)?;
        let a3 = seen_from(&node, &server1, s1, b"eim-renumbered")?
            .context("eim: nothing arrived after renumbering")?;
        ensure!(
            a3.ip() == ip4(renumbered),
            "after renumbering the source is {a3}"
        );

        // sym: a new random port per destination.
        let y = &sym.hosts[0];
        let node = sock(&y.ns, y.ip, 40002)?;
        let b1 = seen_from(&node, &server1, s1, b"sym-1")?
            .context("sym: nothing arrived at server 1")?;
        let b2 = seen_from(&node, &server2, s2, b"sym-2")?
            .context("sym: nothing arrived at server 2")?;
        ensure!(
            b1.ip() == ip4(y.public_ip),
            "sym: wrong public address {b1}"
        );
        ensure!(
            b1.port() != b2.port(),
            "sym: same port {} for two destinations",
            b1.port()
        );

        // udpblock: UDP out is dropped, TCP works.
        let u = &block.hosts[0];
        let node = sock(&u.ns, u.ip, 40003)?;
        ensure!(
            seen_from(&node, &server1, s1, b"blocked")?.is_none(),
            "udpblock let UDP out"
        );
        let listener = in_namespace(&co_ns, || {
            TcpListener::bind((COORDINATOR_IP, SERVER_PORT)).context("tcp bind")
        })?;
        let client = in_namespace(&u.ns, || {
            let mut c = TcpStream::connect_timeout(
                &SocketAddr::from((COORDINATOR_IP, SERVER_PORT)),
                Duration::from_secs(3),
            )
            .context("udpblock: TCP connect failed")?;
            c.write_all(b"tcp ok")?;
            Ok(c)
        })?;
        let (mut conn, peer) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = [0u8; 6];
        conn.read_exact(&mut buf)?;
        ensure!(
            &buf == b"tcp ok" && peer.ip() == ip4(u.public_ip),
            "udpblock TCP: {peer}"
        );
        drop(client);

        // lan: the two nodes talk directly over the LAN, no NAT in between.
        let (la, lb) = (&lan.hosts[0], &lan.hosts[1]);
        let na = sock(&la.ns, la.ip, 40004)?;
        let nb = sock(&lb.ns, lb.ip, 40005)?;
        let c1 = seen_from(&na, &nb, SocketAddr::from((lb.ip, 40005)), b"lan")?
            .context("lan: nothing arrived")?;
        ensure!(
            c1 == SocketAddr::from((la.ip, 40004)),
            "lan: source rewritten to {c1}"
        );

        // open: no NAT at all, and unsolicited inbound arrives.
        let o = &open.hosts[0];
        let node = sock(&o.ns, o.ip, 40006)?;
        let d1 = seen_from(&node, &server1, s1, b"open")?.context("open: nothing arrived")?;
        ensure!(
            d1 == SocketAddr::from((o.ip, 40006)),
            "open: source rewritten to {d1}"
        );
        if seen_from(&stranger, &node, d1, b"hello open")?.is_none() {
            bail!("open: unsolicited inbound did not arrive");
        }
        Ok(())
    });
}

fn ip4(ip: Ipv4Addr) -> std::net::IpAddr {
    std::net::IpAddr::V4(ip)
}

/// True when namespace `ns` exists.
fn ns_exists(ns: &str) -> Result<bool> {
    Ok(warren_lab::names::list_namespaces()?
        .iter()
        .any(|n| n == ns))
}

#[test]
fn dropping_a_lab_removes_its_processes_and_namespaces_even_on_panic() {
    let (pid, namespaces) = {
        let caught = std::panic::catch_unwind(|| {
            let mut lab = Lab::new("drop-on-panic").expect("lab");
            let site = lab.add_site(SiteKind::Eim).expect("site");
            let ns = site.hosts[0].ns.clone();
            let id = lab
                .spawn(
                    "sleeper",
                    &ns,
                    std::path::Path::new("/bin/sleep"),
                    &["60".into()],
                )
                .expect("spawn");
            let pid = lab.proc(id).pid();
            let names = vec![ns, site.router.clone().expect("eim has a router")];
            std::panic::panic_any((pid, names));
        });
        let payload = caught.expect_err("the closure panics");
        *payload
            .downcast::<(u32, Vec<String>)>()
            .expect("panic payload is (pid, namespaces)")
    };
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} survived the lab"
    );
    for ns in namespaces {
        assert!(
            !ns_exists(&ns).expect("list"),
            "namespace {ns} survived the lab"
        );
    }
}

#[test]
fn stale_namespaces_of_dead_lab_runs_are_swept() {
    // A pid that certainly belonged to a process that has exited.
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let dead = child.id();
    child.wait().expect("wait");
    let stale = format!("wl{dead}-0-stale");
    let unrelated = format!("wlx{dead}-stale");
    warren_lab::netns::create(&stale).expect("create stale ns");
    warren_lab::netns::create(&unrelated).expect("create unrelated ns");
    let result = Lab::new("sweep").map(drop);
    let stale_left = ns_exists(&stale).expect("list");
    let unrelated_left = ns_exists(&unrelated).expect("list");
    let _ = warren_lab::netns::delete(&unrelated);
    let _ = warren_lab::netns::delete(&stale);
    result.expect("lab");
    assert!(!stale_left, "stale namespace {stale} was not swept");
    assert!(
        unrelated_left,
        "a namespace outside the lab's pattern was swept"
    );
}
