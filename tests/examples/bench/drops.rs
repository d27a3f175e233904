//! Where packets were lost: Warren's own drop counters (`warren status --json`, `dropped`), the
//! TUN devices' drop counters and the UDP sockets' drops in both node namespaces. Printed as a
//! note under the table so that a lossy UDP line says where the loss happened.
//!
//! Bench layer. Counts are cumulative since the nodes (or the namespaces) started.

use std::time::Duration;

use warren_lab::{Host, Lab, Node};

/// Non-zero drop counts of the two nodes of a pair, one clause per node.
pub fn report(lab: &mut Lab, a: &Host, b: &Host, nodes: [&Node; 2]) -> String {
    let mut parts = Vec::new();
    for (side, host, node) in [("A", a, nodes[0]), ("B", b, nodes[1])] {
        let mut found: Vec<String> = Vec::new();
        match lab.status(node) {
            Ok(v) => {
                if let Some(d) = v["dropped"].as_object() {
                    found.extend(
                        d.iter()
                            .filter_map(|(k, n)| Some((k, n.as_u64()?)))
                            .filter(|&(_, n)| n > 0)
                            .map(|(k, n)| format!("{k} {n}")),
                    );
                }
            }
            Err(e) => found.push(format!("status failed: {e:#}")),
        }
        for counter in ["tx_dropped", "rx_dropped"] {
            if let Some(n) = read_u64(
                lab,
                &host.ns,
                &format!("/sys/class/net/wrn0/statistics/{counter}"),
            ) {
                if n > 0 {
                    found.push(format!("wrn0 {counter} {n}"));
                }
            }
        }
        found.extend(socket_drops(lab, &host.ns));
        let list = if found.is_empty() {
            "none".to_string()
        } else {
            found.join(", ")
        };
        parts.push(format!("{side} ({}): {list}", node.name));
    }
    parts.join("; ")
}

/// A number read from a file in namespace `ns`.
fn read_u64(lab: &Lab, ns: &str, path: &str) -> Option<u64> {
    let out = lab.exec(ns, &["cat", path], Duration::from_secs(5)).ok()?;
    out.stdout.trim().parse().ok()
}

/// UDP sockets of namespace `ns` that dropped datagrams (receive buffer full), by local port,
/// from the `drops` column of `/proc/net/udp`.
fn socket_drops(lab: &Lab, ns: &str) -> Vec<String> {
    let Ok(out) = lab.exec(ns, &["cat", "/proc/net/udp"], Duration::from_secs(5)) else {
        return Vec::new();
    };
    out.stdout
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            let drops: u64 = f.last()?.parse().ok()?;
            (drops > 0).then(|| format!("udp port {port} socket drops {drops}"))
        })
        .collect()
}
