//! The daemon loop (IO shell layer): one task owns the sans-IO [`Engine`] and feeds it.
//!
//! Inputs, in one `tokio::select!`: batches of datagrams from the shared UDP socket (`recvmmsg` +
//! GRO, see `dataio`; QUIC ones are passed to quinn, the rest go to the engine), IP packets from
//! TUN (split from offloaded super-packets, see `tunio`), coordinator messages from the control
//! client, relay datagrams from the control connection, the engine's timer, status requests and
//! shutdown. After each input the engine's output is drained: datagrams to the socket as GSO
//! runs, relay datagrams to the control connection as QUIC DATAGRAM frames, events to the
//! control client, and decrypted packets (written by the engine into a reused buffer) to TUN in
//! coalesced batches.
//! Buffers are allocated once; the shell adds no per-packet allocation on the data path.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use warren_proto::codel;
use warren_proto::control::NodeMessage;
use warren_proto::engine::{Encapsulated, Engine, EngineConfig, Event};
use warren_proto::ids::{NodeId, PrivateKey};
use warren_proto::noise::CipherSuite;

use crate::aqm::{self, Managed, Queue, Ring};
use crate::book::PeerBook;
use crate::control::{CandidateSource, ControlEvent};
use crate::dataio::{self, DataIo, DatagramArena, GsoBatch, RecvBufs, ShellDrops, SHELL_DROPS};
use crate::socket::{route, QuicInbox, Route};
use crate::state::{self, SavedState};
use crate::status::{path_report, Link, SelfStatus, StatusRequest};
use crate::tunio::TunIo;

/// TUN reads handled per turn before the socket's side is served; bounds how long a datagram
/// (an ack, a ping reply) waits behind a bulk send while amortising the flush (UDP reads are
/// batched by `recvmmsg` in [`DataIo`]). A read may return a 64 KiB TSO super-packet, so 8
/// reads are up to 512 KiB, about a quarter of a millisecond of ChaCha20. Lab bench, one TCP
/// stream, ping under load: 128 gave 1.35 ms median (ChaCha) and 1.08 (AES), 64 gave 1.19 and
/// 0.73 at the same throughput. Later, with CoDel on both queues, under a CUBIC stream: 64 gave
/// 0.55-0.67 ms median, 32 gave 0.31-0.33 (AES 0.22-0.33). Then, under the default BBR stream
/// (four quick benches each, alternating): 32 gave a highest ping of 3.2-4.2 ms (ChaCha), 8 gave
/// 1.6-3.1, at the same throughput (4.12 / 4.14 against 4.26 / 4.15 Gbit/s mean) and CPU per
/// GB (2.95 against 2.91 s); 4 gave 2.5-3.4. The acks that wait in the socket while a turn
/// seals reach TCP in a burst, and BBR sizes its window for such bursts.
const TUN_BATCH: usize = 8;
/// Relay datagrams handled per wake-up (the one that woke the loop and those already queued on
/// the control connection) before the engine's output is flushed; like [`TUN_BATCH`] it bounds
/// latency while letting decrypted packets reach TUN in coalesced runs.
const RELAY_BATCH: usize = 64;
/// Sleep used when the engine has no deadline.
const IDLE_WAKE: Duration = Duration::from_secs(3600);
/// How often local interface addresses are re-read; a change is sent to the coordinator as fresh
/// Candidates and makes the engine re-confirm its paths.
const CANDIDATE_REFRESH: Duration = Duration::from_secs(10);
/// Consecutive TUN read errors after which the interface is considered gone (deleted by hand,
/// driver failure) and the daemon stops instead of spinning.
const TUN_ERROR_LIMIT: u32 = 64;

/// Channels and devices the daemon runs on.
pub struct Io {
    /// The shared UDP socket.
    pub udp: Arc<UdpSocket>,
    /// The TUN device and its buffers.
    pub tun: TunIo,
    /// QUIC datagrams to quinn.
    pub quic: QuicInbox,
    /// Events from the control client.
    pub control_rx: mpsc::Receiver<ControlEvent>,
    /// Messages for the coordinator (dropping it stops the control client).
    pub outbox: mpsc::Sender<NodeMessage>,
    /// Status requests from the UNIX socket.
    pub status_rx: mpsc::Receiver<StatusRequest>,
}

