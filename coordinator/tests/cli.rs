//! The CLI contract (DESIGN.md section 3) against the real binary: first start prints a join
//! command, `invite create` works while `serve` runs, files are private, the API answers on the
//! bound port, SIGTERM shuts down cleanly, later starts print nothing, bad input is one line.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use warren_proto::token::InviteToken;

const BIN: &str = env!("CARGO_BIN_EXE_warren-coordinator");

/// A data directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `serve`, killed on drop if the test did not stop it.
struct Serve {
    child: Child,
    /// Lines of stdout, as they come.
    stdout: mpsc::Receiver<String>,
    /// Lines of stderr (logs), as they come.
    stderr: mpsc::Receiver<String>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn serve(dir: &Path) -> Serve {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines(child.stdout.take().unwrap());
    let stderr = lines(child.stderr.take().unwrap());
    Serve {
        child,
        stdout,
        stderr,
    }
}

/// Waits for the "coordinator listening" log line; returns the HTTP address it names.
fn http_addr(s: &Serve) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let Ok(line) = s.stderr.recv_timeout(left) else {
            break;
        };
        if line.contains("coordinator listening") {
            let at = line.find("http=").expect("http= in the log line") + 5;
            return line[at..].split_whitespace().next().unwrap().to_string();
        }
    }
    panic!("serve did not log its addresses");
}

/// One HTTP/1.1 GET; returns the status code and body.
fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn terminate(mut s: Serve) -> bool {
    // SAFETY: plain kill(2) of the child this test started.
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = s.child.try_wait().unwrap() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn serve_invite_api_and_restart() {
    let tmp = TempDir(std::env::temp_dir().join(format!("warren-cli-{}", std::process::id())));
    let dir = tmp.0.join("data");

    // `invite create` before any `serve` fails with one line.
    let out = Command::new(BIN)
        .args(["invite", "create", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("error: ") && err.trim().lines().count() == 1,
        "{err}"
    );

    let s = serve(&dir);
    let http = http_addr(&s);
    let mut join = None;
    while let Ok(line) = s.stdout.recv_timeout(Duration::from_secs(5)) {
        if let Some(t) = line.trim().strip_prefix("warren join ") {
            join = Some(t.to_string());
            break;
        }
    }
    let first: InviteToken = join
        .expect("a join command on first start")
        .parse()
        .unwrap();
    let cert = std::fs::read(dir.join("cert.der")).unwrap();
    assert_eq!(first.fingerprint, <[u8; 32]>::from(Sha256::digest(&cert)));
    let addr = first.addrs[0].to_string();
    assert!(
        addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"),
        "{addr}"
    );
    assert_eq!(mode(&dir), 0o700);
    for f in ["cert.der", "key.der", "admin.token", "warren.db"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }

    // `invite create` while serve runs: the token alone, one line.
    let out = Command::new(BIN)
        .args([
            "invite",
            "create",
            "--uses",
            "2",
            "--expires",
            "1h",
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1);
    let second: InviteToken = stdout.trim().parse().unwrap();
    assert_ne!(second.secret, first.secret);
    assert_eq!(second.addrs, first.addrs);

    // An invite with a fixed name and address; the same name again, or an address outside the
    // mesh network, is refused with one line.
    let fixed = |name: &str, ip: &str| {
        Command::new(BIN)
            .args(["invite", "create", "--name", name, "--ip", ip, "--data-dir"])
            .arg(&dir)
            .output()
            .unwrap()
    };
    let out = fixed("db", "100.80.0.10");
    assert!(out.status.success(), "{out:?}");
    for (name, ip) in [("db", "100.80.0.11"), ("web", "10.9.9.9")] {
        let out = fixed(name, ip);
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(!out.status.success(), "{name} {ip}: {err}");
        assert!(
            err.starts_with("error: ") && err.lines().count() == 1,
            "{err}"
        );
    }

    // The API sees the three invites, and only with the admin token.
    let token = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    let (status, body) = get(&http, "/v1/invites", Some(token.trim()));
    assert_eq!(status, 200, "{body}");
    let invites: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(invites.as_array().unwrap().len(), 3, "{body}");
    assert_eq!(invites[0]["name"], "db", "{body}");
    assert_eq!(invites[0]["ip"], "100.80.0.10", "{body}");
    assert_eq!(invites[1]["uses_left"], 2);
    assert_eq!(get(&http, "/v1/health", None).0, 401);
    let (status, body) = get(&http, "/v1/health", Some(token.trim()));
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["relay"]["forwarded_packets"], 0);
    assert_eq!(
        health["relay"]["limits"]["bytes_per_sec"], 25_000_000,
        "default 200 Mbit/s per node"
    );

    assert!(terminate(s), "SIGTERM ends serve with status 0");

    // A restart prints no join command and keeps the identity.
    let s = serve(&dir);
    http_addr(&s);
    assert!(
        s.stdout.recv_timeout(Duration::from_millis(500)).is_err(),
        "nothing on stdout after the first start"
    );
    assert_eq!(std::fs::read(dir.join("cert.der")).unwrap(), cert);
    assert!(terminate(s));
}

#[test]
fn bad_values_are_refused() {
    for args in [
        &["invite", "create", "--expires", "soon"][..],
        &["invite", "create", "--uses", "0"],
        &["invite", "create", "--name", "not a name!"],
        &["invite", "create", "--ip", "nope"],
        &["serve", "--network", "10.0.0.0/99"],
        &["serve", "--listen", "nowhere"],
        &["serve", "--relay-rate-mbit", "0"],
        &["serve", "--relay-rate-pps", "many"],
        &["serve", "--bogus"],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .arg("--data-dir")
            .arg("/nonexistent/warren-cli-test")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(!Path::new("/nonexistent/warren-cli-test").exists());
}
