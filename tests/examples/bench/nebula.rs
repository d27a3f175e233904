//! Nebula 1.6.1 (the Debian package) in the same lab as Warren, for comparison.
//!
//! Bench layer. One lighthouse in the coordinator's namespace that is also a relay
//! (`relay.am_relay`), one Nebula node in each site's node namespace next to Warren's. Nebula
//! gets its own TUN name (`neb0`), its own overlay network ([`OVERLAY_PREFIX`]`.0/24`, only
//! ever inside the lab namespaces), `punchy` on, and the lighthouse listed as every node's
//! relay (`relay.use_relays`). Certificates come from `nebula-cert` into the lab directory.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use warren_lab::cmd::{run_ok, wait_for};
use warren_lab::lab::which;
use warren_lab::{Host, Lab, COORDINATOR_IP};

/// First three octets of Nebula's overlay network in the lab.
pub const OVERLAY_PREFIX: [u8; 3] = [192, 168, 200];
/// Nebula's UDP port on every host (port-preserving `eim` NATs keep it; `sym` ones do not).
pub const NEBULA_PORT: u16 = 4242;
/// Nebula's TUN device name (Warren's is `wrn0`).
const TUN_NAME: &str = "neb0";
/// Overlay MTU: the same as Warren's TUN (node/src/tun.rs `TUN_MTU`), so both carry packets of
/// one size (Nebula's own default is 1300).
const TUN_MTU: u16 = 1280;
/// How long `nebula-cert` may take.
const CERT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a Nebula daemon gets to bring up its TUN device.
const TUN_READY: Duration = Duration::from_secs(15);

/// A running Nebula daemon.
#[derive(Clone, Debug)]
pub struct NebulaNode {
    /// Its overlay address.
    pub ip: Ipv4Addr,
    /// Process handle index in the lab.
    pub proc: usize,
}

/// The Nebula network of one lab: a CA in `dir` and the lighthouse's overlay address.
#[derive(Debug)]
pub struct Nebula {
    /// Where certificates and configs are written.
    dir: PathBuf,
    /// The `nebula` binary.
    bin: PathBuf,
    /// The `nebula-cert` binary.
    cert_bin: PathBuf,
}

/// The overlay address with last octet `last`.
pub fn overlay_ip(last: u8) -> Ipv4Addr {
    let [a, b, c] = OVERLAY_PREFIX;
    Ipv4Addr::new(a, b, c, last)
}

impl Nebula {
    /// Creates the CA under `lab_dir/nebula`; fails with the install command if Nebula is missing.
    pub fn new(lab_dir: &Path) -> Result<Nebula> {
        let (Some(bin), Some(cert_bin)) = (which("nebula"), which("nebula-cert")) else {
            bail!("nebula and nebula-cert are not on PATH: `apt-get install nebula` (scripts/bench.sh does)");
        };
        let dir = lab_dir.join("nebula");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let neb = Nebula { dir, bin, cert_bin };
        neb.cert(&[
            "ca",
            "-name",
            "warren-lab-bench",
            "-out-crt",
            &neb.path("ca.crt"),
            "-out-key",
            &neb.path("ca.key"),
        ])?;
        Ok(neb)
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn cert(&self, args: &[&str]) -> Result<()> {
        run_ok(&self.cert_bin.display().to_string(), args, CERT_TIMEOUT)
            .map(drop)
            .context("nebula-cert")
    }

    /// Starts the lighthouse (also the relay) in the coordinator's namespace.
    pub fn start_lighthouse(&self, lab: &mut Lab) -> Result<NebulaNode> {
        let host = lab.coordinator_host.clone();
        self.start(lab, "lighthouse", host, 1, true)
    }

    /// Starts a Nebula node with overlay address `.last` on `host`.
    pub fn start_node(
        &self,
        lab: &mut Lab,
        name: &str,
        host: &Host,
        last: u8,
    ) -> Result<NebulaNode> {
        self.start(lab, name, host.clone(), last, false)
    }

    fn start(
        &self,
        lab: &mut Lab,
        name: &str,
        host: Host,
        last: u8,
        lighthouse: bool,
    ) -> Result<NebulaNode> {
        let ip = overlay_ip(last);
        let (crt, key) = (
            self.path(&format!("{name}.crt")),
            self.path(&format!("{name}.key")),
        );
        self.cert(&[
            "sign",
            "-ca-crt",
            &self.path("ca.crt"),
            "-ca-key",
            &self.path("ca.key"),
            "-name",
            name,
            "-ip",
            &format!("{ip}/24"),
            "-out-crt",
            &crt,
            "-out-key",
            &key,
        ])?;
        let config = self.path(&format!("{name}.yml"));
        std::fs::write(&config, self.config(&crt, &key, lighthouse))
            .with_context(|| format!("writing {config}"))?;
        let args = vec!["-config".to_string(), config];
        let proc = lab.spawn(&format!("nebula-{name}"), &host.ns, &self.bin, &args)?;
        let ns = host.ns.clone();
        wait_for(
            &format!("nebula {name} to bring up {TUN_NAME}"),
            TUN_READY,
            Duration::from_millis(100),
            || {
                if let Some(st) = lab.proc_mut(proc).try_exit() {
                    bail!("nebula {name} exited with {st}");
                }
                let out = lab.exec(
                    &ns,
                    &["ip", "-4", "addr", "show", TUN_NAME],
                    Duration::from_secs(5),
                )?;
                Ok((out.success() && out.stdout.contains(&ip.to_string())).then_some(()))
            },
        )?;
        Ok(NebulaNode { ip, proc })
    }

    /// The YAML configuration of a lighthouse (and relay) or of a node.
    fn config(&self, crt: &str, key: &str, lighthouse: bool) -> String {
        let lh_ip = overlay_ip(1);
        let (lh_block, relay_block, static_map) = if lighthouse {
            (
                "  am_lighthouse: true\n".to_string(),
                "  am_relay: true\n  use_relays: true\n".to_string(),
                String::new(),
            )
        } else {
            (
                format!("  am_lighthouse: false\n  interval: 60\n  hosts:\n    - \"{lh_ip}\"\n"),
                format!("  am_relay: false\n  use_relays: true\n  relays:\n    - \"{lh_ip}\"\n"),
                format!("  \"{lh_ip}\": [\"{COORDINATOR_IP}:{NEBULA_PORT}\"]\n"),
            )
        };
        let ca = self.path("ca.crt");
        format!(
            "pki:
  ca: {ca}
  cert: {crt}
  key: {key}
static_host_map:
{static_map}lighthouse:
{lh_block}listen:
  host: 0.0.0.0
  port: {NEBULA_PORT}
punchy:
  punch: true
  respond: true
relay:
{relay_block}tun:
  disabled: false
  dev: {TUN_NAME}
  mtu: {TUN_MTU}
logging:
  level: info
firewall:
  outbound:
    - port: any
      proto: any
      host: any
  inbound:
    - port: any
      proto: any
      host: any
"
        )
    }
}
