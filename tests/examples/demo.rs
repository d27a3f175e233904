//! `scripts/demo.sh`: a small live mesh in network namespaces, kept up until Enter or Ctrl-C.
//!
//! Demo layer on top of the lab harness: one coordinator, three nodes (two behind different
//! `eim` NAT routers, one `open`), pings between all of them, and the `warren status` of one
//! node. `demo --sweep` only removes namespaces left by a demo or lab run that died.

use std::io::BufRead;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use warren_lab::cmd::wait_for;
use warren_lab::names::sweep_stale;
use warren_lab::{Lab, Node, SiteKind};

/// Set by the SIGINT/SIGTERM handler or by Enter on stdin.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn main() {
    if std::env::args().any(|a| a == "--sweep") {
        match sweep_stale() {
            Ok(gone) if !gone.is_empty() => eprintln!("demo: removed leftover namespaces {gone:?}"),
            Ok(_) => {}
            Err(e) => eprintln!("demo: sweep failed: {e:#}"),
        }
        return;
    }
    // SAFETY (below): installing a handler that only stores to an atomic (async-signal-safe).
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: see above.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    let mut lab = match Lab::new("demo") {
        Ok(lab) => lab,
        Err(e) => {
            eprintln!("demo: {e:#}");
            std::process::exit(1);
        }
    };
    let result = run(&mut lab);
    if let Err(e) = &result {
        lab.report_failure();
        eprintln!("\ndemo failed: {e:#}");
    }
    eprintln!("demo: stopping the mesh and removing its namespaces...");
    drop(lab);
    if result.is_err() {
        std::process::exit(1);
    }
}

fn run(lab: &mut Lab) -> Result<()> {
    let coord = lab.start_coordinator()?;
    println!(
        "coordinator up at {} (QUIC) / http://{} (API)",
        coord.quic, coord.http
    );
    let mut nodes: Vec<(Node, Ipv4Addr)> = Vec::new();
    for (name, kind) in [
        ("home", SiteKind::Eim),
        ("office", SiteKind::Eim),
        ("vps", SiteKind::Open),
    ] {
        let site = lab.add_site(kind)?;
        let host = site.hosts[0].clone();
        let token = lab.invite(&coord, &[])?;
        let node = lab.join(&host, &token, name, None)?;
        println!(
            "node {name:7} in namespace {} ({kind}, LAN address {})",
            host.ns, host.ip
        );
        nodes.push((node, Ipv4Addr::UNSPECIFIED));
    }
    for entry in nodes.iter_mut() {
        entry.1 = lab.wait_node_ready(&entry.0)?;
        println!("node {:7} has mesh address {}", entry.0.name, entry.1);
    }
    for (from, _) in &nodes {
        for (to, to_ip) in &nodes {
            if from.name == to.name {
                continue;
            }
            let t = Instant::now();
            wait_for(
                &format!("{} to ping {}", from.name, to.name),
                Duration::from_secs(30),
                Duration::ZERO,
                || Ok(lab.ping(&from.host, *to_ip, 1)?.then_some(())),
            )?;
            let first = t.elapsed();
            ensure!(
                lab.ping(&from.host, *to_ip, 3)?,
                "ping {} -> {} failed",
                from.name,
                to.name
            );
            println!(
                "ping {:7} -> {:7} ({to_ip}): ok, first reply after {first:.2?}",
                from.name, to.name
            );
        }
    }
    // Give punching a moment so the status shows settled paths.
    std::thread::sleep(Duration::from_secs(2));
    let (home, _) = &nodes[0];
    let bins = lab.bins()?;
    let warren = bins.warren.display().to_string();
    let state = home.state_dir.display().to_string();
    let out = lab.exec(
        &home.host.ns,
        &[&warren, "status", "--state-dir", &state],
        Duration::from_secs(10),
    )?;
    println!(
        "\n$ warren status   (node home)\n{}{}",
        out.stdout, out.stderr
    );
    let token_path = coord.data_dir.join("admin.token");
    println!("Try it (in another terminal, as root):");
    println!("  ip netns exec {} ping {}", home.host.ns, nodes[2].1);
    println!(
        "  ip netns exec {} {warren} status --state-dir {state}",
        home.host.ns
    );
    println!(
        "  ip netns exec {} curl -s -H \"Authorization: Bearer $(cat {})\" http://{}/v1/peers",
        coord.host.ns,
        token_path.display(),
        coord.http
    );
    println!("\nThe mesh stays up. Press Enter or Ctrl-C to stop and clean up.");
    std::thread::spawn(|| {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        STOP.store(true, Ordering::SeqCst);
    });
    while !STOP.load(Ordering::SeqCst) {
        for (node, _) in &nodes {
            if let Some(st) = lab.proc_mut(node.proc).try_exit() {
                anyhow::bail!("node {} exited with {st}", node.name);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
