//! Local (LAN) candidates: the node's interface addresses with the data socket's port (IO shell
//! layer). Peers behind the same router reach each other over these (DESIGN.md section 2).
//!
//! Only IPv4 addresses are reported because the data socket is bound to `0.0.0.0` (an IPv4
//! socket cannot use an IPv6 candidate). Loopback, unspecified and link-local addresses, the TUN
//! interface and anything inside the mesh network are left out: a peer could not reach this node
//! through them, and mesh addresses would loop traffic into the tunnel. So are point-to-point
//! interfaces (other VPNs' TUN devices): a "direct" path through another overlay proves itself
//! with a few probes, then collapses or crawls under bulk traffic (e.g. through that overlay's
//! own relay), and traffic flaps between it and Warren's relay.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use warren_proto::ids::MeshNetwork;

/// An interface address as read from the OS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfAddr {
    /// Interface name.
    pub name: String,
    /// The address.
    pub ip: IpAddr,
    /// The interface is a point-to-point link (IFF_POINTOPOINT): a tunnel such as another
    /// VPN's TUN device, not a LAN a peer could sit on.
    pub point_to_point: bool,
}

/// Reads the interface addresses (getifaddrs(3)); an error yields no candidates.
pub fn interface_addrs() -> Vec<IfAddr> {
    match getifaddrs::getifaddrs() {
        Ok(ifaces) => ifaces
            .filter_map(|i| {
                i.address.ip_addr().map(|ip| IfAddr {
                    name: i.name.clone(),
                    ip,
                    point_to_point: i.flags.contains(getifaddrs::InterfaceFlags::POINTTOPOINT),
                })
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list interface addresses; no LAN candidates");
            Vec::new()
        }
    }
}

/// Picks the usable candidates from `addrs`, sorted and deduplicated.
pub fn select(addrs: &[IfAddr], tun: &str, mesh: MeshNetwork, port: u16) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = addrs
        .iter()
        .filter(|a| a.name != tun && !a.point_to_point)
        .filter_map(|a| match a.ip {
            IpAddr::V4(ip) if usable_v4(ip, mesh) => Some(SocketAddr::new(IpAddr::V4(ip), port)),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether a peer could plausibly reach this IPv4 address.
fn usable_v4(ip: Ipv4Addr, mesh: MeshNetwork) -> bool {
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || mesh.contains(ip))
}

/// The node's current local candidates.
pub fn local_candidates(tun: &str, mesh: MeshNetwork, port: u16) -> Vec<SocketAddr> {
    select(&interface_addrs(), tun, mesh, port)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn a(name: &str, ip: &str) -> IfAddr {
        IfAddr {
            name: name.into(),
            ip: ip.parse().unwrap(),
            point_to_point: name.starts_with("tun"),
        }
    }

    #[test]
    fn keeps_lan_addresses_and_drops_the_rest() {
        let addrs = vec![
            a("lo", "127.0.0.1"),
            a("lo", "::1"),
            a("eth0", "192.168.1.20"),
            a("eth0", "fe80::1"),
            a("eth0", "2001:db8::5"),
            a("eth1", "10.0.0.3"),
            a("eth1", "169.254.3.3"),
            a("warren0", "100.80.0.7"),
            a("other", "100.80.0.9"),
            a("eth2", "192.168.1.20"),
            a("tun7", "192.168.200.13"),
        ];
        let got = select(&addrs, "warren0", MeshNetwork::default(), 4000);
        assert_eq!(
            got,
            vec![
                "10.0.0.3:4000".parse::<SocketAddr>().unwrap(),
                "192.168.1.20:4000".parse().unwrap(),
            ]
        );
    }

    #[test]
    fn reads_real_interfaces_without_loopback() {
        let got = local_candidates("warren-none", MeshNetwork::default(), 1);
        assert!(got.iter().all(|s| !s.ip().is_loopback() && s.port() == 1));
    }
}
