//! Settings of the node's daemon commands, `warren join` and `warren up` (edge layer): their
//! flags, the config file (`--config FILE`, TOML, `deploy/node.toml` documents every key) and
//! the merge into validated settings. A flag beats the file; the file beats the default.
//!
//! `name`, `tun` and `port` are join-time keys: `join` saves them in the state directory and
//! `up` runs with the saved ones (the coordinator knows the node by its registered name), so
//! [`UpSettings`] only keeps what the file says about them to warn when it disagrees.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;
use warren_cli::config::{self, from_str_opt, Loaded};
use warren_cli::logging::LogFormat;

use crate::state::DEFAULT_STATE_DIR;

/// Default TUN interface name.
pub const DEFAULT_TUN: &str = "warren0";
/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// Flags of both `join` and `up` (each overrides the config key of the same name).
#[derive(clap::Args, Debug, Default, Clone)]
pub struct DaemonArgs {
    /// TOML config file (keys as in deploy/node.toml; flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory (key, assigned address, coordinator) [default: /var/lib/warren].
    #[arg(long, env = "WARREN_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics, e.g. 127.0.0.1:9480 (config key
    /// metrics_listen) [default: off].
    #[arg(long = "metrics", value_name = "ADDR", value_parser = parse_socket)]
    pub metrics_listen: Option<SocketAddr>,
}

/// Flags only `join` has.
#[derive(clap::Args, Debug, Default, Clone, PartialEq)]
pub struct JoinArgs {
    /// Node name in the mesh [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Name of the TUN interface [default: warren0].
    #[arg(long, value_parser = parse_ifname, value_name = "IFNAME")]
    pub tun: Option<String>,
    /// UDP port of the data socket (0: the OS picks one; it is saved for `up`) [default: 0].
    #[arg(long, value_name = "UDP_PORT")]
    pub port: Option<u16>,
}

/// The node's config file: every key optional (absent means the default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// See [`DaemonArgs::state_dir`].
    pub state_dir: Option<PathBuf>,
    /// See [`JoinArgs::name`].
    pub name: Option<String>,
    /// See [`JoinArgs::tun`].
    pub tun: Option<String>,
    /// See [`JoinArgs::port`].
    pub port: Option<u16>,
    /// Log format, `text` or `json` (the `--log-format` flag).
    pub log_format: Option<LogFormat>,
    /// See [`DaemonArgs::metrics_listen`].
    #[serde(default, deserialize_with = "from_str_opt")]
    pub metrics_listen: Option<SocketAddr>,
}

/// What both daemon commands run with.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSettings {
    /// State directory.
    pub state_dir: PathBuf,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
}

/// What `join` runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinSettings {
    /// Shared settings.
    pub daemon: DaemonSettings,
    /// Node name (trimmed, not empty); `None`: the host name.
    pub name: Option<String>,
    /// TUN interface name (valid for Linux).
    pub tun: String,
    /// UDP port of the data socket; 0: the OS picks.
    pub port: u16,
}

/// What `up` runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct UpSettings {
    /// Shared settings.
    pub daemon: DaemonSettings,
    /// The join-time keys the config file sets (`up` uses the saved values; these are only
    /// compared with them).
    pub file_join_keys: JoinArgs,
}

/// Reads `path` as a node config file, or an empty one without a path.
fn load(path: Option<&Path>) -> Result<Loaded<NodeFile>> {
    Ok(match path {
        Some(p) => config::load(p)?,
        None => Loaded {
            path: PathBuf::new(),
            values: NodeFile::default(),
        },
    })
}

/// The state directory from a flag, else from the config file, else the default (what
/// `warren status --config` needs).
pub fn state_dir(flag: Option<PathBuf>, config: Option<&Path>) -> Result<PathBuf> {
    let file = load(config)?;
    Ok(flag
        .or(file.values.state_dir)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)))
}

impl DaemonSettings {
    /// Merges the shared flags with `file`.
    fn merge(args: DaemonArgs, file: &NodeFile, log_format: Option<LogFormat>) -> Self {
        Self {
            state_dir: args
                .state_dir
                .or_else(|| file.state_dir.clone())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            log_format: log_format.or(file.log_format).unwrap_or_default(),
        }
    }
}

/// Checks the file's `name` and `tun` the way the flags are checked.
fn file_join_keys(file: &Loaded<NodeFile>) -> Result<JoinArgs> {
    let name = match file.values.name.as_deref().map(str::trim) {
        Some("") => return Err(file.invalid("name", "must not be empty").into()),
        other => other.map(str::to_string),
    };
    let tun = match &file.values.tun {
        Some(t) => Some(parse_ifname(t).map_err(|e| file.invalid("tun", e))?),
        None => None,
    };
    Ok(JoinArgs {
        name,
        tun,
        port: file.values.port,
    })
}

impl JoinSettings {
    /// Merges `join`'s flags, its config file and the defaults.
    pub fn from_args(
        daemon: DaemonArgs,
        join: JoinArgs,
        log_format: Option<LogFormat>,
    ) -> Result<Self> {
        let file = load(daemon.config.as_deref())?;
        let from_file = file_join_keys(&file)?;
        let name = match join.name.as_deref().map(str::trim) {
            Some("") => anyhow::bail!("--name must not be empty"),
            Some(n) => Some(n.to_string()),
            None => from_file.name,
        };
        Ok(Self {
            daemon: DaemonSettings::merge(daemon, &file.values, log_format),
            name,
            tun: join
                .tun
                .or(from_file.tun)
                .unwrap_or_else(|| DEFAULT_TUN.to_string()),
            port: join.port.or(from_file.port).unwrap_or(0),
        })
    }
}

