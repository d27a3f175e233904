//! What the coordinator has told this node (IO shell layer, no IO itself): the peer records and
//! this node's own part of the status report. Applies coordinator messages to the engine and
//! keeps the records the engine does not (names, online flags) for `warren status`.

use std::collections::HashMap;
use std::time::Instant;

use warren_proto::control::{CoordMessage, PeerRecord};
use warren_proto::engine::Engine;
use warren_proto::ids::NodeId;

use crate::control::Welcome;
use crate::dataio::SHELL_DROPS;
use crate::status::{peer_lines, Carrier, Link, SelfReport, SelfStatus, StatusReport};

/// The coordinator's view of the mesh, as far as this node needs it.
#[derive(Debug)]
pub struct PeerBook {
    /// This node's part of the status report.
    me: SelfStatus,
    /// The other nodes by id.
    peers: HashMap<NodeId, PeerRecord>,
}

impl PeerBook {
    /// A book for this node (`me`), starting from cached `peers` (already given to the engine).
    pub fn new(me: SelfStatus, peers: Vec<PeerRecord>) -> Self {
        let peers = peers
            .into_iter()
            .filter(|p| p.node_id != me.node_id)
            .map(|p| (p.node_id, p))
            .collect();
        Self { me, peers }
    }

    /// The peer records (for the cache).
    pub fn records(&self) -> Vec<PeerRecord> {
        let mut v: Vec<PeerRecord> = self.peers.values().cloned().collect();
        v.sort_by_key(|p| p.node_id);
        v
    }

    /// A peer's name, for logs.
    pub fn name(&self, peer: NodeId) -> &str {
        self.peers.get(&peer).map_or("?", |p| p.name.as_str())
    }

    /// The control connection dropped.
    pub fn disconnected(&mut self) {
        self.me.coordinator = Link::Disconnected;
        tracing::warn!("disconnected from the coordinator; tunnels stay up");
    }

    /// The session's carrier. Over TCP the coordinator sees a tunnel, not the data socket, so
    /// there is no reflexive address to show.
    pub fn set_carrier(&mut self, carrier: Carrier) {
        self.me.carrier = carrier;
        if carrier == Carrier::Tcp {
            self.me.reflexive = None;
        }
    }

    /// A fresh session's Welcome: replaces the peer list. Returns true (the list changed).
    pub fn on_welcome(&mut self, engine: &mut Engine, w: Welcome, now: Instant) -> bool {
        self.me.coordinator = Link::Connected;
        let reflexive = Some(w.reflexive.to_string());
        let moved = self.me.reflexive.is_some() && self.me.reflexive != reflexive;
        self.me.reflexive = reflexive;
        if w.node.mesh_ip != self.me.ip {
            tracing::warn!(saved = %self.me.ip, assigned = %w.node.mesh_ip,
                "coordinator reports a different mesh address than the saved one");
        }
        self.me.name = w.node.name.clone();
        if engine.suite() != w.cipher {
            tracing::info!(cipher = ?w.cipher, "mesh cipher set by the coordinator");
            engine.set_suite(w.cipher);
        }
        let others: Vec<PeerRecord> = w
            .peers
            .into_iter()
            .filter(|p| p.node_id != self.me.node_id)
            .collect();
        engine.set_peers(&others, now);
        if moved {
            tracing::info!(reflexive = %w.reflexive, "this node's public address changed");
            engine.network_changed(now);
        }
        self.peers = others.into_iter().map(|p| (p.node_id, p)).collect();
        tracing::info!(peers = self.peers.len(), reflexive = %w.reflexive, "peer list received");
        true
    }

    /// A coordinator message after the Welcome. Returns whether the peer list changed.
    pub fn on_message(&mut self, engine: &mut Engine, msg: CoordMessage, now: Instant) -> bool {
        match msg {
            CoordMessage::PeerUpsert { peer } if peer.node_id != self.me.node_id => {
                tracing::debug!(peer = %peer.node_id, name = %peer.name, online = peer.online,
                    "peer update");
                engine.upsert_peer(&peer, now);
                self.peers.insert(peer.node_id, peer);
                true
            }
            CoordMessage::PeerRemoved { node_id } if node_id != self.me.node_id => {
                tracing::info!(peer = %node_id, "peer removed");
                engine.remove_peer(node_id);
                self.peers.remove(&node_id).is_some()
            }
            CoordMessage::Punch { peer, candidates } => {
                tracing::debug!(%peer, ?candidates, "punch order");
                engine.handle_punch(peer, &candidates, now);
                false
            }
            CoordMessage::Reflexive { addr } => {
                let addr = Some(addr.to_string());
                if self.me.reflexive != addr {
                    tracing::info!(reflexive = ?addr, "this node's public address changed");
                    self.me.reflexive = addr;
                    engine.network_changed(now);
                }
                false
            }
            other => {
                tracing::debug!(?other, "ignored coordinator message");
                false
            }
        }
    }

