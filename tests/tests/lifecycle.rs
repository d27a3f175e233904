//! Beyond the first connection: tunnels that outlive the coordinator, a node restarted with
//! `warren up` from its saved state, a coordinator restarted on its data dir (DESIGN.md
//! sections 3 and 6) even in the middle of a TCP stream, a node removed through the API, and TCP
//! throughput through the tunnel (section 5).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use warren_lab::cmd::wait_for;
use warren_lab::warren::CLI_TIMEOUT;
use warren_lab::{Coordinator, Host, Lab, Node, Site, SiteKind};

/// What a removed node says when it is refused (node/src/error.rs).
const REMOVED_MESSAGE: &str = "not registered with the coordinator";
/// Bound on every "until it works again" wait.
const RECOVER: Duration = Duration::from_secs(30);
/// Minimum tunnel throughput accepted, bits per second: a sanity floor for a debug build on a
/// loaded 2-core machine, far below the performance budget (which a release build is held to).
const MIN_BPS: f64 = 20e6;

/// Two `eim` nodes joined through one coordinator, pinging each other.
struct Pair {
    coord: Coordinator,
    a: Node,
    b: Node,
    ip_a: Ipv4Addr,
    ip_b: Ipv4Addr,
    /// Alpha's site (the roaming test renumbers its router).
    site_a: Site,
}

fn pair(lab: &mut Lab) -> Result<Pair> {
    let coord = lab.start_coordinator()?;
    let sa = lab.add_site(SiteKind::Eim)?;
    let sb = lab.add_site(SiteKind::Eim)?;
    let ta = lab.invite(&coord, &[])?;
    let tb = lab.invite(&coord, &[])?;
    let a = lab.join(&sa.hosts[0], &ta, "alpha", None)?;
    let b = lab.join(&sb.hosts[0], &tb, "bravo", None)?;
    let ip_a = lab.wait_node_ready(&a)?;
    let ip_b = lab.wait_node_ready(&b)?;
    wait_ping(lab, &a.host, ip_b, "alpha -> bravo")?;
    Ok(Pair {
        coord,
        a,
        b,
        ip_a,
        ip_b,
        site_a: sa,
    })
}

/// Waits until one ping from `from` to `to` is answered; returns how long that took.
fn wait_ping(lab: &Lab, from: &Host, to: Ipv4Addr, what: &str) -> Result<Duration> {
    let t = Instant::now();
    wait_for(what, RECOVER, Duration::ZERO, || {
        Ok(lab.ping(from, to, 1)?.then_some(()))
    })?;
    Ok(t.elapsed())
}

/// `name -> mesh IP` of every node `/v1/peers` lists.
fn addresses(lab: &Lab, coord: &Coordinator) -> Result<Vec<(String, String)>> {
    let (code, body) = lab.api_get(coord, "/v1/peers", true)?;
    ensure!(code == 200, "GET /v1/peers: HTTP {code}: {body}");
    let v: Value = serde_json::from_str(&body).context("/v1/peers is not JSON")?;
    let mut out: Vec<(String, String)> = v
        .as_array()
        .context("/v1/peers is not an array")?
        .iter()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                p["ip"].as_str()?.to_string(),
            ))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Waits until `/v1/peers` reports every one of `names` online.
fn wait_online(lab: &Lab, coord: &Coordinator, names: &[&str]) -> Result<Duration> {
    let t = Instant::now();
    wait_for(
        &format!("{names:?} online"),
        RECOVER,
        Duration::from_millis(250),
        || {
            let online = online_names(lab, coord)?;
            if names.iter().all(|n| online.iter().any(|o| o == n)) {
                return Ok(Some(()));
            }
            bail!("online: {online:?}")
        },
    )?;
    Ok(t.elapsed())
}

/// The names of the nodes `/v1/peers` reports online.
fn online_names(lab: &Lab, coord: &Coordinator) -> Result<Vec<String>> {
    let (code, body) = lab.api_get(coord, "/v1/peers", true)?;
    ensure!(code == 200, "GET /v1/peers: HTTP {code}: {body}");
    let v: Value = serde_json::from_str(&body).context("/v1/peers is not JSON")?;
    Ok(v.as_array()
        .context("/v1/peers is not an array")?
        .iter()
        .filter(|p| p["online"] == Value::Bool(true))
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect())
}

