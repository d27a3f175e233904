//! Driving the binaries under test inside the lab: coordinators, invites, node daemons,
//! `warren status`, and the coordinator's HTTP API.
//!
//! Lab layer. Everything here goes through the public CLI/HTTP contract of DESIGN.md
//! section 3, exactly as a user would.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cmd::wait_for;
use crate::lab::{Host, Lab, EXEC_TIMEOUT};

/// Default QUIC (UDP) port of the coordinator in the lab.
pub const QUIC_PORT: u16 = 7443;
/// Default HTTP port of the coordinator in the lab.
pub const HTTP_PORT: u16 = 7480;
/// How long a coordinator gets to write its admin token and answer HTTP.
const COORDINATOR_READY: Duration = Duration::from_secs(20);
/// How long a node daemon gets to answer `warren status`.
const NODE_READY: Duration = Duration::from_secs(30);
/// Time limit for a one-shot CLI call (invite create, status, a failing join).
pub const CLI_TIMEOUT: Duration = Duration::from_secs(20);
/// Poll interval of readiness waits.
const POLL: Duration = Duration::from_millis(100);

/// A coordinator started by the lab.
#[derive(Clone, Debug)]
pub struct Coordinator {
    /// Where it runs.
    pub host: Host,
    /// Its data dir (admin token, store, certificate).
    pub data_dir: PathBuf,
    /// Its QUIC listen address.
    pub quic: SocketAddr,
    /// Its HTTP listen address.
    pub http: SocketAddr,
    /// Process handle index in the lab.
    pub proc: usize,
}

impl Coordinator {
    /// The admin token it wrote to `data_dir/admin.token`.
    pub fn admin_token(&self) -> Result<String> {
        let path = self.data_dir.join("admin.token");
        let t = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(t.trim().to_string())
    }
}

/// A node daemon started by the lab.
#[derive(Clone, Debug)]
pub struct Node {
    /// Its mesh name.
    pub name: String,
    /// Where it runs.
    pub host: Host,
    /// Its state dir.
    pub state_dir: PathBuf,
    /// Its UDP port, when fixed with `--port`.
    pub port: Option<u16>,
    /// Process handle index in the lab.
    pub proc: usize,
    /// When the daemon was started.
    pub started: Instant,
}

/// The parts of one `peers[]` entry of `warren status --json` the lab checks.
#[derive(Clone, Debug)]
pub struct PeerStatus {
    /// Peer name.
    pub name: String,
    /// Peer mesh IP.
    pub ip: String,
    /// `direct`, `relay` or `connecting`.
    pub path: String,
    /// The endpoint in use, if any (`ip:port`).
    pub endpoint: Option<String>,
    /// Why the peer is relayed or not yet connected (`None` when direct).
    pub relay_reason: Option<String>,
}

impl Lab {
    /// Starts a coordinator in the lab's coordinator namespace on the default ports.
    pub fn start_coordinator(&mut self) -> Result<Coordinator> {
        let public = SocketAddr::from((self.coordinator_host.ip, QUIC_PORT));
        self.start_coordinator_with("coordinator", QUIC_PORT, HTTP_PORT, public)
    }

    /// Starts a coordinator with explicit ports and `--public-addr`, and waits until it has
    /// written its admin token and answers `GET /v1/health`.
    pub fn start_coordinator_with(
        &mut self,
        label: &str,
        quic_port: u16,
        http_port: u16,
        public_addr: SocketAddr,
    ) -> Result<Coordinator> {
        let bins = self.bins()?;
        let host = self.coordinator_host.clone();
        let data_dir = self.dir().join(format!("{label}-data"));
        let quic = SocketAddr::from((host.ip, quic_port));
        let http = SocketAddr::from((host.ip, http_port));
        let args = serve_args(&data_dir, quic, http, public_addr);
        let proc = self.spawn(label, &host.ns, &bins.coordinator, &args)?;
        let c = Coordinator {
            host,
            data_dir,
            quic,
            http,
            proc,
        };
        self.wait_coordinator_ready(&c, label)?;
        Ok(c)
    }

