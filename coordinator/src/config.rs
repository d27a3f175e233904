//! Settings of `warren-coordinator serve` (edge layer): the flags, the config file
//! (`--config FILE`, TOML, `deploy/coordinator.toml` documents every key) and their merge into
//! one validated [`ServeSettings`]. A flag beats the file; the file beats the built-in default.
//!
//! The flags are `Option`s without clap defaults so that "not given" can be told from "given
//! the default"; the defaults are in the help text and in [`ServeSettings::default`].

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;
use warren_cli::config::{self, from_str_opt, Loaded};
use warren_cli::logging::LogFormat;
use warren_proto::ids::MeshNetwork;
use warren_proto::noise::CipherSuite;
use warren_proto::token::CoordinatorAddr;

use crate::datadir;
use crate::relay;

/// Default UDP (QUIC) and TCP (carrier) address for nodes.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7443";
/// Default address of the HTTP API: loopback, so that exposing it is a decision.
pub const DEFAULT_HTTP: &str = "127.0.0.1:7480";
/// Allowed `relay_rate_mbit`, Mbit/s: at least 1; 100 Gbit/s is beyond any relay host.
pub const MBIT_RANGE: RangeInclusive<i64> = 1..=100_000;
/// Allowed `relay_rate_pps`, packets/s.
pub const PPS_RANGE: RangeInclusive<i64> = 1..=10_000_000;

/// Arguments of `serve` (each one overrides the config file's key of the same name).
#[derive(clap::Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML config file (keys as in deploy/coordinator.toml; flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (certificate, admin token, SQLite store)
    /// [default: /var/lib/warren-coordinator].
    #[arg(long, env = "WARREN_COORDINATOR_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// UDP address for nodes (QUIC); TCP on the same address carries nodes without UDP
    /// [default: 0.0.0.0:7443].
    #[arg(long, value_parser = crate::parse_socket, value_name = "UDP_ADDR")]
    pub listen: Option<SocketAddr>,
    /// TCP address of the HTTP API (loopback by default: put TLS in front to expose it)
    /// [default: 127.0.0.1:7480].
    #[arg(long, value_parser = crate::parse_socket, value_name = "TCP_ADDR")]
    pub http: Option<SocketAddr>,
    /// HOST:PORT that invite tokens carry (default: the listen address, or this host's first
    /// non-loopback IPv4 address with the listen port).
    #[arg(long, value_parser = crate::parse_public_addr, value_name = "HOST:PORT")]
    pub public_addr: Option<CoordinatorAddr>,
    /// The mesh network nodes get addresses from (default 100.80.0.0/16; fixed once nodes exist).
    #[arg(long, value_parser = crate::parse_network, value_name = "CIDR")]
    pub network: Option<MeshNetwork>,
    /// Relay byte rate each node may use, in Mbit/s (bursts of 100 ms worth pass) [default: 200].
    #[arg(long, value_parser = clap::value_parser!(u32).range(MBIT_RANGE))]
    pub relay_rate_mbit: Option<u32>,
    /// Relay packet rate each node may use, in packets/s [default: 50000].
    #[arg(long, value_parser = clap::value_parser!(u32).range(PPS_RANGE))]
    pub relay_rate_pps: Option<u32>,
    /// Cipher of the mesh's sessions: chacha20-poly1305 or aes-256-gcm (faster on CPUs with AES
    /// instructions). Sent to every node at login; sessions switch at their next rekey
    /// [default: chacha20-poly1305].
    #[arg(long)]
    pub cipher: Option<CipherSuite>,
}

/// The config file of `serve`: every key optional (absent means the default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    /// See [`ServeArgs::data_dir`].
    pub data_dir: Option<PathBuf>,
    /// See [`ServeArgs::listen`].
    #[serde(default, deserialize_with = "from_str_opt")]
    pub listen: Option<SocketAddr>,
    /// See [`ServeArgs::http`].
    #[serde(default, deserialize_with = "from_str_opt")]
    pub http: Option<SocketAddr>,
    /// See [`ServeArgs::public_addr`].
    #[serde(default, deserialize_with = "from_str_opt")]
    pub public_addr: Option<CoordinatorAddr>,
    /// See [`ServeArgs::network`].
    #[serde(default, deserialize_with = "from_str_opt")]
    pub network: Option<MeshNetwork>,
    /// See [`ServeArgs::relay_rate_mbit`].
    pub relay_rate_mbit: Option<u32>,
    /// See [`ServeArgs::relay_rate_pps`].
    pub relay_rate_pps: Option<u32>,
    /// See [`ServeArgs::cipher`].
    #[serde(default, deserialize_with = "from_str_opt")]
    pub cipher: Option<CipherSuite>,
    /// Log format, `text` or `json` (the `--log-format` flag).
    pub log_format: Option<LogFormat>,
}

/// What `serve` runs with, every value settled and valid.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeSettings {
    /// Data directory.
    pub data_dir: PathBuf,
    /// UDP (QUIC) and TCP (carrier) address for nodes.
    pub listen: SocketAddr,
    /// HTTP API address.
    pub http: SocketAddr,
    /// Address invite tokens carry; `None`: derived from `listen` at start.
    pub public_addr: Option<CoordinatorAddr>,
    /// Requested mesh network; `None`: the stored one, or the default on first start.
    pub network: Option<MeshNetwork>,
    /// Per-node relay byte rate, Mbit/s.
    pub relay_rate_mbit: u32,
    /// Per-node relay packet rate, packets/s.
    pub relay_rate_pps: u32,
    /// Cipher of the mesh's sessions.
    pub cipher: CipherSuite,
    /// Log format.
    pub log_format: LogFormat,
}

