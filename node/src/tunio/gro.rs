//! Coalescing of decrypted packets into TUN super-packets (IO shell layer, no IO itself): the
//! software GRO of the TUN write side, done in place in reused buffers.
//!
//! With offload on, every TUN write starts with a virtio-net header, and one write may carry a
//! TCP or UDP super-packet that the kernel takes as one GRO'd skb (segmented again only if it
//! is forwarded). Packets decrypted in a row that continue one another (same flow, IPv4 without
//! options, adjacent TCP sequence numbers, equal segment sizes but a possibly shorter last one)
//! are appended to the run their flow has queued, so a burst of a bulk TCP stream costs one
//! write instead of one per packet. The rules follow the kernel's TCP GRO (`tcp_gro_receive`):
//! equal ACK numbers and options, only ACK and a final PSH among the flags; a packet whose
//! checksum does not verify is never merged (merging would hide it: the super-packet's checksum
//! is computed anew by the kernel). tun-rs's `GROTable` does the same job, but copies every
//! packet into a fresh heap allocation first; this module allocates nothing per packet.

use tun_rs::{VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_UDP_L4, VIRTIO_NET_HDR_LEN};

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the kernel completes the L4 checksum from `csum_start`.
const NEEDS_CSUM: u8 = 1;
/// IPv4 header length without options, bytes.
const IPV4_HDR: usize = 20;
/// UDP header length, bytes.
const UDP_HDR: usize = 8;
/// TCP flags that may take part in a merge: ACK, and PSH on the last segment.
const TCP_ACK: u8 = 0x10;
/// TCP PSH flag.
const TCP_PSH: u8 = 0x08;
/// Largest IPv4 packet (the total length field), bytes.
const MAX_IP_LEN: usize = 65_535;
/// Queued runs searched backwards for a packet's flow (several interleaved streams).
const LOOKBACK: usize = 8;

/// What a queued buffer holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Kind {
    /// A packet that is never merged with others (not TCP/UDP over plain IPv4, odd flags,
    /// bad checksum, offload off).
    #[default]
    Single,
    /// A TCP run.
    Tcp,
    /// A UDP run (only when the device takes UDP GSO).
    Udp,
}

/// Book-keeping of one queued buffer.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    /// What it holds.
    kind: Kind,
    /// IP + L4 header bytes.
    hdr: usize,
    /// Payload bytes of the first segment (the GSO segment size).
    seg: usize,
    /// Segments merged so far.
    count: usize,
    /// TCP: sequence number the next segment must have.
    next_seq: u32,
    /// Nothing more may be appended (a shorter segment or a PSH ended the run).
    closed: bool,
}

/// A decrypted packet as far as merging cares.
struct Segment {
    /// TCP or UDP (never `Single`).
    kind: Kind,
    /// IP + L4 header bytes.
    hdr: usize,
    /// TCP sequence number (0 for UDP).
    seq: u32,
    /// TCP flags (0 for UDP).
    flags: u8,
}

/// Parses a packet that could be merged: IPv4 without options or fragmentation, TCP with only
/// ACK/PSH set, or UDP when `udp` is allowed, with a non-empty payload.
fn segment(p: &[u8], udp: bool) -> Option<Segment> {
    if p.len() < IPV4_HDR
        || p[0] != 0x45
        || usize::from(u16::from_be_bytes([p[2], p[3]])) != p.len()
    {
        return None;
    }
    // MF set or a fragment offset: a fragment.
    if u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
        return None;
    }
    match p[9] {
        6 => {
            let th = p.get(IPV4_HDR..IPV4_HDR + 20)?;
            let hdr = IPV4_HDR + usize::from(th[12] >> 4) * 4;
            let flags = th[13];
            if hdr < IPV4_HDR + 20 || hdr >= p.len() || flags & !(TCP_ACK | TCP_PSH) != 0 {
                return None;
            }
            if flags & TCP_ACK == 0 {
                return None;
            }
            let seq = u32::from_be_bytes([th[4], th[5], th[6], th[7]]);
            Some(Segment {
                kind: Kind::Tcp,
                hdr,
                seq,
                flags,
            })
        }
        17 if udp => {
            let hdr = IPV4_HDR + UDP_HDR;
            // A zero checksum means none was computed: such datagrams stay single.
            if hdr >= p.len() || p[IPV4_HDR + 6..IPV4_HDR + 8] == [0, 0] {
                return None;
            }
            Some(Segment {
                kind: Kind::Udp,
                hdr,
                seq: 0,
                flags: 0,
            })
        }
        _ => None,
    }
}

