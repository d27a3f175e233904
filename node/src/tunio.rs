//! Batched TUN IO (IO shell layer) with Linux TUN offloads when the kernel has them
//! (`IFF_VNET_HDR`, tun-rs `offload`): one read yields a TCP/UDP super-packet that tun-rs splits
//! into MTU-sized IP packets for the engine, and decrypted packets are queued, merged into
//! TCP/UDP super-packets where they continue one another (`gro`, a software GRO without
//! per-packet allocation), and written a run per syscall (DESIGN.md section 5). Without offload
//! the same interface does one packet per syscall.

mod gro;

use std::io;

use tun_rs::{AsyncDevice, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use gro::Coalescer;

use crate::dataio::{ShellDrops, SHELL_DROPS};
use crate::socket::MAX_DATAGRAM;
use crate::tun::TUN_MTU;

/// Bytes per split read buffer: one IP packet; room for jumbo MTUs in case someone raises the
/// interface MTU by hand (a packet larger than its slot would be truncated or refused).
const READ_SLOT: usize = 16 * 1024;
/// Split packets per offloaded read: a 64 KiB super-packet cut at the MTU, with room to spare.
const READ_SLOTS: usize = MAX_DATAGRAM / TUN_MTU as usize + 16;
/// Decrypted packets (or merged runs) queued before a forced write.
const WRITE_SLOTS: usize = IDEAL_BATCH_SIZE;

/// The TUN device with its reusable buffers.
pub struct TunIo {
    /// The device.
    dev: AsyncDevice,
    /// Raw read buffer (virtio header + super-packet).
    raw: Vec<u8>,
    /// Packets split out of the last read.
    split: Vec<Vec<u8>>,
    /// Their lengths.
    sizes: Vec<usize>,
    /// Where the engine writes the next decrypted packet (always full length, never re-zeroed).
    scratch: Vec<u8>,
    /// Queued decrypted packets, merged into runs.
    out: Coalescer,
}

impl TunIo {
    /// Wraps a device (built with or without offload).
    pub fn new(dev: AsyncDevice) -> Self {
        let offload = dev.tcp_gso();
        let udp_gso = offload && dev.udp_gso();
        Self {
            out: Coalescer::new(WRITE_SLOTS, MAX_DATAGRAM, offload, udp_gso),
            dev,
            raw: vec![0u8; VIRTIO_NET_HDR_LEN + MAX_DATAGRAM],
            split: (0..READ_SLOTS).map(|_| vec![0u8; READ_SLOT]).collect(),
            sizes: vec![0; READ_SLOTS],
            scratch: vec![0u8; MAX_DATAGRAM],
        }
    }

    /// Waits for and reads packets from the kernel; returns how many [`TunIo::packet`]s there
    /// are. Cancel-safe (the read completes synchronously once the device is readable).
    pub async fn recv(&mut self) -> io::Result<usize> {
        self.dev
            .recv_multiple(&mut self.raw, &mut self.split, &mut self.sizes, 0)
            .await
    }

    /// Non-blocking variant of [`TunIo::recv`] (`WouldBlock` when nothing is queued). Reads
    /// the device itself rather than through tokio's cached readiness, which a busy task
    /// refreshes only when it yields: the point is to see packets that arrived while it was
    /// busy with the other direction.
    pub fn try_recv(&mut self) -> io::Result<usize> {
        let dev: &tun_rs::DeviceImpl = &self.dev;
        dev.recv_multiple(&mut self.raw, &mut self.split, &mut self.sizes, 0)
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

    /// Queues the packet just written into [`TunIo::slot`]: appended to its flow's run, or
    /// copied into a queue buffer of its own (they keep their capacity, so nothing is
    /// allocated after warm-up).
    pub fn commit(&mut self, len: usize) {
        if self.out.is_full() {
            self.write_queued();
        }
        self.out.push(self.scratch.get(..len).unwrap_or_default());
    }

    /// Writes the queued packets, a run per write. A write the device refuses drops its
    /// packets like any congested link (counted).
    pub fn write_queued(&mut self) {
        for (buf, packets) in self.out.finish() {
            if let Err(e) = self.dev.try_send(buf) {
                ShellDrops::add(&SHELL_DROPS.tun_write_failed, packets as u64);
                tracing::debug!(error = %e, packets, "TUN write failed");
            }
        }
        self.out.clear();
    }
}
