//! User-facing failures of the `warren` CLI (IO shell layer).
//!
//! Each variant is something a person can act on, worded for the one-line `error: ...` the CLI
//! prints before exiting with status 1. Lower-level causes stay attached as `source` where they
//! help; `main` prints the chain on one line.

use std::path::PathBuf;

use warren_proto::control::ErrorCode;

/// Why `warren join`, `warren up` or `warren status` could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The state directory already holds a joined node.
    #[error(
        "{0} already holds a joined node; start it with `warren up` (or pick another --state-dir)"
    )]
    AlreadyJoined(PathBuf),
    /// The state directory exists, is not empty, and is not a Warren state directory.
    #[error("{0} exists and is not an empty directory; refusing to use it as the state dir")]
    StateDirNotEmpty(PathBuf),
    /// `up`/`status` found no joined node.
    #[error("no joined node in {0}; run `warren join TOKEN` first")]
    NotJoined(PathBuf),
    /// The key file can be read by group or others.
    #[error("{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key or state file is not what Warren wrote.
    #[error("{path} is corrupt: {why}")]
    CorruptState {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The coordinator's certificate is not the one pinned by the token.
    #[error("the coordinator's certificate does not match the invite token (wrong coordinator?)")]
    WrongCoordinator,
    /// No coordinator address answered within the connect timeout.
    #[error("cannot reach the coordinator at {addr}: {why}")]
    Unreachable {
        /// The address(es) tried.
        addr: String,
        /// What went wrong (e.g. `timed out`).
        why: String,
    },
    /// The coordinator refused the request.
    #[error("{}", rejection_text(*.code, .message))]
    Rejected {
        /// Stable reason.
        code: ErrorCode,
        /// The coordinator's explanation.
        message: String,
    },
    /// The control connection broke during the handshake or spoke nonsense.
    #[error("control connection to the coordinator failed: {0}")]
    Protocol(String),
    /// `warren status` found no daemon listening.
    #[error("no warren daemon is running for {0} (start it with `warren up`)")]
    NoDaemon(PathBuf),
    /// Another daemon already serves this state directory.
    #[error("a warren daemon is already running for {0}")]
    DaemonRunning(PathBuf),
}

impl NodeError {
    /// Whether retrying the same request later can succeed (used by the reconnect loop).
    pub fn is_transient(&self) -> bool {
        match self {
            NodeError::Unreachable { .. } | NodeError::Protocol(_) => true,
            NodeError::Rejected { code, .. } => {
                matches!(code, ErrorCode::Internal | ErrorCode::Protocol)
            }
            _ => false,
        }
    }
}

/// Clear text for each coordinator error code.
fn rejection_text(code: ErrorCode, message: &str) -> String {
    match code {
        ErrorCode::InviteUnknown => {
            "the invite token is not known to this coordinator (mistyped, or already deleted)".into()
        }
        ErrorCode::InviteExpired => "the invite token has expired; ask for a new one".into(),
        ErrorCode::InviteUsedUp => {
            "the invite token has been used up (no uses left); ask for a new one".into()
        }
        ErrorCode::InviteRevoked => "the invite token was revoked; ask for a new one".into(),
        ErrorCode::NotRegistered => {
            "this node is not registered with the coordinator (was it removed?); join again with a new invite"
                .into()
        }
        ErrorCode::AlreadyRegistered => "this node's key is already registered".into(),
        ErrorCode::VersionUnsupported => {
            format!("the coordinator does not speak this warren's control protocol: {message}")
        }
        ErrorCode::BadProof => format!("the coordinator rejected this node's key proof: {message}"),
        ErrorCode::NetworkFull => "the mesh network has no free address left".into(),
        ErrorCode::Protocol => format!("the coordinator reported a protocol error: {message}"),
        ErrorCode::Internal => format!("the coordinator failed internally: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_read_clearly_and_stay_on_one_line() {
        for (code, word) in [
            (ErrorCode::InviteExpired, "expired"),
            (ErrorCode::InviteUsedUp, "used up"),
            (ErrorCode::InviteUnknown, "not known"),
            (ErrorCode::InviteRevoked, "revoked"),
        ] {
            let e = NodeError::Rejected {
                code,
                message: "x".into(),
            };
            let text = e.to_string();
            assert!(text.contains(word), "{text}");
            assert!(!text.contains('\n'));
            assert!(!e.is_transient());
        }
        let internal = NodeError::Rejected {
            code: ErrorCode::Internal,
            message: "db locked".into(),
        };
        assert!(internal.is_transient());
        assert!(internal.to_string().contains("db locked"));
        assert_eq!(
            NodeError::WrongCoordinator.to_string(),
            "the coordinator's certificate does not match the invite token (wrong coordinator?)"
        );
        let unreachable = NodeError::Unreachable {
            addr: "192.0.2.1:7443".into(),
            why: "timed out".into(),
        };
        assert_eq!(
            unreachable.to_string(),
            "cannot reach the coordinator at 192.0.2.1:7443: timed out"
        );
    }
}
