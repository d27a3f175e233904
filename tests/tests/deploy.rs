//! The deployment material of `deploy/` against the real tools and binaries.
//!
//! - Both systemd units pass `systemd-analyze verify` (the tool must be installed: the test
//!   fails, never skips, without it), with `ExecStart` pointed at the freshly built binaries.
//! - The coordinator unit's command line runs with the example config: it tells systemd
//!   `READY=1` (the unit is `Type=notify`) and `STOPPING=1`, exits 0 on SIGTERM, and logs JSON
//!   when `WARREN_LOG_FORMAT=json` says so.
//! - Lab: a node runs the way `warren.service` runs it — as an unprivileged user whose only
//!   capability is CAP_NET_ADMIN, from a config file, with JSON logs and the metrics listener —
//!   and carries traffic; its info log holds no inner address of that traffic.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use warren_lab::bins::{workspace_root, Bins};
use warren_lab::cmd::wait_for;
use warren_lab::lab::which;
use warren_lab::warren::CLI_TIMEOUT;
use warren_lab::{Lab, Node, SiteKind};

/// How long a daemon gets to say READY=1.
const READY_WAIT: Duration = Duration::from_secs(30);
/// Unprivileged user and group the node runs as (`nobody`; systemd's DynamicUser is alike).
const UNPRIVILEGED: u32 = 65534;
/// CAP_NET_ADMIN's bit in the capability sets of /proc/PID/status (linux/capability.h: 12).
const CAP_NET_ADMIN_MASK: u64 = 1 << 12;
/// Where the lab node serves its metrics, inside its namespace.
const METRICS_ADDR: &str = "127.0.0.1:9480";
/// An address no interface of the lab's node namespaces has (TEST-NET-1, RFC 5737).
const UNBINDABLE: &str = "192.0.2.1:9480";
/// First systemd version that knows RestartSteps= and RestartMaxDelaySec= (v254 NEWS).
const SYSTEMD_RESTART_STEPS: u32 = 254;

/// A scratch directory every user may traverse (the unprivileged node reads its config and
/// reaches the notify socket in it), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Result<Scratch> {
        let dir =
            std::env::temp_dir().join(format!("warren-deploy-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bound `$NOTIFY_SOCKET` that collects sd_notify messages.
struct NotifySocket {
    path: PathBuf,
    sock: UnixDatagram,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Result<NotifySocket> {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).context("binding the notify socket")?;
        // The unprivileged node must be able to send to it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        Ok(NotifySocket { path, sock })
    }

    /// Waits for a message containing `state`; returns the messages seen until then.
    fn wait(&self, state: &str, within: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            self.sock.set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(10)),
            ))?;
            match self.sock.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                    let hit = msg.lines().any(|l| l == state);
                    seen.push(msg);
                    if hit {
                        return Ok(seen);
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    break
                }
                Err(e) => return Err(e).context("reading the notify socket"),
            }
        }
        bail!("no {state} within {within:?} (got {seen:?})")
    }
}

/// The `ExecStart=` command line of a unit in deploy/, split on whitespace.
fn exec_start(unit: &str) -> Result<Vec<String>> {
    let path = workspace_root().join("deploy").join(unit);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .with_context(|| format!("{unit} has no ExecStart="))?;
    Ok(line.split_whitespace().map(str::to_string).collect())
}

/// The major version of the installed systemd.
fn systemd_version(analyze: &Path) -> Result<u32> {
    let out = Command::new(analyze).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("cannot read the systemd version from {text:?}"))
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let run = || -> Result<()> {
        let analyze = which("systemd-analyze").context(
            "systemd-analyze is not installed (Debian: apt-get install systemd); it is required",
        )?;
        let bins = Bins::locate()?;
        let scratch = Scratch::new("verify")?;
        let mut units = Vec::new();
        for (unit, bin) in [
            ("warren-coordinator.service", &bins.coordinator),
            ("warren.service", &bins.warren),
        ] {
            let text = std::fs::read_to_string(workspace_root().join("deploy").join(unit))?;
            let installed = format!(
                "/usr/local/bin/{}",
                bin.file_name().and_then(|n| n.to_str()).unwrap_or_default()
            );
            ensure!(
                text.contains(&format!("ExecStart={installed} ")),
                "{unit}: ExecStart is not {installed}"
            );
            // verify checks that ExecStart is executable: point it at the build.
            let local = text.replace(
                &format!("ExecStart={installed}"),
                &format!("ExecStart={}", bin.display()),
            );
            let path = scratch.0.join(unit);
            std::fs::write(&path, local)?;
            units.push(path);
        }
        let out = Command::new(&analyze)
            .arg("verify")
            .args(&units)
            .env("SYSTEMD_LOG_COLOR", "0")
            .stdin(Stdio::null())
            .output()
            .context("running systemd-analyze verify")?;
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        ensure!(
            out.status.success(),
            "systemd-analyze verify failed ({}):\n{stderr}",
            out.status
        );
        // Warnings do not fail verify, so they are checked here: none, except that systemd
        // before 254 does not know the restart backoff keys (it ignores them, as documented in
        // the units).
        let old = systemd_version(&analyze)? < SYSTEMD_RESTART_STEPS;
        let unexpected: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| {
                !(old
                    && (l.contains("Unknown key 'RestartSteps'")
                        || l.contains("Unknown key 'RestartMaxDelaySec'")))
            })
            .collect();
        ensure!(
            unexpected.is_empty(),
            "systemd-analyze verify warned:\n{}",
            unexpected.join("\n")
        );
        Ok(())
    };
    if let Err(e) = run() {
        panic!("{e:#}");
    }
}

