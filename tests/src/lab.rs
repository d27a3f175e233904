//! The lab itself: a private internet of network namespaces, sites behind NAT routers, and
//! the processes running in them, all removed when the [`Lab`] is dropped.
//!
//! Lab layer. Topology (DESIGN.md section 4):
//!
//! ```text
//!   <p>-inet: bridge br0 (198.51.100.0/24, "the internet")
//!     ├── <p>-co       eth0 198.51.100.10        coordinator(s)
//!     ├── <p>-r<i>     wan  198.51.100.(20+i)    router of site i (nft NAT), LAN bridge `lan` 10.i.0.1/24
//!     │     └── <p>-n<i><x>  eth0 10.i.0.(2+j)  node(s) of site i, default route via 10.i.0.1
//!     └── <p>-n<i>a    eth0 198.51.100.(20+i)    node of an `open` site (no router)
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::bins::Bins;
use crate::cmd::{run, CmdOutput};
use crate::names::{kill_namespace_processes, new_prefix, sweep_stale};
use crate::nat::SiteKind;
use crate::netns;
use crate::process::Proc;

/// The coordinator's address on the lab internet.
pub const COORDINATOR_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// A spare address on the lab internet for test traffic sources (e.g. garbage senders).
pub const SPARE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 99);
/// Prefix length of every lab segment.
const PREFIX_LEN: u8 = 24;
/// Time limit for commands run inside lab namespaces through [`Lab::exec`].
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// A namespace where something (a node, the coordinator) runs.
#[derive(Clone, Debug)]
pub struct Host {
    /// Namespace name.
    pub ns: String,
    /// Its address on its own segment (LAN address behind a router, public for `open`).
    pub ip: Ipv4Addr,
    /// The address the internet sees it from (its router's WAN address, or its own).
    pub public_ip: Ipv4Addr,
    /// Index of its site (0 for the coordinator and spare hosts).
    pub site: usize,
    /// What kind of site it is in (`None` for hosts directly on the internet that are not sites).
    pub kind: Option<SiteKind>,
}

/// One site: a router (unless `open`) and its node namespaces.
#[derive(Clone, Debug)]
pub struct Site {
    /// 1-based index; it picks the site's addresses.
    pub index: usize,
    /// Its kind.
    pub kind: SiteKind,
    /// The router namespace (`None` for `open`).
    pub router: Option<String>,
    /// The node namespaces.
    pub hosts: Vec<Host>,
}

/// A running lab. Dropping it ends every process it started and deletes every namespace.
pub struct Lab {
    /// Name of the test, for reports.
    pub test: String,
    /// Namespace name prefix, `wl<pid>-<n>`.
    prefix: String,
    /// Directory for logs, state dirs and data dirs of this lab.
    dir: PathBuf,
    /// Namespaces in creation order (deleted in reverse).
    namespaces: Vec<String>,
    /// Processes in start order (stopped in reverse).
    procs: Vec<Proc>,
    /// The internet namespace (holds bridge `br0`).
    inet: String,
    /// The coordinator's namespace.
    pub coordinator_host: Host,
    /// Sites added so far.
    sites: Vec<Site>,
    /// Counter for bridge-port interface names in the internet namespace.
    next_port: usize,
    /// Keep the directory after drop (set when something failed, or by `WARREN_LAB_KEEP`).
    keep_dir: bool,
    /// The binaries under test, located on first use.
    bins: Option<Bins>,
    /// Whether the failure report was printed already (printed once).
    reported: bool,
    /// Node daemons started so far, `(label, namespace, state dir)`: their `warren status`
    /// goes into failure reports.
    status_targets: Vec<(String, String, PathBuf)>,
}

impl Lab {
    /// Checks the prerequisites, sweeps leftovers of crashed runs, and builds the internet and
    /// the coordinator namespace. Fails loudly (never skips) when not root or tools are missing.
    pub fn new(test: &str) -> Result<Lab> {
        check_prerequisites()?;
        let swept = sweep_stale().context("sweeping namespaces of crashed lab runs")?;
        if !swept.is_empty() {
            eprintln!("[lab] removed stale namespaces of crashed runs: {swept:?}");
        }
        let prefix = new_prefix();
        let dir = std::env::temp_dir().join("warren-lab").join(&prefix);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let coordinator_host = Host {
            ns: format!("{prefix}-co"),
            ip: COORDINATOR_IP,
            public_ip: COORDINATOR_IP,
            site: 0,
            kind: None,
        };
        let mut lab = Lab {
            test: test.to_string(),
            inet: format!("{prefix}-inet"),
            prefix,
            dir,
            namespaces: Vec::new(),
            procs: Vec::new(),
            coordinator_host,
            sites: Vec::new(),
            next_port: 0,
            keep_dir: std::env::var_os("WARREN_LAB_KEEP").is_some(),
            bins: None,
            reported: false,
            status_targets: Vec::new(),
        };
        let inet = lab.inet.clone();
        lab.add_ns(&inet)?;
        netns::bridge(&inet, "br0")?;
        let co = lab.coordinator_host.clone();
        lab.add_internet_ns(&co.ns, co.ip)?;
        eprintln!(
            "[lab] {test}: namespaces {}-*, files in {}",
            lab.prefix,
            lab.dir.display()
        );
        Ok(lab)
    }

