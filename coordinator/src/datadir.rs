//! The coordinator's data directory: created 0700 on first start, holding the self-signed QUIC
//! certificate (`cert.der`, `key.der` 0600), the bootstrap admin token (`admin.token` 0600) and
//! the SQLite store (`warren.db`: nodes, invites and API tokens, the secrets of the last two only
//! as SHA-256). The admin token file stays the bootstrap credential of the HTTP API even once API
//! tokens exist; rotate it by replacing the file and restarting. Every secret file is written to
//! a temporary name and renamed into place, so a crash never leaves a half-written file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::store::sqlite::SqliteStore;

/// Name the certificate is issued for; nodes verify it as the TLS server name.
pub use warren_proto::carrier::SERVER_NAME;

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/warren-coordinator";

/// The coordinator's identity: its certificate, key and the certificate's fingerprint.
pub struct Identity {
    /// DER certificate.
    pub cert_der: Vec<u8>,
    /// PKCS#8 DER private key.
    pub key_der: Vec<u8>,
    /// SHA-256 of `cert_der`, which invite tokens pin.
    pub fingerprint: [u8; 32],
}

/// An opened data directory.
pub struct DataDir {
    /// Its path.
    pub path: PathBuf,
    /// Whether this call created the directory's identity (certificate and key).
    #[cfg_attr(not(test), allow(dead_code))]
    pub first_start: bool,
}

impl DataDir {
    /// Opens `path`, creating the directory, certificate and admin token if missing.
    pub fn open_or_init(path: &Path) -> Result<Self> {
        if !path.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .with_context(|| format!("creating data directory {}", path.display()))?;
        } else if !path.is_dir() {
            bail!("data directory {} is not a directory", path.display());
        }
        let first_start = !path.join("cert.der").exists();
        if first_start {
            let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
                .context("generating the coordinator certificate")?;
            write_secret(&path.join("key.der"), &ck.key_pair.serialize_der())?;
            write_secret(&path.join("cert.der"), ck.cert.der())?;
        }
        if !path.join("admin.token").exists() {
            let token = hex::encode(rand::random::<[u8; 32]>());
            write_secret(&path.join("admin.token"), token.as_bytes())?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            first_start,
        })
    }

    /// Loads the certificate and key.
    pub fn identity(&self) -> Result<Identity> {
        let cert_der = read_secret(&self.path.join("cert.der"))?;
        let key_der = read_secret(&self.path.join("key.der"))?;
        let fingerprint = Sha256::digest(&cert_der).into();
        Ok(Identity {
            cert_der,
            key_der,
            fingerprint,
        })
    }

    /// The bootstrap admin token.
    pub fn admin_token(&self) -> Result<String> {
        let raw = read_secret(&self.path.join("admin.token"))?;
        let token = String::from_utf8(raw)
            .context("admin.token is not text")?
            .trim()
            .to_string();
        if token.len() < 16 {
            bail!("admin.token is too short (at least 16 characters)");
        }
        Ok(token)
    }

    /// Opens the store.
    pub fn store(&self) -> Result<SqliteStore> {
        let db = self.path.join("warren.db");
        SqliteStore::open(&db).with_context(|| format!("opening the store {}", db.display()))
    }
}

/// Writes a file readable only by its owner, atomically.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

/// Reads a secret file, refusing one that others can read.
fn read_secret(path: &Path) -> Result<Vec<u8>> {
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} is readable by other users; run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn init_is_idempotent_and_private() {
        let dir = std::env::temp_dir().join(format!("warren-dd-{}", rand::random::<u64>()));
        let d = DataDir::open_or_init(&dir).unwrap();
        assert!(d.first_start);
        let id1 = d.identity().unwrap();
        let tok1 = d.admin_token().unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for f in ["cert.der", "key.der", "admin.token"] {
            let mode = fs::metadata(dir.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let d2 = DataDir::open_or_init(&dir).unwrap();
        assert!(!d2.first_start);
        assert_eq!(d2.identity().unwrap().fingerprint, id1.fingerprint);
        assert_eq!(d2.admin_token().unwrap(), tok1);
        // A token file others can read is refused.
        fs::set_permissions(dir.join("admin.token"), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(d2.admin_token().is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