/// The engine-owner task's state.
pub struct Daemon {
    /// The sans-IO data plane.
    engine: Engine,
    /// Devices and channels.
    io: Io,
    /// What the coordinator told us (peer records, our own status).
    book: PeerBook,
    /// The state directory (for the peer cache).
    dir: PathBuf,
    /// Batched reads and GSO sends on the shared socket.
    data: DataIo,
    /// CoDel on the socket's receive queue: drops bulk datagrams that waited too long, before
    /// they are decrypted, so a bulk transfer cannot park milliseconds of data in front of
    /// everything else (see `aqm`).
    rx_aqm: Managed,
    /// CoDel on the TUN ring, before encryption.
    tx_aqm: Managed,
    /// What reads have shown of the TUN ring's backlog.
    ring: Ring,
    /// The GSO run being assembled (fast-path seals and [`Daemon::flush`]).
    batch: GsoBatch,
    /// Turns fast-path relay datagrams into quinn's `Bytes` without a heap allocation each.
    relay_arena: DatagramArena,
    /// Where local candidates come from.
    source: CandidateSource,
    /// The local candidates last seen.
    local: Vec<SocketAddr>,
    /// The control connection, carrying relay datagrams while it is up.
    relay: Option<quinn::Connection>,
    /// Largest relay datagram the control connection took, as last logged.
    relay_max: Option<usize>,
    /// Relay datagrams dropped because they did not fit the connection's datagram size.
    relay_too_large: u64,
    /// A path changed (or the coordinator connection is new) since the last `PathReport`.
    paths_dirty: bool,
}

/// Why the daemon loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// SIGINT/SIGTERM.
    Shutdown,
    /// The control client stopped (a fatal coordinator answer; see its result).
    ControlStopped,
    /// The TUN interface keeps failing (e.g. it was deleted).
    TunFailed(String),
}

/// Builds an engine for this node, seeded from the OS RNG.
pub fn new_engine(node_id: NodeId, key: PrivateKey) -> Engine {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    Engine::new(
        EngineConfig {
            node_id,
            private_key: key,
            suite: CipherSuite::default(),
            wall_clock_base_nanos: wall,
        },
        seed,
        Instant::now(),
    )
}

impl Daemon {
    /// A daemon for the node described by `state`, starting from the cached peer list so that
    /// tunnels come back even while the coordinator is unreachable.
    pub fn new(
        dir: &Path,
        state: &SavedState,
        key: PrivateKey,
        io: Io,
        source: CandidateSource,
    ) -> std::io::Result<Self> {
        let me = SelfStatus {
            name: state.name.clone(),
            ip: state.mesh_ip,
            node_id: state.node_id,
            public_key: key.public_key(),
            reflexive: None,
            coordinator: Link::Disconnected,
            carrier: crate::status::Carrier::Udp,
        };
        let mut engine = new_engine(state.node_id, key);
        let book = PeerBook::new(me, state::load_peers(dir));
        let cached = book.records();
        if !cached.is_empty() {
            tracing::info!(peers = cached.len(), "restored the cached peer list");
            engine.set_peers(&cached, Instant::now());
        }
        Ok(Self {
            engine,
            data: DataIo::new(io.udp.clone())?,
            batch: GsoBatch::default(),
            local: source.read(),
            source,
            io,
            book,
            dir: dir.to_path_buf(),
            relay: None,
            relay_max: None,
            paths_dirty: false,
            relay_too_large: 0,
            relay_arena: DatagramArena::default(),
            rx_aqm: Managed::default(),
            tx_aqm: Managed::default(),
            ring: Ring::new(Instant::now()),
        })
    }