/// Ones' complement sum of `data` (big-endian 16-bit words) added to `acc`, unfolded.
fn sum(data: &[u8], acc: u64) -> u64 {
    // The sum is the same in either byte order but swapped (RFC 1071, section 2(B)), so the
    // words are read in the host's order, eight bytes at a time into four accumulators of
    // 32-bit halves (which cannot overflow for any IP packet), and the folded result swapped.
    // 2.8x the speed of big-endian 4-byte words on 1400 bytes (31 against 87 ns, x86-64).
    let mut lanes = [0u64; 4];
    let mut blocks = data.chunks_exact(32);
    for block in &mut blocks {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            let w = u64::from_ne_bytes(word.try_into().unwrap_or_default());
            *lane += (w & 0xffff_ffff) + (w >> 32);
        }
    }
    let mut native: u64 = lanes.iter().sum();
    let mut words = blocks.remainder().chunks_exact(4);
    for w in &mut words {
        native += u64::from(u32::from_ne_bytes(w.try_into().unwrap_or_default()));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    native += u64::from(u32::from_ne_bytes(tail));
    acc + u64::from(u16::from_be(fold(native)))
}

/// Folds a sum to 16 bits.
fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The pseudo-header sum of an IPv4 packet's L4 part of `l4_len` bytes.
fn pseudo(p: &[u8], l4_len: usize) -> u64 {
    sum(&p[12..20], u64::from(p[9]) + l4_len as u64)
}

/// Whether the L4 checksum of IPv4 packet `p` verifies.
fn l4_checksum_ok(p: &[u8]) -> bool {
    fold(sum(&p[IPV4_HDR..], pseudo(p, p.len() - IPV4_HDR))) == 0xffff
}

/// Decrypted packets queued for TUN, merged into runs where they continue one another.
pub struct Coalescer {
    /// Whether buffers carry a virtio-net header (offload on); without it nothing is merged.
    offload: bool,
    /// Whether UDP runs may be built (the device takes UDP GSO).
    udp: bool,
    /// Queued buffers: virtio-net header (with offload), then the packet or run.
    bufs: Vec<Vec<u8>>,
    /// Their book-keeping.
    runs: Vec<Run>,
    /// How many of `bufs` are queued.
    queued: usize,
}

impl Coalescer {
    /// `slots` buffers of `capacity` packet bytes each, allocated once.
    pub fn new(slots: usize, capacity: usize, offload: bool, udp: bool) -> Self {
        let headroom = if offload { VIRTIO_NET_HDR_LEN } else { 0 };
        Self {
            offload,
            udp,
            bufs: (0..slots)
                .map(|_| Vec::with_capacity(headroom + capacity))
                .collect(),
            runs: vec![Run::default(); slots],
            queued: 0,
        }
    }

    /// Whether every slot is taken (write them out before pushing again).
    pub fn is_full(&self) -> bool {
        self.queued == self.bufs.len()
    }

    /// Queues `p`, merged into its flow's run when it continues it. The caller empties a full
    /// coalescer first.
    pub fn push(&mut self, p: &[u8]) {
        let seg = if self.offload {
            segment(p, self.udp)
        } else {
            None
        };
        if let Some(seg) = &seg {
            if let Some(i) = self.flow_run(p) {
                if self.append(i, p, seg) {
                    return;
                }
            }
        }
        let Some(buf) = self.bufs.get_mut(self.queued) else {
            return;
        };
        buf.clear();
        if self.offload {
            buf.extend_from_slice(&[0u8; VIRTIO_NET_HDR_LEN]);
        }
        buf.extend_from_slice(p);
        self.runs[self.queued] = match seg {
            Some(s) => Run {
                kind: s.kind,
                hdr: s.hdr,
                seg: p.len() - s.hdr,
                count: 1,
                next_seq: s.seq.wrapping_add((p.len() - s.hdr) as u32),
                closed: s.flags & TCP_PSH != 0,
            },
            None => Run::default(),
        };
        self.queued += 1;
    }

