//! A deterministic network simulator for the engine: one simulated clock, per-link latency,
//! seeded loss, NAT models (RFC 4787 vocabulary) and a coordinator that relays punch requests.
//! Nothing here reads the real clock except the single base `Instant`.

#![allow(clippy::unwrap_used, dead_code)]

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use warren_proto::control::PeerRecord;
use warren_proto::engine::{Engine, EngineConfig, Event, PathKind, PeerStatus};
use warren_proto::ids::{MeshIp, NodeId, PrivateKey};
use warren_proto::noise::CipherSuite;

/// The coordinator's address (nodes' reflexive candidates are their mapping towards it).
pub const COORD: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), 7443));
/// The node's data port (inside its host).
pub const PORT: u16 = 41641;

mod nat;
mod relay;
pub use nat::{Nat, NatKind};

/// A node in the simulation.
pub struct Node {
    /// The engine under test.
    pub engine: Engine,
    /// Its coordinator id.
    pub id: NodeId,
    /// Its mesh address.
    pub mesh_ip: Ipv4Addr,
    /// Its static key.
    pub key: PrivateKey,
    /// Its address on its host (public for open nodes).
    pub local: SocketAddr,
    /// Its site (index into `Sim::nats`), `None` when open.
    pub site: Option<usize>,
    /// IP packets its TUN received.
    pub tun_rx: Vec<Vec<u8>>,
}

pub(crate) enum Item {
    Datagram {
        to: usize,
        from: SocketAddr,
        payload: Vec<u8>,
    },
    Punch {
        to: usize,
        peer: usize,
    },
    /// A relay datagram as the coordinator forwards it (header names the source).
    Relay {
        to: usize,
        datagram: Vec<u8>,
    },
}

/// The simulated world.
pub struct Sim {
    /// Simulated now.
    pub now: Instant,
    /// Start of the simulation.
    pub start: Instant,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// NAT routers (sites).
    pub nats: Vec<Nat>,
    /// One-way latency between sites.
    pub wan_latency: Duration,
    /// One-way latency inside a site.
    pub lan_latency: Duration,
    /// Probability of losing each WAN datagram.
    pub loss: f64,
    /// Drop handshake datagrams (types 1 and 2) when set.
    pub block_handshakes: bool,
    /// Every datagram delivered: (to node, from, payload), for replay tests.
    pub delivered_log: Vec<(usize, SocketAddr, Vec<u8>)>,
    /// Punch orders the coordinator sent.
    pub punches: usize,
    /// Every datagram the nodes emitted: (node, time, destination, type byte).
    pub sent_log: Vec<(usize, Instant, SocketAddr, u8)>,
    /// Every event the nodes emitted, in order: (node, event).
    pub events: Vec<(usize, Event)>,
    /// Nodes that are switched off: they neither send, receive nor run timers.
    pub offline: HashSet<usize>,
    /// The coordinator relays datagrams (nodes were told with `set_relay_available`).
    pub relay: bool,
    /// Drop every UDP datagram between nodes (the relay still works).
    pub block_udp: bool,
    /// Relay datagrams the coordinator forwarded.
    pub relayed: usize,
    rng: ChaCha20Rng,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    items: HashMap<u64, Item>,
    seq: u64,
}

impl Sim {
    /// An empty world with the given loss seed.
    pub fn new(seed: u64) -> Self {
        let start = Instant::now();
        Self {
            now: start,
            start,
            nodes: Vec::new(),
            nats: Vec::new(),
            wan_latency: Duration::from_millis(20),
            lan_latency: Duration::from_millis(1),
            loss: 0.0,
            block_handshakes: false,
            delivered_log: Vec::new(),
            punches: 0,
            offline: HashSet::new(),
            relay: false,
            block_udp: false,
            relayed: 0,
            events: Vec::new(),
            sent_log: Vec::new(),
            rng: ChaCha20Rng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            items: HashMap::new(),
            seq: 0,
        }
    }

    /// Adds a NAT site; returns its index.
    pub fn add_nat(&mut self, kind: NatKind) -> usize {
        let i = self.nats.len();
        self.nats
            .push(Nat::new(kind, Ipv4Addr::new(198, 51, 100, 10 + i as u8)));
        i
    }

    /// Adds a node, open (`site` None) or behind a NAT site; returns its index.
    pub fn add_node(&mut self, site: Option<usize>) -> usize {
        let i = self.nodes.len();
        let n = i as u8 + 1;
        let local = match site {
            None => SocketAddr::from(([192, 0, 2, 10 + n], PORT)),
            Some(s) => SocketAddr::from(([10, s as u8, 0, 10 + n], PORT)),
        };
        let key = PrivateKey::from_random([n; 32]);
        let mesh_ip = Ipv4Addr::new(100, 80, 0, n);
        let config = EngineConfig {
            node_id: NodeId(u64::from(n)),
            private_key: key.clone(),
            suite: if i % 2 == 0 {
                CipherSuite::ChaChaPoly
            } else {
                CipherSuite::AesGcm
            },
            wall_clock_base_nanos: 1_750_000_000_000_000_000,
        };
        let engine = Engine::new(config, [n.wrapping_mul(31); 32], self.now);
        self.nodes.push(Node {
            engine,
            id: NodeId(u64::from(n)),
            mesh_ip,
            key,
            local,
            site,
            tun_rx: Vec::new(),
        });
        i
    }

