//! Long-running processes the lab starts (coordinators, node daemons, iperf3 servers).
//!
//! Lab layer. Each process runs inside a namespace via `ip netns exec` (which execs in place,
//! so the pid we hold is the program's own), with stdout and stderr captured to files so
//! their tails can be printed when a test fails. Processes are ended by pid: SIGTERM, a short
//! grace period, then SIGKILL.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// How long a process gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// How much of a log's end is printed on failure, in bytes.
const TAIL_BYTES: u64 = 6000;

/// One started process.
#[derive(Debug)]
pub struct Proc {
    /// Short label used in file names and reports, e.g. `node-a`.
    pub label: String,
    /// The namespace it runs in.
    pub ns: String,
    /// The running child (the program itself, since `ip netns exec` execs in place).
    child: Child,
    /// Where its stdout goes.
    pub stdout_path: PathBuf,
    /// Where its stderr (the logs) goes.
    pub stderr_path: PathBuf,
    /// When it was started, for time-to-ready measurements.
    pub started: Instant,
    /// Its exit status once it has been reaped.
    exited: Option<ExitStatus>,
}

impl Proc {
    /// Starts `program args...` inside `ns`, logs under `dir`, environment `env` added.
    pub fn spawn(
        dir: &Path,
        label: &str,
        ns: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Proc> {
        let stdout_path = dir.join(format!("{label}.stdout"));
        let stderr_path = dir.join(format!("{label}.stderr"));
        let stdout = File::create(&stdout_path).context("creating stdout log")?;
        let stderr = File::create(&stderr_path).context("creating stderr log")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Own process group: a Ctrl-C in the demo's terminal reaches the harness, which then
        // ends its processes in order, rather than killing them behind its back.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {label} ({}) in {ns}", program.display()))?;
        Ok(Proc {
            label: label.to_string(),
            ns: ns.to_string(),
            child,
            stdout_path,
            stderr_path,
            started: Instant::now(),
            exited: None,
        })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once it has exited (reaping it), `None` while it runs.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Ends it by pid: SIGTERM, then SIGKILL after the grace period. Idempotent.
    pub fn stop(&mut self) {
        if self.try_exit().is_some() {
            return;
        }
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on the pid of our own unreaped child (it cannot have been reused).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if self.try_exit().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        self.exited = self.child.wait().ok();
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The last few kilobytes of its stderr, for failure reports.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr_path, TAIL_BYTES)
    }
}

/// The last `max` bytes of a file (starting at a line boundary when possible).
pub fn tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::from("(no log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    if start > 0 {
        match text.split_once('\n') {
            Some((_, rest)) => format!("[...]\n{rest}"),
            None => text,
        }
    } else {
        text
    }
}
