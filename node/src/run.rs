//! The three commands (IO shell layer): `join` (redeem an invite, save state only after the
//! Welcome, then run the daemon), `up` (run the daemon from saved state) and `status`.
//!
//! Startup order matters for the "no half-written state" promise: the token is parsed and the
//! state directory checked first, the TUN interface is created (privilege check) and the socket
//! bound before the coordinator is contacted, and the state directory appears only after the
//! coordinator's Welcome.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tun_rs::AsyncDevice;
use warren_cli::logging::LogFormat;
use warren_proto::ids::PrivateKey;
use warren_proto::token::InviteToken;

use crate::config::{self, JoinArgs, JoinSettings, UpSettings};
use crate::control::{self, CandidateSource, Coordinator, Credential, Session};
use crate::daemon::{Daemon, Exit, Io};
use crate::error::NodeError;
use crate::socket::{self, QuicInbox};
use crate::state::{self, Pending, SavedState};
use crate::status;
use crate::tun;
use crate::tunio::TunIo;
use crate::{Cli, Command};

/// Queue depth of the control client → daemon channel.
const CONTROL_QUEUE: usize = 256;
/// How long shutdown waits for the control connection to close politely.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Runs the parsed command.
pub fn main(cli: Cli) -> anyhow::Result<()> {
    let log_format = cli.log_format;
    match cli.command {
        Command::Status {
            state_dir,
            config,
            json,
        } => status_cmd(&config::state_dir(state_dir, config.as_deref())?, json),
        Command::Join {
            token,
            daemon,
            join: join_args,
        } => {
            let token: InviteToken = token
                .trim()
                .parse()
                .map_err(|e| anyhow::anyhow!("invalid invite token: {e}"))?;
            let settings = JoinSettings::from_args(daemon, join_args, log_format)?;
            state::ensure_free(&settings.daemon.state_dir)?;
            runtime(settings.daemon.log_format)?.block_on(join(token, settings))
        }
        Command::Up { daemon } => {
            let settings = UpSettings::from_args(daemon, log_format)?;
            runtime(settings.daemon.log_format)?.block_on(up(settings))
        }
    }
}

/// The tokio runtime; logging is set up here because only the daemon commands log.
fn runtime(log_format: LogFormat) -> anyhow::Result<tokio::runtime::Runtime> {
    warren_cli::logging::init(log_format);
    // One thread: the data path is one task (the daemon) and quinn's drivers; on a multi-thread
    // runtime every relayed datagram and control wake-up crossed threads. Bench (2 cores, H3's
    // run): relayed one stream 1.48 -> 2.04 Gbit/s, node CPU 5.9-6.2 -> 4.0 s/GB relayed and
    // 2.99 -> 2.33 s/GB direct.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Binds the metrics listener if one is asked for (before anything is written or contacted, so
/// that a taken address fails the command cleanly).
async fn bind_metrics(addr: Option<SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
    match addr {
        None => Ok(None),
        Some(addr) => TcpListener::bind(addr)
            .await
            .map(Some)
            .with_context(|| format!("binding the metrics listener {addr}")),
    }
}

/// Warns when the config file's join-time keys disagree with what `join` saved (`up` runs with
/// the saved values).
fn warn_join_keys_differ(file: &JoinArgs, saved: &SavedState) {
    if let Some(name) = file.name.as_deref().filter(|n| *n != saved.name) {
        tracing::warn!(config = %name, saved = %saved.name,
            "config key name differs from the registered name; using the registered one (rename the node through the HTTP API)");
    }
    if let Some(tun) = file.tun.as_deref().filter(|t| *t != saved.tun) {
        tracing::warn!(config = %tun, saved = %saved.tun,
            "config key tun differs from the one saved at join; using the saved one");
    }
    // 0 means "any port": whatever join got is consistent with it.
    if let Some(port) = file.port.filter(|p| *p != 0 && *p != saved.port) {
        tracing::warn!(
            config = port,
            saved = saved.port,
            "config key port differs from the one saved at join; using the saved one"
        );
    }
}

/// The host name, or `node` if it cannot be read.
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for writes of its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    // A fully qualified host name is shortened to its first label ("laptop.example.com" is
    // "laptop" in the mesh).
    match std::str::from_utf8(&buf[..end]).map(|s| s.split('.').next().unwrap_or_default()) {
        Ok(s) if rc == 0 && !s.is_empty() => s.to_string(),
        _ => "node".to_string(),
    }
}

