//! Kernel socket buffer sizes for the UDP sockets of both binaries (edge layer). Linux clamps
//! `SO_RCVBUF`/`SO_SNDBUF` to `net.core.{r,w}mem_max` (208 KiB by default, which drops bursts at
//! a Gbit/s); with CAP_NET_ADMIN the `*BUFFORCE` variants go past it. Best effort: a smaller
//! buffer only costs throughput, so failures are logged at debug and otherwise ignored.

use std::os::fd::{AsFd, AsRawFd};

/// Which of a socket's kernel buffers to size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buffer {
    /// The receive queue (`SO_RCVBUF`).
    Recv,
    /// The send queue (`SO_SNDBUF`).
    Send,
}

/// Asks for a `bytes`-sized `which` buffer on `socket` (the kernel doubles the figure for its
/// bookkeeping): the forced option first, then the plain one, clamped by the sysctl maximum.
/// Returns whether either was accepted.
pub fn set_buffer(socket: &impl AsFd, which: Buffer, bytes: usize) -> bool {
    let (force, plain) = match which {
        Buffer::Recv => (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        Buffer::Send => (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    };
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let fd = socket.as_fd().as_raw_fd();
    // SAFETY: setsockopt(2) on a descriptor borrowed for this call, with a pointer to a live
    // c_int and its size.
    let set = |opt| unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            std::ptr::from_ref(&size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let ok = set(force) == 0 || set(plain) == 0;
    if !ok {
        tracing::debug!(?which, bytes, error = %std::io::Error::last_os_error(),
            "cannot size the socket buffer");
    }
    ok
}

/// Both buffers at `bytes` (see [`set_buffer`]).
pub fn set_buffers(socket: &impl AsFd, bytes: usize) {
    set_buffer(socket, Buffer::Recv, bytes);
    set_buffer(socket, Buffer::Send, bytes);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sizes_a_udp_socket() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(set_buffer(&s, Buffer::Recv, 64 * 1024));
        let mut got: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt(2) on a live socket into a c_int with its size.
        let rc = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                std::ptr::from_mut(&mut got).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        assert_eq!(got, 128 * 1024, "the kernel reports twice what was asked");
    }
}