#[test]
fn coordinator_unit_command_runs_with_the_example_config() {
    let run = || -> Result<()> {
        let bins = Bins::locate()?;
        let scratch = Scratch::new("coordinator")?;
        let notify = NotifySocket::bind(&scratch.0)?;
        let data = scratch.0.join("data");
        let example = workspace_root().join("deploy/coordinator.toml");
        let argv = exec_start("warren-coordinator.service")?;
        let mut args: Vec<String> = argv[1..]
            .iter()
            .map(|a| match a.as_str() {
                "/etc/warren/coordinator.toml" => example.display().to_string(),
                "/var/lib/warren-coordinator" => data.display().to_string(),
                _ => a.clone(),
            })
            .collect();
        // Flags override the file: free loopback ports instead of 7443/7480.
        for a in [
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--public-addr",
            "127.0.0.1:7443",
        ] {
            args.push(a.into());
        }
        let log = scratch.0.join("coordinator.stderr");
        let mut child = Command::new(&bins.coordinator)
            .args(&args)
            .env("NOTIFY_SOCKET", &notify.path)
            .env("RUST_LOG", "info")
            // The environment beats the file's `log_format = "text"`.
            .env("WARREN_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the coordinator")?;
        let result = (|| -> Result<()> {
            notify.wait("READY=1", READY_WAIT)?;
            ensure!(
                data.join("admin.token").is_file(),
                "no admin.token after READY=1"
            );
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            notify.wait("STOPPING=1", READY_WAIT)?;
            let status = wait_for(
                "the coordinator to exit",
                READY_WAIT,
                Duration::from_millis(50),
                || Ok(child.try_wait()?),
            )?;
            ensure!(status.success(), "the coordinator exited with {status}");
            let text = std::fs::read_to_string(&log)?;
            let messages = text
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l)
                        .with_context(|| format!("not a JSON log line: {l}"))?;
                    Ok(v["message"].as_str().unwrap_or_default().to_string())
                })
                .collect::<Result<Vec<_>>>()?;
            ensure!(
                messages.iter().any(|m| m == "coordinator listening")
                    && messages.iter().any(|m| m == "shutting down"),
                "log messages: {messages:?}"
            );
            Ok(())
        })();
        let _ = child.kill();
        let _ = child.wait();
        result.with_context(|| {
            format!(
                "coordinator log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
    };
    if let Err(e) = run() {
        panic!("{e:#}");
    }
}

/// The value of a `Key:` line of /proc/PID/status.
fn proc_status(pid: u32, key: &str) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// Whether `text` contains `ip` as a whole address (not as the start of a longer one).
fn mentions_ip(text: &str, ip: Ipv4Addr) -> bool {
    let needle = ip.to_string();
    text.match_indices(&needle).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + needle.len()..].chars().next();
        let part_of_number = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit() || c == '.');
        !part_of_number(before) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

