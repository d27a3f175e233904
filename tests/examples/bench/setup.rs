//! Adjustments the bench makes to the lab's node hosts: keeping Warren and Nebula from
//! tunnelling through each other, and the `--txqlen` experiment knob.
//!
//! Bench layer.

use std::time::Duration;

use anyhow::{bail, Result};
use warren_lab::{Host, Lab, Node};

/// Keeps the two systems from tunnelling through each other on a node host. Each advertises its
/// local interface addresses as candidates, so without this Warren may probe its peer through
/// Nebula's overlay (`neb0`; found as a "direct" path whose 1280-byte MTU then refuses Warren's
/// full-size datagrams) and Nebula may run over Warren's (`wrn0`). Output filter in the host's
/// namespace: Warren's UDP may not leave by `neb0` (iperf3's UDP on port 5201 may), Nebula's
/// port may not leave by `wrn0`.
pub fn isolate_overlays(lab: &Lab, host: &Host, iperf_port: u16) -> Result<()> {
    let neb = crate::nebula::NEBULA_PORT.to_string();
    let iperf = iperf_port.to_string();
    let chain = "{ type filter hook output priority 0 ; }";
    // Accept rules first, then the drop: one rule with two `!=` port matches would be merged
    // by nft into a single (sport, dport) comparison that drops iperf3's packets too.
    let rules: [&[&str]; 7] = [
        &["nft", "add", "table", "ip", "benchiso"],
        &["nft", "add", "chain", "ip", "benchiso", "out", chain],
        &[
            "nft", "add", "rule", "ip", "benchiso", "out", "oifname", "neb0", "udp", "dport",
            &iperf, "accept",
        ],
        &[
            "nft", "add", "rule", "ip", "benchiso", "out", "oifname", "neb0", "udp", "sport",
            &iperf, "accept",
        ],
        &[
            "nft", "add", "rule", "ip", "benchiso", "out", "oifname", "neb0", "meta", "l4proto",
            "udp", "drop",
        ],
        &[
            "nft", "add", "rule", "ip", "benchiso", "out", "oifname", "wrn0", "udp", "dport", &neb,
            "drop",
        ],
        &[
            "nft", "add", "rule", "ip", "benchiso", "out", "oifname", "wrn0", "udp", "sport", &neb,
            "drop",
        ],
    ];
    for args in rules {
        let out = lab.exec(&host.ns, args, Duration::from_secs(5))?;
        if !out.success() {
            bail!("{args:?} in {}: {}", host.ns, out.stderr.trim());
        }
    }
    Ok(())
}

/// Sets the `txqueuelen` of `node`'s TUN device, when asked to.
pub fn set_txqlen(lab: &Lab, node: &Node, txqlen: Option<u32>) -> Result<()> {
    let Some(q) = txqlen else {
        return Ok(());
    };
    let q = q.to_string();
    let args = ["ip", "link", "set", "dev", "wrn0", "txqueuelen", q.as_str()];
    let out = lab.exec(&node.host.ns, &args, Duration::from_secs(5))?;
    if !out.success() {
        bail!("{args:?} in {}: {}", node.name, out.stderr.trim());
    }
    Ok(())
}

/// Shapes the coordinator's link to `mbit` Mbit/s each way out of its namespace (`tc` token
/// bucket with a 2 ms queue of its own), like a small VPS: relayed traffic then waits where a
/// real relay's would, in front of a link slower than the nodes' own.
pub fn shape_relay_link(lab: &Lab, coord: &Host, mbit: u32) -> Result<()> {
    let rate = format!("{mbit}mbit");
    let args = [
        "tc",
        "qdisc",
        "replace",
        "dev",
        "eth0",
        "root",
        "tbf",
        "rate",
        rate.as_str(),
        "burst",
        "32kb",
        "latency",
        "2ms",
    ];
    let out = lab.exec(&coord.ns, &args, Duration::from_secs(5))?;
    if !out.success() {
        bail!("{args:?} in {}: {}", coord.ns, out.stderr.trim());
    }
    Ok(())
}
