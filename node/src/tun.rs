//! The node's TUN interface (IO shell layer, tun-rs).
//!
//! Created without an address before the coordinator is contacted (so a missing privilege fails
//! `join` before anything is registered), then given the node's mesh address with the mesh
//! network's prefix, which makes the kernel route the whole mesh network into it. Dropping the
//! device closes its file descriptor, and the kernel deletes the (non-persistent) interface.

use anyhow::Context;
use tun_rs::{AsyncDevice, DeviceBuilder};
use warren_proto::ids::{MeshIp, MeshNetwork};

/// TUN MTU in bytes: the IPv6 minimum, so that an encrypted packet (plus Warren's transport
/// header, UDP and IP headers) fits any path, and fits the relay carrier over QUIC.
pub const TUN_MTU: u16 = 1280;

/// Creates the interface `name` (MTU [`TUN_MTU`], no address yet), with TCP/UDP offload when
/// the kernel supports it (see `tunio`).
pub fn create(name: &str) -> anyhow::Result<AsyncDevice> {
    let build = |offload: bool| {
        DeviceBuilder::new()
            .name(name)
            .mtu(TUN_MTU)
            .offload(offload)
            .build_async()
    };
    let want = std::env::var_os("WARREN_TUN_OFFLOAD").is_none_or(|v| v != "0");
    build(want)
        .or_else(|e| {
            tracing::debug!(error = %e, "TUN offload unavailable; plain TUN");
            build(false)
        })
        .map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    " (run as root or grant CAP_NET_ADMIN)".to_string()
                }
                _ if e.raw_os_error() == Some(libc::EBUSY) => {
                    " (an interface with that name is in use; pick another with --tun)".to_string()
                }
                _ => String::new(),
            };
            anyhow::anyhow!("cannot create TUN interface {name}: {e}{hint}")
        })
}

/// Gives the interface the node's mesh address and the mesh prefix and brings it up.
pub fn configure(dev: &AsyncDevice, ip: MeshIp, network: MeshNetwork) -> anyhow::Result<()> {
    dev.set_network_address(ip.0, network.prefix(), None)
        .with_context(|| {
            format!(
                "setting address {ip}/{} on the TUN interface",
                network.prefix()
            )
        })?;
    dev.set_mtu(TUN_MTU).context("setting the TUN MTU")?;
    dev.enabled(true).context("bringing the TUN interface up")?;
    disable_ipv6(dev);
    Ok(())
}

/// The mesh is IPv4; without this the kernel would send IPv6 router and multicast-listener
/// chatter into the tunnel for the engine to drop. Best effort (no IPv6 in the kernel is fine).
fn disable_ipv6(dev: &AsyncDevice) {
    let Ok(name) = dev.name() else { return };
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    if let Err(e) = std::fs::write(&path, b"1") {
        tracing::debug!(%path, error = %e, "cannot disable IPv6 on the TUN interface");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::Ipv4Addr;

    /// Needs CAP_NET_ADMIN; skipped (with a note) where the test runner lacks it.
    #[tokio::test]
    async fn creates_configures_and_removes_the_interface() {
        let name = format!("wrntest{}", std::process::id() % 10000);
        let dev = match create(&name) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("skipping TUN test: {e:#}");
                return;
            }
        };
        let net: MeshNetwork = "100.99.0.0/16".parse().unwrap();
        configure(&dev, MeshIp(Ipv4Addr::new(100, 99, 0, 5)), net).unwrap();
        assert_eq!(dev.mtu().unwrap(), TUN_MTU);
        let v6 = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        if let Ok(flag) = std::fs::read_to_string(&v6) {
            assert_eq!(flag.trim(), "1");
        }
        let sys = format!("/sys/class/net/{name}");
        assert!(std::path::Path::new(&sys).exists());
        drop(dev);
        // The kernel removes the interface once its last file descriptor is closed.
        for _ in 0..50 {
            if !std::path::Path::new(&sys).exists() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("{name} still exists after drop");
    }
}
