//! Where the lab finds the `warren` and `warren-coordinator` binaries it runs.
//!
//! Lab layer. The lab runs the real binaries from the cargo target directory (debug profile,
//! `CARGO_TARGET_DIR` honoured); it never builds them itself, so a stale or missing build is
//! reported with the command that fixes it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Paths of the two binaries under test.
#[derive(Clone, Debug)]
pub struct Bins {
    /// The node daemon and CLI, `warren`.
    pub warren: PathBuf,
    /// The coordinator, `warren-coordinator`.
    pub coordinator: PathBuf,
}

impl Bins {
    /// Locates both binaries in `<target>/debug`, failing with the build command if missing.
    pub fn locate() -> Result<Bins> {
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                if dir.is_absolute() {
                    dir
                } else {
                    workspace_root().join(dir)
                }
            }
            None => workspace_root().join("target"),
        };
        let profile = std::env::var("WARREN_LAB_PROFILE").unwrap_or_else(|_| "debug".into());
        let dir = target.join(profile);
        let bins = Bins {
            warren: dir.join("warren"),
            coordinator: dir.join("warren-coordinator"),
        };
        for b in [&bins.warren, &bins.coordinator] {
            if !b.is_file() {
                bail!(
                    "{} is missing: run `cargo build --workspace --bins` first",
                    b.display()
                );
            }
        }
        Ok(bins)
    }
}

/// The workspace root: the parent of this package's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}
