//! Running short-lived commands (ip, nft, ping, curl, the CLI) with a hard deadline.
//!
//! Lab layer: every external command the harness runs goes through [`run`], so that no test
//! can hang on a stuck tool. Output is captured on reader threads so a chatty command can never
//! block on a full pipe.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How often a running command is polled for exit.
const POLL: Duration = Duration::from_millis(10);

/// What a finished command left behind.
#[derive(Debug)]
pub struct CmdOutput {
    /// Exit status (a command killed at its deadline never gets here: that is an error).
    pub status: ExitStatus,
    /// Everything it wrote to stdout, lossily decoded.
    pub stdout: String,
    /// Everything it wrote to stderr, lossily decoded.
    pub stderr: String,
}

impl CmdOutput {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The exit code, or -1 when the command died by a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or(-1)
    }
}

/// Runs `program args...` with `stdin` fed to it, killing it after `timeout`.
///
/// Returns the output whatever the exit status; fails only when the command cannot start or
/// outlives its deadline.
pub fn run_with_input<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<CmdOutput> {
    let shown = describe(program, args);
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("writing stdin of `{shown}`"))?;
    }
    let mut out_pipe = child.stdout.take().context("stdout is piped")?;
    let mut err_pipe = child.stderr.take().context("stderr is piped")?;
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for command")? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{shown}` did not finish within {timeout:?}");
        }
        thread::sleep(POLL);
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    Ok(CmdOutput {
        status,
        stdout,
        stderr,
    })
}

/// Runs a command without stdin; see [`run_with_input`].
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S], timeout: Duration) -> Result<CmdOutput> {
    run_with_input(program, args, None, timeout)
}

/// Runs a command that must succeed; the error carries its stderr.
pub fn run_ok<S: AsRef<OsStr>>(program: &str, args: &[S], timeout: Duration) -> Result<String> {
    let out = run(program, args, timeout)?;
    if !out.success() {
        bail!(
            "`{}` failed with exit code {}: {}",
            describe(program, args),
            out.code(),
            out.stderr.trim()
        );
    }
    Ok(out.stdout)
}

/// A shell-like rendering of a command line, for error messages.
pub fn describe<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

/// Polls `check` every `every` until it returns `Ok(Some(v))` or `timeout` passes.
///
/// The last error (or "still false") is reported on timeout, with `what` naming the wait.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("condition never held");
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        thread::sleep(every);
    }
}
