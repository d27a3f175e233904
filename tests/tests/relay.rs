//! Relay fallback end to end (DESIGN.md section 2.5), with real nodes and a real coordinator:
//! `sym`+`sym` talks through the relay at once (full-size packets included) and says why;
//! `sym`+`eim` connects one way or the other; `eim`+`eim` starts relayed, moves to the direct
//! path, falls back to the relay when the direct path is cut, and returns when it heals.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use warren_lab::cmd::wait_for;
use warren_lab::lab::EXEC_TIMEOUT;
use warren_lab::netns::nft_load;
use warren_lab::{Coordinator, Host, Lab, Node, Site, SiteKind};

/// From both daemons started to the first ping answered across the mesh. The relay needs no
/// punching, so this is mostly login time.
const FIRST_PING: Duration = Duration::from_secs(15);
/// Largest ICMP payload that fills the 1280-byte TUN MTU (1280 - 20 IP - 8 ICMP).
const FULL_SIZE: u32 = 1252;
/// How long a path change may take in the lab (the engine promises ~1-2 s to go direct and
/// ~3.5 s to fall back; the status poll and pings add a little).
const SWITCH: Duration = Duration::from_secs(15);
/// iperf3 port of the TCP checks.
const TCP_CHECK_PORT: u16 = 5212;
/// nftables table used to cut the direct path between two sites.
const CUT_TABLE: &str = "warren_relay_cut";

/// Two ready nodes, their mesh addresses and sites.
struct Pair {
    coord: Coordinator,
    a: Node,
    b: Node,
    ip_a: Ipv4Addr,
    ip_b: Ipv4Addr,
    site_a: Site,
}

/// Starts a coordinator and two nodes on sites of the given kinds; waits until both are ready.
fn setup(lab: &mut Lab, ka: SiteKind, kb: SiteKind) -> Result<Pair> {
    let coord = lab.start_coordinator()?;
    let sa = lab.add_site(ka)?;
    let sb = lab.add_site(kb)?;
    let ta = lab.invite(&coord, &[])?;
    let tb = lab.invite(&coord, &[])?;
    let a = lab.join(&sa.hosts[0], &ta, "alpha", None)?;
    let b = lab.join(&sb.hosts[0], &tb, "bravo", None)?;
    let ip_a = lab.wait_node_ready(&a)?;
    let ip_b = lab.wait_node_ready(&b)?;
    Ok(Pair {
        coord,
        a,
        b,
        ip_a,
        ip_b,
        site_a: sa,
    })
}

/// Waits for the first ping alpha -> bravo; returns the time since both nodes started.
fn first_ping(lab: &mut Lab, a: &Node, b: &Node, ip_b: Ipv4Addr) -> Result<Duration> {
    let started = a.started.max(b.started);
    let ha = a.host.clone();
    wait_for(
        "the first mesh ping alpha -> bravo",
        FIRST_PING,
        Duration::ZERO,
        || Ok(lab.ping(&ha, ip_b, 1)?.then_some(())),
    )?;
    Ok(started.elapsed())
}

/// Starts an iperf3 server on `server`'s mesh address `ip` and runs a 3-second TCP transfer
/// from `client` to it, then the reverse; returns the bytes received each way.
fn tcp_both_ways(lab: &mut Lab, client: &Node, server: &Node, ip: Ipv4Addr) -> Result<(f64, f64)> {
    let srv = lab.iperf_server(server, ip, TCP_CHECK_PORT)?;
    let up = lab.iperf(client, &srv, 3, false)?.received_bytes()?;
    let down = lab.iperf(client, &srv, 3, true)?.received_bytes()?;
    Ok((up, down))
}

/// Cuts UDP between alpha's site and `peer_public` at alpha's router (the coordinator stays
/// reachable, so the relay keeps working).
fn cut_udp(router: &str, peer_public: Ipv4Addr) -> Result<()> {
    let cut = format!(
        "table inet {CUT_TABLE} {{\n  chain cut {{\n    type filter hook forward priority 0; policy accept;\n    ip daddr {0} meta l4proto udp drop\n    ip saddr {0} meta l4proto udp drop\n  }}\n}}\n",
        peer_public
    );
    nft_load(router, &cut)
}

