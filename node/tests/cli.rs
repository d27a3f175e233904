//! End-to-end tests of the `warren` binary against a scripted coordinator on loopback: error
//! messages, state-dir atomicity, the daemon's readiness, `status`, clean shutdown and `up`.
//! Creating the TUN interface needs root; without it the daemon parts are skipped.
#![allow(clippy::unwrap_used)]

mod fake_coordinator;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_warren");

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "warren-cli-test-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn warren(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("WARREN_STATE_DIR")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// Asserts a one-line `error: ...` containing `needle` and exit status 1.
fn assert_fails(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert_eq!(lines.len(), 1, "stderr: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(lines[0].contains(needle), "wanted {needle:?} in {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A daemon child with its stderr lines streamed to a channel.
struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Daemon {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    /// Waits for the `ready` log line.
    fn wait_ready(&mut self) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(line) if line.contains("ready") => return line,
                Ok(_) => {}
                Err(_) => panic!("daemon never became ready: {:?}", self.child.try_wait()),
            }
        }
    }

    /// SIGTERM, then the exit code.
    fn stop(mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap().code()
    }
}

fn status_json(dir: &Path) -> serde_json::Value {
    let out = warren(&["status", "--json", "--state-dir", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn iface_exists(name: &str) -> bool {
    Path::new(&format!("/sys/class/net/{name}")).exists()
}

#[test]
fn join_status_shutdown_and_up() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fake = fake_coordinator::start(&rt, "127.0.0.1:0".parse().unwrap(), true);
    let root = scratch();
    let dir = root.join("state");
    let d = dir.to_str().unwrap();

    // Malformed token: parse error, nothing created.
    assert_fails(
        &warren(&["join", "warren1-garbage", "--state-dir", d]),
        "invalid invite token",
    );
    assert_fails(
        &warren(&["join", "hello", "--state-dir", d]),
        "not a Warren invite token",
    );

    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: skipping the TUN-dependent part");
        return;
    }
    let tun = format!("wrn{}c", std::process::id() % 100_000);

    // Expired invite and wrong certificate: clear errors, no state dir, no leftovers.
    let expired = fake.token(fake_coordinator::EXPIRED, None);
    assert_fails(
        &warren(&["join", &expired, "--state-dir", d, "--tun", &tun]),
        "expired",
    );
    let wrong = fake.token(fake_coordinator::GOOD, Some([0; 32]));
    assert_fails(
        &warren(&["join", &wrong, "--state-dir", d, "--tun", &tun]),
        "does not match the invite token",
    );
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "no leftovers");
    assert!(!iface_exists(&tun));

    // A good join: the daemon comes up, status answers.
    let good = fake.token(fake_coordinator::GOOD, None);
    let mut daemon = Daemon::spawn(&[
        "join",
        &good,
        "--state-dir",
        d,
        "--tun",
        &tun,
        "--name",
        "alpha",
    ]);
    let ready = daemon.wait_ready();
    assert!(ready.contains("100.77.0.1"), "{ready}");
    assert!(iface_exists(&tun));
    let key_mode = std::fs::metadata(dir.join("key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(saved["mesh_ip"], "100.77.0.1");
    assert_eq!(saved["tun"], tun.as_str());
    assert_ne!(saved["port"], 0);

    let mut status = status_json(&dir);
    for _ in 0..50 {
        if status["self"]["coordinator"] == "connected" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        status = status_json(&dir);
    }
    assert_eq!(status["self"]["ip"], "100.77.0.1");
    assert_eq!(status["self"]["name"], "alpha");
    assert_eq!(status["self"]["coordinator"], "connected");
    assert_eq!(
        status["self"]["reflexive"],
        format!("127.0.0.1:{}", saved["port"]).as_str(),
        "the coordinator saw the data socket"
    );
    assert_eq!(status["peers"][0]["name"], "peer-two");
    let cached = std::fs::read_to_string(dir.join("peers.json")).unwrap();
    assert!(cached.contains("peer-two"), "{cached}");
    assert_eq!(status["peers"][0]["ip"], "100.77.0.200");
    assert_eq!(status["peers"][0]["online"], false);
    assert!(
        ["connecting", "direct", "relay"].contains(&status["peers"][0]["path"].as_str().unwrap())
    );
    let table = warren(&["status", "--state-dir", d]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("peer-two"));

    // The coordinator drops the connection: the daemon logs in again by itself.
    let logins = fake.logins();
    fake.kick_all();
    let mut status = status_json(&dir);
    for _ in 0..100 {
        if fake.logins() > logins && status["self"]["coordinator"] == "connected" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        status = status_json(&dir);
    }
    assert!(
        fake.logins() > logins,
        "no re-login after the connection dropped"
    );
    assert_eq!(status["self"]["coordinator"], "connected");

    // Joining again into the same directory is refused while it runs.
    assert_fails(
        &warren(&["join", &good, "--state-dir", d]),
        "already holds a joined node",
    );
    assert_fails(&warren(&["up", "--state-dir", d]), "already running");

    // Clean shutdown removes the interface and the socket.
    assert_eq!(daemon.stop(), Some(0));
    assert!(!iface_exists(&tun));
    assert!(!dir.join("warren.sock").exists());
    assert_fails(
        &warren(&["status", "--state-dir", d]),
        "no warren daemon is running",
    );

    // `up` restarts from saved state on the same port and logs in again.
    let mut daemon = Daemon::spawn(&["up", "--state-dir", d]);
    daemon.wait_ready();
    let mut status = status_json(&dir);
    for _ in 0..50 {
        if status["self"]["coordinator"] == "connected" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        status = status_json(&dir);
    }
    assert_eq!(status["self"]["coordinator"], "connected");
    assert_eq!(daemon.stop(), Some(0));

    // `up` refuses a key others can read.
    std::fs::set_permissions(dir.join("key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_fails(&warren(&["up", "--state-dir", d]), "chmod 600");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn up_and_status_without_state() {
    let root = scratch();
    let d = root.join("none");
    let d = d.to_str().unwrap();
    assert_fails(
        &warren(&["up", "--state-dir", d]),
        "run `warren join TOKEN` first",
    );
    assert_fails(
        &warren(&["status", "--state-dir", d]),
        "no warren daemon is running",
    );
    assert_fails(&warren(&["join", "--bogus"]), "--bogus");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn unreachable_coordinator_times_out_cleanly() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: skipping");
        return;
    }
    // A UDP socket that never answers stands in for a coordinator that is down.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let token = warren_proto::token::InviteToken {
        addrs: vec![warren_proto::token::CoordinatorAddr::Ip(
            addr.ip(),
            addr.port(),
        )],
        fingerprint: [5; 32],
        secret: [6; 32],
    }
    .to_string();
    let root = scratch();
    let dir = root.join("state");
    let tun = format!("wrn{}u", std::process::id() % 100_000);
    let started = std::time::Instant::now();
    let out = warren(&[
        "join",
        &token,
        "--state-dir",
        dir.to_str().unwrap(),
        "--tun",
        &tun,
    ]);
    assert_fails(
        &out,
        &format!("cannot reach the coordinator at {addr}: timed out"),
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0, "no leftovers");
    assert!(!iface_exists(&tun));
    std::fs::remove_dir_all(&root).unwrap();
}
