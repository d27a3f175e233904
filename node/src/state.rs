//! The node's state directory (IO shell layer): its static key and what the coordinator assigned.
//!
//! Layout of `STATE_DIR` (mode 0700):
//! - `key`: the static X25519 private key, standard base64 and a newline, mode 0600. `up` refuses
//!   a key that group or others can read.
//! - `state.json`: [`SavedState`] (node id, name, mesh address, network, coordinator addresses,
//!   pinned certificate fingerprint, UDP port, TUN name).
//! - `peers.json`: the coordinator's last peer list, so that `up` restores tunnels even while the
//!   coordinator is unreachable (replaced by the fresh list on every login).
//! - `warren.sock`: the running daemon's status socket (mode 0600), absent when it is stopped.
//!
//! `join` must never leave a half-written directory behind, so it works in a [`Pending`] directory
//! next to the target (`.NAME.join-XXXXXXXX`, 0700) and renames it into place only after the
//! coordinator's Welcome; dropping an uncommitted [`Pending`] removes it.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use warren_proto::control::PeerRecord;
use warren_proto::ids::{MeshIp, MeshNetwork, NodeId, PrivateKey};
use warren_proto::token::CoordinatorAddr;

use crate::error::NodeError;

/// Default state directory when neither `--state-dir` nor `WARREN_STATE_DIR` is given.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/warren";
/// Name of the private key file.
pub const KEY_FILE: &str = "key";
/// Name of the state file.
pub const STATE_FILE: &str = "state.json";
/// Name of the daemon's status socket.
pub const SOCKET_FILE: &str = "warren.sock";
/// Name of the cached peer list (so `up` can restore tunnels while the coordinator is down).
pub const PEERS_FILE: &str = "peers.json";

/// What a joined node remembers between runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    /// Id the coordinator assigned at join.
    pub node_id: NodeId,
    /// The node's name in the mesh (as the coordinator confirmed it).
    pub name: String,
    /// The node's mesh address (its TUN address).
    pub mesh_ip: MeshIp,
    /// The mesh network (sets the TUN prefix, hence the kernel route).
    pub network: MeshNetwork,
    /// Coordinator addresses from the invite token, tried in order (`1.2.3.4:7443`, `host:7443`).
    pub coordinator_addrs: Vec<String>,
    /// SHA-256 of the coordinator certificate's DER, hex; the only certificate accepted.
    pub fingerprint: String,
    /// UDP port of the data socket (the one the OS picked at join if `--port 0`).
    pub port: u16,
    /// Name of the TUN interface.
    pub tun: String,
}

impl SavedState {
    /// The pinned fingerprint as bytes.
    pub fn fingerprint_bytes(&self) -> Result<[u8; 32], NodeError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.fingerprint, &mut out).map_err(|e| NodeError::CorruptState {
            path: STATE_FILE.into(),
            why: format!("fingerprint: {e}"),
        })?;
        Ok(out)
    }

    /// The coordinator addresses, parsed.
    pub fn coordinator_addrs(&self) -> Result<Vec<CoordinatorAddr>, NodeError> {
        self.coordinator_addrs
            .iter()
            .map(|s| {
                s.parse().map_err(|e| NodeError::CorruptState {
                    path: STATE_FILE.into(),
                    why: format!("coordinator address: {e}"),
                })
            })
            .collect()
    }
}

/// Path of the status socket inside a state directory.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET_FILE)
}

/// Fails if `target` cannot become a fresh state directory: it already holds a node, or it is
/// something other than an empty directory.
pub fn ensure_free(target: &Path) -> Result<(), NodeError> {
    if target.join(STATE_FILE).exists() || target.join(KEY_FILE).exists() {
        return Err(NodeError::AlreadyJoined(target.to_path_buf()));
    }
    match fs::read_dir(target) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(NodeError::StateDirNotEmpty(target.to_path_buf())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => Err(NodeError::StateDirNotEmpty(target.to_path_buf())),
    }
}