    /// Restarts node `i`: a fresh engine with the same key, a new seed and the wall clock
    /// advanced by the simulated time, re-introduced to every other node by the coordinator.
    pub fn restart(&mut self, i: usize) {
        let n = &self.nodes[i];
        let elapsed = self.now.duration_since(self.start).as_nanos() as u64;
        let config = EngineConfig {
            node_id: n.id,
            private_key: n.key.clone(),
            suite: CipherSuite::ChaChaPoly,
            wall_clock_base_nanos: 1_750_000_000_000_000_000 + elapsed,
        };
        let mut seed = [0u8; 32];
        self.rng.fill(&mut seed);
        self.nodes[i].engine = Engine::new(config, seed, self.now);
        let records: Vec<PeerRecord> = (0..self.nodes.len())
            .filter(|&j| j != i)
            .map(|j| self.record(j))
            .collect();
        let now = self.now;
        self.nodes[i].engine.set_peers(&records, now);
        let relay = self.relay;
        self.nodes[i].engine.set_relay_available(relay, now);
    }

    /// The candidates the coordinator knows for node `i`: reflexive first, then local.
    pub fn candidates(&mut self, i: usize) -> Vec<SocketAddr> {
        let local = self.nodes[i].local;
        match self.nodes[i].site {
            None => vec![local],
            Some(s) => {
                let refl = self.nats[s].outbound(local, COORD, &mut self.rng);
                vec![refl, local]
            }
        }
    }

    /// The record of node `i` as the coordinator sends it.
    pub fn record(&mut self, i: usize) -> PeerRecord {
        let candidates = self.candidates(i);
        let n = &self.nodes[i];
        PeerRecord {
            node_id: n.id,
            name: format!("node{i}"),
            public_key: n.key.public_key(),
            mesh_ip: MeshIp(n.mesh_ip),
            online: true,
            candidates,
        }
    }