/// Removes the cut made by [`cut_udp`].
fn heal_udp(lab: &Lab, router: &str) -> Result<()> {
    let out = lab.exec(
        router,
        &["nft", "delete", "table", "inet", CUT_TABLE],
        EXEC_TIMEOUT,
    )?;
    ensure!(out.success(), "nft delete: {}", out.stderr);
    Ok(())
}

/// `count` pings of `size` bytes of payload with DF set; true if all were answered.
fn ping_size(lab: &Lab, from: &Host, to: Ipv4Addr, size: u32, count: u32) -> Result<bool> {
    let (size, count, to) = (size.to_string(), count.to_string(), to.to_string());
    let out = lab.exec(
        &from.ns,
        &[
            "ping", "-n", "-q", "-M", "do", "-s", &size, "-c", &count, "-i", "0.2", "-W", "1", &to,
        ],
        EXEC_TIMEOUT,
    )?;
    Ok(out.stdout.contains(&format!(" {count} received")))
}

/// Waits until alpha sees bravo and bravo sees alpha on `want`, pinging alpha -> bravo
/// meanwhile (a path change needs traffic); returns how long it took.
fn wait_path(lab: &mut Lab, a: &Node, b: &Node, ip_b: Ipv4Addr, want: &str) -> Result<Duration> {
    let t0 = Instant::now();
    let ha = a.host.clone();
    wait_for(
        &format!("both sides on a {want} path"),
        SWITCH,
        Duration::ZERO,
        || {
            let _ = lab.ping(&ha, ip_b, 1)?;
            let (pa, ra) = lab.path_of(a, "bravo")?;
            let (pb, rb) = lab.path_of(b, "alpha")?;
            if pa == want && pb == want {
                return Ok(Some(()));
            }
            bail!("alpha sees bravo {pa} ({ra:?}), bravo sees alpha {pb} ({rb:?})")
        },
    )?;
    Ok(t0.elapsed())
}

/// The relay datagram sizes the node logged (`relay ready` / `relay datagram size`).
fn logged_sizes(lab: &Lab, node: &Node) -> Vec<String> {
    lab.proc(node.proc)
        .stderr()
        .lines()
        .filter(|l| l.contains("max_datagram_size"))
        .map(|l| {
            let i = l.find("max_datagram_size").unwrap_or(0);
            l[i..].to_string()
        })
        .collect()
}