#[test]
fn node_runs_unprivileged_with_only_cap_net_admin() {
    Lab::run_test("deploy_node", |lab| {
        let scratch = Scratch::new("node")?;
        let c = lab.start_coordinator()?;
        let site_a = lab.add_site(SiteKind::Eim)?;
        let site_b = lab.add_site(SiteKind::Eim)?;
        let token = lab.invite(&c, &[])?;
        let a = lab.join(&site_a.hosts[0], &token, "a", None)?;
        let a_ip = lab.wait_node_ready(&a)?;

        // As the guide says: join once as root with the config file, then hand the state
        // directory to the service user (systemd's StateDirectory= does that chown).
        let state = scratch.0.join("state");
        let config = scratch.0.join("node.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\nname = \"b\"\ntun = \"wrn0\"\nport = 0\nlog_format = \"json\"\n\
                 metrics_listen = \"{METRICS_ADDR}\"\n",
                state.display()
            ),
        )?;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))?;
        let bins = lab.bins()?;
        let host_b = site_b.hosts[0].clone();
        let token_b = lab.invite(&c, &[])?;
        let config_s = config.display().to_string();
        let warren_s = bins.warren.display().to_string();
        // A metrics address that cannot be bound ends `join` on one line naming it, before the
        // token is spent or anything is written (the same token joins below).
        let bad = lab.exec(
            &host_b.ns,
            &[
                "env",
                "-u",
                "RUST_LOG",
                &warren_s,
                "join",
                &token_b,
                "--config",
                &config_s,
                "--metrics",
                UNBINDABLE,
            ],
            CLI_TIMEOUT,
        )?;
        let line = bad.stderr.trim();
        ensure!(
            bad.code() == 1,
            "join with --metrics {UNBINDABLE}: exit {}: {line}",
            bad.code()
        );
        ensure!(
            line.lines().count() == 1 && line.contains(&format!("metrics listener {UNBINDABLE}")),
            "join with --metrics {UNBINDABLE} said: {line}"
        );
        ensure!(!state.exists(), "a failed join left {}", state.display());
        let join_args = vec![
            "join".to_string(),
            token_b,
            "--config".into(),
            config_s.clone(),
        ];
        let joined = lab.spawn("node-b-join", &host_b.ns, &bins.warren, &join_args)?;
        let b_join = Node {
            name: "b".into(),
            host: host_b.clone(),
            state_dir: state.clone(),
            port: None,
            proc: joined,
            started: Instant::now(),
        };
        lab.wait_node_ready(&b_join)?;
        lab.proc_mut(joined).stop();
        let own = format!("{UNPRIVILEGED}:{UNPRIVILEGED}");
        lab.exec(
            &host_b.ns,
            &["chown", "-R", &own, &state.display().to_string()],
            Duration::from_secs(10),
        )?;

        // `warren up` as the unit runs it. /dev/net/tun is 0600 in some containers (distros
        // ship 0666): a private mount namespace gets a 0666 node of the same device, so that
        // nothing but CAP_NET_ADMIN is granted and the host is left as it is.
        let notify = NotifySocket::bind(&scratch.0)?;
        let dev = scratch.0.join("dev");
        let script = format!(
            "set -e; mkdir -p {dev}; mount -t tmpfs -o mode=0755 tmpfs {dev}; \
             mknod -m 0666 {dev}/tun c 10 200; mount --bind {dev}/tun /dev/net/tun; \
             exec env RUST_LOG=info NOTIFY_SOCKET={notify} setpriv --reuid={u} --regid={u} \
             --clear-groups --inh-caps=-all,+net_admin --ambient-caps=-all,+net_admin \
             --bounding-set=-all,+net_admin --no-new-privs {warren} up --config {config_s}",
            dev = dev.display(),
            notify = notify.path.display(),
            u = UNPRIVILEGED,
            warren = bins.warren.display(),
        );
        let unshare = which("unshare").context("unshare (util-linux) is missing")?;
        ensure!(
            which("setpriv").is_some(),
            "setpriv (util-linux) is missing"
        );
        let up_args = vec![
            "--mount".to_string(),
            "--propagation".into(),
            "private".into(),
            "sh".into(),
            "-c".into(),
            script,
        ];
        let up = lab.spawn("node-b-up", &host_b.ns, &unshare, &up_args)?;
        notify
            .wait("READY=1", READY_WAIT)
            .context("node b under setpriv")?;
        let b = Node {
            proc: up,
            started: Instant::now(),
            ..b_join
        };
        let b_ip = lab.wait_node_ready(&b)?;

        // It really is unprivileged, with CAP_NET_ADMIN alone.
        let pid = lab.proc(up).pid();
        let uid = proc_status(pid, "Uid")?;
        ensure!(
            uid.split_whitespace()
                .all(|u| u == UNPRIVILEGED.to_string()),
            "Uid: {uid}"
        );
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            let v = u64::from_str_radix(&proc_status(pid, set)?, 16)?;
            ensure!(
                v == CAP_NET_ADMIN_MASK,
                "{set} is {v:#x}, expected CAP_NET_ADMIN alone"
            );
        }

        // It carries traffic both ways.
        let a_host = a.host.clone();
        ensure!(lab.ping(&a_host, b_ip, 3)?, "a cannot ping b ({b_ip})");
        ensure!(lab.ping(&host_b, a_ip, 3)?, "b cannot ping a ({a_ip})");

        // Metrics on the configured address.
        let url = format!("http://{METRICS_ADDR}/metrics");
        let out = lab.exec(
            &host_b.ns,
            &["curl", "-sf", "--max-time", "5", &url],
            Duration::from_secs(10),
        )?;
        ensure!(
            out.success(),
            "curl {url}: exit {} {}",
            out.code(),
            out.stderr
        );
        ensure!(
            out.stdout
                .lines()
                .any(|l| l.starts_with("warren_peer_rx_bytes_total") && l.contains("\"a\"")),
            "no warren_peer_rx_bytes_total for peer a in:\n{}",
            out.stdout
        );

        // JSON logs, and the zero-log stance: the traffic's inner addresses never reach the
        // info log (a's mesh address is what b's pings went to and came from).
        let log = lab.proc(up).stderr();
        ensure!(!log.trim().is_empty(), "node b logged nothing at info");
        for line in log.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("not a JSON log line: {line}"))?;
            ensure!(v["level"].is_string() && v["message"].is_string(), "{line}");
        }
        ensure!(
            !mentions_ip(&log, a_ip),
            "b's info log names a's mesh address {a_ip}:\n{log}"
        );

        lab.proc_mut(up).stop();
        notify.wait("STOPPING=1", READY_WAIT)?;
        Ok(())
    });
}
