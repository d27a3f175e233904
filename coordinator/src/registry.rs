//! The in-memory view of which nodes are online: their control channels and candidates.
//!
//! A `DashMap` keyed by node id, shared by every connection task and the HTTP API. Nothing here
//! is durable: after a restart it is rebuilt as nodes log in again. An online node's current
//! name lives here too, so that a rename through the API shows in every record announced later
//! by its (already running) session.

use std::net::SocketAddr;

use dashmap::DashMap;
use tokio::sync::mpsc;
use warren_proto::control::{CoordMessage, PathInfo, PeerRecord};
use warren_proto::ids::NodeId;

use crate::store::NodeRow;

/// Messages queued for one node before it is considered stuck and disconnected.
pub const NODE_QUEUE: usize = 1024;

/// One connected node.
pub struct OnlineNode {
    /// Identifies the connection, so a stale connection's cleanup never removes a newer one.
    pub conn_id: usize,
    /// The node's current name (the store's, updated by [`Registry::rename`]).
    pub name: String,
    /// Queue of messages for the node's control-stream writer.
    pub tx: mpsc::Sender<CoordMessage>,
    /// Where the coordinator sees the node's data socket.
    pub reflexive: SocketAddr,
    /// The node's LAN candidates, as it reported them.
    pub local: Vec<SocketAddr>,
    /// How the node last said it reaches each peer (its `PathReport`).
    pub paths: Vec<PathInfo>,
    /// The QUIC connection, to close it when the node is removed.
    pub connection: quinn::Connection,
}

impl OnlineNode {
    /// Candidates to punch: reflexive first, then local. A tunnel's virtual reflexive address
    /// (the node came over TCP) is no candidate: nothing can reach it over UDP.
    pub fn candidates(&self) -> Vec<SocketAddr> {
        let mut out = Vec::with_capacity(self.local.len() + 1);
        if !crate::tunnel::is_virtual(&self.reflexive) {
            out.push(self.reflexive);
        }
        out.extend(self.local.iter().filter(|a| **a != self.reflexive));
        out
    }
}

/// Online nodes by id.
#[derive(Default)]
pub struct Registry {
    /// The map itself.
    nodes: DashMap<NodeId, OnlineNode>,
}

impl Registry {
    /// Marks a node online, replacing (and closing) an older connection of the same node.
    pub fn insert(&self, id: NodeId, node: OnlineNode) {
        if let Some(old) = self.nodes.insert(id, node) {
            old.connection
                .close(0u32.into(), b"replaced by a newer connection");
        }
    }

    /// Marks a node offline if `conn_id` is still its current connection; its entry if it was.
    pub fn remove_if_current(&self, id: NodeId, conn_id: usize) -> Option<OnlineNode> {
        self.nodes
            .remove_if(&id, |_, n| n.conn_id == conn_id)
            .map(|(_, n)| n)
    }

    /// Records an online node's new name; false if it is not online.
    pub fn rename(&self, id: NodeId, name: &str) -> bool {
        self.update(id, |n| n.name = name.to_string())
    }

    /// Removes a node whatever its connection, closing it with `reason`.
    pub fn evict(&self, id: NodeId, reason: &str) {
        if let Some((_, n)) = self.nodes.remove(&id) {
            n.connection.close(1u32.into(), reason.as_bytes());
        }
    }

    /// Number of online nodes.
    pub fn online_count(&self) -> usize {
        self.nodes.len()
    }

    /// A node's last path report, if online.
    pub fn paths(&self, id: NodeId) -> Option<Vec<PathInfo>> {
        self.nodes.get(&id).map(|n| n.paths.clone())
    }

    /// A node's candidates, if online.
    pub fn candidates(&self, id: NodeId) -> Option<Vec<SocketAddr>> {
        self.nodes.get(&id).map(|n| n.candidates())
    }

    /// A node's QUIC connection, if online (for relaying datagrams to it).
    pub fn connection(&self, id: NodeId) -> Option<quinn::Connection> {
        self.nodes.get(&id).map(|n| n.connection.clone())
    }

    /// Updates what is known of an online node's addresses; false if it is not online.
    pub fn update(&self, id: NodeId, f: impl FnOnce(&mut OnlineNode)) -> bool {
        match self.nodes.get_mut(&id) {
            Some(mut n) => {
                f(&mut n);
                true
            }
            None => false,
        }
    }

    /// Queues a message for a node. A node whose queue is full is disconnected (it will log
    /// in again and get a fresh view) rather than slowing everyone else down.
    pub fn send(&self, id: NodeId, msg: CoordMessage) {
        let full = match self.nodes.get(&id) {
            Some(n) => n.tx.try_send(msg).is_err(),
            None => false,
        };
        if full {
            tracing::warn!(node = %id, "control queue full; disconnecting the node");
            self.evict(id, "control queue overflow");
        }
    }

    /// Queues a message for every online node but `except`.
    pub fn broadcast_except(&self, except: NodeId, msg: &CoordMessage) {
        let ids: Vec<NodeId> = self
            .nodes
            .iter()
            .map(|e| *e.key())
            .filter(|id| *id != except)
            .collect();
        for id in ids {
            self.send(id, msg.clone());
        }
    }

    /// The record other nodes see for `row`, with live online state, candidates and name.
    pub fn record(&self, row: &NodeRow) -> PeerRecord {
        let (candidates, name) = match self.nodes.get(&row.id) {
            Some(n) => (Some(n.candidates()), n.name.clone()),
            None => (None, row.name.clone()),
        };
        PeerRecord {
            node_id: row.id,
            name,
            public_key: row.public_key,
            mesh_ip: row.mesh_ip,
            online: candidates.is_some(),
            candidates: candidates.unwrap_or_default(),
        }
    }
}