impl UpSettings {
    /// Merges `up`'s flags, its config file and the defaults.
    pub fn from_args(daemon: DaemonArgs, log_format: Option<LogFormat>) -> Result<Self> {
        let file = load(daemon.config.as_deref())?;
        let file_join_keys = file_join_keys(&file)?;
        Ok(Self {
            daemon: DaemonSettings::merge(daemon, &file.values, log_format),
            file_join_keys,
        })
    }
}

/// Validates a TUN interface name.
pub fn parse_ifname(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > IFNAME_MAX {
        return Err(format!("must be 1 to {IFNAME_MAX} bytes long"));
    }
    if s.chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err("must not contain '/', ':' or whitespace".into());
    }
    Ok(s.to_string())
}

/// Parses a socket address flag.
fn parse_socket(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not IP:PORT (e.g. 127.0.0.1:9480)"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{parse_args, Command};

    fn write(name: &str, text: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("warren-node-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Parses a `warren join` command line and settles it.
    fn join(args: &[&str]) -> Result<JoinSettings> {
        let argv = ["warren", "join", "TOKEN"].iter().chain(args).copied();
        let cli = parse_args(argv).map_err(|(text, _)| anyhow::anyhow!(text))?;
        match cli.command {
            Command::Join { daemon, join, .. } => {
                JoinSettings::from_args(daemon, join, cli.log_format)
            }
            other => panic!("not join: {other:?}"),
        }
    }

    /// Parses a `warren up` command line and settles it.
    fn up(args: &[&str]) -> Result<UpSettings> {
        let argv = ["warren", "up"].iter().chain(args).copied();
        let cli = parse_args(argv).map_err(|(text, _)| anyhow::anyhow!(text))?;
        match cli.command {
            Command::Up { daemon } => UpSettings::from_args(daemon, cli.log_format),
            other => panic!("not up: {other:?}"),
        }
    }

    fn example() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/node.toml")
    }

    fn defaults() -> JoinSettings {
        JoinSettings {
            daemon: DaemonSettings {
                state_dir: PathBuf::from(DEFAULT_STATE_DIR),
                metrics_listen: None,
                log_format: LogFormat::Text,
            },
            name: None,
            tun: DEFAULT_TUN.into(),
            port: 0,
        }
    }

    #[test]
    fn no_flags_no_file_gives_the_defaults() {
        assert_eq!(join(&[]).unwrap(), defaults());
        assert_eq!(up(&[]).unwrap().daemon, defaults().daemon);
    }

    #[test]
    fn the_example_file_states_the_defaults_and_documents_every_key() {
        let path = example();
        let p = path.to_str().unwrap();
        assert_eq!(
            join(&["--config", p]).unwrap(),
            defaults(),
            "deploy/node.toml"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let all: NodeFile = config::check_example(&text).expect("deploy/node.toml");
        assert!(
            all.name.is_some() && all.metrics_listen.is_some(),
            "the optional keys are shown with examples"
        );
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let path = write(
            "override",
            "state_dir = \"/srv/warren\"\nname = \"web1\"\ntun = \"wrn7\"\nport = 51820\n\
             log_format = \"json\"\nmetrics_listen = \"127.0.0.1:9480\"\n",
        );
        let p = path.to_str().unwrap();
        let s = join(&["--config", p, "--port", "5000", "--metrics", "127.0.0.1:1"]).unwrap();
        assert_eq!(s.port, 5000);
        assert_eq!(
            s.daemon.metrics_listen,
            Some("127.0.0.1:1".parse().unwrap())
        );
        assert_eq!(s.tun, "wrn7");
        assert_eq!(s.name.as_deref(), Some("web1"));
        assert_eq!(s.daemon.state_dir, PathBuf::from("/srv/warren"));
        assert_eq!(s.daemon.log_format, LogFormat::Json);
        let s = join(&["--config", p, "--log-format", "text", "--state-dir", "/x"]).unwrap();
        assert_eq!(s.daemon.log_format, LogFormat::Text);
        assert_eq!(s.daemon.state_dir, PathBuf::from("/x"));
        let u = up(&["--config", p]).unwrap();
        assert_eq!(u.daemon.state_dir, PathBuf::from("/srv/warren"));
        assert_eq!(u.file_join_keys.port, Some(51820));
        assert_eq!(
            state_dir(None, Some(&path)).unwrap(),
            PathBuf::from("/srv/warren")
        );
        assert_eq!(
            state_dir(Some("/y".into()), Some(&path)).unwrap(),
            PathBuf::from("/y")
        );
    }

    #[test]
    fn bad_files_fail_naming_the_file_and_key() {
        for (text, needle) in [
            ("state-dir = \"/x\"\n", "unknown key `state-dir`"),
            ("metrics = \"127.0.0.1:1\"\n", "unknown key `metrics`"),
            (
                "tun = \"far-too-long-interface-name\"\n",
                "tun: must be 1 to 15 bytes",
            ),
            ("name = \"  \"\n", "name: must not be empty"),
            ("port = 70000\n", "key `port`"),
            ("metrics_listen = \"localhost\"\n", "key `metrics_listen`"),
        ] {
            let path = write("bad", text);
            let p = path.to_str().unwrap();
            for e in [
                join(&["--config", p]).unwrap_err(),
                up(&["--config", p]).unwrap_err(),
            ] {
                let line = warren_cli::one_line_error(&e);
                assert!(line.contains(needle), "{text:?}: {line}");
                assert!(line.contains(p), "{line}");
                assert!(!line.contains('\n'), "{line}");
            }
        }
        let e = join(&["--name", " "]).unwrap_err();
        assert_eq!(e.to_string(), "--name must not be empty");
    }
}
