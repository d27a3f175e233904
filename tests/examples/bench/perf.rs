//! `bench --perf`: where each system's CPU goes during the one-stream transfer, from `perf record`.
//!
//! Bench layer. perf samples the given daemons (call graphs off: the top self-time symbols are
//! what the report shows) while the transfer runs; the report keeps the share of samples per
//! process and the top symbols.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use warren_lab::cmd::run;

/// Sampling frequency, Hz: enough samples in a few seconds, little overhead.
const FREQ: &str = "999";
/// Lines of `perf report` kept per recording.
const TOP_LINES: usize = 25;

/// A running `perf record`.
#[derive(Debug)]
pub struct Recording {
    /// The perf process (it ends by itself after the sampling time).
    child: Child,
    /// Its data file.
    data: String,
}

/// Starts sampling `pids` for `seconds` into `data`.
pub fn start(pids: &[u32], seconds: u32, data: &Path) -> Result<Recording> {
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    let data = data.display().to_string();
    let child = Command::new("perf")
        .args([
            "record",
            "-F",
            FREQ,
            "-o",
            &data,
            "-p",
            &pids.join(","),
            "--",
        ])
        .args(["sleep", &seconds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting perf record (is perf installed?)")?;
    Ok(Recording { child, data })
}

impl Recording {
    /// Waits for perf to finish and returns the share of samples per process, then the top
    /// of its report by self time per symbol.
    pub fn report(mut self) -> Result<String> {
        self.child.wait().context("waiting for perf record")?;
        let per_pid = self.top(&["--sort", "pid"], 5)?;
        let per_symbol = self.top(
            &["--sort", "pid,dso,symbol", "--percent-limit", "0.5"],
            TOP_LINES,
        )?;
        Ok(format!(
            "  samples per process:\n{per_pid}\n  self time per symbol:\n{per_symbol}"
        ))
    }

    /// The first `lines` entries of `perf report --stdio --no-children EXTRA`.
    fn top(&self, extra: &[&str], lines: usize) -> Result<String> {
        let mut args = vec!["report", "-i", &self.data, "--stdio", "--no-children"];
        args.extend_from_slice(extra);
        let out = run("perf", &args, Duration::from_secs(60))?;
        Ok(out
            .stdout
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            // perf pads the symbol column and appends empty columns ("-      -").
            .map(|l| l.trim_end_matches(['-', ' ']))
            .take(lines)
            .collect::<Vec<_>>()
            .join("\n"))
    }
}
