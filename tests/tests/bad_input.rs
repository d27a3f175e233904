//! Bad input against the real binaries: tokens that must be refused (malformed, expired,
//! used up, from another coordinator) and garbage datagrams at a node's UDP port.
//!
//! Contract (DESIGN.md section 3): a one-line error naming the problem, a non-zero exit, no
//! panic, no state dir left behind; network garbage is dropped silently and the node keeps
//! working.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use warren_lab::netns::udp_socket_in;
use warren_lab::warren::{CLI_TIMEOUT, QUIC_PORT};
use warren_lab::{Host, Lab, SiteKind, COORDINATOR_IP, SPARE_IP};

/// How long to listen for a (forbidden) reply to garbage.
const REPLY_WAIT: Duration = Duration::from_millis(1500);
/// Fixed UDP port of the node that receives garbage.
const NODE_PORT: u16 = 51820;

/// Runs `warren join TOKEN` in `host`'s namespace, expects it to fail properly, and returns
/// its one-line error.
fn failed_join(lab: &mut Lab, host: &Host, token: &str, label: &str) -> Result<String> {
    let bins = lab.bins()?;
    let state = lab.dir().join(format!("{label}-state"));
    ensure!(
        !state.exists(),
        "state dir {} exists before the test",
        state.display()
    );
    let bin = bins.warren.display().to_string();
    let state_s = state.display().to_string();
    let out = lab
        .exec(
            &host.ns,
            &[
                "env",
                "-u",
                "RUST_LOG",
                &bin,
                "join",
                token,
                "--state-dir",
                &state_s,
                "--name",
                label,
                "--tun",
                "wrn0",
            ],
            CLI_TIMEOUT,
        )
        .with_context(|| format!("{label}: warren join with a bad token did not exit"))?;
    let err = out.stderr.trim();
    warren_lab::note!("[{label}] exit {} stderr: {err}", out.code());
    ensure!(
        !out.success(),
        "{label}: warren join succeeded with a bad token"
    );
    ensure!(
        out.code() > 0,
        "{label}: killed by a signal (exit {})",
        out.code()
    );
    ensure!(!err.contains("panicked"), "{label}: panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    ensure!(
        lines.len() == 1,
        "{label}: expected a one-line error, got {} lines:\n{err}",
        lines.len()
    );
    ensure!(
        !state.exists(),
        "{label}: the failed join left its state dir {} behind",
        state.display()
    );
    Ok(lines[0].to_string())
}

/// Fails unless `msg` (lowercased) names the problem with one of `words`.
fn names_problem(label: &str, msg: &str, words: &[&str]) -> Result<()> {
    let lower = msg.to_lowercase();
    ensure!(
        words.iter().any(|w| lower.contains(w)),
        "{label}: error {msg:?} does not name the problem (expected one of {words:?})"
    );
    Ok(())
}

#[test]
fn malformed_tokens_are_refused() {
    Lab::run_test("malformed-token", |lab| {
        let site = lab.add_site(SiteKind::Eim)?;
        let host = site.hosts[0].clone();
        let cases = [
            ("not-a-token", "hello"),
            ("empty-body", "warren1-"),
            ("bad-chars", "warren1-!!!!$$$$****"),
            ("short", "warren1-AAAAAAAAAAAAAAAAAAAA"),
        ];
        for (label, token) in cases {
            let msg = failed_join(lab, &host, token, label)?;
            names_problem(label, &msg, &["token"])?;
        }
        // A real token with one character changed: the checksum catches it.
        let coord = lab.start_coordinator()?;
        let good = lab.invite(&coord, &[])?;
        let mut typo: Vec<char> = good.chars().collect();
        let i = typo.len() / 2;
        typo[i] = if typo[i] == 'A' { 'B' } else { 'A' };
        let typo: String = typo.into_iter().collect();
        let msg = failed_join(lab, &host, &typo, "typo")?;
        names_problem("typo", &msg, &["token"])?;
        Ok(())
    });
}

