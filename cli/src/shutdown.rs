//! Shutdown signals for the daemons (edge layer). The handlers are installed when
//! [`on_signals`] is called, not when its future is first polled, so that a daemon which has
//! told systemd `READY=1` never loses an early SIGTERM to the default action (which would end
//! it at once, skipping the clean shutdown).

use std::future::Future;
use std::task::Poll;

use tokio::signal::unix::{signal, SignalKind};

/// Installs handlers for `kinds` now; the returned future resolves with the first of them
/// that arrives. Must be called inside a tokio runtime.
pub fn on_signals(kinds: &[SignalKind]) -> std::io::Result<impl Future<Output = SignalKind>> {
    let mut streams = kinds
        .iter()
        .map(|&kind| Ok((kind, signal(kind)?)))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(std::future::poll_fn(move |cx| {
        for (kind, stream) in streams.iter_mut() {
            if stream.poll_recv(cx).is_ready() {
                return Poll::Ready(*kind);
            }
        }
        Poll::Pending
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_signal_sent_before_the_first_poll_is_kept() {
        let stop = on_signals(&[SignalKind::user_defined1(), SignalKind::user_defined2()]).unwrap();
        // Without a handler SIGUSR2 would end the test process; with it, it is queued.
        // SAFETY: raise(3) sends a signal to this process; a handler is installed.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), stop)
            .await
            .unwrap();
        assert_eq!(got, SignalKind::user_defined2());
    }
}