impl Default for ServeSettings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(datadir::DEFAULT_DATA_DIR),
            listen: DEFAULT_LISTEN
                .parse()
                .expect("DEFAULT_LISTEN is an address"),
            http: DEFAULT_HTTP.parse().expect("DEFAULT_HTTP is an address"),
            public_addr: None,
            network: None,
            relay_rate_mbit: relay::DEFAULT_RELAY_MBIT,
            relay_rate_pps: relay::DEFAULT_RELAY_PPS,
            cipher: CipherSuite::default(),
            log_format: LogFormat::default(),
        }
    }
}

/// Reads `path` as a coordinator config file.
pub fn load(path: &Path) -> Result<Loaded<ServeFile>> {
    Ok(config::load(path)?)
}

/// `value` if it is within `range`, else an error naming `key` in `file`.
fn in_range(
    file: &Loaded<ServeFile>,
    key: &str,
    value: Option<u32>,
    range: &RangeInclusive<i64>,
) -> Result<Option<u32>> {
    match value {
        Some(v) if !range.contains(&i64::from(v)) => Err(file
            .invalid(
                key,
                format!("{v} is not in {}..={}", range.start(), range.end()),
            )
            .into()),
        other => Ok(other),
    }
}

impl ServeSettings {
    /// Merges the flags, the config file they name (if any) and the defaults; `log_format` is
    /// the global `--log-format` flag.
    pub fn from_args(args: ServeArgs, log_format: Option<LogFormat>) -> Result<Self> {
        let file = match &args.config {
            Some(path) => load(path)?,
            None => Loaded {
                path: PathBuf::new(),
                values: ServeFile::default(),
            },
        };
        let mbit = in_range(
            &file,
            "relay_rate_mbit",
            file.values.relay_rate_mbit,
            &MBIT_RANGE,
        )?;
        let pps = in_range(
            &file,
            "relay_rate_pps",
            file.values.relay_rate_pps,
            &PPS_RANGE,
        )?;
        let f = file.values;
        let d = Self::default();
        Ok(Self {
            data_dir: args.data_dir.or(f.data_dir).unwrap_or(d.data_dir),
            listen: args.listen.or(f.listen).unwrap_or(d.listen),
            http: args.http.or(f.http).unwrap_or(d.http),
            public_addr: args.public_addr.or(f.public_addr),
            network: args.network.or(f.network),
            relay_rate_mbit: args.relay_rate_mbit.or(mbit).unwrap_or(d.relay_rate_mbit),
            relay_rate_pps: args.relay_rate_pps.or(pps).unwrap_or(d.relay_rate_pps),
            cipher: args.cipher.or(f.cipher).unwrap_or(d.cipher),
            log_format: log_format.or(f.log_format).unwrap_or(d.log_format),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    /// `serve`'s flags alone.
    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn settle(args: &[&str]) -> Result<ServeSettings> {
        let t = T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))?;
        ServeSettings::from_args(t.args, None)
    }

    fn write(name: &str, text: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("warren-coord-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("coordinator.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The example file in deploy/.
    fn example() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/coordinator.toml")
    }

    #[test]
    fn no_flags_no_file_gives_the_defaults() {
        assert_eq!(settle(&[]).unwrap(), ServeSettings::default());
    }

    #[test]
    fn the_example_file_states_the_defaults_and_documents_every_key() {
        let path = example();
        let s = settle(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(s, ServeSettings::default(), "deploy/coordinator.toml");
        // Its commented-out keys are valid too, and it documents every key.
        let text = std::fs::read_to_string(&path).unwrap();
        let all: ServeFile = config::check_example(&text).expect("deploy/coordinator.toml");
        assert!(
            all.public_addr.is_some() && all.network.is_some(),
            "the optional keys are shown with examples"
        );
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let path = write(
            "override",
            "listen = \"127.0.0.1:9000\"\nhttp = \"127.0.0.1:9001\"\nrelay_rate_mbit = 50\n\
             cipher = \"aes-256-gcm\"\nlog_format = \"json\"\n",
        );
        let p = path.to_str().unwrap();
        let s = settle(&["--config", p, "--listen", "127.0.0.1:9100"]).unwrap();
        assert_eq!(s.listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(s.http, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(s.relay_rate_mbit, 50);
        assert_eq!(s.relay_rate_pps, relay::DEFAULT_RELAY_PPS);
        assert_eq!(s.cipher, CipherSuite::AesGcm);
        assert_eq!(s.log_format, LogFormat::Json);
        let t = T::try_parse_from(["t", "--config", p]).unwrap();
        let s = ServeSettings::from_args(t.args, Some(LogFormat::Text)).unwrap();
        assert_eq!(s.log_format, LogFormat::Text);
    }

    #[test]
    fn bad_files_fail_naming_the_file_and_key() {
        for (text, needle) in [
            (
                "listen = \"0.0.0.0:7443\"\nlisten_addr = \"x\"\n",
                "unknown key `listen_addr`",
            ),
            (
                "relay_rate_mbit = 0\n",
                "relay_rate_mbit: 0 is not in 1..=100000",
            ),
            ("relay_rate_pps = 20000000\n", "relay_rate_pps"),
            ("network = \"10.0.0.0/33\"\n", "key `network`"),
            ("cipher = \"rot13\"\n", "key `cipher`"),
            ("log_format = \"xml\"\n", "key `log_format`"),
        ] {
            let path = write("bad", text);
            let e = settle(&["--config", path.to_str().unwrap()]).unwrap_err();
            let line = warren_cli::one_line_error(&e);
            assert!(line.contains(needle), "{text:?}: {line}");
            assert!(line.contains(path.to_str().unwrap()), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
        let e = settle(&["--config", "/nonexistent/c.toml"]).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/c.toml"), "{e}");
    }
}