#[test]
fn unreachable_coordinator_is_reported() {
    Lab::run_test("unreachable-coordinator", |lab| {
        // A real token whose coordinator address leads nowhere: a coordinator that tells its
        // invites to use an address where nothing answers.
        let nowhere = SocketAddr::from((SPARE_IP, QUIC_PORT));
        let coord = lab.start_coordinator_with("coordinator", QUIC_PORT, 7480, nowhere)?;
        let token = lab.invite(&coord, &[])?;
        let site = lab.add_site(SiteKind::Eim)?;
        let msg = failed_join(lab, &site.hosts[0], &token, "unreachable")?;
        names_problem(
            "unreachable",
            &msg,
            &[
                "coordinator",
                "unreachable",
                "timed out",
                "timeout",
                "connect",
            ],
        )
    });
}

#[test]
fn expired_token_is_refused() {
    Lab::run_test("expired-token", |lab| {
        let coord = lab.start_coordinator()?;
        let site = lab.add_site(SiteKind::Eim)?;
        let token = lab.invite(&coord, &["--expires", "1s"])?;
        std::thread::sleep(Duration::from_millis(2500));
        let msg = failed_join(lab, &site.hosts[0], &token, "expired")?;
        names_problem("expired", &msg, &["expired"])
    });
}

#[test]
fn used_up_token_is_refused() {
    Lab::run_test("used-up-token", |lab| {
        let coord = lab.start_coordinator()?;
        let s1 = lab.add_site(SiteKind::Eim)?;
        let s2 = lab.add_site(SiteKind::Eim)?;
        let token = lab.invite(&coord, &["--uses", "1"])?;
        let first = lab.join(&s1.hosts[0], &token, "first", None)?;
        lab.wait_node_ready(&first)?;
        let msg = failed_join(lab, &s2.hosts[0], &token, "second")?;
        names_problem(
            "used-up",
            &msg,
            &["used", "exhausted", "redeemed", "no uses", "invalid"],
        )?;
        // The first node is unaffected.
        lab.wait_node_ready(&first)?;
        Ok(())
    });
}

#[test]
fn token_of_another_coordinator_is_refused() {
    Lab::run_test("foreign-token", |lab| {
        let _real = lab.start_coordinator()?;
        // A second coordinator whose tokens point at the first one's address: the pinned
        // fingerprint cannot match the certificate the node meets there.
        let public = SocketAddr::from((COORDINATOR_IP, QUIC_PORT));
        let other = lab.start_coordinator_with("other-coordinator", 7444, 7481, public)?;
        let site = lab.add_site(SiteKind::Eim)?;
        let token = lab.invite(&other, &[])?;
        let msg = failed_join(lab, &site.hosts[0], &token, "foreign")?;
        names_problem(
            "foreign",
            &msg,
            &[
                "fingerprint",
                "certificate",
                "coordinator",
                "pinned",
                "trust",
            ],
        )
    });
}

