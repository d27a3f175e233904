//! A node whose network drops all UDP (`udpblock`) reaches the coordinator over the TCP carrier
//! (QUIC tunnelled through TLS over TCP on the QUIC port) and talks to an `eim` peer through the
//! relay on that connection: pings both ways, a TCP transfer, and `warren status` saying why.

use std::time::{Duration, Instant};

use anyhow::ensure;
use warren_lab::cmd::wait_for;
use warren_lab::{Lab, SiteKind};

/// From both daemons started to the first ping answered: the UDP attempt (4 s) fails first,
/// then TCP, TLS, QUIC and the login run over the tunnel.
const FIRST_PING: Duration = Duration::from_secs(25);
/// How long the status may take to show the reason.
const SETTLE: Duration = Duration::from_secs(15);
/// iperf3 port on the `eim` node.
const IPERF_PORT: u16 = 5201;
/// Seconds of the iperf3 run.
const IPERF_SECONDS: u32 = 3;

#[test]
fn udpblock_eim_joins_over_tcp_and_relays() {
    Lab::run_test("udpblock-eim", |lab| {
        let coord = lab.start_coordinator()?;
        let sb = lab.add_site(SiteKind::UdpBlock)?;
        let se = lab.add_site(SiteKind::Eim)?;
        let tb = lab.invite(&coord, &[])?;
        let te = lab.invite(&coord, &[])?;
        let b = lab.join(&sb.hosts[0], &tb, "blocked", None)?;
        let e = lab.join(&se.hosts[0], &te, "open", None)?;
        let ip_b = lab.wait_node_ready(&b)?;
        let ip_e = lab.wait_node_ready(&e)?;
        let ready = b.started.elapsed();

        let started = b.started.max(e.started);
        let hb = b.host.clone();
        wait_for(
            "the first mesh ping blocked -> open",
            FIRST_PING,
            Duration::ZERO,
            || Ok(lab.ping(&hb, ip_e, 1)?.then_some(())),
        )?;
        let first = started.elapsed();
        eprintln!(
            "[udpblock-eim] blocked ready after {ready:.2?}; first ping over TCP+relay after {first:.2?}"
        );
        ensure!(
            lab.proc(b.proc).stderr().contains("connected over TCP"),
            "the udpblock node did not log its TCP fallback"
        );
        let he = e.host.clone();
        ensure!(lab.ping(&hb, ip_e, 3)?, "ping blocked -> open failed");
        ensure!(lab.ping(&he, ip_b, 3)?, "ping open -> blocked failed");

        // A TCP transfer through the mesh, both directions.
        let srv = lab.iperf_server(&e, ip_e, IPERF_PORT)?;
        let t0 = Instant::now();
        let up = lab
            .iperf(&b, &srv, IPERF_SECONDS, false)?
            .received_bytes()?;
        let down = lab.iperf(&b, &srv, IPERF_SECONDS, true)?.received_bytes()?;
        eprintln!(
            "[udpblock-eim] iperf3 {IPERF_SECONDS} s: up {:.2} MB, down {:.2} MB ({:.1?} incl. start)",
            up / 1e6,
            down / 1e6,
            t0.elapsed()
        );
        ensure!(up > 100_000.0, "only {up} bytes went blocked -> open");
        ensure!(down > 100_000.0, "only {down} bytes went open -> blocked");

        // Both see each other on the relay; the blocked node says why.
        wait_for(
            "blocked to show open as relayed because UDP is blocked",
            SETTLE,
            Duration::from_millis(500),
            || {
                let (path, reason) = lab.path_of(&b, "open")?;
                if path == "relay" && reason.as_deref() == Some("udp blocked") {
                    return Ok(Some(()));
                }
                anyhow::bail!("blocked sees open on {path} ({reason:?})")
            },
        )?;
        let me = lab.status(&b)?["self"].clone();
        ensure!(me["carrier"] == "tcp", "blocked's status: {me}");
        ensure!(
            me["reflexive"].is_null(),
            "a tunnel has no reflexive address: {me}"
        );
        let (path, reason) = lab.path_of(&e, "blocked")?;
        ensure!(path == "relay", "open sees blocked on {path} ({reason:?})");
        eprintln!("[udpblock-eim] blocked -> open: relay (udp blocked); open -> blocked: relay ({reason:?})");

        // `warren up` from the saved state takes the same way: UDP first, then TCP.
        let b2 = lab.restart_node_with_up(&b, "node-blocked-up")?;
        lab.wait_node_ready(&b2)?;
        wait_for(
            "a mesh ping after blocked restarts with warren up",
            FIRST_PING,
            Duration::ZERO,
            || Ok(lab.ping(&hb, ip_e, 1)?.then_some(())),
        )?;
        eprintln!(
            "[udpblock-eim] after warren up: first ping after {:.2?}",
            b2.started.elapsed()
        );
        ensure!(
            lab.ping(&he, ip_b, 3)?,
            "ping open -> blocked failed after the restart"
        );
        ensure!(
            lab.status(&b2)?["self"]["carrier"] == "tcp",
            "blocked is not on the TCP carrier after the restart"
        );
        Ok(())
    });
}
