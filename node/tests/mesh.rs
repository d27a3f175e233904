//! Two real `warren` daemons in their own network namespaces, joined through the scripted
//! coordinator in a third ("hub") namespace on a shared bridge: they must find each other, punch,
//! handshake and carry ping through their TUN interfaces. Needs root and iproute2; skipped
//! otherwise.
#![allow(clippy::unwrap_used)]

mod fake_coordinator;

use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_warren");

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces that are deleted on drop (also when the test fails).
struct Lab {
    names: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

struct Node {
    child: Child,
    lines: mpsc::Receiver<String>,
    dir: PathBuf,
    ns: String,
}

impl Node {
    fn join(ns: &str, token: &str, dir: &Path, name: &str, offload: bool) -> Self {
        let args = ["join", token, "--tun", "warren0", "--name", name];
        Self::spawn(ns, &args, dir, name, offload)
    }

    fn up(ns: &str, dir: &Path, name: &str, offload: bool) -> Self {
        Self::spawn(ns, &["up"], dir, name, offload)
    }

    fn spawn(ns: &str, args: &[&str], dir: &Path, name: &str, offload: bool) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, BIN])
            .args(args)
            .args(["--state-dir", dir.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .env("WARREN_TUN_OFFLOAD", if offload { "1" } else { "0" })
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
        let mut node = Self {
            child,
            lines,
            dir: dir.to_path_buf(),
            ns: ns.to_string(),
        };
        loop {
            match node.lines.recv_timeout(Duration::from_secs(20)) {
                Ok(l) if l.contains("ready") => break,
                Ok(_) => {}
                Err(_) => panic!("{name} never became ready: {:?}", node.child.try_wait()),
            }
        }
        node
    }

    fn status(&self) -> serde_json::Value {
        let out = Command::new(BIN)
            .args([
                "status",
                "--json",
                "--state-dir",
                self.dir.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn ping(&self, ip: &str) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.ns, "ping", "-c", "1", "-W", "1", ip])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    fn stop(&mut self) -> Option<i32> {
        // SAFETY: kill(2) on our own child's pid (`ip netns exec` execs the binary).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let code = self.child.wait().unwrap().code();
        for l in self.lines.try_iter() {
            eprintln!("[{}] {l}", self.ns);
        }
        code
    }
}

impl Drop for Node {
    /// A failed assertion must not leave a daemon running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the fake coordinator on a thread that has entered namespace `ns`.
fn coordinator_in(ns: &str) -> (fake_coordinator::Fake, tokio::runtime::Runtime) {
    let ns = ns.to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
        // SAFETY: setns(2) on this thread only, with a valid namespace fd.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns failed");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let fake = fake_coordinator::start(&rt, "10.231.0.1:0".parse().unwrap(), false);
        tx.send((fake, rt)).unwrap();
    });
    rx.recv().unwrap()
}

#[test]
fn two_daemons_carry_ping_over_a_direct_path() {
    two_daemons(true);
}

#[test]
fn two_daemons_without_tun_offload() {
    two_daemons(false);
}

