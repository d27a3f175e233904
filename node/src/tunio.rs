//! Batched TUN IO (IO shell layer) with Linux TUN offloads when the kernel has them
//! (`IFF_VNET_HDR`, tun-rs `offload`): one read yields a TCP/UDP super-packet that tun-rs splits
//! into MTU-sized IP packets for the engine, and decrypted packets are queued and written with
//! `send_multiple`, which coalesces TCP/UDP runs (GRO) into few writes (DESIGN.md section 5).
//! Without offload the same interface does one packet per syscall.

use std::io;

use tun_rs::{AsyncDevice, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::dataio::{ShellDrops, SHELL_DROPS};
use crate::socket::MAX_DATAGRAM;
use crate::tun::TUN_MTU;

/// Bytes per split read buffer: one IP packet; room for jumbo MTUs in case someone raises the
/// interface MTU by hand (a packet larger than its slot would be truncated or refused).
const READ_SLOT: usize = 16 * 1024;
/// Split packets per offloaded read: a 64 KiB super-packet cut at the MTU, with room to spare.
const READ_SLOTS: usize = MAX_DATAGRAM / TUN_MTU as usize + 16;
/// Decrypted packets queued before a forced write.
const WRITE_SLOTS: usize = IDEAL_BATCH_SIZE;

/// The TUN device with its reusable buffers.
pub struct TunIo {
    /// The device.
    dev: AsyncDevice,
    /// Whether the virtio-net header (offload) is in use.
    offload: bool,
    /// Raw read buffer (virtio header + super-packet).
    raw: Vec<u8>,
    /// Packets split out of the last read.
    split: Vec<Vec<u8>>,
    /// Their lengths.
    sizes: Vec<usize>,
    /// Where the engine writes the next decrypted packet (always full length, never re-zeroed).
    scratch: Vec<u8>,
    /// Queued decrypted packets, each at offset [`TunIo::headroom`] (len = headroom + packet).
    out: Vec<Vec<u8>>,
    /// How many of `out` are queued.
    queued: usize,
    /// Coalescing state for `send_multiple`.
    gro: GROTable,
}

impl TunIo {
    /// Wraps a device (built with or without offload).
    pub fn new(dev: AsyncDevice) -> Self {
        let offload = dev.tcp_gso();
        let headroom = if offload { VIRTIO_NET_HDR_LEN } else { 0 };
        Self {
            dev,
            offload,
            raw: vec![0u8; VIRTIO_NET_HDR_LEN + MAX_DATAGRAM],
            split: (0..READ_SLOTS).map(|_| vec![0u8; READ_SLOT]).collect(),
            sizes: vec![0; READ_SLOTS],
            scratch: vec![0u8; MAX_DATAGRAM],
            out: (0..WRITE_SLOTS)
                .map(|_| Vec::with_capacity(headroom + MAX_DATAGRAM))
                .collect(),
            queued: 0,
            gro: GROTable::new(),
        }
    }

    /// Bytes reserved in front of every queued packet (the virtio-net header).
    fn headroom(&self) -> usize {
        if self.offload {
            VIRTIO_NET_HDR_LEN
        } else {
            0
        }
    }

    /// Waits for and reads packets from the kernel; returns how many [`TunIo::packet`]s there
    /// are. Cancel-safe (the read completes synchronously once the device is readable).
    pub async fn recv(&mut self) -> io::Result<usize> {
        self.dev
            .recv_multiple(&mut self.raw, &mut self.split, &mut self.sizes, 0)
            .await
    }

    /// Non-blocking variant of [`TunIo::recv`].
    pub fn try_recv(&mut self) -> io::Result<usize> {
        self.dev
            .try_recv_multiple(&mut self.raw, &mut self.split, &mut self.sizes, 0)
    }

    /// The `i`-th packet of the last read.
    pub fn packet(&self, i: usize) -> &[u8] {
        match (self.split.get(i), self.sizes.get(i)) {
            (Some(buf), Some(&n)) => buf.get(..n).unwrap_or_default(),
            _ => &[],
        }
    }

    /// A buffer for the next decrypted packet; call [`TunIo::commit`] with its length.
    pub fn slot(&mut self) -> &mut [u8] {
        &mut self.scratch
    }

    /// Queues the packet just written into [`TunIo::slot`] (one packet-sized copy; the queue's
    /// buffers keep their capacity, so nothing is allocated after warm-up).
    pub fn commit(&mut self, len: usize) {
        if self.queued == WRITE_SLOTS {
            self.write_queued();
        }
        let headroom = self.headroom();
        let packet = self.scratch.get(..len).unwrap_or_default();
        let buf = &mut self.out[self.queued];
        buf.clear();
        buf.extend_from_slice(&[0u8; VIRTIO_NET_HDR_LEN][..headroom]);
        buf.extend_from_slice(packet);
        self.queued += 1;
    }

    /// Writes the queued packets (coalescing them when offload is on). A full device queue drops
    /// packets like any congested link.
    pub fn write_queued(&mut self) {
        if self.queued == 0 {
            return;
        }
        let headroom = self.headroom();
        if self.offload {
            // The synchronous `DeviceImpl::send_multiple` (TUN writes do not block).
            let dev: &tun_rs::DeviceImpl = &self.dev;
            if let Err(e) = dev.send_multiple(&mut self.gro, &mut self.out[..self.queued], headroom)
            {
                // At least one write of the batch failed (the rest were still tried).
                ShellDrops::add(&SHELL_DROPS.tun_write_failed, 1);
                tracing::debug!(error = %e, "TUN write failed");
            }
        } else {
            for p in &self.out[..self.queued] {
                if let Err(e) = self.dev.try_send(p) {
                    ShellDrops::add(&SHELL_DROPS.tun_write_failed, 1);
                    tracing::debug!(error = %e, "TUN write failed");
                }
            }
        }
        self.queued = 0;
    }
}