    /// The latest queued buffer of `p`'s flow (among the last [`LOOKBACK`]), merged or not:
    /// a packet may only join its flow's latest buffer, or it would overtake packets.
    fn flow_run(&self, p: &[u8]) -> Option<usize> {
        let from = self.queued.saturating_sub(LOOKBACK);
        (from..self.queued).rev().find(|&i| {
            let q = self.bufs[i].get(VIRTIO_NET_HDR_LEN..).unwrap_or_default();
            q.len() >= IPV4_HDR + 4
                && q[0] == 0x45
                && q[9] == p[9]
                && q[12..20] == p[12..20]
                && q[IPV4_HDR..IPV4_HDR + 4] == p[IPV4_HDR..IPV4_HDR + 4]
        })
    }

    /// Appends `p` to run `i` if it continues it; false if it does not.
    fn append(&mut self, i: usize, p: &[u8], s: &Segment) -> bool {
        let run = self.runs[i];
        let buf = &self.bufs[i];
        let q = &buf[VIRTIO_NET_HDR_LEN..];
        let payload = p.len() - s.hdr;
        let fits = run.kind == s.kind
            && !run.closed
            && run.hdr == s.hdr
            && payload <= run.seg
            && q.len() + payload <= MAX_IP_LEN
            && buf.len() + payload <= buf.capacity()
            // ToS, DF and TTL equal (the super-packet has one IP header).
            && q[1] == p[1]
            && q[6] >> 5 == p[6] >> 5
            && q[8] == p[8];
        if !fits {
            return false;
        }
        if s.kind == Kind::Tcp
            && (s.seq != run.next_seq
                // ACK number, window and options: the header of the first segment stands
                // for all of them.
                || q[IPV4_HDR + 8..IPV4_HDR + 12] != p[IPV4_HDR + 8..IPV4_HDR + 12]
                || q[IPV4_HDR + 20..run.hdr] != p[IPV4_HDR + 20..s.hdr])
        {
            return false;
        }
        if run.count == 1 && !l4_checksum_ok(q) {
            self.runs[i].kind = Kind::Single;
            return false;
        }
        if !l4_checksum_ok(p) {
            return false;
        }
        let buf = &mut self.bufs[i];
        buf.extend_from_slice(&p[s.hdr..]);
        if s.flags & TCP_PSH != 0 {
            buf[VIRTIO_NET_HDR_LEN + IPV4_HDR + 13] |= TCP_PSH;
        }
        let run = &mut self.runs[i];
        run.count += 1;
        run.next_seq = run.next_seq.wrapping_add(payload as u32);
        run.closed = payload < run.seg || s.flags & TCP_PSH != 0;
        true
    }

