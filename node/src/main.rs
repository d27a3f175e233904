//! `warren`: the Warren node (IO shell around `warren_proto`'s sans-IO engine).
//!
//! ```text
//! warren join TOKEN [--state-dir DIR] [--name NAME] [--tun IFNAME] [--port UDP_PORT]
//!                   [--config FILE] [--metrics ADDR]
//! warren up [--state-dir DIR] [--config FILE] [--metrics ADDR]
//! warren status [--state-dir DIR] [--config FILE] [--json]
//! ```
//!
//! `--log-format text|json` goes with any command.
//!
//! This file is the CLI: argument parsing and the one-line `error: ...` + exit status 1 that every
//! failure ends in (never a panic). The commands themselves are in `run`.

mod aqm;
mod book;
mod candidates;
mod config;
mod control;
mod daemon;
mod dataio;
mod error;
mod metrics;
mod run;
mod socket;
mod state;
mod status;
mod tls;
mod tun;
mod tunio;
mod tunnel;

#[cfg(test)]
mod testutil;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use warren_cli::logging::LogFormat;

use crate::config::{DaemonArgs, JoinArgs};

/// Command-line interface.
#[derive(Debug, Parser)]
#[command(name = "warren", version, about = "Warren mesh VPN node")]
pub struct Cli {
    /// Log format on stderr: text or json (also env WARREN_LOG_FORMAT, config key log_format)
    /// [default: text].
    #[arg(long, global = true, env = warren_cli::logging::LOG_FORMAT_ENV, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join a mesh with an invite token and run the node in the foreground.
    Join {
        /// Invite token from `warren-coordinator invite create`.
        #[arg(value_name = "TOKEN")]
        token: String,
        /// Flags shared with `up`.
        #[command(flatten)]
        daemon: DaemonArgs,
        /// Join-time flags (saved in the state directory for `up`).
        #[command(flatten)]
        join: JoinArgs,
    },
    /// Run the node from its saved state.
    Up {
        /// Flags shared with `join`.
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Show this node and its peers (asks the running daemon).
    Status {
        /// State directory [default: /var/lib/warren].
        #[arg(long, env = "WARREN_STATE_DIR", value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Config file of the daemon (only its state_dir is used here).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Parses arguments; `Err` carries what to print and the exit status (see `warren_cli`).
#[cfg(test)]
fn parse_args<I, T>(args: I) -> Result<Cli, (String, u8)>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    warren_cli::parse_args(args)
}

fn main() -> ExitCode {
    match warren_cli::parse_or_exit::<Cli>() {
        Ok(cli) => warren_cli::finish(run::main(cli)),
        Err(code) => code,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn err_of(args: &[&str]) -> (String, u8) {
        parse_args(args.iter().copied()).unwrap_err()
    }

    #[test]
    fn parses_the_documented_commands() {
        let cli = parse_args([
            "warren",
            "join",
            "warren1-abc",
            "--state-dir",
            "/tmp/x",
            "--name",
            "n1",
            "--tun",
            "wg9",
            "--port",
            "5000",
        ])
        .unwrap();
        match cli.command {
            Command::Join {
                token,
                daemon,
                join,
            } => {
                assert_eq!(token, "warren1-abc");
                assert_eq!(daemon.state_dir, Some(PathBuf::from("/tmp/x")));
                assert_eq!(join.name.as_deref(), Some("n1"));
                assert_eq!(join.tun.as_deref(), Some("wg9"));
                assert_eq!(join.port, Some(5000));
            }
            other => panic!("unexpected {other:?}"),
        }
        let cli = parse_args(["warren", "status", "--json", "--state-dir", "/s"]).unwrap();
        assert!(matches!(cli.command, Command::Status { json: true, .. }));
        assert!(matches!(
            parse_args(["warren", "up"]).unwrap().command,
            Command::Up { .. }
        ));
    }

    #[test]
    fn bad_input_is_one_line_with_status_one() {
        for args in [
            &["warren", "join"][..],
            &["warren", "join", "t", "--port", "99999"],
            &[
                "warren",
                "join",
                "t",
                "--tun",
                "far-too-long-interface-name",
            ],
            &["warren", "up", "--bogus"],
            &["warren", "frobnicate"],
        ] {
            let (text, code) = err_of(args);
            assert_eq!(code, 1, "{args:?}");
            assert!(text.starts_with("error: "), "{args:?}: {text}");
            assert!(!text.trim_end().contains('\n'), "{args:?}: {text}");
        }
        let (text, _) = err_of(&["warren", "join"]);
        assert!(text.contains("<TOKEN>"), "{text}");
        let (text, _) = err_of(&["warren", "up", "--bogus"]);
        assert!(text.contains("--bogus"), "{text}");
        let (_, code) = err_of(&["warren", "--help"]);
        assert_eq!(code, 0);
    }
}
