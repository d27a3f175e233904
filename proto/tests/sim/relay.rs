//! The simulated coordinator's relay: forwards relay datagrams between nodes, rewriting the
//! destination id to the source's, as `warren-coordinator` does.

use rand::Rng;

use warren_proto::engine::{Event, PathKind};

use super::{Item, Sim};

impl Sim {
    /// Turns the coordinator's relay on (or off) and tells every node.
    pub fn set_relay(&mut self, on: bool) {
        self.relay = on;
        let now = self.now;
        for n in &mut self.nodes {
            n.engine.set_relay_available(on, now);
        }
    }

    /// The coordinator's relay: rewrites the destination id to the source's and forwards
    /// (node -> coordinator -> node: two WAN hops, with loss applied once).
    pub(super) fn relay_forward(&mut self, from: usize, datagram: &[u8]) {
        if !self.relay || self.offline.contains(&from) {
            return;
        }
        if self.block_handshakes && matches!(datagram.get(8), Some(1 | 2)) {
            return;
        }
        let Ok((dst, packet)) = warren_proto::relay::parse(datagram) else {
            return;
        };
        let Some(to) = self.nodes.iter().position(|n| n.id == dst) else {
            return;
        };
        if self.loss > 0.0 && self.rng.gen_bool(self.loss) {
            return;
        }
        let out = warren_proto::relay::build(self.nodes[from].id, packet);
        self.relayed += 1;
        let at = self.now + self.wan_latency * 2;
        self.schedule(at, Item::Relay { to, datagram: out });
    }

    /// The paths node `node` reported, in order.
    pub fn path_changes(&self, node: usize) -> Vec<PathKind> {
        self.events
            .iter()
            .filter(|(n, _)| *n == node)
            .filter_map(|(_, e)| match e {
                Event::PathChanged { path, .. } => Some(*path),
                _ => None,
            })
            .collect()
    }
}