#[test]
fn tunnels_survive_coordinator_outage_and_restarts() {
    Lab::run_test("lifecycle", |lab| {
        let p = pair(lab)?;

        // Coordinator gone: the established tunnel keeps carrying traffic.
        lab.proc_mut(p.coord.proc).stop();
        ensure!(
            lab.ping(&p.a.host, p.ip_b, 3)?,
            "tunnel died with the coordinator"
        );
        warren_lab::note!("[lifecycle] coordinator down: alpha <-> bravo still pings");

        // A node restarted with `warren up` while the coordinator is still down comes back on
        // its saved address and reaches its peer from the cached peer list.
        let a2 = lab.restart_node_with_up(&p.a, "node-alpha-up")?;
        let ip = lab.wait_node_ready(&a2)?;
        ensure!(
            ip == p.ip_a,
            "`warren up` came back on {ip}, the saved address is {}",
            p.ip_a
        );
        let t = wait_ping(
            lab,
            &p.b.host,
            p.ip_a,
            "bravo -> restarted alpha (coordinator down)",
        )?;
        warren_lab::note!(
            "[lifecycle] alpha restarted with `up`, coordinator down: ping after {t:.2?}"
        );

        // The coordinator restarted on its data dir: both nodes log in again by themselves.
        let coord2 = lab.restart_coordinator(&p.coord, "coordinator-restarted")?;
        let t = wait_online(lab, &coord2, &["alpha", "bravo"])?;
        warren_lab::note!("[lifecycle] both nodes online {t:.2?} after the coordinator restart");
        ensure!(
            lab.ping(&a2.host, p.ip_b, 3)?,
            "no ping alpha -> bravo after everything restarted"
        );

        // A new node can still join through the restarted coordinator and reach the others,
        // this time with an invite made through the HTTP API.
        let sc = lab.add_site(SiteKind::Open)?;
        let body = r#"{"uses": 1, "expires": "10m"}"#;
        let (code, _) = lab.api_request(&coord2, "POST", "/v1/invites", Some(body), false)?;
        ensure!(
            code == 401,
            "POST /v1/invites without the token answered HTTP {code}"
        );
        let (code, answer) = lab.api_request(&coord2, "POST", "/v1/invites", Some(body), true)?;
        ensure!(
            code == 201 || code == 200,
            "POST /v1/invites: HTTP {code}: {answer}"
        );
        let v: Value = serde_json::from_str(&answer).context("POST /v1/invites answer")?;
        let tc = v["token"]
            .as_str()
            .with_context(|| format!("no token in {answer}"))?
            .to_string();
        let c = lab.join(&sc.hosts[0], &tc, "charlie", None)?;
        lab.wait_node_ready(&c)?;
        let t = wait_ping(lab, &c.host, p.ip_a, "new node charlie -> alpha")?;
        warren_lab::note!(
            "[lifecycle] charlie joined after the restart, ping to alpha after {t:.2?}"
        );
        Ok(())
    });
}

/// iperf3 port of the restart-mid-stream test.
const STREAM_PORT: u16 = 5221;
/// Length of that stream, seconds: long enough for a stop, a pause and a restart.
const STREAM_SECONDS: u32 = 14;

