//! Thin wrappers over `ip netns` / `ip -n`, and sockets opened inside a namespace.
//!
//! Lab layer. Links are always created directly inside lab namespaces (`ip -n NS link add ...
//! peer name X netns OTHER`), so the root namespace's interfaces, routes and firewall are never
//! touched.

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd::{run_ok, run_with_input};

/// Time limit for one `ip`/`nft`/`sysctl` invocation.
const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `ip ARGS` and requires success.
pub fn ip(args: &[&str]) -> Result<String> {
    run_ok("ip", args, TOOL_TIMEOUT)
}

/// Runs `ip -n NS ARGS` and requires success.
pub fn ip_in(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    ip(&full)
}

/// Runs a command inside a namespace (`ip netns exec NS ...`) and requires success.
pub fn exec_ok(ns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", ns];
    full.extend_from_slice(args);
    run_ok("ip", &full, TOOL_TIMEOUT)
}

/// Creates a namespace with its loopback up and IPv6 off (no router solicitations or DAD
/// chatter in the traffic counters).
pub fn create(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    ip_in(ns, &["link", "set", "lo", "up"])?;
    sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
    sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")?;
    Ok(())
}

/// Deletes a namespace (best effort: errors are returned for the caller to report).
pub fn delete(ns: &str) -> Result<()> {
    ip(&["netns", "del", ns]).map(drop)
}

/// Sets a sysctl inside a namespace.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    exec_ok(ns, &["sysctl", "-q", "-w", &format!("{key}={value}")]).map(drop)
}

/// Loads an nftables ruleset (the text of an `nft -f` file) into a namespace.
pub fn nft_load(ns: &str, ruleset: &str) -> Result<()> {
    let out = run_with_input(
        "ip",
        &["netns", "exec", ns, "nft", "-f", "-"],
        Some(ruleset),
        TOOL_TIMEOUT,
    )?;
    if !out.success() {
        bail!(
            "nft rejected the ruleset for {ns}: {}\n{ruleset}",
            out.stderr.trim()
        );
    }
    Ok(())
}

/// Creates a veth pair with one end `a_name` in `a_ns` and the other `b_name` in `b_ns`,
/// both brought up.
pub fn veth(a_ns: &str, a_name: &str, b_ns: &str, b_name: &str) -> Result<()> {
    ip_in(
        a_ns,
        &[
            "link", "add", a_name, "type", "veth", "peer", "name", b_name, "netns", b_ns,
        ],
    )?;
    ip_in(a_ns, &["link", "set", a_name, "up"])?;
    ip_in(b_ns, &["link", "set", b_name, "up"])?;
    Ok(())
}

/// Creates a bridge in `ns` and brings it up.
pub fn bridge(ns: &str, name: &str) -> Result<()> {
    ip_in(ns, &["link", "add", name, "type", "bridge"])?;
    ip_in(ns, &["link", "set", name, "up"])?;
    // With br_netfilter loaded (e.g. by Docker), bridged frames would also traverse this
    // namespace's IP filter hooks and a router's `forward` policy would drop LAN-to-LAN
    // traffic. A real switch does not firewall, so turn that off where the knob exists.
    exec_ok(
        ns,
        &[
            "sh",
            "-c",
            "[ ! -e /proc/sys/net/bridge/bridge-nf-call-iptables ] || \
             sysctl -q -w net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-arptables=0",
        ],
    )?;
    Ok(())
}

/// Attaches `port` to bridge `br` in `ns`.
pub fn enslave(ns: &str, port: &str, br: &str) -> Result<()> {
    ip_in(ns, &["link", "set", port, "master", br]).map(drop)
}

/// Adds an address (`a.b.c.d/len`) to an interface.
pub fn addr(ns: &str, dev: &str, cidr: &str) -> Result<()> {
    ip_in(ns, &["addr", "add", cidr, "dev", dev]).map(drop)
}

/// Byte counters of one interface: `(rx_bytes, tx_bytes)`.
pub fn link_bytes(ns: &str, dev: &str) -> Result<(u64, u64)> {
    let out = ip_in(ns, &["-j", "-s", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing `ip -j -s link`")?;
    let stats = &v[0]["stats64"];
    let rx = stats["rx"]["bytes"].as_u64();
    let tx = stats["tx"]["bytes"].as_u64();
    match (rx, tx) {
        (Some(rx), Some(tx)) => Ok((rx, tx)),
        _ => bail!("no byte counters for {dev} in {ns}: {out}"),
    }
}

/// Runs `f` on a helper thread that has entered namespace `ns`, and returns its result.
///
/// Sockets belong to the namespace they were created in, so this is how the harness opens
/// sockets inside lab namespaces (setns affects only the calling thread) and then uses them
/// from the test thread.
pub fn in_namespace<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let path = format!("/var/run/netns/{ns}");
    let ns_file = File::open(&path).with_context(|| format!("opening {path}"))?;
    let handle = thread::spawn(move || -> Result<T> {
        // SAFETY: setns(2) on a valid namespace fd; it changes only this short-lived thread.
        let rc = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        f()
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
        .with_context(|| format!("inside namespace {ns}"))
}

/// Opens a UDP socket bound to `bind` inside namespace `ns`.
pub fn udp_socket_in(ns: &str, bind: SocketAddr) -> Result<UdpSocket> {
    in_namespace(ns, move || {
        UdpSocket::bind(bind).with_context(|| format!("binding UDP {bind}"))
    })
}