/// `warren status`.
fn status_cmd(dir: &Path, json: bool) -> anyhow::Result<()> {
    let report = status::query(dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", status::render(&report));
    }
    Ok(())
}

/// Binds the shared socket on all IPv4 addresses.
fn bind_socket(port: u16) -> anyhow::Result<Arc<UdpSocket>> {
    socket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
}

/// Resolves when the daemon is asked to stop.
type Stop = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Installs the SIGINT, SIGTERM and SIGHUP (terminal closed) handlers now, for the whole life of
/// the command; the future resolves when one arrives.
fn shutdown_signal() -> anyhow::Result<Stop> {
    use tokio::signal::unix::SignalKind;
    let stop = warren_cli::shutdown::on_signals(&[
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ])
    .context("installing the signal handlers")?;
    Ok(Box::pin(async {
        stop.await;
    }))
}

/// `warren join`.
async fn join(token: InviteToken, settings: JoinSettings) -> anyhow::Result<()> {
    let JoinSettings {
        daemon,
        name,
        tun: tun_name,
        port,
    } = settings;
    // Handlers first, for the whole command: Ctrl-C while joining still cleans up `pending`.
    let mut stop = shutdown_signal()?;
    let name = name.unwrap_or_else(hostname);
    let dev = tun::create(&tun_name)?;
    let udp = bind_socket(port)?;
    let port = udp.local_addr().context("reading the UDP port")?.port();
    let metrics = bind_metrics(daemon.metrics_listen).await?;
    let pending = Pending::create(&daemon.state_dir)?;
    let (endpoint, inbox) = socket::quic_endpoint(udp.clone())?;
    let pump = tokio::spawn(socket::pump_quic_only(udp.clone(), inbox.clone()));
    let coord = Coordinator {
        addrs: token.addrs.clone(),
        fingerprint: token.fingerprint,
        timeout: control::CONNECT_TIMEOUT,
        inbox: inbox.clone(),
    };
    let cred = Credential::Join {
        secret: token.secret,
        name,
    };
    // Until the Welcome nothing is logged above debug: a failed join prints exactly one line.
    tracing::debug!(coordinator = %coord.addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "), "joining");
    // Ctrl-C while waiting must still run `pending`'s cleanup, so it is awaited here.
    let session = tokio::select! {
        res = control::connect(&endpoint, &coord, pending.key(), &cred) => res?,
        () = &mut stop => anyhow::bail!("interrupted before the coordinator answered"),
    };
    let w = &session.welcome;
    let saved = SavedState {
        node_id: w.node.node_id,
        name: w.node.name.clone(),
        mesh_ip: w.node.mesh_ip,
        network: w.network,
        coordinator_addrs: token.addrs.iter().map(ToString::to_string).collect(),
        fingerprint: hex::encode(token.fingerprint),
        port,
        tun: tun_name,
    };
    let key = pending.key().clone();
    let dir = pending.commit(&saved)?;
    tracing::info!(node = %saved.node_id, name = %saved.name, ip = %saved.mesh_ip,
        state_dir = %dir.display(), "joined the mesh");
    pump.abort();
    let _ = pump.await;
    run_daemon(
        &dir,
        key,
        saved,
        udp,
        dev,
        endpoint,
        inbox,
        coord,
        Some(session),
        metrics,
        stop,
    )
    .await
}

/// `warren up`.
async fn up(settings: UpSettings) -> anyhow::Result<()> {
    let stop = shutdown_signal()?;
    let dir = settings.daemon.state_dir;
    let (key, saved) = state::load(&dir)?;
    // Refuse early if a daemon already serves this directory (before touching TUN or the port).
    drop(status::bind(&dir)?);
    warn_join_keys_differ(&settings.file_join_keys, &saved);
    let addrs = saved.coordinator_addrs()?;
    let fingerprint = saved.fingerprint_bytes()?;
    let dev = tun::create(&saved.tun)?;
    let udp = bind_socket(saved.port)?;
    let metrics = bind_metrics(settings.daemon.metrics_listen).await?;
    let (endpoint, inbox) = socket::quic_endpoint(udp.clone())?;
    let coord = Coordinator {
        addrs,
        fingerprint,
        timeout: control::CONNECT_TIMEOUT,
        inbox: inbox.clone(),
    };
    run_daemon(
        &dir, key, saved, udp, dev, endpoint, inbox, coord, None, metrics, stop,
    )
    .await
}

/// Configures TUN, starts the status server and the control client, and runs the engine loop
/// until shutdown. Fatal control errors (e.g. the node was removed) are returned.
#[allow(clippy::too_many_arguments)]
async fn run_daemon(
    dir: &Path,
    key: PrivateKey,
    saved: SavedState,
    udp: Arc<UdpSocket>,
    dev: AsyncDevice,
    endpoint: quinn::Endpoint,
    quic: QuicInbox,
    coord: Coordinator,
    first: Option<Session>,
    metrics: Option<TcpListener>,
    stop: Stop,
) -> anyhow::Result<()> {
    tun::configure(&dev, saved.mesh_ip, saved.network)?;
    let (listener, sock_path) = status::bind(dir)?;
    let (status_tx, status_rx) = mpsc::channel(16);
    // The metrics server asks the daemon for numbers the same way `warren status` does.
    let metrics_task = metrics.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving metrics on http://{addr}/metrics");
        }
        tokio::spawn(crate::metrics::serve(listener, status_tx.clone()))
    });
    let status_task = tokio::spawn(status::serve(listener, status_tx));
    let (events_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let (outbox, outbox_rx) = mpsc::channel(CONTROL_QUEUE);
    let source = CandidateSource {
        tun: saved.tun.clone(),
        network: saved.network,
        port: saved.port,
    };
    let control_task = tokio::spawn(control::supervise(
        endpoint.clone(),
        coord,
        key.clone(),
        first,
        source.clone(),
        events_tx,
        outbox_rx,
    ));
    let io = Io {
        udp,
        tun: TunIo::new(dev),
        quic,
        control_rx,
        outbox,
        status_rx,
    };
    let daemon = Daemon::new(dir, &saved, key, io, source).context("setting up the data socket")?;
    tracing::info!(ip = %saved.mesh_ip, network = %saved.network, tun = %saved.tun,
        port = saved.port, name = %saved.name, "ready");
    warren_cli::systemd::notify("READY=1");
    let exit = daemon.run(stop).await;
    tracing::info!(reason = ?exit, "shutting down");
    warren_cli::systemd::notify("STOPPING=1");
    // The daemon (and with it the control client's outbox) is dropped: the client closes the
    // connection and returns.
    let control_result = match tokio::time::timeout(CLOSE_GRACE, control_task).await {
        Ok(Ok(res)) => res,
        Ok(Err(e)) => Err(NodeError::Protocol(format!("control task failed: {e}"))),
        Err(_) => Ok(()),
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, endpoint.wait_idle()).await;
    status_task.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    let _ = std::fs::remove_file(&sock_path);
    match (exit, control_result) {
        (Exit::TunFailed(e), _) => Err(anyhow::anyhow!(
            "the TUN interface {} failed: {e}",
            saved.tun
        )),
        (_, Err(e)) => Err(e.into()),
        (Exit::ControlStopped, Ok(())) => {
            Err(NodeError::Protocol("control client stopped".into()).into())
        }
        (Exit::Shutdown, Ok(())) => Ok(()),
    }
}
