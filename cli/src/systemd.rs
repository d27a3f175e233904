//! systemd readiness notification (edge layer): under a `Type=notify` unit a daemon tells
//! systemd when it is ready to serve and when it stops, with the `sd_notify(3)` datagram
//! protocol on `$NOTIFY_SOCKET`. Without that variable (not under systemd) nothing happens.

use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};

/// Sends one `sd_notify` state string (`READY=1`, `STOPPING=1`) if systemd asked for it.
/// Failures are logged at debug and otherwise ignored: readiness is a courtesy, not a reason to
/// stop.
pub fn notify(state: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = notify_to(&path.to_string_lossy(), state) {
            tracing::debug!(socket = %path.to_string_lossy(), error = %e, "sd_notify failed");
        }
    }
}

/// Sends `state` to the notification socket `path` (`@name` is an abstract socket).
fn notify_to(path: &str, state: &str) -> std::io::Result<()> {
    let addr = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            UnixAddr::from_abstract_name(name.as_bytes())?
        }
        None => UnixAddr::from_pathname(path)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sends_the_state_to_the_socket() {
        let dir = std::env::temp_dir().join(format!("warren-cli-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        notify_to(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(notify_to(dir.join("absent.sock").to_str().unwrap(), "READY=1").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