    /// Tells every node about every other (the coordinator's Welcome).
    pub fn introduce_all(&mut self) {
        let records: Vec<PeerRecord> = (0..self.nodes.len()).map(|i| self.record(i)).collect();
        let now = self.now;
        for (i, n) in self.nodes.iter_mut().enumerate() {
            let others: Vec<PeerRecord> = records
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, r)| r.clone())
                .collect();
            n.engine.set_peers(&others, now);
        }
    }

    pub(crate) fn schedule(&mut self, at: Instant, item: Item) {
        self.seq += 1;
        self.items.insert(self.seq, item);
        self.queue.push(Reverse((at, self.seq)));
    }

    fn node_at(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.local == addr)
    }

    /// Routes a datagram node `from` sent to `dst` through LAN, NATs and WAN.
    fn route(&mut self, from: usize, dst: SocketAddr, payload: Vec<u8>) {
        if self.offline.contains(&from) {
            return;
        }
        if self.block_handshakes && matches!(payload.first(), Some(1 | 2)) {
            return;
        }
        if self.block_udp {
            return;
        }
        let src_local = self.nodes[from].local;
        let site = self.nodes[from].site;
        // Same LAN: straight to the neighbour.
        if let Some(s) = site {
            if let Some(to) = self.node_at(dst).filter(|&t| self.nodes[t].site == Some(s)) {
                let at = self.now + self.lan_latency;
                self.schedule(
                    at,
                    Item::Datagram {
                        to,
                        from: src_local,
                        payload,
                    },
                );
                return;
            }
        }
        let src = match site {
            Some(s) => self.nats[s].outbound(src_local, dst, &mut self.rng),
            None => src_local,
        };
        if self.loss > 0.0 && self.rng.gen_bool(self.loss) {
            return;
        }
        let to = if let Some(s) = self.nats.iter().position(|n| dst.ip() == n.public_ip) {
            if Some(s) == site {
                return; // no hairpinning
            }
            self.nats[s]
                .inbound(dst.port(), src)
                .and_then(|inside| self.node_at(inside))
        } else {
            self.node_at(dst).filter(|&t| self.nodes[t].site.is_none())
        };
        if let Some(to) = to {
            let at = self.now + self.wan_latency;
            self.schedule(
                at,
                Item::Datagram {
                    to,
                    from: src,
                    payload,
                },
            );
        }
    }

    fn drain_outputs(&mut self) {
        for i in 0..self.nodes.len() {
            while let Some(t) = self.nodes[i].engine.poll_transmit() {
                let kind = t.payload.first().copied().unwrap_or(0xff);
                self.sent_log.push((i, self.now, t.dst, kind));
                self.route(i, t.dst, t.payload);
            }
            while let Some(t) = self.nodes[i].engine.poll_relay_transmit() {
                let kind = t.datagram.get(8).copied().unwrap_or(0xff);
                self.sent_log.push((i, self.now, COORD, kind));
                self.relay_forward(i, &t.datagram);
            }
            while let Some(ev) = self.nodes[i].engine.poll_event() {
                self.events.push((i, ev.clone()));
                if let Event::PunchRequest(peer) = ev {
                    if let Some(j) = self.nodes.iter().position(|n| n.id == peer) {
                        // Request reaches the coordinator, which tells both at once.
                        let at = self.now + self.wan_latency * 2;
                        self.punches += 1;
                        self.schedule(at, Item::Punch { to: i, peer: j });
                        self.schedule(at, Item::Punch { to: j, peer: i });
                    }
                }
            }
        }
    }

    /// Runs the world until `until` (absolute).
    pub fn run_until(&mut self, until: Instant) {
        let mut steps = 0u64;
        loop {
            steps += 1;
            assert!(steps < 5_000_000, "simulation does not settle");
            self.drain_outputs();
            let next_item = self.queue.peek().map(|r| r.0 .0);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| !self.offline.contains(i))
                .filter_map(|(_, n)| n.engine.poll_timeout())
                .min();
            let next = match (next_item, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
                if at > self.now {
                    break;
                }
                self.queue.pop();
                if let Some(item) = self.items.remove(&seq) {
                    self.deliver(item);
                }
            }
            let now = self.now;
            for (i, n) in self.nodes.iter_mut().enumerate() {
                if self.offline.contains(&i) {
                    continue;
                }
                if n.engine.poll_timeout().is_some_and(|t| t <= now) {
                    n.engine.handle_timeout(now);
                }
            }
        }
        self.now = self.now.max(until);
    }

    /// Runs for `d` more.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    fn deliver(&mut self, item: Item) {
        let now = self.now;
        match item {
            Item::Datagram { to, from, payload } => {
                if self.offline.contains(&to) {
                    return;
                }
                let mut buf = [0u8; 2048];
                let n = &mut self.nodes[to];
                if let Some(len) = n.engine.handle_datagram(from, &payload, &mut buf, now) {
                    n.tun_rx.push(buf[..len].to_vec());
                }
                self.delivered_log.push((to, from, payload));
            }
            Item::Relay { to, datagram } => {
                if self.offline.contains(&to) {
                    return;
                }
                let mut buf = [0u8; 2048];
                let n = &mut self.nodes[to];
                if let Some(len) = n.engine.handle_relay_datagram(&datagram, &mut buf, now) {
                    n.tun_rx.push(buf[..len].to_vec());
                }
            }
            Item::Punch { to, peer } => {
                if self.offline.contains(&to) {
                    return;
                }
                let cands = self.candidates(peer);
                let id = self.nodes[peer].id;
                self.nodes[to].engine.handle_punch(id, &cands, now);
            }
        }
    }

    /// Node `from` writes an IPv4 packet for node `to` into its TUN, tagged with `seq`.
    pub fn send_ip(&mut self, from: usize, to: usize, seq: u32) {
        let pkt = ipv4(self.nodes[from].mesh_ip, self.nodes[to].mesh_ip, seq);
        let now = self.now;
        self.nodes[from].engine.handle_tun_packet(&pkt, now);
    }

    /// Sends one packet each way every `every` for `d`.
    pub fn traffic_both_ways(&mut self, a: usize, b: usize, every: Duration, d: Duration) {
        let until = self.now + d;
        let mut seq = 0;
        while self.now < until {
            self.send_ip(a, b, seq);
            self.send_ip(b, a, seq);
            seq += 1;
            let next = self.now + every;
            self.run_until(next);
        }
    }

    /// Node `i`'s status of node `j`.
    pub fn status(&self, i: usize, j: usize) -> PeerStatus {
        let id = self.nodes[j].id;
        self.nodes[i]
            .engine
            .peer_status(self.now)
            .into_iter()
            .find(|s| s.node_id == id)
            .unwrap()
    }

    /// Whether `a` and `b` see each other Direct.
    pub fn direct(&self, a: usize, b: usize) -> bool {
        self.status(a, b).path == PathKind::Direct && self.status(b, a).path == PathKind::Direct
    }

    /// Sequence numbers node `i` received from node `from`.
    pub fn received_from(&self, i: usize, from: usize) -> Vec<u32> {
        let src = self.nodes[from].mesh_ip.octets();
        self.nodes[i]
            .tun_rx
            .iter()
            .filter(|p| p[12..16] == src)
            .map(|p| u32::from_be_bytes([p[20], p[21], p[22], p[23]]))
            .collect()
    }
}

/// A minimal IPv4 packet (20-byte header + 4-byte sequence + padding).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, seq: u32) -> Vec<u8> {
    let mut p = vec![0u8; 100];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&100u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..24].copy_from_slice(&seq.to_be_bytes());
    p
}

/// Two nodes, `a` behind `ka` and `b` behind `kb` (None = open), introduced to each other.
pub fn pair(ka: Option<NatKind>, kb: Option<NatKind>, seed: u64) -> Sim {
    let mut s = Sim::new(seed);
    let sa = ka.map(|k| s.add_nat(k));
    let sb = kb.map(|k| s.add_nat(k));
    s.add_node(sa);
    s.add_node(sb);
    s.introduce_all();
    s
}
