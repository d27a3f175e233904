//! Two real nodes per test, each behind its kind of site, joined through a real coordinator:
//! they must reach each other over the mesh on a direct path, carry bulk traffic without the
//! coordinator, and show up in the coordinator's HTTP API (DESIGN.md sections 3 and 4).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use warren_lab::cmd::wait_for;
use warren_lab::lab::EXEC_TIMEOUT;
use warren_lab::netns::link_bytes;
use warren_lab::{Host, Lab, Node, SiteKind};

/// From both daemons started to the first ping answered across the mesh.
const FIRST_PING: Duration = Duration::from_secs(30);
/// From first ping to both sides reporting a direct path.
const DIRECT: Duration = Duration::from_secs(25);
/// Bulk transfer: this many echo requests of [`PING_SIZE`] bytes of payload, each way.
const PING_COUNT: u32 = 1000;
/// ICMP payload per echo request, bytes.
const PING_SIZE: u32 = 1200;
/// The coordinator may see at most 1/COORD_FRACTION of the bulk traffic's bytes.
const COORD_FRACTION: u64 = 20;

/// The path both sides must settle on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Hole-punched (or LAN) UDP; bulk traffic bypasses the coordinator.
    Direct,
    /// Through the coordinator's relay; bulk traffic crosses the coordinator.
    Relay,
    /// Either, as long as traffic flows (`sym`+`eim`: relay, direct is a stretch goal).
    Connected,
}

#[test]
fn pair_eim_eim_goes_direct() {
    pair("pair-eim-eim", SiteKind::Eim, SiteKind::Eim, Expect::Direct);
}

#[test]
fn pair_open_eim_goes_direct() {
    pair(
        "pair-open-eim",
        SiteKind::Open,
        SiteKind::Eim,
        Expect::Direct,
    );
}

#[test]
fn pair_lan_lan_goes_direct_over_the_lan() {
    pair("pair-lan-lan", SiteKind::Lan, SiteKind::Lan, Expect::Direct);
}

/// The conntrack trap (DESIGN.md section 4) on one side: when the open node's probe reaches
/// the router first, the trapped node's flow to it leaves from a random port, which only a
/// node that keeps probing and learns peer-reflexive addresses gets past. (Trap on both
/// sides, or trap + `eim`, behaves like `sym`: only relay helps there.)
#[test]
fn pair_eim_trap_open_goes_direct() {
    pair(
        "pair-eimtrap-open",
        SiteKind::EimTrap,
        SiteKind::Open,
        Expect::Direct,
    );
}

#[test]
fn pair_sym_eim_connects() {
    pair(
        "pair-sym-eim",
        SiteKind::Sym,
        SiteKind::Eim,
        Expect::Connected,
    );
}

#[test]
fn pair_sym_sym_falls_back_to_relay() {
    pair("pair-sym-sym", SiteKind::Sym, SiteKind::Sym, Expect::Relay);
}

