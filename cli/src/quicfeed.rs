//! Feeding quinn datagrams that arrived somewhere other than its own socket (edge layer). The
//! node's shared UDP socket (QUIC demultiplexed from the data plane), the node's TCP carrier
//! and the coordinator's TCP carrier each queue QUIC datagrams on a tokio channel; their
//! `AsyncUdpSocket::poll_recv` hands what is queued to quinn through [`poll_channel`]. The
//! other way, both ends of the TCP carrier write quinn's datagrams as frames with
//! [`write_frames`].

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Poll};

use quinn::udp::RecvMeta;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// Moves queued datagrams into quinn's receive slots (`datagram` turns a queued item into its
/// source address and bytes): waits (registering the waker) for the first, then takes what
/// else is queued without waiting, up to the number of slots. Pending while the queue is empty
/// or closed (a closed queue means the endpoint is going away). A datagram longer than its
/// slot is cut; QUIC then drops it.
pub fn poll_channel<T, B: AsRef<[u8]>>(
    rx: &Mutex<mpsc::Receiver<T>>,
    cx: &mut Context<'_>,
    bufs: &mut [IoSliceMut<'_>],
    meta: &mut [RecvMeta],
    datagram: impl Fn(T) -> (SocketAddr, B),
) -> Poll<usize> {
    let mut rx = match rx.lock() {
        Ok(rx) => rx,
        Err(poisoned) => poisoned.into_inner(),
    };
    let slots = bufs.len().min(meta.len());
    if slots == 0 {
        return Poll::Ready(0);
    }
    let Poll::Ready(Some(first)) = rx.poll_recv(cx) else {
        return Poll::Pending;
    };
    let mut next = Some(first);
    let mut n = 0;
    while let Some(item) = next {
        let (from, bytes) = datagram(item);
        let bytes = bytes.as_ref();
        let len = bytes.len().min(bufs[n].len());
        bufs[n][..len].copy_from_slice(&bytes[..len]);
        meta[n] = RecvMeta {
            addr: from,
            len,
            stride: len,
            ecn: None,
            dst_ip: None,
        };
        n += 1;
        next = if n < slots { rx.try_recv().ok() } else { None };
    }
    Poll::Ready(n)
}

/// Writes queued datagrams to a TCP carrier stream as frames (a big-endian u16 length, then
/// the datagram), flushing whenever the queue runs empty. Returns when the queue closes or the
/// stream fails. A datagram longer than a frame can say cannot be framed and is dropped (lost,
/// like UDP); the senders keep theirs below `warren_proto::carrier::MAX_TCP_FRAME`.
pub async fn write_frames<W: AsyncWrite + Unpin>(
    writer: W,
    mut outbound: mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    let mut w = BufWriter::new(writer);
    while let Some(packet) = outbound.recv().await {
        let mut next = Some(packet);
        while let Some(p) = next {
            if let Ok(len) = u16::try_from(p.len()) {
                w.write_u16(len).await?;
                w.write_all(&p).await?;
            }
            next = outbound.try_recv().ok();
        }
        w.flush().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn meta() -> RecvMeta {
        RecvMeta {
            addr: "0.0.0.0:0".parse().unwrap(),
            len: 0,
            stride: 0,
            ecn: None,
            dst_ip: None,
        }
    }

    #[tokio::test]
    async fn drains_what_is_queued_up_to_the_slots() {
        let (tx, rx) = mpsc::channel::<(SocketAddr, Vec<u8>)>(8);
        let rx = Mutex::new(rx);
        let from: SocketAddr = "192.0.2.1:7".parse().unwrap();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let (mut a, mut b) = ([0u8; 4], [0u8; 4]);
        let mut metas = [meta(), meta()];
        {
            let mut bufs = [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)];
            assert_eq!(
                poll_channel(&rx, &mut cx, &mut bufs, &mut metas, |d| d),
                Poll::Pending
            );
        }
        for p in [&b"one"[..], b"second!", b"3"] {
            tx.try_send((from, p.to_vec())).unwrap();
        }
        {
            let mut bufs = [IoSliceMut::new(&mut a), IoSliceMut::new(&mut b)];
            assert_eq!(
                poll_channel(&rx, &mut cx, &mut bufs, &mut metas, |d| d),
                Poll::Ready(2)
            );
        }
        assert_eq!(&a[..3], b"one");
        assert_eq!(&b, b"seco", "cut to the slot");
        assert_eq!((metas[0].addr, metas[0].len, metas[1].len), (from, 3, 4));
        let mut bufs = [IoSliceMut::new(&mut a)];
        assert_eq!(
            poll_channel(&rx, &mut cx, &mut bufs, &mut metas[..1], |d| d),
            Poll::Ready(1)
        );
        drop(tx);
        assert_eq!(
            poll_channel(&rx, &mut cx, &mut bufs, &mut metas[..1], |d| d),
            Poll::Pending,
            "closed"
        );
    }

    #[tokio::test]
    async fn writes_length_prefixed_frames_and_drops_oversized_ones() {
        let (tx, rx) = mpsc::channel(8);
        for p in [b"ab".to_vec(), vec![0u8; 70_000], b"c".to_vec()] {
            tx.try_send(p).unwrap();
        }
        drop(tx);
        let mut out = Vec::new();
        write_frames(&mut out, rx).await.unwrap();
        assert_eq!(out, [0, 2, b'a', b'b', 0, 1, b'c']);
    }
}