    /// The directory holding this lab's logs and state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The binaries under test (located once).
    pub fn bins(&mut self) -> Result<Bins> {
        if self.bins.is_none() {
            self.bins = Some(Bins::locate()?);
        }
        self.bins.clone().context("binaries located above")
    }

    /// Creates a namespace and records it for deletion.
    fn add_ns(&mut self, ns: &str) -> Result<()> {
        netns::create(ns)?;
        self.namespaces.push(ns.to_string());
        Ok(())
    }

    /// Creates namespace `ns` plugged into the internet bridge as `eth0` with address `ip`.
    fn add_internet_ns(&mut self, ns: &str, ip: Ipv4Addr) -> Result<()> {
        self.add_ns(ns)?;
        self.plug_into_internet(ns, "eth0", ip)
    }

    /// Links `dev` in `ns` to the internet bridge and gives it address `ip`.
    fn plug_into_internet(&mut self, ns: &str, dev: &str, ip: Ipv4Addr) -> Result<()> {
        self.next_port += 1;
        let port = format!("p{}", self.next_port);
        netns::veth(&self.inet, &port, ns, dev)?;
        netns::enslave(&self.inet, &port, "br0")?;
        netns::addr(ns, dev, &format!("{ip}/{PREFIX_LEN}"))
    }

    /// Adds a spare host on the internet segment (e.g. a source of garbage datagrams).
    pub fn add_internet_host(&mut self, role: &str, ip: Ipv4Addr) -> Result<Host> {
        let ns = format!("{}-{role}", self.prefix);
        self.add_internet_ns(&ns, ip)?;
        Ok(Host {
            ns,
            ip,
            public_ip: ip,
            site: 0,
            kind: None,
        })
    }

    /// Adds a site of `kind` and returns it (its hosts are where nodes run).
    pub fn add_site(&mut self, kind: SiteKind) -> Result<Site> {
        let index = self.sites.len() + 1;
        if index > 60 {
            bail!("too many sites in one lab");
        }
        let wan_ip = Ipv4Addr::new(198, 51, 100, 20 + index as u8);
        let mut site = Site {
            index,
            kind,
            router: None,
            hosts: Vec::new(),
        };
        if kind == SiteKind::Open {
            let ns = format!("{}-n{index}a", self.prefix);
            self.add_internet_ns(&ns, wan_ip)?;
            site.hosts.push(Host {
                ns,
                ip: wan_ip,
                public_ip: wan_ip,
                site: index,
                kind: Some(kind),
            });
        } else {
            let router = format!("{}-r{index}", self.prefix);
            self.add_ns(&router)?;
            self.plug_into_internet(&router, "wan", wan_ip)?;
            netns::bridge(&router, "lan")?;
            netns::addr(&router, "lan", &format!("10.{index}.0.1/{PREFIX_LEN}"))?;
            netns::sysctl(&router, "net.ipv4.ip_forward", "1")?;
            if let Some(rules) = kind.ruleset() {
                netns::nft_load(&router, &rules)?;
            }
            for j in 0..kind.node_count() {
                let letter = (b'a' + j as u8) as char;
                let ns = format!("{}-n{index}{letter}", self.prefix);
                let ip = Ipv4Addr::new(10, index as u8, 0, 2 + j as u8);
                self.add_ns(&ns)?;
                let port = format!("l{j}");
                netns::veth(&router, &port, &ns, "eth0")?;
                netns::enslave(&router, &port, "lan")?;
                netns::addr(&ns, "eth0", &format!("{ip}/{PREFIX_LEN}"))?;
                netns::ip_in(
                    &ns,
                    &["route", "add", "default", "via", &format!("10.{index}.0.1")],
                )?;
                site.hosts.push(Host {
                    ns,
                    ip,
                    public_ip: wan_ip,
                    site: index,
                    kind: Some(kind),
                });
            }
            site.router = Some(router);
        }
        self.sites.push(site.clone());
        Ok(site)
    }

    /// Moves a NAT site's router to a new WAN address (the ISP renumbered it): the old
    /// address goes away, and with it the router's NAT mappings, so every flow of the site's
    /// nodes reappears from `new_ip` (DESIGN.md section 2, roaming). Returns the site's hosts
    /// with their new public address.
    pub fn renumber_site(&mut self, site: &Site, new_ip: Ipv4Addr) -> Result<Vec<Host>> {
        let router = site
            .router
            .as_deref()
            .context("an open site has no router to renumber")?;
        let old = Ipv4Addr::new(198, 51, 100, 20 + site.index as u8);
        // Without promotion, deleting the primary address also deletes the new one (a
        // secondary in the same subnet).
        netns::sysctl(router, "net.ipv4.conf.wan.promote_secondaries", "1")?;
        netns::addr(router, "wan", &format!("{new_ip}/{PREFIX_LEN}"))?;
        netns::ip_in(
            router,
            &["addr", "del", &format!("{old}/{PREFIX_LEN}"), "dev", "wan"],
        )?;
        Ok(site
            .hosts
            .iter()
            .map(|h| Host {
                public_ip: new_ip,
                ..h.clone()
            })
            .collect())
    }