/// The whole scenario for one pair of site kinds (`Lan`+`Lan` means one shared LAN).
fn pair(test: &str, kind_a: SiteKind, kind_b: SiteKind, expect: Expect) {
    Lab::run_test(test, |lab| {
        let coord = lab.start_coordinator()?;
        let (ha, hb) = if kind_a == SiteKind::Lan && kind_b == SiteKind::Lan {
            let site = lab.add_site(SiteKind::Lan)?;
            (site.hosts[0].clone(), site.hosts[1].clone())
        } else {
            let sa = lab.add_site(kind_a)?;
            let sb = lab.add_site(kind_b)?;
            (sa.hosts[0].clone(), sb.hosts[0].clone())
        };
        let ta = lab.invite(&coord, &[])?;
        let tb = lab.invite(&coord, &[])?;
        let trap = kind_a == SiteKind::EimTrap;
        let (port_a, port_b) = if trap {
            spring_trap(&hb, ha.public_ip)?;
            (Some(TRAP_PORT_A), Some(TRAP_PORT_B))
        } else {
            (None, None)
        };
        let a = lab.join(&ha, &ta, "alpha", port_a)?;
        let b = lab.join(&hb, &tb, "bravo", port_b)?;
        let ip_a = lab.wait_node_ready(&a)?;
        let ip_b = lab.wait_node_ready(&b)?;
        warren_lab::note!(
            "[{test}] alpha {} = {ip_a}, bravo {} = {ip_b}",
            ha.ip,
            hb.ip
        );

        // First packet across the mesh (punching may take a few rounds).
        let started = b.started.max(a.started);
        wait_for(
            "the first mesh ping alpha -> bravo",
            FIRST_PING,
            Duration::ZERO,
            || Ok(lab.ping(&ha, ip_b, 1)?.then_some(())),
        )?;
        let first_ping = started.elapsed();
        warren_lab::note!("[{test}] time from node start to first ping: {first_ping:.2?}");
        ensure!(
            lab.ping(&ha, ip_b, 3)?,
            "ping -c 3 alpha -> bravo failed after the first ping"
        );
        ensure!(lab.ping(&hb, ip_a, 3)?, "ping -c 3 bravo -> alpha failed");

        // Both sides on the expected path (direct: each at the other's expected address).
        let want = match expect {
            Expect::Direct => "direct",
            Expect::Relay => "relay",
            Expect::Connected => "direct or relay",
        };
        let t0 = Instant::now();
        wait_for(
            &format!("both sides to report a {want} path"),
            DIRECT,
            Duration::from_millis(250),
            || {
                let pa = lab
                    .peer_status(&a, "bravo")?
                    .context("alpha does not list bravo")?;
                let pb = lab
                    .peer_status(&b, "alpha")?
                    .context("bravo does not list alpha")?;
                let ok = |path: &str| match expect {
                    Expect::Connected => path == "direct" || path == "relay",
                    _ => path == want,
                };
                if ok(&pa.path) && ok(&pb.path) {
                    return Ok(Some(()));
                }
                bail!(
                    "alpha sees bravo {:?} via {:?}, bravo sees alpha {:?} via {:?}",
                    pa.path,
                    pa.endpoint,
                    pb.path,
                    pb.endpoint
                )
            },
        )?;
        warren_lab::note!(
            "[{test}] {want} on both sides {:.2?} after the first ping",
            t0.elapsed()
        );
        if expect == Expect::Direct {
            check_endpoint(lab, &a, "bravo", &hb)?;
            check_endpoint(lab, &b, "alpha", &ha)?;
        }
        if trap {
            // The trap really fired: alpha's working mapping is not its preserved port.
            let st = lab.peer_status(&b, "alpha")?.context("bravo lost alpha")?;
            let ep = st.endpoint.unwrap_or_default();
            ensure!(
                !ep.ends_with(&format!(":{TRAP_PORT_A}")),
                "the trap did not fire (alpha reached at {ep}): the test proves nothing"
            );
            warren_lab::note!("[{test}] trap fired: alpha's flow to bravo was remapped to {ep}");
        }

        // Bulk traffic must not touch the coordinator.
        let co_ns = lab.coordinator_host.ns.clone();
        let (rx0, tx0) = link_bytes(&co_ns, "eth0")?;
        let sent_before = peer_u64(lab, &a, "bravo", "tx_bytes")?;
        let t1 = Instant::now();
        let replies = bulk_ping(lab, &ha, ip_b)?;
        let bulk_time = t1.elapsed();
        let (rx1, tx1) = link_bytes(&co_ns, "eth0")?;
        let coord_bytes = (rx1 - rx0) + (tx1 - tx0);
        // IP + ICMP headers on top of the payload, both directions.
        let mesh_bytes = u64::from(replies) * u64::from(PING_SIZE + 28) * 2;
        warren_lab::note!(
            "[{test}] bulk: {replies}/{PING_COUNT} echo replies of {PING_SIZE} B in {bulk_time:.2?}; \
             mesh carried ~{mesh_bytes} B, coordinator link saw {coord_bytes} B \
             (rx {} tx {})",
            rx1 - rx0,
            tx1 - tx0
        );
        ensure!(
            replies >= PING_COUNT * 9 / 10,
            "only {replies} of {PING_COUNT} bulk pings answered"
        );
        match expect {
            Expect::Direct => ensure!(
                coord_bytes * COORD_FRACTION < mesh_bytes,
                "coordinator saw {coord_bytes} B of a {mesh_bytes} B transfer: traffic is not direct"
            ),
            // Relayed packets cross the coordinator's link twice (in and out).
            Expect::Relay => ensure!(
                coord_bytes >= mesh_bytes,
                "coordinator saw only {coord_bytes} B of a {mesh_bytes} B relayed transfer"
            ),
            // Whichever path it settled on, the path it reports must match the bytes seen.
            Expect::Connected => {
                let path = lab
                    .peer_status(&a, "bravo")?
                    .map(|p| p.path)
                    .unwrap_or_default();
                let relayed = coord_bytes >= mesh_bytes;
                let direct = coord_bytes * COORD_FRACTION < mesh_bytes;
                ensure!(
                    (path == "relay" && relayed) || (path == "direct" && direct),
                    "alpha reports {path:?} for bravo but the coordinator saw {coord_bytes} B of {mesh_bytes} B"
                );
                warren_lab::note!("[{test}] settled on {path}");
            }
        }
        let sent_after = peer_u64(lab, &a, "bravo", "tx_bytes")?;
        ensure!(
            sent_after.saturating_sub(sent_before) >= u64::from(replies) * u64::from(PING_SIZE),
            "alpha's tx_bytes for bravo grew by {} B only, {} B of pings went out",
            sent_after.saturating_sub(sent_before),
            u64::from(replies) * u64::from(PING_SIZE)
        );

        // Secrets on disk are private: the admin token, and everything in the state dirs
        // (the node's static key among them).
        check_private(&coord.data_dir.join("admin.token"))?;
        for node in [&a, &b] {
            for entry in std::fs::read_dir(&node.state_dir)? {
                check_private(&entry?.path())?;
            }
        }

        // The HTTP API lists both, online, and refuses requests without the admin token.
        let (code, body) = lab.api_get(&coord, "/v1/peers", true)?;
        ensure!(
            code == 200,
            "GET /v1/peers with the token: HTTP {code}: {body}"
        );
        let peers: Value = serde_json::from_str(&body).context("/v1/peers is not JSON")?;
        let list = peers.as_array().context("/v1/peers is not a JSON array")?;
        for (name, ip) in [("alpha", ip_a), ("bravo", ip_b)] {
            let p = list
                .iter()
                .find(|p| p["name"].as_str() == Some(name))
                .with_context(|| format!("/v1/peers does not list {name}: {body}"))?;
            ensure!(
                p["online"] == Value::Bool(true),
                "{name} not online in /v1/peers: {p}"
            );
            let listed_ip = p["ip"].as_str().unwrap_or_default();
            ensure!(
                listed_ip.split('/').next() == Some(ip.to_string().as_str()),
                "{name} listed with ip {listed_ip:?}, its status says {ip}"
            );
            for field in ["public_key", "endpoints", "last_seen"] {
                ensure!(
                    p.get(field).is_some(),
                    "{name} in /v1/peers lacks {field}: {p}"
                );
            }
        }
        for route in ["/v1/peers", "/v1/health"] {
            let (code, _) = lab.api_get(&coord, route, false)?;
            ensure!(
                code == 401,
                "GET {route} without a token answered HTTP {code}, not 401"
            );
        }
        Ok(())
    });
}

