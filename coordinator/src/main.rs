//! `warren-coordinator`: the CLI of Warren's coordinator (DESIGN.md section 3).
//!
//! `serve` runs the coordinator; `invite create` adds an invite to the store of a data directory
//! (it works while `serve` runs, through SQLite's locking) and prints the token.

mod bucket;
mod datadir;
mod http;
mod invite;
mod mesh;
mod quic;
mod registry;
mod relay;
mod serve;
mod session;
mod store;
mod tcp;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
mod tunnel;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use warren_proto::ids::MeshNetwork;
use warren_proto::token::CoordinatorAddr;

use crate::datadir::DataDir;

/// Warren coordinator: registers nodes, introduces them to each other, serves the HTTP API.
#[derive(Parser)]
#[command(name = "warren-coordinator", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator.
    Serve(serve::ServeArgs),
    /// Manage invites.
    Invite {
        #[command(subcommand)]
        command: InviteCommand,
    },
}

#[derive(Subcommand)]
enum InviteCommand {
    /// Create an invite and print its token.
    Create(CreateArgs),
}

/// Arguments of `invite create`.
#[derive(clap::Args)]
struct CreateArgs {
    /// Data directory of the coordinator.
    #[arg(long, env = "WARREN_COORDINATOR_DATA_DIR", default_value = datadir::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// How many nodes may join with this invite.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    uses: u32,
    /// How long the invite stays valid, e.g. 30m, 1h, 7d (default: until used).
    #[arg(long, value_parser = parse_duration)]
    expires: Option<Duration>,
}

/// Parses `--expires` values.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (try 30m, 1h or 7d)"))?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// Parses `--network`.
fn parse_network(s: &str) -> Result<MeshNetwork, String> {
    s.parse()
        .map_err(|e: warren_proto::ids::NetworkError| e.to_string())
}

/// Parses `--public-addr`.
fn parse_public_addr(s: &str) -> Result<CoordinatorAddr, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not HOST:PORT (e.g. 203.0.113.7:7443 or vpn.example.com:7443)")
    })
}

/// Parses a socket address flag.
fn parse_socket(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not IP:PORT (e.g. 0.0.0.0:7443)"))
}

fn invite_create(args: CreateArgs) -> Result<()> {
    if !args.data_dir.join("cert.der").exists() {
        bail!(
            "{} holds no coordinator; run `warren-coordinator serve --data-dir {}` once first",
            args.data_dir.display(),
            args.data_dir.display()
        );
    }
    let dir = DataDir::open_or_init(&args.data_dir)?;
    let identity = dir.identity()?;
    let store = dir.store()?;
    let addr = invite::recorded_public_addr(&store)?;
    let token = invite::create(
        &store,
        addr,
        identity.fingerprint,
        args.uses,
        args.expires,
        invite::unix_now(),
    )
    .context("creating the invite")?;
    println!("{token}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = match warren_cli::parse_or_exit::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Invite {
            command: InviteCommand::Create(args),
        } => invite_create(args),
    };
    warren_cli::finish(result)
}
