//! `warren`: the Warren node (IO shell around `warren_proto`'s sans-IO engine).
//!
//! ```text
//! warren join TOKEN [--state-dir DIR] [--name NAME] [--tun IFNAME] [--port UDP_PORT]
//! warren up [--state-dir DIR]
//! warren status [--state-dir DIR] [--json]
//! ```
//!
//! This file is the CLI: argument parsing and the one-line `error: ...` + exit status 1 that every
//! failure ends in (never a panic). The commands themselves are in `run`.

mod book;
mod candidates;
mod control;
mod daemon;
mod dataio;
mod error;
mod notify;
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

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// Command-line interface.
#[derive(Debug, Parser)]
#[command(name = "warren", version, about = "Warren mesh VPN node")]
pub struct Cli {
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
        /// State directory (key, assigned address, coordinator).
        #[arg(long, env = "WARREN_STATE_DIR", default_value = state::DEFAULT_STATE_DIR, value_name = "DIR")]
        state_dir: PathBuf,
        /// Node name in the mesh [default: the host name].
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Name of the TUN interface.
        #[arg(long, default_value = "warren0", value_parser = parse_ifname, value_name = "IFNAME")]
        tun: String,
        /// UDP port of the data socket (0: the OS picks one; it is saved for `up`).
        #[arg(long, default_value_t = 0, value_name = "UDP_PORT")]
        port: u16,
    },
    /// Run the node from its saved state.
    Up {
        /// State directory.
        #[arg(long, env = "WARREN_STATE_DIR", default_value = state::DEFAULT_STATE_DIR, value_name = "DIR")]
        state_dir: PathBuf,
    },
    /// Show this node and its peers (asks the running daemon).
    Status {
        /// State directory.
        #[arg(long, env = "WARREN_STATE_DIR", default_value = state::DEFAULT_STATE_DIR, value_name = "DIR")]
        state_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Validates a TUN interface name.
fn parse_ifname(s: &str) -> Result<String, String> {
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
                state_dir,
                name,
                tun,
                port,
            } => {
                assert_eq!(token, "warren1-abc");
                assert_eq!(state_dir, PathBuf::from("/tmp/x"));
                assert_eq!(name.as_deref(), Some("n1"));
                assert_eq!(tun, "wg9");
                assert_eq!(port, 5000);
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