fn two_daemons(offload: bool) {
    if unsafe { libc::geteuid() } != 0 || Command::new("ip").arg("-V").output().is_err() {
        eprintln!("needs root and iproute2: skipping");
        return;
    }
    let p = format!("wn{}{}", std::process::id() % 100_000, u8::from(offload));
    let (hub, a, b) = (format!("{p}h"), format!("{p}a"), format!("{p}b"));
    let root = std::env::temp_dir().join(format!("warren-mesh-{p}"));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let _lab = Lab {
        names: vec![hub.clone(), a.clone(), b.clone()],
        dirs: vec![root.clone()],
    };
    for n in [&hub, &a, &b] {
        sh(&["ip", "netns", "add", n]);
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]);
    sh(&[
        "ip",
        "-n",
        &hub,
        "addr",
        "add",
        "10.231.0.1/24",
        "dev",
        "br0",
    ]);
    sh(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
    for (i, n) in [(2, &a), (3, &b)] {
        let v = format!("v{i}");
        sh(&[
            "ip", "-n", &hub, "link", "add", &v, "type", "veth", "peer", "name", "eth0", "netns", n,
        ]);
        sh(&["ip", "-n", &hub, "link", "set", &v, "master", "br0", "up"]);
        sh(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            &format!("10.231.0.{i}/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", n, "link", "set", "eth0", "up"]);
    }
    let (fake, _rt) = coordinator_in(&hub);
    let token = fake.token(fake_coordinator::GOOD, None);
    let mut na = Node::join(&a, &token, &root.join("a"), "node-a", offload);
    let mut nb = Node::join(&b, &token, &root.join("b"), "node-b", offload);

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ok = false;
    while Instant::now() < deadline {
        if na.ping("100.77.0.2") {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sa = na.status();
    let sb = nb.status();
    eprintln!("a: {sa}\nb: {sb}");
    let table = Command::new(BIN)
        .args(["status", "--state-dir", na.dir.to_str().unwrap()])
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&table.stdout));
    assert!(ok, "node-a never reached node-b through the tunnel");
    assert!(nb.ping("100.77.0.1"), "and back");
    let peer = &sa["peers"][0];
    assert_eq!(peer["name"], "node-b");
    assert_eq!(peer["path"], "direct");
    let endpoint = peer["endpoint"].as_str().unwrap_or_default();
    assert!(endpoint.starts_with("10.231.0.3:"), "{endpoint}");
    assert!(peer["tx_bytes"].as_u64().unwrap() > 0 && peer["rx_bytes"].as_u64().unwrap() > 0);
    if std::env::var_os("WARREN_PERF").is_some() {
        iperf(&na, &nb);
    }

    // node-a roams to a new LAN address: its next authenticated packets move node-b's endpoint.
    // (Deleting a primary address also deletes its secondaries, so the old one goes first.)
    let old = "10.231.0.2/24";
    let new = "10.231.0.12/24";
    sh(&["ip", "-n", &a, "addr", "del", old, "dev", "eth0"]);
    sh(&["ip", "-n", &a, "addr", "add", new, "dev", "eth0"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut roamed = false;
    while Instant::now() < deadline {
        let sb = nb.status();
        let endpoint = sb["peers"][0]["endpoint"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if endpoint.starts_with("10.231.0.12:") && na.ping("100.77.0.2") {
            roamed = true;
            break;
        }
        na.ping("100.77.0.2");
        std::thread::sleep(Duration::from_millis(200));
    }
    if !roamed {
        let la: Vec<String> = na.lines.try_iter().collect();
        let lb: Vec<String> = nb.lines.try_iter().collect();
        panic!(
            "node-b did not follow node-a to its new address:\nb: {}\na: {}\nlogs a: {la:#?}\nlogs b: {lb:#?}",
            nb.status(),
            na.status()
        );
    }

    // The coordinator goes away and node-a restarts: the cached peer list brings the tunnel
    // back without it (DESIGN.md section 6).
    fake.shutdown();
    assert_eq!(na.stop(), Some(0));
    let mut na = Node::up(&a, &root.join("a"), "node-a", offload);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut back = false;
    while Instant::now() < deadline {
        if na.ping("100.77.0.2") {
            back = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sa = na.status();
    assert!(back, "no tunnel after a restart without coordinator: {sa}");
    assert_eq!(sa["self"]["coordinator"], "disconnected");
    assert_eq!(na.stop(), Some(0));
    assert_eq!(nb.stop(), Some(0));
}

/// One TCP stream a → b through the tunnel for 5 s (only with `WARREN_PERF=1`; needs iperf3).
fn iperf(a: &Node, b: &Node) {
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &b.ns,
            "iperf3",
            "-s",
            "-1",
            "-B",
            "100.77.0.2",
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &a.ns,
            "iperf3",
            "-c",
            "100.77.0.2",
            "-t",
            "5",
        ])
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    for ns in [&a.ns, &b.ns] {
        for cmd in [
            &["ip", "-s", "link", "show", "warren0"][..],
            &[
                "nstat",
                "-az",
                "UdpRcvbufErrors",
                "UdpSndbufErrors",
                "UdpInErrors",
            ],
        ] {
            let o = Command::new("ip")
                .args(["netns", "exec", ns])
                .args(cmd)
                .output()
                .unwrap();
            eprintln!("[{ns}] {}", String::from_utf8_lossy(&o.stdout));
        }
    }
    let _ = server.kill();
    let _ = server.wait();
}