#[test]
fn relay_sym_sym_pings_over_the_relay() {
    Lab::run_test("relay-sym-sym", |lab| {
        let Pair {
            coord,
            a,
            b,
            ip_a,
            ip_b,
            ..
        } = setup(lab, SiteKind::Sym, SiteKind::Sym)?;
        let t = first_ping(lab, &a, &b, ip_b)?;
        eprintln!("[relay-sym-sym] time from node start to first ping over the relay: {t:.2?}");
        let (ha, hb) = (a.host.clone(), b.host.clone());
        ensure!(lab.ping(&ha, ip_b, 3)?, "ping alpha -> bravo failed");
        ensure!(lab.ping(&hb, ip_a, 3)?, "ping bravo -> alpha failed");
        // Full-size packets (1280-byte IP packets, 1320-byte relay datagrams) fit the relay
        // once path MTU discovery has raised the control connections' datagram size.
        ensure!(
            ping_size(lab, &ha, ip_b, FULL_SIZE, 5)?,
            "full-size pings alpha -> bravo do not all make it through the relay"
        );
        ensure!(
            ping_size(lab, &hb, ip_a, FULL_SIZE, 5)?,
            "full-size pings bravo -> alpha do not all make it through the relay"
        );
        let (up, down) = tcp_both_ways(lab, &a, &b, ip_b)?;
        eprintln!(
            "[relay-sym-sym] TCP over the relay, 3 s each way: {:.1} MB / {:.1} MB",
            up / 1e6,
            down / 1e6
        );
        ensure!(
            up > 1e6 && down > 1e6,
            "TCP over the relay moved only {up} / {down} bytes"
        );
        for (node, peer) in [(&a, "bravo"), (&b, "alpha")] {
            let (path, reason) = lab.path_of(node, peer)?;
            ensure!(path == "relay", "{} sees {peer} on {path}", node.name);
            let reason = reason.context("relayed peer without a relay_reason")?;
            ensure!(
                ["punching", "punch timed out"].contains(&reason.as_str()),
                "unexpected reason {reason:?}"
            );
            eprintln!("[relay-sym-sym] {} -> {peer}: relay ({reason})", node.name);
        }
        // The operator sees the same from one place: GET /v1/peers lists each node's paths.
        wait_for(
            "relayed paths in GET /v1/peers",
            SWITCH,
            // Well inside the API's per-client read rate limit (20/s).
            Duration::from_millis(200),
            || {
                let (code, body) = lab.api_get(&coord, "/v1/peers", true)?;
                ensure!(code == 200, "GET /v1/peers answered {code}");
                let peers: Value = serde_json::from_str(&body)?;
                let relayed = |me: &str, peer: &str| {
                    peers.as_array().into_iter().flatten().any(|n| {
                        n["name"] == me
                            && n["paths"].as_array().into_iter().flatten().any(|p| {
                                p["peer"] == peer && p["path"] == "relay" && p["reason"].is_string()
                            })
                    })
                };
                Ok((relayed("alpha", "bravo") && relayed("bravo", "alpha")).then_some(()))
            },
        )?;
        for node in [&a, &b] {
            eprintln!(
                "[relay-sym-sym] {} control connection: {:?}",
                node.name,
                logged_sizes(lab, node)
            );
        }
        Ok(())
    });
}

#[test]
fn relay_sym_eim_connects() {
    Lab::run_test("relay-sym-eim", |lab| {
        let Pair {
            a, b, ip_a, ip_b, ..
        } = setup(lab, SiteKind::Sym, SiteKind::Eim)?;
        let t = first_ping(lab, &a, &b, ip_b)?;
        eprintln!("[relay-sym-eim] time from node start to first ping: {t:.2?}");
        let (ha, hb) = (a.host.clone(), b.host.clone());
        ensure!(lab.ping(&ha, ip_b, 3)?, "ping alpha -> bravo failed");
        ensure!(lab.ping(&hb, ip_a, 3)?, "ping bravo -> alpha failed");
        let (up, down) = tcp_both_ways(lab, &a, &b, ip_b)?;
        eprintln!(
            "[relay-sym-eim] TCP, 3 s each way: {:.1} MB / {:.1} MB",
            up / 1e6,
            down / 1e6
        );
        ensure!(up > 1e6 && down > 1e6, "TCP moved only {up} / {down} bytes");
        for (node, peer) in [(&a, "bravo"), (&b, "alpha")] {
            let (path, reason) = lab.path_of(node, peer)?;
            ensure!(
                path == "relay" || path == "direct",
                "{} sees {peer} on {path}",
                node.name
            );
            eprintln!(
                "[relay-sym-eim] {} -> {peer}: {path} ({reason:?})",
                node.name
            );
        }
        Ok(())
    });
}