#[test]
fn coordinator_restart_mid_stream_loses_nothing() {
    Lab::run_test("restart-mid-stream", |lab| {
        let p = pair(lab)?;
        let before = addresses(lab, &p.coord)?;
        let srv = lab.iperf_server(&p.b, p.ip_b, STREAM_PORT)?;
        let stream = lab.iperf_stream(&p.a, &srv, STREAM_SECONDS, "40M")?;

        // Stop the coordinator mid-stream, leave it down a while, start it again.
        std::thread::sleep(Duration::from_secs(3));
        lab.proc_mut(p.coord.proc).stop();
        std::thread::sleep(Duration::from_secs(3));
        let coord2 = lab.restart_coordinator(&p.coord, "coordinator-restarted")?;
        let t = wait_online(lab, &coord2, &["alpha", "bravo"])?;
        warren_lab::note!("[restart-mid-stream] both nodes online {t:.2?} after the restart");

        // The direct tunnel never needed the coordinator: not one second without data.
        let run = lab.iperf_finish(stream)?;
        let stall = run.longest_stall()?;
        let per_second = run.interval_bytes()?;
        let slowest = per_second.iter().copied().fold(f64::INFINITY, f64::min);
        warren_lab::note!(
            "[restart-mid-stream] {STREAM_SECONDS} s stream across the restart: {:.1} MB, slowest second {:.2} MB, longest stall {stall} s",
            run.received_bytes()? / 1e6,
            slowest / 1e6
        );
        ensure!(
            stall == 0,
            "the stream stopped for {stall} s: {per_second:?}"
        );

        // Same nodes, same addresses; and the restarted coordinator still takes new nodes.
        let after = addresses(lab, &coord2)?;
        ensure!(
            after == before,
            "the mesh changed across the restart: {before:?} -> {after:?}"
        );
        let sc = lab.add_site(SiteKind::Open)?;
        let tc = lab.invite(&coord2, &[])?;
        let c = lab.join(&sc.hosts[0], &tc, "charlie", None)?;
        lab.wait_node_ready(&c)?;
        let t = wait_ping(lab, &c.host, p.ip_b, "new node charlie -> bravo")?;
        warren_lab::note!(
            "[restart-mid-stream] charlie joined after the restart, ping after {t:.2?}"
        );
        Ok(())
    });
}

#[test]
fn tcp_throughput_through_the_tunnel() {
    Lab::run_test("throughput", |lab| {
        let p = pair(lab)?;
        let srv = lab.iperf_server(&p.b, p.ip_b, 5201)?;
        let run = lab.iperf(&p.a, &srv, 3, false)?;
        let bps = run.bits_per_second()?;
        let retr = run.retransmits();
        warren_lab::note!(
            "[throughput] one TCP stream alpha -> bravo (eim+eim, {} binaries): {:.1} Mbit/s, {retr} retransmits",
            std::env::var("WARREN_LAB_PROFILE").unwrap_or_else(|_| "debug".into()),
            bps / 1e6
        );
        ensure!(
            bps >= MIN_BPS,
            "tunnel throughput {:.1} Mbit/s is below {:.0} Mbit/s",
            bps / 1e6,
            MIN_BPS / 1e6
        );
        Ok(())
    });
}