/// Checks that `node` reaches `peer` at the address its site implies: the LAN address for
/// two nodes on one LAN, the public (router WAN or own) address otherwise.
fn check_endpoint(lab: &mut Lab, node: &Node, peer: &str, peer_host: &Host) -> Result<()> {
    let st = lab
        .peer_status(node, peer)?
        .context("peer vanished from status")?;
    let endpoint = st
        .endpoint
        .context("direct path without an endpoint in status")?;
    let ep_ip: Ipv4Addr = endpoint
        .rsplit_once(':')
        .map(|(ip, _)| ip.trim_matches(['[', ']']))
        .unwrap_or(&endpoint)
        .parse()
        .with_context(|| format!("endpoint {endpoint:?} is not ip:port"))?;
    let same_lan = node.host.site == peer_host.site && node.host.kind == Some(SiteKind::Lan);
    let want = if same_lan {
        peer_host.ip
    } else {
        peer_host.public_ip
    };
    ensure!(
        ep_ip == want,
        "{} reaches {peer} at {endpoint}, expected {want} ({})",
        node.name,
        if same_lan {
            "its LAN address"
        } else {
            "its public address"
        }
    );
    warren_lab::note!(
        "[{}] {} -> {peer}: direct via {endpoint}",
        lab.test,
        node.name
    );
    Ok(())
}

/// A numeric field of `peer` in `node`'s status.
fn peer_u64(lab: &mut Lab, node: &Node, peer: &str, field: &str) -> Result<u64> {
    let v = lab.status(node)?;
    let p = v["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"].as_str() == Some(peer)))
        .with_context(|| format!("{} does not list {peer}", node.name))?;
    p[field]
        .as_u64()
        .with_context(|| format!("{field} of {peer} is not a number: {p}"))
}

/// Floods `to` with echo requests from `from`; returns how many were answered.
fn bulk_ping(lab: &Lab, from: &Host, to: Ipv4Addr) -> Result<u32> {
    let out = lab.exec(
        &from.ns,
        &[
            "ping",
            "-n",
            "-q",
            "-c",
            &PING_COUNT.to_string(),
            "-s",
            &PING_SIZE.to_string(),
            "-i",
            "0.002",
            "-W",
            "2",
            "-w",
            "20",
            &to.to_string(),
        ],
        EXEC_TIMEOUT,
    )?;
    // "1000 packets transmitted, 998 received, ..."
    let received = out
        .stdout
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("cannot read ping summary: {}{}", out.stdout, out.stderr))?;
    Ok(received)
}

/// UDP port of the trapped node (`--port`; its router preserves it unless trapped).
const TRAP_PORT_A: u16 = 40000;
/// UDP port of the open node in the trap test.
const TRAP_PORT_B: u16 = 51820;

/// Springs the trap before the nodes start: a datagram from the open node's future address
/// and port to the trapped node's future public mapping. The router has no input drop, so
/// conntrack confirms that flow, and the trapped node's own flow to the open node must later
/// be mapped to another port (UDP conntrack entries live 30 s; the test is faster).
fn spring_trap(hb: &Host, a_public: Ipv4Addr) -> Result<()> {
    let sock =
        warren_lab::netns::udp_socket_in(&hb.ns, std::net::SocketAddr::from((hb.ip, TRAP_PORT_B)))?;
    for _ in 0..3 {
        sock.send_to(b"early probe", (a_public, TRAP_PORT_A))?;
    }
    Ok(())
}

/// Fails unless `path` is inaccessible to group and others.
fn check_private(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::symlink_metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .permissions()
        .mode();
    ensure!(
        mode & 0o077 == 0,
        "{} has mode {:o}: group/others can access it",
        path.display(),
        mode & 0o777
    );
    Ok(())
}