    /// The status report, with the engine's per-peer numbers.
    pub fn report(&self, engine: &Engine, now: Instant) -> StatusReport {
        let engine_drops = engine.drop_counters().reasons();
        let shell_drops = SHELL_DROPS.reasons();
        StatusReport {
            me: SelfReport {
                node: self.me.clone(),
                cipher: Some(engine.suite()),
            },
            peers: peer_lines(self.peers.values(), &engine.peer_status(now)),
            dropped: engine_drops
                .iter()
                .chain(&shell_drops)
                .map(|&(reason, n)| (reason.to_string(), n))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::Ipv4Addr;
    use warren_proto::engine::EngineConfig;
    use warren_proto::ids::{MeshIp, MeshNetwork, PrivateKey};
    use warren_proto::noise::CipherSuite;

    fn rec(id: u64) -> PeerRecord {
        PeerRecord {
            node_id: NodeId(id),
            name: format!("n{id}"),
            public_key: PrivateKey::from_random([id as u8; 32]).public_key(),
            mesh_ip: MeshIp(Ipv4Addr::new(100, 80, 0, id as u8)),
            online: true,
            candidates: vec![format!("192.0.2.{id}:4000").parse().unwrap()],
        }
    }

    fn setup() -> (PeerBook, Engine, Instant) {
        let now = Instant::now();
        let key = PrivateKey::from_random([1; 32]);
        let me = SelfStatus {
            name: "n1".into(),
            ip: rec(1).mesh_ip,
            node_id: NodeId(1),
            public_key: key.public_key(),
            reflexive: None,
            coordinator: Link::Disconnected,
            carrier: crate::status::Carrier::Udp,
        };
        let engine = Engine::new(
            EngineConfig {
                node_id: NodeId(1),
                private_key: key,
                suite: CipherSuite::default(),
                wall_clock_base_nanos: 0,
            },
            [7; 32],
            now,
        );
        (PeerBook::new(me, vec![rec(1), rec(9)]), engine, now)
    }

    fn welcome(peers: Vec<PeerRecord>, reflexive: &str) -> Welcome {
        Welcome {
            node: rec(1),
            network: MeshNetwork::default(),
            reflexive: reflexive.parse().unwrap(),
            peers,
            cipher: CipherSuite::AesGcm,
        }
    }

    fn names(r: &StatusReport) -> Vec<String> {
        r.peers.iter().map(|p| p.name.clone()).collect()
    }

    #[test]
    fn cached_list_is_replaced_by_the_welcome_without_self() {
        let (mut book, mut engine, now) = setup();
        assert_eq!(book.records().len(), 1, "self is never a peer");
        assert_eq!(
            book.report(&engine, now).me.node.coordinator,
            Link::Disconnected
        );
        assert!(book.on_welcome(
            &mut engine,
            welcome(vec![rec(1), rec(2), rec(3)], "203.0.113.1:5"),
            now
        ));
        let r = book.report(&engine, now);
        assert_eq!(names(&r), vec!["n2", "n3"]);
        assert_eq!(r.me.node.coordinator, Link::Connected);
        assert_eq!(r.me.node.reflexive.as_deref(), Some("203.0.113.1:5"));
        assert_eq!(
            engine.suite(),
            CipherSuite::AesGcm,
            "the Welcome sets the mesh cipher"
        );
        assert_eq!(r.me.cipher, Some(CipherSuite::AesGcm));
        assert_eq!(r.dropped.get("malformed"), Some(&0));
        assert!(r.dropped.contains_key("tun_write_failed"));
        assert_eq!(r.dropped.len(), 25, "engine and shell reasons");
        assert!(r.dropped.contains_key("queue_delay"));
        book.disconnected();
        assert_eq!(
            book.report(&engine, now).me.node.coordinator,
            Link::Disconnected
        );
    }

    #[test]
    fn upserts_removals_and_reflexive_updates() {
        let (mut book, mut engine, now) = setup();
        book.on_welcome(&mut engine, welcome(vec![rec(2)], "203.0.113.1:5"), now);
        let mut offline = rec(3);
        offline.online = false;
        assert!(book.on_message(&mut engine, CoordMessage::PeerUpsert { peer: offline }, now));
        assert!(!book.on_message(&mut engine, CoordMessage::PeerUpsert { peer: rec(1) }, now));
        assert!(book.on_message(
            &mut engine,
            CoordMessage::PeerRemoved { node_id: NodeId(2) },
            now
        ));
        assert!(!book.on_message(
            &mut engine,
            CoordMessage::PeerRemoved { node_id: NodeId(2) },
            now
        ));
        let moved = CoordMessage::Reflexive {
            addr: "203.0.113.1:6".parse().unwrap(),
        };
        assert!(!book.on_message(&mut engine, moved, now));
        let r = book.report(&engine, now);
        assert_eq!(names(&r), vec!["n3"]);
        assert!(!r.peers[0].online);
        assert_eq!(r.me.node.reflexive.as_deref(), Some("203.0.113.1:6"));
        assert_eq!(book.name(NodeId(3)), "n3");
        assert_eq!(book.name(NodeId(42)), "?");
    }
}