/// `n` bytes from the kernel's random source.
fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// True when something arrives on `s` within [`REPLY_WAIT`].
fn got_reply(s: &UdpSocket) -> Result<Option<(usize, SocketAddr)>> {
    s.set_read_timeout(Some(REPLY_WAIT))?;
    let mut buf = [0u8; 2048];
    match s.recv_from(&mut buf) {
        Ok(r) => Ok(Some(r)),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

#[test]
fn garbage_datagrams_get_no_reply_and_do_no_harm() {
    Lab::run_test("garbage-udp", |lab| {
        let coord = lab.start_coordinator()?;
        let open = lab.add_site(SiteKind::Open)?;
        let eim = lab.add_site(SiteKind::Eim)?;
        let spare = lab.add_internet_host("spare", SPARE_IP)?;
        let (ho, he) = (open.hosts[0].clone(), eim.hosts[0].clone());
        let to = lab.invite(&coord, &[])?;
        let te = lab.invite(&coord, &[])?;
        let target = lab.join(&ho, &to, "target", Some(NODE_PORT))?;
        let friend = lab.join(&he, &te, "friend", None)?;
        let ip_t = lab.wait_node_ready(&target)?;
        lab.wait_node_ready(&friend)?;
        warren_lab::cmd::wait_for(
            "friend -> target mesh ping",
            Duration::from_secs(30),
            Duration::ZERO,
            || Ok(lab.ping(&he, ip_t, 1)?.then_some(())),
        )?;

        let node_addr = SocketAddr::from((ho.ip, NODE_PORT));
        let sock = udp_socket_in(&spare.ns, SocketAddr::from((SPARE_IP, 0)))?;
        let mut sent = 0;
        for len in [0usize, 1, 4, 16, 32, 64, 92, 148, 256, 1200, 1400] {
            // Plain random bytes (any first byte: Warren types and QUIC-looking ones).
            sock.send_to(&random_bytes(len)?, node_addr)?;
            // A fake handshake initiation: type 0x01 then random bytes.
            let mut fake = random_bytes(len.max(1))?;
            fake[0] = 0x01;
            sock.send_to(&fake, node_addr)?;
            // Each Warren packet type below 0x40 followed by random bytes.
            for ty in 0u8..8 {
                let mut p = random_bytes(len.max(1))?;
                p[0] = ty;
                sock.send_to(&p, node_addr)?;
                sent += 1;
            }
            sent += 2;
        }
        if let Some((n, from)) = got_reply(&sock)? {
            bail!("the node answered garbage: {n} bytes from {from}");
        }
        warren_lab::note!("[garbage-udp] {sent} garbage datagrams to {node_addr}: no reply");
        ensure!(
            lab.proc_mut(target.proc).try_exit().is_none(),
            "the node died after garbage datagrams"
        );
        ensure!(
            lab.ping(&he, ip_t, 3)?,
            "mesh ping failed after the garbage"
        );
        Ok(())
    });
}

#[test]
fn bad_flags_get_one_line_errors() {
    Lab::run_test("bad-flags", |lab| {
        let bins = lab.bins()?;
        let warren = bins.warren.display().to_string();
        let coordinator = bins.coordinator.display().to_string();
        let scratch = lab.dir().join("no-such-dir").display().to_string();
        let host = lab.coordinator_host.clone();
        let cases: Vec<(&str, Vec<&str>, &[&str])> = vec![
            (
                "join-bogus-flag",
                vec![&warren, "join", "warren1-x", "--bogus"],
                &["bogus"],
            ),
            (
                "join-bad-port",
                vec![&warren, "join", "warren1-x", "--port", "99999"],
                &["port"],
            ),
            (
                "serve-bogus-flag",
                vec![&coordinator, "serve", "--bogus"],
                &["bogus"],
            ),
            (
                "invite-bad-expiry",
                vec![
                    &coordinator,
                    "invite",
                    "create",
                    "--data-dir",
                    &scratch,
                    "--expires",
                    "banana",
                ],
                &["expires", "banana"],
            ),
            (
                "status-no-daemon",
                vec![&warren, "status", "--state-dir", &scratch],
                &["daemon", "running"],
            ),
        ];
        let mut failures = Vec::new();
        for (label, args, words) in cases {
            let mut full = vec!["env", "-u", "RUST_LOG"];
            full.extend_from_slice(&args);
            let out = lab.exec(&host.ns, &full, CLI_TIMEOUT)?;
            let err = out.stderr.trim();
            let lines = err.lines().filter(|l| !l.trim().is_empty()).count();
            warren_lab::note!(
                "[{label}] exit {} ({lines} stderr lines): {}",
                out.code(),
                err.lines()
                    .filter(|l| !l.trim().is_empty())
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            if out.success() || out.code() < 0 {
                failures.push(format!("{label}: exit {}", out.code()));
            } else if err.contains("panicked") || lines != 1 {
                failures.push(format!(
                    "{label}: expected a one-line error, got {lines} lines: {err:?}"
                ));
            } else if let Err(e) = names_problem(label, err, words) {
                failures.push(format!("{e:#}"));
            }
        }
        ensure!(
            !std::path::Path::new(&scratch).exists(),
            "a failed command created {scratch}"
        );
        ensure!(
            failures.is_empty(),
            "bad flags not handled per contract:\n{}",
            failures.join("\n")
        );
        Ok(())
    });
}