#[test]
fn relay_eim_eim_goes_direct_falls_back_and_returns() {
    Lab::run_test("relay-eim-eim", |lab| {
        let Pair {
            a,
            b,
            ip_a,
            ip_b,
            site_a,
            ..
        } = setup(lab, SiteKind::Eim, SiteKind::Eim)?;
        let t = first_ping(lab, &a, &b, ip_b)?;
        eprintln!("[relay-eim-eim] time from node start to first ping: {t:.2?}");
        let to_direct = wait_path(lab, &a, &b, ip_b, "direct")?;
        eprintln!("[relay-eim-eim] direct {to_direct:.2?} after the first ping");

        // Cut UDP between the two sites at alpha's router; the coordinator stays reachable.
        let router = site_a
            .router
            .clone()
            .context("alpha's site has no router")?;
        cut_udp(&router, b.host.public_ip)?;
        let to_relay = wait_path(lab, &a, &b, ip_b, "relay")?;
        let (_, reason) = lab.path_of(&a, "bravo")?;
        eprintln!("[relay-eim-eim] direct path cut: relay after {to_relay:.2?} ({reason:?})");
        let hb = b.host.clone();
        ensure!(
            lab.ping(&hb, ip_a, 3)?,
            "ping over the relay after the cut failed"
        );

        // Heal: punching resumes and finds the path again.
        heal_udp(lab, &router)?;
        // The round started at the fallback is still probing, so the heal is found at once;
        // the hold-down after a demotion asks for 2 s of stable answers.
        let back = wait_path(lab, &a, &b, ip_b, "direct")?;
        eprintln!("[relay-eim-eim] healed: direct again after {back:.2?}");
        ensure!(lab.ping(&hb, ip_a, 3)?, "ping after the heal failed");
        Ok(())
    });
}

/// iperf3 port used by the stream test.
const STREAM_PORT: u16 = 5211;
/// Length of the TCP stream that outlives the cut and the heal, in seconds.
const STREAM_SECONDS: u32 = 24;
/// Longest the fall back to the relay may take once the direct path is cut: the engine
/// needs ~2 s of silence plus ~1.5 s of unanswered probes; a stalled TCP stream for longer
/// than this would feel broken to a user.
const FALLBACK_BOUND: Duration = Duration::from_secs(8);
/// Longest the return to the direct path may take once it works again.
const RETURN_BOUND: Duration = Duration::from_secs(12);
/// Longest run of one-second iperf3 intervals with no data the stream may suffer.
const MAX_STALL_SECONDS: usize = 7;

#[test]
fn relay_tcp_stream_survives_a_cut_and_the_heal() {
    Lab::run_test("relay-stream", |lab| {
        let Pair {
            a, b, ip_b, site_a, ..
        } = setup(lab, SiteKind::Eim, SiteKind::Eim)?;
        first_ping(lab, &a, &b, ip_b)?;
        wait_path(lab, &a, &b, ip_b, "direct")?;

        // A modest-rate TCP stream alpha -> bravo (rate-capped so the 2-core lab keeps time).
        let srv = lab.iperf_server(&b, ip_b, STREAM_PORT)?;
        let stream = lab.iperf_stream(&a, &srv, STREAM_SECONDS, "40M")?;
        std::thread::sleep(Duration::from_secs(4));

        let router = site_a
            .router
            .clone()
            .context("alpha's site has no router")?;
        cut_udp(&router, b.host.public_ip)?;
        let to_relay = wait_path(lab, &a, &b, ip_b, "relay")?;
        eprintln!("[relay-stream] cut mid-stream: relay after {to_relay:.2?}");
        ensure!(
            to_relay <= FALLBACK_BOUND,
            "falling back took {to_relay:.2?} (bound {FALLBACK_BOUND:?})"
        );
        std::thread::sleep(Duration::from_secs(3));
        heal_udp(lab, &router)?;
        let back = wait_path(lab, &a, &b, ip_b, "direct")?;
        eprintln!("[relay-stream] healed mid-stream: direct after {back:.2?}");
        ensure!(
            back <= RETURN_BOUND,
            "returning to direct took {back:.2?} (bound {RETURN_BOUND:?})"
        );

        // The one TCP connection lived through both switches.
        let run = lab.iperf_finish(stream)?;
        let received = run.received_bytes()?;
        let longest_stall = run.longest_stall()?;
        eprintln!(
            "[relay-stream] {STREAM_SECONDS} s stream: {:.1} MB received, longest stall {longest_stall} s",
            received / 1e6
        );
        ensure!(
            longest_stall <= MAX_STALL_SECONDS,
            "the stream stalled for {longest_stall} s"
        );
        // 40 Mbit/s for 24 s is 120 MB; stalls during the switches may cost a few seconds.
        ensure!(
            received > 40e6,
            "only {received} bytes arrived over the stream"
        );
        Ok(())
    });
}
