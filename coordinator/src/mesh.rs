//! What every part of a running coordinator shares: the store, the online registry, the
//! metrics and the mesh's fixed settings. Read-mostly; the registry does its own locking.
//! Changes that must reach the nodes at once (removal, rename) go through here, so the store
//! and the online view never disagree for long.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use warren_proto::control::CoordMessage;
use warren_proto::ids::{MeshNetwork, NodeId};
use warren_proto::noise::CipherSuite;
use warren_proto::token::CoordinatorAddr;

use crate::invite::unix_now;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::relay::{Relay, RelayLimits};
use crate::store::{NodeName, NodeRow, RenameError, Store, StoreError};

/// Shared coordinator state.
pub struct Mesh {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Online nodes.
    pub registry: Registry,
    /// The mesh network addresses are allocated from.
    pub network: MeshNetwork,
    /// Address invite tokens carry.
    pub public_addr: CoordinatorAddr,
    /// SHA-256 of the QUIC certificate, which tokens pin.
    pub fingerprint: [u8; 32],
    /// Bearer token for the HTTP API.
    pub admin_token: String,
    /// Relay limits and counters.
    pub relay: Relay,
    /// The mesh-wide cipher nodes use for the sessions they start (sent in every Welcome).
    pub cipher: CipherSuite,
    /// Counters for `GET /metrics`.
    pub metrics: Metrics,
    /// Source of connection ids for [`crate::registry::OnlineNode::conn_id`].
    next_conn_id: AtomicUsize,
}

impl Mesh {
    /// Builds the shared state.
    pub fn new(
        store: Arc<dyn Store>,
        network: MeshNetwork,
        public_addr: CoordinatorAddr,
        fingerprint: [u8; 32],
        admin_token: String,
    ) -> Self {
        Self {
            store,
            registry: Registry::default(),
            network,
            public_addr,
            fingerprint,
            admin_token,
            relay: Relay::default(),
            cipher: CipherSuite::default(),
            metrics: Metrics::default(),
            next_conn_id: AtomicUsize::new(1),
        }
    }

    /// The same state with other per-node relay limits (default [`RelayLimits::default`]).
    pub fn with_relay_limits(mut self, limits: RelayLimits) -> Self {
        self.relay.limits = limits;
        self
    }

    /// The same state with another mesh-wide cipher (default ChaCha20-Poly1305).
    pub fn with_cipher(mut self, cipher: CipherSuite) -> Self {
        self.cipher = cipher;
        self
    }

    /// A fresh connection id.
    pub fn conn_id(&self) -> usize {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs a blocking store call off the async runtime.
    pub async fn with_store<T, E>(
        self: &Arc<Self>,
        f: impl FnOnce(&dyn Store) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: Send + 'static + From<StoreError>,
    {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Corrupt(format!("store task failed: {e}")).into()),
        }
    }

    /// Removes a node from the mesh: from the store, from the online set (closing its
    /// connection) and from every other node's peer list. False if there was no such node.
    pub async fn remove_node(self: &Arc<Self>, id: NodeId) -> Result<bool, StoreError> {
        let removed = self.with_store(move |s| s.remove_node(id)).await?;
        if removed {
            self.registry.evict(id, "removed from the mesh");
            self.relay.forget(id);
            self.registry
                .broadcast_except(id, &CoordMessage::PeerRemoved { node_id: id });
        }
        Ok(removed)
    }

    /// Renames a node and tells every other online node at once (a `PeerUpsert` with the new
    /// name). The node's own session keeps announcing the new name from then on.
    pub async fn rename_node(
        self: &Arc<Self>,
        id: NodeId,
        name: NodeName,
    ) -> Result<NodeRow, RenameError> {
        let row = self
            .with_store(move |s| s.rename_node(id, &name, unix_now()))
            .await?;
        self.registry.rename(id, &row.name);
        self.registry.broadcast_except(
            id,
            &CoordMessage::PeerUpsert {
                peer: self.registry.record(&row),
            },
        );
        Ok(row)
    }
}