    /// Starts a stopped coordinator again on the same data dir, addresses and ports.
    pub fn restart_coordinator(&mut self, c: &Coordinator, label: &str) -> Result<Coordinator> {
        self.proc_mut(c.proc).stop();
        let bins = self.bins()?;
        let public = SocketAddr::from((c.host.ip, c.quic.port()));
        let args = serve_args(&c.data_dir, c.quic, c.http, public);
        let proc = self.spawn(label, &c.host.ns, &bins.coordinator, &args)?;
        let restarted = Coordinator { proc, ..c.clone() };
        self.wait_coordinator_ready(&restarted, label)?;
        Ok(restarted)
    }

    /// Waits until a coordinator has written its admin token and answers `/v1/health`.
    fn wait_coordinator_ready(&mut self, c: &Coordinator, label: &str) -> Result<()> {
        let proc = c.proc;
        wait_for(
            &format!("{label} to write admin.token and answer /v1/health"),
            COORDINATOR_READY,
            POLL,
            || {
                if let Some(st) = self.proc_mut(proc).try_exit() {
                    bail!("{label} exited early with {st}");
                }
                if !c.data_dir.join("admin.token").exists() {
                    return Ok(None);
                }
                let (code, _) = self.api_get(c, "/v1/health", true)?;
                Ok((code == 200).then_some(()))
            },
        )
    }

    /// `warren-coordinator invite create --data-dir D EXTRA...`; returns the token.
    pub fn invite(&mut self, c: &Coordinator, extra: &[&str]) -> Result<String> {
        let bins = self.bins()?;
        let bin = bins.coordinator.display().to_string();
        let data = c.data_dir.display().to_string();
        let mut args = vec![
            bin.as_str(),
            "invite",
            "create",
            "--data-dir",
            data.as_str(),
        ];
        args.extend_from_slice(extra);
        let out = self.exec(&c.host.ns, &args, CLI_TIMEOUT)?;
        if !out.success() {
            bail!(
                "invite create {extra:?} failed (exit {}): {}",
                out.code(),
                out.stderr.trim()
            );
        }
        let token = out.stdout.trim();
        if token.is_empty() || token.lines().count() != 1 {
            bail!(
                "invite create printed {:?}, expected one token line",
                out.stdout
            );
        }
        Ok(token.to_string())
    }

