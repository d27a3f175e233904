//! `warren-coordinator serve`: opens the data directory and store, settles the mesh network and
//! public address, then runs the QUIC endpoint and the HTTP API until SIGINT/SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use tokio::signal::unix::SignalKind;
use tracing::{info, warn};
use warren_proto::ids::MeshNetwork;
use warren_proto::token::CoordinatorAddr;

use crate::config::ServeSettings;
use crate::datadir::DataDir;
use crate::invite::{self, META_NETWORK, META_PUBLIC_ADDR};
use crate::mesh::Mesh;
use crate::relay::RelayLimits;
use crate::store::Store;

/// Meta key recording when the first-start join command was printed (Unix seconds).
const META_BOOTSTRAPPED: &str = "bootstrapped_at";

/// Runs the coordinator.
pub fn run(settings: ServeSettings) -> Result<()> {
    let dir = DataDir::open_or_init(&settings.data_dir)?;
    let identity = dir.identity()?;
    let admin_token = dir.admin_token()?;
    let store: Arc<dyn Store> = Arc::new(dir.store()?);
    let network = settle_network(store.as_ref(), settings.network)?;

    // One thread: a relayed packet crosses several quinn tasks (endpoint driver, both
    // connections, the relay loop); on a multi-thread runtime each hop was a cross-thread wake-up,
    // and thread switching took three quarters of the relay's CPU samples. On the 2-core lab the
    // single-threaded relay costs 2.05 CPU s/GB instead of 2.5-2.7 (bench sym+sym, H3's run).
    // Store calls still go to tokio's blocking pool.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        // Handlers first: a SIGTERM at any point from here (e.g. right after READY=1) shuts
        // down cleanly instead of killing the process.
        let stop =
            warren_cli::shutdown::on_signals(&[SignalKind::interrupt(), SignalKind::terminate()])
                .context("installing the SIGINT/SIGTERM handlers")?;
        let (endpoint, tunnels) = crate::quic::endpoint_with_tunnels(&identity, settings.listen)?;
        let http = tokio::net::TcpListener::bind(settings.http)
            .await
            .with_context(|| format!("binding HTTP {}", settings.http))?;
        // The bound addresses, so that port 0 ("any free port") is reported as the real port.
        let listen = endpoint.local_addr().context("reading the QUIC address")?;
        // The TCP carrier for nodes without UDP: same address and port number (README, "TCP").
        let tcp = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding TCP {listen} (the carrier for nodes without UDP)"))?;
        let tcp_tls = Arc::new(crate::quic::tls_config(&identity, crate::tcp::ALPN_TCP)?);
        let http_addr = http.local_addr().context("reading the HTTP address")?;
        let public_addr = match settings.public_addr {
            Some(a) => a,
            None => guess_public_addr(listen)?,
        };
        store.set_meta(META_PUBLIC_ADDR, &public_addr.to_string())?;
        let mesh = Arc::new(
            Mesh::new(
                store.clone(),
                network,
                public_addr.clone(),
                identity.fingerprint,
                admin_token,
            )
            .with_relay_limits(RelayLimits::new(
                settings.relay_rate_mbit,
                settings.relay_rate_pps,
            ))
            .with_cipher(settings.cipher),
        );
        info!(quic = %listen, http = %http_addr, public = %public_addr, %network,
              relay_mbit = settings.relay_rate_mbit, relay_pps = settings.relay_rate_pps,
              cipher = %settings.cipher,
              "coordinator listening");
        // Printed once per data directory, after the first start that got this far (a first start
        // that failed to bind does not use it up).
        if store.meta(META_BOOTSTRAPPED)?.is_none() {
            let token = invite::create(
                store.as_ref(),
                public_addr.clone(),
                identity.fingerprint,
                1,
                None,
                invite::unix_now(),
            )?;
            println!("Warren coordinator initialised in {}.", dir.path.display());
            println!("Admin API token: {}/admin.token", dir.path.display());
            println!("Join a first node with:\n\n    warren join {token}\n");
            println!(
                "More invites: warren-coordinator invite create --data-dir {}",
                dir.path.display()
            );
            store.set_meta(META_BOOTSTRAPPED, &invite::unix_now().to_string())?;
        }
        let accept = tokio::spawn(crate::quic::accept_loop(endpoint.clone(), mesh.clone()));
        let accept_tcp = tokio::spawn(crate::tcp::accept_loop(tcp, tcp_tls, tunnels));
        // With each connection's peer address, which the API's per-client rate limit keys on.
        let app = crate::http::service(crate::http::app(mesh));
        let api = axum::serve(http, app).with_graceful_shutdown(async {
            stop.await;
        });
        // Every socket is bound and the store is open: a `Type=notify` unit counts as started.
        warren_cli::systemd::notify("READY=1");
        api.await.context("HTTP server failed")?;
        info!("shutting down");
        warren_cli::systemd::notify("STOPPING=1");
        endpoint.close(0u32.into(), b"coordinator shutting down");
        accept.abort();
        accept_tcp.abort();
        endpoint.wait_idle().await;
        Ok(())
    })
}

/// Uses the stored network, or records the requested (or default) one on first start.
fn settle_network(store: &dyn Store, requested: Option<MeshNetwork>) -> Result<MeshNetwork> {
    let stored = store.meta(META_NETWORK)?;
    match stored {
        Some(s) => {
            let stored: MeshNetwork = s
                .parse()
                .with_context(|| format!("stored network {s:?} is invalid"))?;
            if let Some(r) = requested {
                if r != stored {
                    if !store.nodes()?.is_empty() {
                        bail!("this mesh already uses network {stored}; --network {r} cannot change it while nodes are registered");
                    }
                    store.set_meta(META_NETWORK, &r.to_string())?;
                    return Ok(r);
                }
            }
            Ok(stored)
        }
        None => {
            let n = requested.unwrap_or_default();
            store.set_meta(META_NETWORK, &n.to_string())?;
            Ok(n)
        }
    }
}

/// The listen address if it is specific, else the first non-loopback IPv4 interface address.
fn guess_public_addr(listen: SocketAddr) -> Result<CoordinatorAddr> {
    if !listen.ip().is_unspecified() {
        return Ok(CoordinatorAddr::Ip(listen.ip(), listen.port()));
    }
    let ip = first_ipv4()
        .context("cannot tell this host's public address; pass --public-addr HOST:PORT")?;
    warn!(%ip, "no --public-addr given; invite tokens will carry {ip}:{} (pass --public-addr if nodes reach this host under another address)", listen.port());
    Ok(CoordinatorAddr::Ip(ip, listen.port()))
}

/// First non-loopback IPv4 address of this host's interfaces.
fn first_ipv4() -> Option<IpAddr> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `ifap` with a list we free with freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr is non-null and points at a sockaddr of family sa_family.
            let family = unsafe { (*ifa.ifa_addr).sa_family };
            if i32::from(family) == libc::AF_INET {
                // SAFETY: AF_INET addresses are sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && !ip.is_unspecified() {
                    found = Some(IpAddr::V4(ip));
                    break;
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: frees the list from getifaddrs exactly once.
    unsafe { libc::freeifaddrs(ifap) };
    found
}