    /// Fills in the headers of every merged run (virtio-net GSO header, IP length and
    /// checksum, UDP length, the L4 pseudo-header checksum the kernel completes) and returns
    /// the queued buffers, ready to write, with the packets each holds; [`Coalescer::clear`]
    /// afterwards.
    pub fn finish(&mut self) -> impl Iterator<Item = (&[u8], usize)> {
        for (buf, run) in self.bufs.iter_mut().zip(&self.runs).take(self.queued) {
            if !self.offload || run.count < 2 {
                continue;
            }
            let (hdr, p) = buf.split_at_mut(VIRTIO_NET_HDR_LEN);
            let len = p.len() as u16;
            p[2..4].copy_from_slice(&len.to_be_bytes());
            p[10..12].fill(0);
            let ip_sum = !fold(sum(&p[..IPV4_HDR], 0));
            p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
            let l4_len = p.len() - IPV4_HDR;
            let (gso_type, csum_offset) = match run.kind {
                Kind::Udp => {
                    p[IPV4_HDR + 4..IPV4_HDR + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                    (VIRTIO_NET_HDR_GSO_UDP_L4, 6usize)
                }
                _ => (VIRTIO_NET_HDR_GSO_TCPV4, 16usize),
            };
            let partial = fold(pseudo(p, l4_len));
            let at = IPV4_HDR + csum_offset;
            p[at..at + 2].copy_from_slice(&partial.to_be_bytes());
            // struct virtio_net_hdr, in the host's byte order (tun-rs's layout).
            hdr[0] = NEEDS_CSUM;
            hdr[1] = gso_type;
            hdr[2..4].copy_from_slice(&(run.hdr as u16).to_ne_bytes());
            hdr[4..6].copy_from_slice(&(run.seg as u16).to_ne_bytes());
            hdr[6..8].copy_from_slice(&(IPV4_HDR as u16).to_ne_bytes());
            hdr[8..10].copy_from_slice(&(csum_offset as u16).to_ne_bytes());
        }
        self.bufs
            .iter()
            .zip(&self.runs)
            .take(self.queued)
            .map(|(b, r)| (b.as_slice(), r.count.max(1)))
    }

    /// Forgets the queued buffers (they keep their capacity).
    pub fn clear(&mut self) {
        self.queued = 0;
    }

    /// Packets queued (merged segments counted one by one).
    #[cfg(test)]
    pub fn packets(&self) -> usize {
        self.runs[..self.queued]
            .iter()
            .map(|r| r.count.max(1))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CAP: usize = 65_535;

    /// An IPv4 TCP segment from port 1000 to `port` with valid checksums.
    fn tcp(port: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[100, 80, 0, 1]);
        p[16..20].copy_from_slice(&[100, 80, 0, 2]);
        p[20..22].copy_from_slice(&1000u16.to_be_bytes());
        p[22..24].copy_from_slice(&port.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&77u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p[34..36].copy_from_slice(&512u16.to_be_bytes());
        p.extend_from_slice(payload);
        let ip = !fold(sum(&p[..20], 0));
        p[10..12].copy_from_slice(&ip.to_be_bytes());
        let l4 = !fold(sum(&p[20..], pseudo(&p, p.len() - 20)));
        p[36..38].copy_from_slice(&l4.to_be_bytes());
        p
    }

    /// The plain definition: big-endian 16-bit words, an odd last byte as the high byte.
    fn reference_sum(data: &[u8]) -> u16 {
        let mut acc = 0u64;
        for w in data.chunks(2) {
            acc += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
        fold(acc)
    }

    #[test]
    fn the_fast_sum_matches_the_definition() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut data = vec![0u8; 1500];
        for b in &mut data {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        for len in (0..100).chain([1279, 1280, 1400, 1499, 1500]) {
            for start in [0, 1, 3] {
                let d = &data[start..start + len.min(1500 - start)];
                assert_eq!(fold(sum(d, 0)), reference_sum(d), "len {len} from {start}");
                assert_eq!(
                    fold(sum(d, 0x1234)),
                    fold(u64::from(reference_sum(d)) + 0x1234)
                );
            }
        }
        assert_eq!(fold(sum(&[0xff; 1400], 0)), 0xffff);
        assert_eq!(fold(sum(&[0; 1400], 0)), 0);
    }

    fn ne16(b: &[u8]) -> u16 {
        u16::from_ne_bytes([b[0], b[1]])
    }

    #[test]
    fn a_tcp_burst_becomes_one_gso_super_packet() {
        let mut c = Coalescer::new(8, CAP, true, true);
        let segs: Vec<Vec<u8>> = (0..4u32)
            .map(|i| {
                let len = if i == 3 { 300 } else { 1000 };
                let flags = if i == 3 { TCP_ACK | TCP_PSH } else { TCP_ACK };
                tcp(5201, 1 + i * 1000, flags, &vec![i as u8; len])
            })
            .collect();
        for s in &segs {
            assert!(l4_checksum_ok(s));
            c.push(s);
        }
        assert_eq!(c.packets(), 4);
        let out: Vec<(&[u8], usize)> = c.finish().collect();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1, 4);
        let (hdr, p) = out[0].0.split_at(VIRTIO_NET_HDR_LEN);
        assert_eq!((hdr[0], hdr[1]), (NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4));
        assert_eq!(ne16(&hdr[2..]), 40, "hdr_len");
        assert_eq!(ne16(&hdr[4..]), 1000, "gso_size");
        assert_eq!(
            (ne16(&hdr[6..]), ne16(&hdr[8..])),
            (20, 16),
            "csum start, offset"
        );
        assert_eq!(p.len(), 40 + 3300);
        assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
        assert_eq!(fold(sum(&p[..20], 0)), 0xffff, "IP header checksum");
        assert_eq!(p[33], TCP_ACK | TCP_PSH, "the last segment's PSH");
        let partial = u16::from_be_bytes([p[36], p[37]]);
        assert_eq!(partial, fold(pseudo(p, p.len() - 20)), "pseudo-header sum");
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(&p[40 + i * 1000..40 + i * 1000 + s.len() - 40], &s[40..]);
        }
        // What the kernel does with it: complete the checksum over the whole segment.
        let mut full = p.to_vec();
        let check = !fold(sum(&full[20..], 0));
        full[36..38].copy_from_slice(&check.to_be_bytes());
        assert!(l4_checksum_ok(&full));
    }

    #[test]
    fn only_continuations_of_a_flow_merge() {
        let mut c = Coalescer::new(16, CAP, true, true);
        let pay = [7u8; 100];
        c.push(&tcp(1, 1, TCP_ACK, &pay));
        c.push(&tcp(2, 1, TCP_ACK, &pay)); // another flow
        c.push(&tcp(1, 101, TCP_ACK, &pay)); // joins flow 1 across flow 2
        c.push(&tcp(2, 101, TCP_ACK, &pay)); // joins flow 2
        assert_eq!(c.finish().count(), 2, "two interleaved streams, two runs");
        c.clear();
        c.push(&tcp(1, 500, TCP_ACK, &pay)); // a sequence gap
        c.push(&tcp(1, 600, TCP_ACK, &[1; 101])); // larger than the run's segments
        let mut bad = tcp(1, 701, TCP_ACK, &pay);
        bad[60] ^= 1; // corrupted payload
        c.push(&bad);
        c.push(&tcp(1, 801, 0x02 | TCP_ACK, &pay)); // SYN never merges
        c.push(&tcp(3, 1, TCP_ACK, &[1; 50]));
        c.push(&tcp(3, 51, TCP_ACK, &[1; 40])); // shorter: ends the run
        c.push(&tcp(3, 91, TCP_ACK, &[1; 40]));
        assert_eq!(c.packets(), 7);
        let out: Vec<&[u8]> = c.finish().map(|(b, _)| b).collect();
        assert_eq!(out.len(), 6, "{} runs", out.len());
        // The corrupted packet is written as it came, with a plain header.
        let written = out
            .iter()
            .find(|b| b[VIRTIO_NET_HDR_LEN..] == bad[..])
            .unwrap();
        assert_eq!(&written[..VIRTIO_NET_HDR_LEN], &[0u8; VIRTIO_NET_HDR_LEN]);
        c.clear();
        assert_eq!(c.packets(), 0);
    }

    #[test]
    fn without_offload_or_udp_gso_nothing_merges() {
        let pay = [3u8; 100];
        let mut c = Coalescer::new(4, CAP, false, false);
        c.push(&tcp(1, 1, TCP_ACK, &pay));
        c.push(&tcp(1, 101, TCP_ACK, &pay));
        let out: Vec<&[u8]> = c.finish().map(|(b, _)| b).collect();
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0],
            &tcp(1, 1, TCP_ACK, &pay)[..],
            "no header without offload"
        );
        let mut udp = tcp(9, 0, 0, &pay);
        udp[9] = 17;
        udp[26..28].copy_from_slice(&[0, 0]); // no UDP checksum: never merged
        assert!(segment(&udp, true).is_none());
        udp[26] = 1;
        assert!(
            segment(&udp, false).is_none(),
            "UDP needs the device's UDP GSO"
        );
        assert!(segment(&udp, true).is_some());
        for short in [&[0x45u8][..], &[], &[0x60; 40]] {
            assert!(segment(short, true).is_none());
            let mut c = Coalescer::new(2, CAP, true, true);
            c.push(short);
            c.push(short);
            assert_eq!(c.finish().count(), 2);
        }
    }
}
