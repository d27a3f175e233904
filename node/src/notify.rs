//! systemd readiness notification (IO shell layer): with `Type=notify` units, the daemon tells
//! systemd when it is ready (TUN up, status socket listening) and when it stops, using the
//! `sd_notify(3)` datagram protocol on `$NOTIFY_SOCKET`. Without that variable nothing happens.

use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};

/// Sends one `sd_notify` state string (e.g. `READY=1`) if systemd asked for it; errors are only
/// logged.
pub fn notify(state: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        notify_to(&path.to_string_lossy(), state);
    }
}

/// Sends `state` to the notification socket `path` (`@name` is an abstract socket).
fn notify_to(path: &str, state: &str) {
    let addr = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            UnixAddr::from_abstract_name(name.as_bytes())
        }
        None => UnixAddr::from_pathname(path),
    };
    let sent = addr.and_then(|addr| {
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        tracing::debug!(socket = %path, error = %e, "sd_notify failed");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sends_ready_to_the_notify_socket() {
        let dir = crate::state::tests::scratch("notify");
        let path = dir.join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        notify_to(path.to_str().unwrap(), "READY=1");
        let mut buf = [0u8; 64];
        listener
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