    /// Runs until `shutdown` completes or the control client stops.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Exit {
        let mut udp_bufs = RecvBufs::default();
        let mut tun_errors = 0u32;
        tokio::pin!(shutdown);
        // One timer, re-armed only when the engine's deadline moves (not once per packet).
        let timer = tokio::time::sleep(IDLE_WAKE);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        let mut refresh = tokio::time::interval(CANDIDATE_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self
                .engine
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + IDLE_WAKE);
            if armed != Some(deadline) {
                timer.as_mut().reset(deadline.into());
                armed = Some(deadline);
            }
            let relay = self.relay.clone();
            let relay_rx = async {
                match &relay {
                    Some(conn) => conn.read_datagram().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut shutdown => return Exit::Shutdown,
                res = relay_rx => match res {
                    Ok(datagram) => self.on_relay_datagrams(&datagram),
                    Err(e) => {
                        tracing::debug!(error = %e, "control connection gone; relay unavailable");
                        self.relay = None;
                        self.engine.set_relay_available(false, Instant::now());
                    }
                },
                res = self.data.recv(&mut udp_bufs) => {
                    match res {
                        Ok(n) => self.on_udp_batch(&udp_bufs, n),
                        Err(e) => tracing::debug!(error = %e, "UDP receive failed"),
                    }
                    // Then whatever TUN has waiting, and vice versa below: when both
                    // directions are busy each waits for at most one batch of the other,
                    // instead of for as many as `select!`'s coin flips give it.
                    self.on_tun_batch(0).await;
                }
                res = self.io.tun.recv() => match res {
                    Ok(n) => {
                        tun_errors = 0;
                        self.on_tun_batch(n).await;
                        if let Ok(n) = self.data.try_recv(&mut udp_bufs) {
                            self.on_udp_batch(&udp_bufs, n);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "TUN receive failed");
                        tun_errors += 1;
                        if tun_errors >= TUN_ERROR_LIMIT {
                            return Exit::TunFailed(e.to_string());
                        }
                    }
                },
                ev = self.io.control_rx.recv() => match ev {
                    Some(ev) => self.on_control(ev),
                    None => return Exit::ControlStopped,
                },
                Some(reply) = self.io.status_rx.recv() => {
                    let _ = reply.send(self.book.report(&self.engine, Instant::now()));
                }
                () = &mut timer => {
                    armed = None;
                    self.engine.handle_timeout(Instant::now());
                }
                _ = refresh.tick() => {
                    self.check_local_addresses();
                    self.log_relay_size();
                }
            }
            self.flush().await;
        }
    }

    /// A batch of `n` slots read from the shared socket: QUIC datagrams to quinn, the rest
    /// through CoDel to the engine; decrypted packets to TUN.
    fn on_udp_batch(&mut self, bufs: &RecvBufs, n: usize) {
        let now = Instant::now();
        let backlogged = DataIo::backlogged(n);
        // CoDel only needs the wait of a batch with more queued behind it; a batch that emptied
        // the queue resets it whatever it waited, so it costs no timestamp ioctl.
        let sojourn = if backlogged {
            self.data.sojourn()
        } else {
            Some(Duration::ZERO)
        };
        let queue = Queue {
            sojourn,
            backlogged,
        };
        bufs.for_each(n, |from, datagram| {
            self.on_datagram(from, datagram, queue, now)
        });
        self.io.tun.write_queued();
    }

    /// The `first` packets of the TUN read that woke the loop, then more from reads that do
    /// not wait, up to [`TUN_BATCH`]; the GSO run is sent at the end. Bulk packets pass the
    /// ring's CoDel first.
    async fn on_tun_batch(&mut self, first: usize) {
        let now = Instant::now();
        let queue = self.ring.queue(now);
        for i in 0..first {
            self.on_tun_packet(i, queue, now).await;
        }
        let mut total = first;
        let mut empty = false;
        while total < TUN_BATCH {
            let Ok(n) = self.io.tun.try_recv() else {
                // Nothing queued (or the device failed, which the next wait reports).
                empty = true;
                break;
            };
            for i in 0..n {
                self.on_tun_packet(i, queue, now).await;
            }
            total += n.max(1);
        }
        self.ring.batch_ended(empty, Instant::now());
        if !self.batch.is_empty() {
            self.send_batch().await;
        }
    }

    /// TUN packet `i` of the last read: sealed straight into the GSO run when its peer has a
    /// session and a direct path, or into a relay datagram when the path is the relay (the
    /// engine's allocation-free fast path), else queued by the engine.
    async fn on_tun_packet(&mut self, i: usize, queue: Queue, now: Instant) {
        let packet = self.io.tun.packet(i);
        if !self.tx_aqm.admit(aqm::is_bulk_ip(packet), queue, now) {
            return;
        }
        match self.engine.encapsulate(packet, self.batch.tail(), now) {
            Some(Encapsulated::Udp { dst, len }) => self.add_to_run(dst, len).await,
            Some(Encapsulated::Relay { peer, len }) => {
                let datagram = self.relay_arena.datagram(&self.batch.tail()[..len]);
                self.send_relay(peer, datagram);
            }
            None => {}
        }
    }

    /// Adds the `len` bytes sealed at the GSO run's tail for `dst` to the run, sending the run
    /// first when they do not extend it.
    async fn add_to_run(&mut self, dst: SocketAddr, len: usize) {
        if self.batch.push_tail(dst, len, self.data.max_segments()) {
            return;
        }
        if let Err(e) = self.data.send(&self.batch).await {
            self.send_failed(&e);
        }
        self.batch.restart_with_tail(dst, len);
    }

    /// Relay datagrams from the control connection: `first`, which woke the loop, and up to
    /// [`RELAY_BATCH`] more that are already queued. Decrypted packets go to TUN together, so
    /// they coalesce into super-packets like those from the data socket.
    fn on_relay_datagrams(&mut self, first: &[u8]) {
        let now = Instant::now();
        self.on_relay_datagram(first, now);
        if let Some(conn) = self.relay.clone() {
            let mut cx = Context::from_waker(Waker::noop());
            for _ in 1..RELAY_BATCH {
                // Ready at once when a datagram is queued; a closed connection is seen by the
                // next `read_datagram` in the main loop.
                match pin!(conn.read_datagram()).poll(&mut cx) {
                    Poll::Ready(Ok(datagram)) => self.on_relay_datagram(&datagram, now),
                    Poll::Ready(Err(_)) | Poll::Pending => break,
                }
            }
        }
        self.io.tun.write_queued();
    }

    /// One relay datagram; a decrypted packet is queued for TUN.
    fn on_relay_datagram(&mut self, datagram: &[u8], now: Instant) {
        let slot = self.io.tun.slot();
        if let Some(len) = self.engine.handle_relay_datagram(datagram, slot, now) {
            self.io.tun.commit(len);
        }
    }

    /// Re-reads the local addresses; on a change tells the coordinator and the engine.
    fn check_local_addresses(&mut self) {
        let now = self.source.read();
        if now == self.local {
            return;
        }
        tracing::info!(candidates = ?now, "local addresses changed");
        self.local = now;
        let msg = NodeMessage::Candidates {
            local: self.local.clone(),
        };
        if self.io.outbox.try_send(msg).is_err() {
            tracing::debug!("control client busy; candidates go with the next login");
        }
        self.engine.network_changed(Instant::now());
    }

    /// One datagram from the shared socket; a decrypted packet is queued for TUN. A bulk
    /// datagram that CoDel drops (its batch waited too long in the receive queue) is not
    /// decrypted.
    fn on_datagram(&mut self, from: SocketAddr, datagram: &[u8], queue: Queue, now: Instant) {
        match route(datagram) {
            Route::Quic => self.io.quic.forward(from, datagram),
            Route::Data => {
                if !self.rx_aqm.admit(codel::is_bulk(datagram), queue, now) {
                    return;
                }
                let slot = self.io.tun.slot();
                if let Some(len) = self.engine.handle_datagram(from, datagram, slot, now) {
                    self.io.tun.commit(len);
                }
            }
            Route::Drop => {}
        }
    }

    /// Sends what the engine queued (as GSO runs) and passes its events on.
    async fn flush(&mut self) {
        let max = self.data.max_segments();
        while let Some(t) = self.engine.poll_transmit() {
            if !self.batch.push(t.dst, &t.payload, max) {
                self.send_batch().await;
                self.batch.push(t.dst, &t.payload, max);
            }
        }
        if !self.batch.is_empty() {
            self.send_batch().await;
        }
        while let Some(t) = self.engine.poll_relay_transmit() {
            self.send_relay(t.peer, t.datagram.into());
        }
        while let Some(ev) = self.engine.poll_event() {
            match ev {
                Event::PunchRequest(peer) => {
                    if self
                        .io
                        .outbox
                        .try_send(NodeMessage::PunchRequest { peer })
                        .is_err()
                    {
                        tracing::debug!(%peer, "control client busy; punch request dropped");
                    }
                }
                Event::PathChanged { peer, path } => {
                    let name = self.book.name(peer);
                    let reason = self
                        .engine
                        .peer_status(Instant::now())
                        .into_iter()
                        .find(|s| s.node_id == peer)
                        .and_then(|s| s.relay_reason)
                        .map(|r| r.to_string());
                    tracing::debug!(%peer, name, ?path, reason, "path changed");
                    self.paths_dirty = true;
                }
            }
        }
        if self.paths_dirty && self.relay.is_some() {
            // One report per flush however many paths changed: the coordinator shows them.
            let report = path_report(&self.engine.peer_status(Instant::now()));
            if self.io.outbox.try_send(report).is_ok() {
                self.paths_dirty = false;
            }
        }
    }

    /// Sends one relay datagram for `peer` as a QUIC DATAGRAM frame on the control connection.
    /// Like any UDP path the relay is best effort: a datagram that does not fit the
    /// connection's current datagram size (before path MTU discovery has raised it) is dropped
    /// and counted.
    fn send_relay(&mut self, peer: NodeId, datagram: bytes::Bytes) {
        let Some(conn) = &self.relay else {
            return;
        };
        let len = datagram.len();
        match conn.send_datagram(datagram) {
            Ok(()) => {}
            Err(quinn::SendDatagramError::TooLarge) => {
                self.relay_too_large += 1;
                ShellDrops::add(&SHELL_DROPS.relay_too_large, 1);
                tracing::debug!(%peer, len, max = ?conn.max_datagram_size(),
                    dropped = self.relay_too_large, "relay datagram too large; dropped");
            }
            Err(e) => tracing::debug!(%peer, error = %e, "relay send failed"),
        }
    }

    /// Logs the control connection's datagram size when it changed (path MTU discovery).
    /// Also logs, at debug, the control connection's path figures: a relay that is slow or
    /// lossy shows here (congestion window, losses, datagrams each way).
    fn log_relay_size(&mut self) {
        let max = self
            .relay
            .as_ref()
            .and_then(quinn::Connection::max_datagram_size);
        if max != self.relay_max {
            self.relay_max = max;
            tracing::info!(max_datagram_size = ?max, dropped_too_large = self.relay_too_large,
                "relay datagram size");
        }
        let Some(conn) = &self.relay else {
            return;
        };
        let s = conn.stats();
        tracing::debug!(rtt = ?s.path.rtt, cwnd = s.path.cwnd, lost = s.path.lost_packets,
            congestion_events = s.path.congestion_events, mtu = s.path.current_mtu,
            datagrams_sent = s.frame_tx.datagram, datagrams_received = s.frame_rx.datagram,
            "control connection");
    }

    /// Sends and clears the current GSO run.
    async fn send_batch(&mut self) {
        if let Err(e) = self.data.send(&self.batch).await {
            self.send_failed(&e);
        }
        self.batch.clear();
    }

    /// A failed send of the current run: if the local stack refuses its size (EMSGSIZE, e.g. a
    /// "direct" path through another overlay with a smaller MTU), the engine moves that peer to
    /// the relay and holds the path down instead of proving it again with small probes.
    fn send_failed(&mut self, e: &std::io::Error) {
        tracing::debug!(error = %e, "UDP send failed");
        if dataio::is_too_large(e) {
            if let Some(dst) = self.batch.dst() {
                self.engine.send_refused(dst, Instant::now());
            }
        }
    }

    /// A control client event; peer list changes are saved for the next start.
    fn on_control(&mut self, ev: ControlEvent) {
        let now = Instant::now();
        let changed = match ev {
            ControlEvent::Welcome(w) => self.book.on_welcome(&mut self.engine, w, now),
            ControlEvent::Relay(conn) => {
                let max = conn.max_datagram_size();
                tracing::info!(max_datagram_size = ?max, "relay ready");
                self.relay_max = max;
                self.relay = Some(conn);
                self.engine.set_relay_available(max.is_some(), now);
                // A fresh coordinator connection knows nothing of our paths yet.
                self.paths_dirty = true;
                false
            }
            ControlEvent::UdpBlocked(blocked) => {
                self.engine.set_udp_blocked(blocked);
                self.book.set_carrier(if blocked {
                    crate::status::Carrier::Tcp
                } else {
                    crate::status::Carrier::Udp
                });
                false
            }
            ControlEvent::Disconnected => {
                self.book.disconnected();
                self.relay = None;
                self.engine.set_relay_available(false, now);
                false
            }
            ControlEvent::Message(msg) => self.book.on_message(&mut self.engine, msg, now),
        };
        if changed {
            if let Err(e) = state::save_peers(&self.dir, &self.book.records()) {
                tracing::warn!(error = %e, "cannot save the peer cache");
            }
        }
    }
}