    /// Starts `warren join TOKEN` as a daemon on `host` (TUN `wrn0`).
    pub fn join(
        &mut self,
        host: &Host,
        token: &str,
        name: &str,
        port: Option<u16>,
    ) -> Result<Node> {
        let bins = self.bins()?;
        let state_dir = self.dir().join(format!("{name}-state"));
        let mut args = vec![
            "join".to_string(),
            token.to_string(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--name".into(),
            name.to_string(),
            "--tun".into(),
            "wrn0".into(),
        ];
        if let Some(p) = port {
            args.push("--port".into());
            args.push(p.to_string());
        }
        let proc = self.spawn(&format!("node-{name}"), &host.ns, &bins.warren, &args)?;
        self.watch_status(name, &host.ns, &state_dir);
        let started = self.proc(proc).started;
        Ok(Node {
            name: name.to_string(),
            host: host.clone(),
            state_dir,
            port,
            proc,
            started,
        })
    }

    /// Stops `node`'s daemon and starts it again with `warren up` from its saved state.
    pub fn restart_node_with_up(&mut self, node: &Node, label: &str) -> Result<Node> {
        self.proc_mut(node.proc).stop();
        let bins = self.bins()?;
        let args = vec![
            "up".to_string(),
            "--state-dir".into(),
            node.state_dir.display().to_string(),
        ];
        let proc = self.spawn(label, &node.host.ns, &bins.warren, &args)?;
        self.watch_status(label, &node.host.ns, &node.state_dir);
        let started = self.proc(proc).started;
        Ok(Node {
            proc,
            started,
            ..node.clone()
        })
    }

    /// `warren status --state-dir S --json` run in the node's namespace, parsed.
    pub fn status(&mut self, node: &Node) -> Result<Value> {
        let bins = self.bins()?;
        let bin = bins.warren.display().to_string();
        let state = node.state_dir.display().to_string();
        let out = self.exec(
            &node.host.ns,
            &[&bin, "status", "--state-dir", &state, "--json"],
            CLI_TIMEOUT,
        )?;
        if !out.success() {
            bail!("warren status exit {}: {}", out.code(), out.stderr.trim());
        }
        serde_json::from_str(&out.stdout)
            .with_context(|| format!("warren status --json printed non-JSON: {}", out.stdout))
    }

    /// Waits until the node's daemon answers `warren status` with its mesh IP; returns it.
    pub fn wait_node_ready(&mut self, node: &Node) -> Result<Ipv4Addr> {
        wait_for(
            &format!("node {} to report its mesh IP", node.name),
            NODE_READY,
            POLL,
            || {
                if let Some(st) = self.proc_mut(node.proc).try_exit() {
                    bail!("node {} exited early with {st}", node.name);
                }
                let v = self.status(node)?;
                let ip = v["self"]["ip"].as_str().context("no self.ip in status")?;
                // Accept "100.64.0.2" and "100.64.0.2/10".
                let bare = ip.split('/').next().unwrap_or(ip);
                Ok(Some(bare.parse::<Ipv4Addr>().with_context(|| {
                    format!("self.ip {ip:?} is not an IPv4 address")
                })?))
            },
        )
    }

    /// The status of peer `peer_name` as seen by `node`, if listed.
    pub fn peer_status(&mut self, node: &Node, peer_name: &str) -> Result<Option<PeerStatus>> {
        let v = self.status(node)?;
        let peers = v["peers"].as_array().context("status has no peers array")?;
        Ok(peers
            .iter()
            .find(|p| p["name"].as_str() == Some(peer_name))
            .map(|p| PeerStatus {
                name: peer_name.to_string(),
                ip: p["ip"].as_str().unwrap_or_default().to_string(),
                path: p["path"].as_str().unwrap_or_default().to_string(),
                endpoint: p["endpoint"].as_str().map(str::to_string),
                relay_reason: p["relay_reason"].as_str().map(str::to_string),
            }))
    }

    /// `peer`'s path and relay reason as `node` reports them; an error if `node` does not list
    /// `peer` or its status lacks the `relay_reason` field.
    pub fn path_of(&mut self, node: &Node, peer: &str) -> Result<(String, Option<String>)> {
        let v = self.status(node)?;
        let p = v["peers"]
            .as_array()
            .context("status has no peers array")?
            .iter()
            .find(|p| p["name"].as_str() == Some(peer))
            .with_context(|| format!("{} does not list {peer}", node.name))?;
        anyhow::ensure!(
            p.get("relay_reason").is_some(),
            "status --json has no relay_reason field: {p}"
        );
        Ok((
            p["path"].as_str().unwrap_or_default().to_string(),
            p["relay_reason"].as_str().map(str::to_string),
        ))
    }

    /// `GET path` on the coordinator's HTTP API via curl inside its namespace; returns
    /// `(status code, body)`. `with_token` adds the admin bearer token.
    pub fn api_get(&self, c: &Coordinator, path: &str, with_token: bool) -> Result<(u16, String)> {
        self.api_request(c, "GET", path, None, with_token)
    }

    /// Any request on the coordinator's HTTP API (JSON `body` if given); see [`Lab::api_get`].
    pub fn api_request(
        &self,
        c: &Coordinator,
        method: &str,
        path: &str,
        body: Option<&str>,
        with_token: bool,
    ) -> Result<(u16, String)> {
        let url = format!("http://{}{path}", c.http);
        let auth;
        let mut args = vec![
            "curl",
            "-sS",
            "-m",
            "5",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ];
        if with_token {
            auth = format!("Authorization: Bearer {}", c.admin_token()?);
            args.push("-H");
            args.push(&auth);
        }
        if let Some(b) = body {
            args.extend_from_slice(&["-H", "Content-Type: application/json", "--data", b]);
        }
        args.push(&url);
        let out = self.exec(&c.host.ns, &args, EXEC_TIMEOUT)?;
        if !out.success() {
            bail!("curl {method} {url} failed: {}", out.stderr.trim());
        }
        let (body, code) = out
            .stdout
            .rsplit_once('\n')
            .context("curl printed no status code")?;
        let code: u16 = code.trim().parse().context("curl status code")?;
        Ok((code, body.to_string()))
    }
}

/// The arguments of `warren-coordinator serve` for a lab coordinator.
fn serve_args(
    data_dir: &std::path::Path,
    quic: SocketAddr,
    http: SocketAddr,
    public_addr: SocketAddr,
) -> Vec<String> {
    vec![
        "serve".to_string(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen".into(),
        quic.to_string(),
        "--http".into(),
        http.to_string(),
        "--public-addr".into(),
        public_addr.to_string(),
    ]
}
