//! NAT models for the simulator (RFC 4787 vocabulary): endpoint-independent or
//! endpoint-dependent mapping, both with address+port-dependent filtering.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};

use rand::Rng;
use rand_chacha::ChaCha20Rng;

/// How a site's router treats UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping, port-preserving; address+port-dependent filtering.
    Eim,
    /// Endpoint-dependent mapping (new random port per destination); same filtering.
    Sym,
}

/// A NAT router.
pub struct Nat {
    /// Behaviour.
    pub kind: NatKind,
    /// Its public address.
    pub public_ip: Ipv4Addr,
    /// (inside, destination for Sym) → public port.
    mappings: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// public port → (inside, remotes it sent to).
    reverse: HashMap<u16, (SocketAddr, HashSet<SocketAddr>)>,
}

impl Nat {
    pub(super) fn new(kind: NatKind, public_ip: Ipv4Addr) -> Self {
        Self {
            kind,
            public_ip,
            mappings: HashMap::new(),
            reverse: HashMap::new(),
        }
    }

    pub(super) fn outbound(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        rng: &mut ChaCha20Rng,
    ) -> SocketAddr {
        let key = (src, (self.kind == NatKind::Sym).then_some(dst));
        let port = match self.mappings.get(&key) {
            Some(&p) => p,
            None => {
                let mut p = src.port();
                if self.kind == NatKind::Sym || self.reverse.contains_key(&p) {
                    p = loop {
                        let c = rng.gen_range(1024..=65535);
                        if !self.reverse.contains_key(&c) {
                            break c;
                        }
                    };
                }
                self.mappings.insert(key, p);
                self.reverse.insert(p, (src, HashSet::new()));
                p
            }
        };
        self.reverse.get_mut(&port).unwrap().1.insert(dst);
        SocketAddr::new(self.public_ip.into(), port)
    }

    pub(super) fn inbound(&self, port: u16, from: SocketAddr) -> Option<SocketAddr> {
        let (inside, allowed) = self.reverse.get(&port)?;
        allowed.contains(&from).then_some(*inside)
    }

    /// Forgets every mapping of `inside` (a NAT reboot or timeout): the next packet gets a new
    /// port.
    pub fn rebind(&mut self, inside: SocketAddr) {
        self.mappings.retain(|k, _| k.0 != inside);
        let ports: Vec<u16> = self
            .reverse
            .iter()
            .filter(|(_, v)| v.0 == inside)
            .map(|(&p, _)| p)
            .collect();
        // The old ports stay taken (by nobody reachable), so the new mapping must differ:
        // port preservation fails as after a real NAT reboot with lingering state.
        for p in ports {
            self.reverse
                .insert(p, (SocketAddr::from(([0, 0, 0, 0], 0)), HashSet::new()));
        }
    }
}
