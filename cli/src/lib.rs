//! Command-line conventions shared by `warren` and `warren-coordinator` (edge layer, no protocol
//! logic): bad input ends with ONE line `error: ...` on stderr and exit status 1, never clap's
//! multi-line usage block and never a panic; `--help` and `--version` print to stdout and exit 0.
//!
//! Also shared by both binaries: config files ([`config`]), logging ([`logging`]), shutdown
//! signals ([`shutdown`]), systemd readiness ([`systemd`]), UDP socket buffers ([`sockbuf`]), feeding quinn from a channel ([`quicfeed`]) and the Prometheus text format
//! ([`prometheus`]).

pub mod config;
pub mod logging;
pub mod prometheus;
pub mod quicfeed;
pub mod shutdown;
pub mod sockbuf;
pub mod systemd;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

/// Folds a clap error into one line (the message without the usage block).
pub fn one_line_clap(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let head: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let text = head.join(" ");
    if text.starts_with("error:") {
        text
    } else {
        format!("error: {text}")
    }
}

/// Formats an error chain on one line.
pub fn one_line_error(e: &anyhow::Error) -> String {
    format!("error: {e:#}").replace('\n', " ")
}

/// Parses arguments; `Err` carries what to print and the exit status (0 for help and version,
/// which go to stdout; 1 for errors, which go to stderr).
pub fn parse_args<C, I, T>(args: I) -> Result<C, (String, u8)>
where
    C: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    C::try_parse_from(args).map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => (e.render().to_string(), 0),
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => (e.render().to_string(), 1),
        _ => (one_line_clap(&e), 1),
    })
}

/// Parses the process's arguments, or prints what [`parse_args`] says and returns the exit code.
pub fn parse_or_exit<C: Parser>() -> Result<C, ExitCode> {
    match parse_args(std::env::args_os()) {
        Ok(cli) => Ok(cli),
        Err((text, 0)) => {
            print!("{text}");
            Err(ExitCode::SUCCESS)
        }
        Err((text, code)) => {
            eprintln!("{}", text.trim_end());
            Err(ExitCode::from(code))
        }
    }
}

/// Runs `body` and turns its outcome into an exit code, printing a failure as one line.
pub fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", one_line_error(&e));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Parser, Debug)]
    #[command(name = "t", version)]
    struct T {
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
    }

    #[test]
    fn errors_are_one_line_with_status_1() {
        for args in [
            &["t", "--bogus"][..],
            &["t", "--port", "0"],
            &["t", "--port"],
        ] {
            let (text, code) = parse_args::<T, _, _>(args.iter().copied()).unwrap_err();
            assert_eq!(code, 1, "{args:?}");
            assert!(text.starts_with("error:"), "{text}");
            assert_eq!(text.trim_end().lines().count(), 1, "{text}");
        }
        let (text, code) = parse_args::<T, _, _>(["t", "--help"]).unwrap_err();
        assert_eq!(code, 0);
        assert!(text.contains("Usage"));
        assert!(parse_args::<T, _, _>(["t", "--port", "80"]).is_ok());
    }

    #[test]
    fn error_chains_fold_onto_one_line() {
        let e = anyhow::anyhow!("inner\nsecond line").context("outer");
        assert_eq!(one_line_error(&e), "error: outer: inner second line");
    }
}