    /// Starts a long-running process in `ns`; returns its handle index for [`Lab::proc`].
    pub fn spawn(
        &mut self,
        label: &str,
        ns: &str,
        program: &Path,
        args: &[String],
    ) -> Result<usize> {
        let log = std::env::var("WARREN_LAB_LOG").unwrap_or_else(|_| {
            "info,warren=debug,warren_node=debug,warren_coordinator=debug,warren_proto=debug".into()
        });
        let env = vec![("RUST_LOG".to_string(), log)];
        let p = Proc::spawn(&self.dir, label, ns, program, args, &env)?;
        self.procs.push(p);
        Ok(self.procs.len() - 1)
    }

    /// A started process.
    pub fn proc(&self, id: usize) -> &Proc {
        &self.procs[id]
    }

    /// A started process, mutably (to poll or stop it).
    pub fn proc_mut(&mut self, id: usize) -> &mut Proc {
        &mut self.procs[id]
    }

    /// Runs a short command inside `ns` with a deadline, returning its output whatever its status.
    pub fn exec(&self, ns: &str, args: &[&str], timeout: Duration) -> Result<CmdOutput> {
        let mut full = vec!["netns", "exec", ns];
        full.extend_from_slice(args);
        run("ip", &full, timeout)
    }

    /// `ping -c COUNT -W 1` from `from` to `to`; true when at least one reply came back.
    pub fn ping(&self, from: &Host, to: Ipv4Addr, count: u32) -> Result<bool> {
        let count = count.to_string();
        let target = to.to_string();
        let out = self.exec(
            &from.ns,
            &["ping", "-n", "-q", "-c", &count, "-W", "1", &target],
            EXEC_TIMEOUT,
        )?;
        Ok(out.success())
    }

    /// Prints every process's stderr tail and keeps the lab directory for inspection.
    pub fn report_failure(&mut self) {
        if self.reported {
            return;
        }
        self.reported = true;
        self.keep_dir = true;
        eprintln!(
            "\n[lab] ===== {} failed; logs in {} =====",
            self.test,
            self.dir.display()
        );
        for p in &self.procs {
            eprintln!(
                "\n[lab] ----- {} (pid {}, ns {}) stderr tail -----\n{}",
                p.label,
                p.pid(),
                p.ns,
                p.stderr_tail()
            );
        }
        let Some(bins) = self.bins.clone() else {
            return;
        };
        let warren = bins.warren.display().to_string();
        for (label, ns, state) in &self.status_targets {
            let state = state.display().to_string();
            let shown = match self.exec(
                ns,
                &[&warren, "status", "--state-dir", &state],
                Duration::from_secs(5),
            ) {
                Ok(out) => format!("{}{}", out.stdout, out.stderr),
                Err(e) => format!("{e:#}"),
            };
            eprintln!("\n[lab] ----- warren status of {label} -----\n{shown}");
        }
    }

    /// Registers a node daemon so failure reports include its `warren status`.
    pub fn watch_status(&mut self, label: &str, ns: &str, state_dir: &Path) {
        self.status_targets
            .push((label.to_string(), ns.to_string(), state_dir.to_path_buf()));
    }

    /// Runs a test body in a fresh lab; on error prints the logs and panics with the error
    /// chain. The lab is torn down either way.
    pub fn run_test(test: &str, body: impl FnOnce(&mut Lab) -> Result<()>) {
        let mut lab = match Lab::new(test) {
            Ok(lab) => lab,
            Err(e) => panic!("[lab] {test}: could not build the lab: {e:#}"),
        };
        if let Err(e) = body(&mut lab) {
            lab.report_failure();
            drop(lab);
            panic!("[lab] {test} failed: {e:#}");
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.report_failure();
        }
        for p in self.procs.iter_mut().rev() {
            p.stop();
        }
        for ns in self.namespaces.iter().rev() {
            // Anything still inside was started by this lab (e.g. a stray ping).
            kill_namespace_processes(ns);
            if let Err(e) = netns::delete(ns) {
                eprintln!("[lab] could not delete namespace {ns}: {e:#}");
            }
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Fails with a clear message unless we are root and `ip`, `nft`, `ping`, `curl` exist.
pub fn check_prerequisites() -> Result<()> {
    // SAFETY: geteuid(2) has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "the NAT lab needs root (network namespaces, nftables): run `sudo scripts/test.sh` \
             (euid is {euid})"
        );
    }
    let mut missing = Vec::new();
    for tool in ["ip", "nft", "ping", "curl", "sysctl"] {
        if which(tool).is_none() {
            missing.push(tool);
        }
    }
    if !missing.is_empty() {
        bail!(
            "the NAT lab needs {missing:?} on PATH: install iproute2 nftables iputils-ping curl procps"
        );
    }
    if !Path::new("/dev/net/tun").exists() {
        bail!("the NAT lab needs /dev/net/tun (load the tun module)");
    }
    Ok(())
}

/// The full path of `tool` on PATH, if any.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}
