//! Names of lab namespaces, and the sweep that removes those left by crashed lab runs.
//!
//! Lab layer. Every namespace a lab creates is called `wl<pid>-<n>-<role>`: `wl` marks the
//! Warren lab, `<pid>` is the test process that owns it and `<n>` counts labs within that
//! process. A namespace whose owner process is gone is a leftover of a crashed run (Drop never
//! ran, e.g. SIGKILL) and is swept at the next lab start; namespaces of any other name, and
//! those of live processes, are never touched.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Result;

use crate::cmd::{run, run_ok};

/// Marks lab namespaces.
const MARK: &str = "wl";
/// Time limit for one `ip` invocation.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts labs created by this process, to keep their names apart.
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A fresh, unique prefix for one lab's namespaces: `wl<pid>-<n>`.
pub fn new_prefix() -> String {
    let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
    format!("{MARK}{}-{n}", std::process::id())
}

/// The owner pid encoded in a lab namespace name, or `None` for names that are not the lab's.
pub fn owner_pid(ns_name: &str) -> Option<u32> {
    let rest = ns_name.strip_prefix(MARK)?;
    let (pid, rest) = rest.split_once('-')?;
    let (n, role) = rest.split_once('-')?;
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(pid) || !all_digits(n) || role.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// Lists the names of all network namespaces known to `ip netns`.
pub fn list_namespaces() -> Result<Vec<String>> {
    let out = run_ok("ip", &["netns", "list"], IP_TIMEOUT)?;
    // Lines look like "name" or "name (id: 3)".
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Deletes lab namespaces whose owner process no longer exists, first ending (by pid) the
/// processes the crashed lab left running inside them. Returns the names removed.
pub fn sweep_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for ns in list_namespaces()? {
        let Some(pid) = owner_pid(&ns) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_namespace_processes(&ns);
        if run("ip", &["netns", "del", ns.as_str()], IP_TIMEOUT)?.success() {
            removed.push(ns);
        }
    }
    Ok(removed)
}

/// SIGKILLs every process inside a (stale, lab-owned) namespace, by pid.
pub fn kill_namespace_processes(ns: &str) {
    let Ok(out) = run("ip", &["netns", "pids", ns], IP_TIMEOUT) else {
        return;
    };
    for pid in out
        .stdout
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        // SAFETY: kill(2) with a pid read from `ip netns pids`; no memory is involved.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_lab_names() {
        assert_eq!(owner_pid("wl1234-0-inet"), Some(1234));
        assert_eq!(owner_pid("wl99-12-n1a"), Some(99));
        assert_eq!(owner_pid("wl1234-inet"), None);
        assert_eq!(owner_pid("wlx-0-inet"), None);
        assert_eq!(owner_pid("wl1234-0-"), None);
        assert_eq!(owner_pid("docker-1234-0-x"), None);
        assert_eq!(owner_pid("ns1"), None);
    }

    #[test]
    fn prefixes_are_unique_and_parse_back() {
        let a = new_prefix();
        let b = new_prefix();
        assert_ne!(a, b);
        assert_eq!(owner_pid(&format!("{a}-co")), Some(std::process::id()));
    }
}