#[test]
fn removed_node_is_cut_off() {
    Lab::run_test("remove-node", |lab| {
        let p = pair(lab)?;
        let (code, body) = lab.api_get(&p.coord, "/v1/peers", true)?;
        ensure!(code == 200, "GET /v1/peers: HTTP {code}");
        let v: Value = serde_json::from_str(&body).context("/v1/peers is not JSON")?;
        let id = v
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"].as_str() == Some("alpha")))
            .and_then(|p| p["id"].as_u64())
            .with_context(|| format!("no numeric id for alpha in {body}"))?;
        let path = format!("/v1/nodes/{id}");
        let (code, _) = lab.api_request(&p.coord, "DELETE", &path, None, false)?;
        ensure!(
            code == 401,
            "DELETE {path} without the token answered HTTP {code}"
        );
        let (code, body) = lab.api_request(&p.coord, "DELETE", &path, None, true)?;
        ensure!(
            code == 204 || code == 200,
            "DELETE {path}: HTTP {code}: {body}"
        );
        let t = Instant::now();
        // Bravo must stop talking to the removed node: its pings stop being answered.
        wait_for(
            "bravo to stop reaching the removed alpha",
            RECOVER,
            Duration::from_millis(200),
            || Ok((!lab.ping(&p.b.host, p.ip_a, 1)?).then_some(())),
        )?;
        warren_lab::note!(
            "[remove-node] alpha cut off {:.2?} after DELETE",
            t.elapsed()
        );
        ensure!(
            !lab.ping(&p.a.host, p.ip_b, 3)?,
            "the removed alpha still reaches bravo"
        );
        let (_, body) = lab.api_get(&p.coord, "/v1/peers", true)?;
        ensure!(
            !body.contains("\"alpha\""),
            "/v1/peers still lists alpha: {body}"
        );
        // Bravo has dropped alpha from its peers.
        let st = lab.status(&p.b)?;
        ensure!(
            !st.to_string().contains("\"alpha\""),
            "bravo's status still lists alpha: {st}"
        );

        // Alpha's daemon learns it was removed and stops with the reason.
        let status = wait_for(
            "the removed alpha's daemon to exit",
            RECOVER,
            Duration::from_millis(200),
            || Ok(lab.proc_mut(p.a.proc).try_exit()),
        )?;
        let stderr = lab.proc(p.a.proc).stderr_tail();
        ensure!(
            !status.success() && stderr.contains(REMOVED_MESSAGE),
            "the removed alpha's daemon ended with {status} and: {stderr}"
        );
        // `warren up` on its saved state fails at once with a one-line, clear message.
        let bins = lab.bins()?;
        let (bin, dir) = (
            bins.warren.display().to_string(),
            p.a.state_dir.display().to_string(),
        );
        let out = lab.exec(
            &p.a.host.ns,
            &[&bin, "up", "--state-dir", &dir],
            CLI_TIMEOUT,
        )?;
        ensure!(
            !out.success() && out.stderr.contains(REMOVED_MESSAGE),
            "`warren up` of the removed node: exit {}, stderr: {}",
            out.code(),
            out.stderr
        );
        warren_lab::note!(
            "[remove-node] `warren up` of the removed node: {}",
            out.stderr.trim()
        );
        Ok(())
    });
}

#[test]
fn node_behind_renumbered_nat_roams() {
    Lab::run_test("roaming", |lab| {
        let Pair {
            coord,
            a,
            b,
            ip_a,
            ip_b,
            site_a: sa,
        } = pair(lab)?;

        let new_ip = Ipv4Addr::new(198, 51, 100, 77);
        lab.renumber_site(&sa, new_ip)?;
        warren_lab::note!(
            "[roaming] alpha's router moved from {} to {new_ip}",
            sa.hosts[0].public_ip
        );
        let t = wait_ping(
            lab,
            &a.host,
            ip_b,
            "alpha -> bravo after alpha's NAT renumbered",
        )?;
        let t2 = wait_ping(
            lab,
            &b.host,
            ip_a,
            "bravo -> alpha after alpha's NAT renumbered",
        )?;
        warren_lab::note!("[roaming] mesh ping after renumbering: alpha->bravo {t:.2?}, then bravo->alpha {t2:.2?}");
        let t0 = Instant::now();
        wait_for(
            "bravo to reach alpha directly at its new address",
            RECOVER,
            Duration::from_millis(250),
            || {
                let st = lab
                    .peer_status(&b, "alpha")?
                    .context("bravo does not list alpha")?;
                let at_new = st
                    .endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with(&format!("{new_ip}:")));
                if st.path == "direct" && at_new {
                    return Ok(Some(()));
                }
                bail!("bravo sees alpha {} via {:?}", st.path, st.endpoint)
            },
        )?;
        warren_lab::note!(
            "[roaming] bravo direct to alpha's new address {:.2?} later",
            t0.elapsed()
        );
        // The coordinator knows the new address too (its view of alpha's endpoints).
        wait_for(
            "the coordinator to list alpha's new address",
            RECOVER,
            Duration::from_millis(250),
            || {
                let (_, body) = lab.api_get(&coord, "/v1/peers", true)?;
                let v: Value = serde_json::from_str(&body)?;
                let eps = v
                    .as_array()
                    .and_then(|ps| ps.iter().find(|p| p["name"].as_str() == Some("alpha")))
                    .map(|p| p["endpoints"].to_string())
                    .unwrap_or_default();
                if eps.contains(&new_ip.to_string()) {
                    return Ok(Some(()));
                }
                bail!("alpha's endpoints in /v1/peers: {eps}")
            },
        )?;
        Ok(())
    });
}