/// A temporary join directory older than this was left by a killed `join` and is removed.
const STALE_JOIN: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes `.BASE.join-*` directories in `parent` that a killed `join` left behind.
fn sweep_stale_joins(parent: &Path, base: &str) {
    let prefix = format!(".{base}.join-");
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with(&prefix)
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_JOIN);
        if stale {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A state directory being created by `join`; removed on drop unless committed.
#[derive(Debug)]
pub struct Pending {
    /// The temporary directory next to `target`.
    tmp: PathBuf,
    /// Where the directory goes on commit.
    target: PathBuf,
    /// The freshly generated static key (already written to `tmp/key`).
    key: PrivateKey,
    /// Set once renamed into place, so drop leaves it alone.
    committed: bool,
}

impl Pending {
    /// Creates the temporary directory and a new key in it.
    pub fn create(target: &Path) -> anyhow::Result<Self> {
        ensure_free(target)?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = target
            .file_name()
            .with_context(|| format!("state dir {} has no final component", target.display()))?
            .to_string_lossy()
            .into_owned();
        fs::create_dir_all(&parent)
            .with_context(|| format!("creating parent directory {}", parent.display()))?;
        sweep_stale_joins(&parent, &base);
        let mut rng = rand::rngs::OsRng;
        let tmp = parent.join(format!(".{base}.join-{:08x}", rng.next_u32()));
        DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let key = PrivateKey::from_random(secret);
        let pending = Self {
            tmp,
            target: target.to_path_buf(),
            key,
            committed: false,
        };
        let text = format!("{}\n", B64.encode(pending.key.0));
        write_private(&pending.tmp.join(KEY_FILE), text.as_bytes(), true)?;
        Ok(pending)
    }

    /// The new node's private key.
    pub fn key(&self) -> &PrivateKey {
        &self.key
    }

    /// Writes `state.json` and renames the directory into place.
    pub fn commit(mut self, state: &SavedState) -> anyhow::Result<PathBuf> {
        let json = serde_json::to_vec_pretty(state).context("serializing state")?;
        write_private(&self.tmp.join(STATE_FILE), &json, true)?;
        ensure_free(&self.target)?;
        // rename(2) atomically replaces an empty directory, and fails on a non-empty one, so a
        // racing join cannot be overwritten.
        fs::rename(&self.tmp, &self.target).with_context(|| {
            format!(
                "moving {} into place at {}",
                self.tmp.display(),
                self.target.display()
            )
        })?;
        fs::set_permissions(&self.target, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting mode 0700 on {}", self.target.display()))?;
        self.committed = true;
        // Make the rename itself durable (best effort: not every filesystem syncs directories).
        if let Some(parent) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = fs::File::open(parent).and_then(|d| d.sync_all());
        }
        Ok(self.target.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Writes a new 0600 file; with `sync`, waits until it is on disk.
fn write_private(path: &Path, bytes: &[u8], sync: bool) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| if sync { f.sync_all() } else { Ok(()) })
        .with_context(|| format!("writing {}", path.display()))
}

/// Loads a joined node's key and state, refusing a key readable by group or others.
pub fn load(dir: &Path) -> anyhow::Result<(PrivateKey, SavedState)> {
    let state_path = dir.join(STATE_FILE);
    let key_path = dir.join(KEY_FILE);
    if !state_path.exists() || !key_path.exists() {
        return Err(NodeError::NotJoined(dir.to_path_buf()).into());
    }
    let mode = fs::metadata(&key_path)
        .with_context(|| format!("reading {}", key_path.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o077 != 0 {
        return Err(NodeError::KeyPermissions {
            path: key_path,
            mode,
        }
        .into());
    }
    let key_text =
        fs::read_to_string(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let corrupt = |path: &Path, why: String| NodeError::CorruptState {
        path: path.to_path_buf(),
        why,
    };
    let bytes = B64
        .decode(key_text.trim())
        .map_err(|e| corrupt(&key_path, e.to_string()))?;
    let secret: [u8; 32] = bytes
        .try_into()
        .map_err(|_| corrupt(&key_path, "key is not 32 bytes".into()))?;
    let json =
        fs::read(&state_path).with_context(|| format!("reading {}", state_path.display()))?;
    let state: SavedState =
        serde_json::from_slice(&json).map_err(|e| corrupt(&state_path, e.to_string()))?;
    state.fingerprint_bytes()?;
    state.coordinator_addrs()?;
    Ok((PrivateKey(secret), state))
}

/// Replaces the cached peer list (write to a temporary file, then rename). Not synced: it runs
/// on the daemon's data-path task, and a cache lost in a crash only means waiting for the
/// coordinator (an unreadable cache is ignored).
pub fn save_peers(dir: &Path, peers: &[PeerRecord]) -> anyhow::Result<()> {
    let json = serde_json::to_vec(peers).context("serializing peers")?;
    let tmp = dir.join(format!(".{PEERS_FILE}.tmp"));
    let _ = fs::remove_file(&tmp);
    write_private(&tmp, &json, false)?;
    fs::rename(&tmp, dir.join(PEERS_FILE)).context("replacing the peer cache")
}

/// The cached peer list; empty if there is none or it cannot be read.
pub fn load_peers(dir: &Path) -> Vec<PeerRecord> {
    let path = dir.join(PEERS_FILE);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable peer cache");
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::Ipv4Addr;

    /// A fresh, empty scratch directory under the system temp dir.
    pub(crate) fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "warren-node-test-{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub(crate) fn sample_state() -> SavedState {
        SavedState {
            node_id: NodeId(7),
            name: "alpha".into(),
            mesh_ip: MeshIp(Ipv4Addr::new(100, 80, 0, 7)),
            network: MeshNetwork::default(),
            coordinator_addrs: vec!["127.0.0.1:7443".into(), "vpn.example.com:7443".into()],
            fingerprint: hex::encode([9u8; 32]),
            port: 41641,
            tun: "warren0".into(),
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn failed_join_leaves_nothing_behind() {
        let root = scratch("fail");
        let target = root.join("state");
        {
            let pending = Pending::create(&target).unwrap();
            assert_eq!(entries(&root).len(), 1, "only the temp dir exists");
            assert!(!target.exists());
            let _ = pending.key();
        }
        assert!(entries(&root).is_empty(), "dropped pending is removed");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn commit_creates_private_files_and_load_round_trips() {
        let root = scratch("commit");
        let target = root.join("state");
        let pending = Pending::create(&target).unwrap();
        let public = pending.key().public_key();
        let dir = pending.commit(&sample_state()).unwrap();
        assert_eq!(dir, target);
        assert_eq!(entries(&root), vec!["state".to_string()]);
        assert_eq!(
            entries(&target),
            vec![KEY_FILE.to_string(), STATE_FILE.to_string()]
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&target), 0o700);
        assert_eq!(mode(&target.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&target.join(STATE_FILE)), 0o600);
        let (key, state) = load(&target).unwrap();
        assert_eq!(key.public_key(), public);
        assert_eq!(state, sample_state());
        assert_eq!(state.fingerprint_bytes().unwrap(), [9u8; 32]);
        assert_eq!(state.coordinator_addrs().unwrap().len(), 2);

        // A second join into the same directory is refused before any key is made.
        let err = Pending::create(&target).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<NodeError>(),
            Some(NodeError::AlreadyJoined(_))
        ));
        assert_eq!(entries(&root), vec!["state".to_string()]);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn commit_into_existing_empty_dir_works_but_not_into_a_full_one() {
        let root = scratch("empty");
        let target = root.join("state");
        fs::create_dir(&target).unwrap();
        Pending::create(&target)
            .unwrap()
            .commit(&sample_state())
            .unwrap();
        assert!(target.join(KEY_FILE).exists());

        let other = root.join("other");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("unrelated"), b"x").unwrap();
        let err = Pending::create(&other).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<NodeError>(),
            Some(NodeError::StateDirNotEmpty(_))
        ));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn load_refuses_readable_key_and_missing_state() {
        let root = scratch("mode");
        let target = root.join("state");
        let err = load(&target).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<NodeError>(),
            Some(NodeError::NotJoined(_))
        ));
        Pending::create(&target)
            .unwrap()
            .commit(&sample_state())
            .unwrap();
        let key = target.join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&target).unwrap_err();
        match err.downcast_ref::<NodeError>() {
            Some(NodeError::KeyPermissions { mode, .. }) => assert_eq!(*mode, 0o644),
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("chmod 600"));
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&key, b"not base64!\n").unwrap();
        let err = load(&target).unwrap_err();
        assert!(matches!(
            err.downcast_ref::<NodeError>(),
            Some(NodeError::CorruptState { .. })
        ));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn stale_temp_dirs_of_killed_joins_are_swept() {
        let root = scratch("sweep");
        let old = root.join(".state.join-0000dead");
        let fresh = root.join(".state.join-0000beef");
        let other = root.join(".other.join-0000dead");
        for d in [&old, &fresh, &other] {
            fs::create_dir(d).unwrap();
        }
        let long_ago = std::time::SystemTime::now() - STALE_JOIN * 2;
        for d in [&old, &other] {
            fs::File::open(d).unwrap().set_modified(long_ago).unwrap();
        }
        let pending = Pending::create(&root.join("state")).unwrap();
        assert!(!old.exists(), "stale temp dir of this target removed");
        assert!(fresh.exists(), "a recent one may belong to a running join");
        assert!(other.exists(), "other targets are not touched");
        drop(pending);
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn peer_cache_round_trips_and_tolerates_garbage() {
        let dir = scratch("peers");
        assert!(load_peers(&dir).is_empty());
        let peer = PeerRecord {
            node_id: NodeId(2),
            name: "b".into(),
            public_key: PrivateKey::from_random([2; 32]).public_key(),
            mesh_ip: MeshIp(Ipv4Addr::new(100, 80, 0, 2)),
            online: true,
            candidates: vec!["192.0.2.1:5".parse().unwrap()],
        };
        save_peers(&dir, std::slice::from_ref(&peer)).unwrap();
        save_peers(&dir, std::slice::from_ref(&peer)).unwrap();
        assert_eq!(load_peers(&dir), vec![peer]);
        let mode = fs::metadata(dir.join(PEERS_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        fs::write(dir.join(PEERS_FILE), b"{nonsense").unwrap();
        assert!(load_peers(&dir).is_empty());
        fs::remove_dir_all(dir).unwrap();
    }
}
