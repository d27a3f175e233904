//! Logging set-up shared by `warren` and `warren-coordinator` (edge layer): `tracing` events go
//! to stderr, as human-readable text (the default) or as one JSON object per line for log
//! shippers (`--log-format json`, config key `log_format`, env `WARREN_LOG_FORMAT`).
//! `RUST_LOG` filters in both formats; without it the level is `info`.
//!
//! What is logged at `info` is part of Warren's zero-log stance (README, "Logs"): lifecycle
//! events only — no packet contents and no peer traffic metadata.

use std::io::IsTerminal;

use serde::Deserialize;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Environment variable that sets the log format (the flag and the config key are the others).
pub const LOG_FORMAT_ENV: &str = "WARREN_LOG_FORMAT";

/// Filter used when `RUST_LOG` is unset or invalid.
const DEFAULT_FILTER: &str = "info";

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event (colours only when stderr is a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields at the top level.
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// The `RUST_LOG` filter, or `info`.
fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER))
}

/// A subscriber writing `format` lines to `writer`, filtered by `filter`.
fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// Installs the process's logger: `format` lines on stderr, filtered by `RUST_LOG` (default
/// `info`). A second call does nothing.
pub fn init(format: LogFormat) {
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing::subscriber::set_global_default(subscriber(
        format,
        env_filter(),
        std::io::stderr,
        ansi,
    ));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A `MakeWriter` collecting everything written into one buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    fn capture(format: LogFormat, filter: &str) -> String {
        let buf = Buf::default();
        let sub = subscriber(format, EnvFilter::new(filter), buf.clone(), false);
        tracing::subscriber::with_default(sub, || {
            tracing::info!(port = 7443, "listening");
            tracing::debug!("hidden at info");
        });
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_is_one_object_per_line_with_flat_fields() {
        let out = capture(LogFormat::Json, "info");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["message"], "listening");
        assert_eq!(v["port"], 7443);
        assert_eq!(v["level"], "INFO");
        assert!(v["timestamp"].is_string(), "{v}");
    }

    #[test]
    fn text_is_plain_and_the_filter_applies() {
        let out = capture(LogFormat::Text, "info");
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("listening port=7443"), "{out}");
        assert!(
            !out.contains('\u{1b}'),
            "no colours when not a terminal: {out}"
        );
        assert_eq!(capture(LogFormat::Text, "debug").lines().count(), 2);
        assert_eq!(capture(LogFormat::Json, "warn"), "");
    }

    #[test]
    fn format_names_round_trip() {
        use clap::ValueEnum;
        for f in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(LogFormat::from_str(&f.to_string(), false).unwrap(), f);
        }
        #[derive(Deserialize)]
        struct K {
            log_format: LogFormat,
        }
        let k: K = toml::from_str("log_format = \"json\"").unwrap();
        assert_eq!(k.log_format, LogFormat::Json);
    }
}
