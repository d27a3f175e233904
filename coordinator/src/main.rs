//! `warren-coordinator`: the CLI of Warren's coordinator (DESIGN.md section 3).
//!
//! `serve` runs the coordinator; `invite create` adds an invite to the store of a data directory
//! (it works while `serve` runs, through SQLite's locking) and prints the token.

mod bucket;
mod config;
mod datadir;
mod http;
mod invite;
mod mesh;
mod metrics;
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
use warren_cli::logging::LogFormat;
use warren_proto::ids::{MeshIp, MeshNetwork};
use warren_proto::token::CoordinatorAddr;

use crate::datadir::DataDir;
use crate::store::NodeName;

/// Warren coordinator: registers nodes, introduces them to each other, serves the HTTP API.
#[derive(Parser)]
#[command(name = "warren-coordinator", version)]
struct Cli {
    /// Log format on stderr: text or json (also env WARREN_LOG_FORMAT, config key log_format)
    /// [default: text].
    #[arg(long, global = true, env = warren_cli::logging::LOG_FORMAT_ENV, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator.
    Serve(config::ServeArgs),
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
    /// Config file of `serve` (only its data_dir is used here).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory of the coordinator [default: /var/lib/warren-coordinator].
    #[arg(long, env = "WARREN_COORDINATOR_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// How many nodes may join with this invite.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    uses: u32,
    /// How long the invite stays valid, e.g. 30m, 1h, 7d (default: until used).
    #[arg(long, value_parser = parse_duration)]
    expires: Option<Duration>,
    /// Fixed name for the node that redeems this invite (one-use invites only).
    #[arg(long, value_name = "NAME", value_parser = parse_node_name)]
    name: Option<NodeName>,
    /// Fixed mesh address for the node that redeems this invite (one-use invites only).
    #[arg(long, value_name = "ADDR", value_parser = parse_mesh_ip)]
    ip: Option<MeshIp>,
}

/// Parses `invite create --name`.
fn parse_node_name(s: &str) -> Result<NodeName, String> {
    NodeName::parse(s).map_err(|e| e.to_string())
}

/// Parses `invite create --ip`.
fn parse_mesh_ip(s: &str) -> Result<MeshIp, String> {
    s.parse()
        .map(MeshIp)
        .map_err(|_| format!("{s:?} is not an IPv4 address (e.g. 100.80.0.10)"))
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
    let from_file = match &args.config {
        Some(path) => config::load(path)?.values.data_dir,
        None => None,
    };
    let data_dir = args
        .data_dir
        .or(from_file)
        .unwrap_or_else(|| PathBuf::from(datadir::DEFAULT_DATA_DIR));
    if !data_dir.join("cert.der").exists() {
        bail!(
            "{} holds no coordinator; run `warren-coordinator serve --data-dir {}` once first",
            data_dir.display(),
            data_dir.display()
        );
    }
    let dir = DataDir::open_or_init(&data_dir)?;
    let identity = dir.identity()?;
    let store = dir.store()?;
    let addr = invite::recorded_public_addr(&store)?;
    let network = invite::recorded_network(&store)?;
    let options = invite::InviteOptions {
        uses: args.uses,
        expires: args.expires,
        name: args.name,
        ip: args.ip,
    };
    let (_, token) = invite::create_with(
        &store,
        addr,
        identity.fingerprint,
        network,
        &options,
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
    let result = match cli.command {
        Command::Serve(args) => {
            config::ServeSettings::from_args(args, cli.log_format).and_then(|settings| {
                warren_cli::logging::init(settings.log_format);
                serve::run(settings)
            })
        }
        Command::Invite {
            command: InviteCommand::Create(args),
        } => {
            warren_cli::logging::init(cli.log_format.unwrap_or_default());
            invite_create(args)
        }
    };
    warren_cli::finish(result)
}
