//! TUN segmentation and coalescing offloads (virtio_net_hdr), as the
//! Linux TUN driver exposes them with IFF_VNET_HDR and TUNSETOFFLOAD.
//!
//! Outbound, the kernel hands us TCP super-packets of up to 64 KiB (TSO);
//! [`segment_tcp`] cuts them into MSS-sized packets with correct headers
//! and checksums just before each is sealed. Inbound, [`Coalescer`] merges
//! consecutive decrypted segments of one TCP flow back into a super-packet
//! (GRO) so one TUN write carries many packets. Both are pure functions of
//! bytes, tested in memory.

use super::checksum::{csum_add, csum_fold};

/// Length of `struct virtio_net_hdr` (no `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;

const F_NEEDS_CSUM: u8 = 1;
const F_DATA_VALID: u8 = 2;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

/// The largest IP packet the coalescer builds.
const MAX_COALESCED: usize = 65535;

/// `struct virtio_net_hdr`, in host byte order (TUN's default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }

    /// A packet we authenticated ourselves. Kernels that honour
    /// VIRTIO_NET_HDR_F_DATA_VALID on TUN writes skip verifying its
    /// checksum again; the others verify it as usual, which is harmless.
    pub fn authenticated() -> VnetHdr {
        VnetHdr {
            flags: F_DATA_VALID,
            ..VnetHdr::default()
        }
    }

    pub fn is_tcp_gso(&self) -> bool {
        matches!(self.gso_type & !GSO_ECN, GSO_TCPV4 | GSO_TCPV6)
    }
}

/// Why an offloaded packet from the TUN could not be handled.
#[derive(Debug, PartialEq, Eq)]
pub struct OffloadError;

/// The TCP/UDP pseudo-header sum for `ip` (the IP header) and an L4 length.
fn pseudo_header(ip: &[u8], v6: bool, proto: u8, l4_len: usize) -> u64 {
    let mut sum = if v6 {
        csum_add(0, &ip[8..40])
    } else {
        csum_add(0, &ip[12..20])
    };
    sum = csum_add(sum, &[0, proto]);
    csum_add(sum, &(l4_len as u32).to_be_bytes())
}

fn ipv4_header_checksum(ip: &mut [u8], ihl: usize) {
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = !csum_fold(csum_add(0, &ip[..ihl]));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Completes a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM): the field
/// at `csum_start + csum_offset` holds the pseudo-header sum.
pub fn complete_checksum(hdr: &VnetHdr, pkt: &mut [u8]) -> Result<(), OffloadError> {
    if hdr.flags & F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > pkt.len() {
        return Err(OffloadError);
    }
    // A computed 0 is sent as 0xffff (the same value in ones' complement):
    // for UDP a 0 means "no checksum", which IPv6 forbids.
    let c = match !csum_fold(csum_add(0, &pkt[start..])) {
        0 => 0xffff,
        c => c,
    };
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

// ---- segmentation (TSO) ----------------------------------------------------

/// Where a TCP packet's headers are.
#[derive(Clone, Copy, Debug)]
struct TcpLayout {
    v6: bool,
    ip_len: usize,
    tcp_len: usize,
}

impl TcpLayout {
    fn parse(p: &[u8]) -> Option<TcpLayout> {
        let (v6, ip_len) = match p.first()? >> 4 {
            4 => {
                let ihl = usize::from(p[0] & 0x0f) * 4;
                if ihl < 20 || p.len() < ihl || p[9] != 6 {
                    return None;
                }
                (false, ihl)
            }
            6 => {
                if p.len() < 40 || p[6] != 6 {
                    // IPv6 extension headers are not walked: such a
                    // super-packet is dropped as malformed.
                    return None;
                }
                (true, 40)
            }
            _ => return None,
        };
        let tcp_len = usize::from(p.get(ip_len + 12)? >> 4) * 4;
        if tcp_len < 20 || p.len() < ip_len + tcp_len {
            return None;
        }
        Some(TcpLayout {
            v6,
            ip_len,
            tcp_len,
        })
    }

    fn hdr_len(&self) -> usize {
        self.ip_len + self.tcp_len
    }
}

/// Sets lengths, IPv4 id and checksums of a TCP packet built from
/// headers + payload; `seq` and flags must already be in place.
fn finish_tcp(p: &mut [u8], l: TcpLayout) {
    let total = p.len();
    let l4_len = total - l.ip_len;
    if l.v6 {
        p[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    } else {
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ipv4_header_checksum(p, l.ip_len);
    }
    let c = l.ip_len + 16;
    p[c..c + 2].copy_from_slice(&[0, 0]);
    let sum = csum_add(pseudo_header(p, l.v6, 6, l4_len), &p[l.ip_len..]);
    p[c..c + 2].copy_from_slice(&(!csum_fold(sum)).to_be_bytes());
}

/// The segments of a TSO super-packet: their count and the length of
/// every segment but the last, and of the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segments {
    pub count: usize,
    pub full_len: usize,
    pub last_len: usize,
}

/// Plans the segmentation of `pkt` (a TCP super-packet with `hdr`).
pub fn plan_segments(hdr: &VnetHdr, pkt: &[u8]) -> Result<Segments, OffloadError> {
    let l = TcpLayout::parse(pkt).ok_or(OffloadError)?;
    let mss = usize::from(hdr.gso_size);
    let payload = pkt.len() - l.hdr_len();
    if mss == 0 || payload == 0 {
        return Err(OffloadError);
    }
    let count = payload.div_ceil(mss);
    let last = payload - (count - 1) * mss;
    Ok(Segments {
        count,
        full_len: l.hdr_len() + mss,
        last_len: l.hdr_len() + last,
    })
}

/// Writes segment `i` of the super-packet `pkt` into `out` (which must be
/// exactly the segment's length, per [`plan_segments`]).
pub fn write_segment(
    hdr: &VnetHdr,
    pkt: &[u8],
    i: usize,
    out: &mut [u8],
) -> Result<(), OffloadError> {
    let l = TcpLayout::parse(pkt).ok_or(OffloadError)?;
    let mss = usize::from(hdr.gso_size);
    let h = l.hdr_len();
    let start = h + i * mss;
    let end = (start + mss).min(pkt.len());
    if mss == 0 || start >= end || out.len() != h + (end - start) {
        return Err(OffloadError);
    }
    out[..h].copy_from_slice(&pkt[..h]);
    out[h..].copy_from_slice(&pkt[start..end]);
    let last = end == pkt.len();
    if !l.v6 {
        let id = u16::from_be_bytes([pkt[4], pkt[5]]).wrapping_add(i as u16);
        out[4..6].copy_from_slice(&id.to_be_bytes());
    }
    let t = l.ip_len;
    let seq = u32::from_be_bytes([pkt[t + 4], pkt[t + 5], pkt[t + 6], pkt[t + 7]])
        .wrapping_add((i * mss) as u32);
    out[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    // FIN and PSH belong to the last segment only, CWR to the first.
    let mut flags = pkt[t + 13];
    if !last {
        flags &= !(0x01 | 0x08);
    }
    if i > 0 {
        flags &= !0x80;
    }
    out[t + 13] = flags;
    finish_tcp(out, l);
    Ok(())
}

// ---- coalescing (GRO) ------------------------------------------------------

/// Merges consecutive in-order segments of one TCP flow into one
/// super-packet for a single TUN write; anything else passes through alone.
/// Every packet handed out starts with its virtio_net_hdr.
pub struct Coalescer {
    buf: Vec<u8>,
    /// Bytes of the pending packet (after the virtio header); 0 = none.
    len: usize,
    layout: Option<TcpLayout>,
    segments: usize,
    mss: usize,
    next_seq: u32,
    /// The pending packet may not grow (its last segment was short or
    /// carried PSH).
    closed: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer {
            buf: vec![0; VNET_HDR_LEN + MAX_COALESCED],
            len: 0,
            layout: None,
            segments: 0,
            mss: 0,
            next_seq: 0,
            closed: false,
        }
    }
}

impl Coalescer {
    /// Adds one inner packet; `out` receives every packet that is complete.
    pub fn push<E>(
        &mut self,
        pkt: &[u8],
        out: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.try_merge(pkt) {
            return Ok(());
        }
        self.flush(out)?;
        if pkt.len() > MAX_COALESCED {
            return Ok(());
        }
        self.buf[VNET_HDR_LEN..VNET_HDR_LEN + pkt.len()].copy_from_slice(pkt);
        self.len = pkt.len();
        self.segments = 1;
        self.layout = TcpLayout::parse(pkt).filter(|l| mergeable_ip(pkt, *l));
        if let Some(l) = self.layout {
            let payload = pkt.len() - l.hdr_len();
            let t = l.ip_len;
            self.mss = payload;
            self.next_seq = u32::from_be_bytes([pkt[t + 4], pkt[t + 5], pkt[t + 6], pkt[t + 7]])
                .wrapping_add(payload as u32);
            // Only plain ACK data segments grow (PSH may end one).
            let flags = pkt[t + 13];
            self.closed = payload == 0 || flags & !0x18 != 0 || flags & 0x08 != 0;
        }
        Ok(())
    }

    fn try_merge(&mut self, pkt: &[u8]) -> bool {
        let Some(l) = self.layout else { return false };
        if self.closed || self.len == 0 {
            return false;
        }
        let Some(pl) = TcpLayout::parse(pkt) else {
            return false;
        };
        if pl.v6 != l.v6
            || pl.ip_len != l.ip_len
            || pl.tcp_len != l.tcp_len
            || !mergeable_ip(pkt, pl)
        {
            return false;
        }
        let h = l.hdr_len();
        let payload = pkt.len() - h;
        if payload == 0 || payload > self.mss || self.len + payload > MAX_COALESCED {
            return false;
        }
        let cur = &self.buf[VNET_HDR_LEN..VNET_HDR_LEN + self.len];
        let t = l.ip_len;
        // Same addresses and IP fields that must match (v4: tos, ttl, DF;
        // v6: traffic class, flow label, hop limit).
        let same_ip = if l.v6 {
            cur[..4] == pkt[..4] && cur[7..40] == pkt[7..40]
        } else {
            cur[1] == pkt[1]
                && cur[6] & 0x40 == pkt[6] & 0x40
                && cur[8..10] == pkt[8..10]
                && cur[12..20] == pkt[12..20]
        };
        // Ports, ack, data offset, window and options equal; flags equal
        // but for PSH on the new segment.
        let same_tcp = cur[t..t + 4] == pkt[t..t + 4]
            && cur[t + 8..t + 13] == pkt[t + 8..t + 13]
            && cur[t + 13] == pkt[t + 13] & !0x08
            && cur[t + 14..t + 16] == pkt[t + 14..t + 16]
            && cur[t + 20..h] == pkt[t + 20..h];
        let seq = u32::from_be_bytes([pkt[t + 4], pkt[t + 5], pkt[t + 6], pkt[t + 7]]);
        if !same_ip || !same_tcp || seq != self.next_seq {
            return false;
        }
        let at = VNET_HDR_LEN + self.len;
        self.buf[at..at + payload].copy_from_slice(&pkt[h..]);
        self.len += payload;
        self.segments += 1;
        self.next_seq = seq.wrapping_add(payload as u32);
        if pkt[t + 13] & 0x08 != 0 {
            self.buf[VNET_HDR_LEN + t + 13] |= 0x08;
            self.closed = true;
        }
        if payload < self.mss {
            self.closed = true;
        }
        true
    }

    /// Hands out the pending packet, if any.
    pub fn flush<E>(&mut self, out: &mut impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        if self.len == 0 {
            return Ok(());
        }
        let len = self.len;
        self.len = 0;
        let pkt = &mut self.buf[VNET_HDR_LEN..VNET_HDR_LEN + len];
        let hdr = match self.layout {
            Some(l) if self.segments > 1 => {
                // A super-packet: lengths for the whole, the TCP checksum
                // field holding the pseudo-header sum for the kernel to
                // complete per segment (CHECKSUM_PARTIAL).
                let total = pkt.len();
                let l4_len = total - l.ip_len;
                if l.v6 {
                    pkt[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
                } else {
                    pkt[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                    ipv4_header_checksum(pkt, l.ip_len);
                }
                let c = l.ip_len + 16;
                let partial = csum_fold(pseudo_header(pkt, l.v6, 6, l4_len));
                pkt[c..c + 2].copy_from_slice(&partial.to_be_bytes());
                VnetHdr {
                    flags: F_NEEDS_CSUM,
                    gso_type: if l.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                    hdr_len: l.hdr_len() as u16,
                    gso_size: self.mss as u16,
                    csum_start: l.ip_len as u16,
                    csum_offset: 16,
                }
            }
            _ => VnetHdr::authenticated(),
        };
        hdr.write(&mut self.buf[..VNET_HDR_LEN]);
        self.layout = None;
        out(&self.buf[..VNET_HDR_LEN + len])
    }
}

/// IPv4 packets with options or fragments are never merged.
fn mergeable_ip(p: &[u8], l: TcpLayout) -> bool {
    l.v6 || (l.ip_len == 20 && u16::from_be_bytes([p[6], p[7]]) & 0x3fff == 0)
}

/// The virtio header value that says "no offload".
pub const NO_OFFLOAD: VnetHdr = VnetHdr {
    flags: 0,
    gso_type: GSO_NONE,
    hdr_len: 0,
    gso_size: 0,
    csum_start: 0,
    csum_offset: 0,
};

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A TCP super-packet of `payload` bytes from 10.1.1.10:1000 to 10.2.1.10:5001.
    pub(crate) fn super_packet(v6: bool, payload: usize, flags: u8) -> Vec<u8> {
        let ip_len = if v6 { 40 } else { 20 };
        let mut p = vec![0u8; ip_len + 32 + payload];
        let total = p.len();
        if v6 {
            // fd00:1::1 -> fd00:2::1
            p[0] = 0x60;
            p[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
            p[6] = 6;
            p[7] = 64;
            p[8] = 0xfd;
            p[11] = 1;
            p[23] = 1;
            p[24] = 0xfd;
            p[27] = 2;
            p[39] = 1;
        } else {
            p[0] = 0x45;
            p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
            p[6] = 0x40;
            p[8] = 64;
            p[9] = 6;
            p[12..16].copy_from_slice(&[10, 1, 1, 10]);
            p[16..20].copy_from_slice(&[10, 2, 1, 10]);
        }
        let t = ip_len;
        p[t..t + 2].copy_from_slice(&1000u16.to_be_bytes());
        p[t + 2..t + 4].copy_from_slice(&5001u16.to_be_bytes());
        p[t + 4..t + 8].copy_from_slice(&0xffff_f000u32.to_be_bytes()); // wraps inside
        p[t + 8..t + 12].copy_from_slice(&77u32.to_be_bytes());
        p[t + 12] = 8 << 4; // 32-byte header: timestamps
        p[t + 13] = flags;
        p[t + 14..t + 16].copy_from_slice(&512u16.to_be_bytes());
        p[t + 20..t + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        for (i, b) in p[t + 32..].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        p
    }

    fn l4_checksum_ok(p: &[u8]) -> bool {
        let l = TcpLayout::parse(p).unwrap();
        csum_fold(csum_add(
            pseudo_header(p, l.v6, 6, p.len() - l.ip_len),
            &p[l.ip_len..],
        )) == 0xffff
    }

    fn segments(v6: bool, payload: usize, mss: u16, flags: u8) -> (Vec<u8>, Vec<Vec<u8>>) {
        let p = super_packet(v6, payload, flags);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            gso_size: mss,
            ..Default::default()
        };
        let plan = plan_segments(&hdr, &p).unwrap();
        let segs = (0..plan.count)
            .map(|i| {
                let mut out = vec![
                    0u8;
                    if i + 1 == plan.count {
                        plan.last_len
                    } else {
                        plan.full_len
                    }
                ];
                write_segment(&hdr, &p, i, &mut out).unwrap();
                out
            })
            .collect();
        (p, segs)
    }

    #[test]
    fn segments_carry_correct_headers_and_checksums() {
        for v6 in [false, true] {
            let (p, segs) = segments(v6, 10_000, 1348, 0x18); // ACK|PSH
            assert_eq!(segs.len(), 8);
            let t = if v6 { 40 } else { 20 };
            let mut payload = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                assert!(l4_checksum_ok(s), "segment {i} TCP checksum");
                if !v6 {
                    assert_eq!(
                        csum_fold(csum_add(0, &s[..20])),
                        0xffff,
                        "IPv4 header checksum"
                    );
                    assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, s.len());
                    assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0x1234 + i as u16);
                } else {
                    assert_eq!(u16::from_be_bytes([s[4], s[5]]) as usize, s.len() - 40);
                }
                let seq = u32::from_be_bytes([s[t + 4], s[t + 5], s[t + 6], s[t + 7]]);
                assert_eq!(seq, 0xffff_f000u32.wrapping_add(i as u32 * 1348));
                assert_eq!(s[t + 13] & 0x08 != 0, i == 7, "PSH only on the last");
                payload.extend_from_slice(&s[t + 32..]);
            }
            assert_eq!(payload, p[t + 32..]);
        }
    }

    #[test]
    fn coalescing_rebuilds_the_super_packet() {
        for v6 in [false, true] {
            let (p, segs) = segments(v6, 10_000, 1348, 0x18);
            let out = coalesced(segs.iter().map(|s| s.as_slice()));
            assert_eq!(out.len(), 1, "one write for the whole flight");
            let hdr = VnetHdr::parse(&out[0]).unwrap();
            assert!(hdr.is_tcp_gso());
            assert_eq!(hdr.gso_size, 1348);
            assert_eq!(hdr.flags, F_NEEDS_CSUM);
            let merged = &out[0][VNET_HDR_LEN..];
            assert_eq!(merged.len(), p.len());
            let t = if v6 { 40 } else { 20 };
            assert_eq!(merged[t + 32..], p[t + 32..]);
            assert_eq!(merged[t + 13], 0x18, "PSH of the last segment kept");
            // Resegmenting what we built gives the same segments back.
            let again: Vec<Vec<u8>> = {
                let plan = plan_segments(&hdr, merged).unwrap();
                (0..plan.count)
                    .map(|i| {
                        let mut o = vec![
                            0u8;
                            if i + 1 == plan.count {
                                plan.last_len
                            } else {
                                plan.full_len
                            }
                        ];
                        write_segment(&hdr, merged, i, &mut o).unwrap();
                        o
                    })
                    .collect()
            };
            assert_eq!(again, segs);
        }
    }

    #[test]
    fn coalescer_keeps_flows_and_gaps_apart() {
        let (_, segs) = segments(false, 5000, 1000, 0x10);
        let mut other = segs[1].clone();
        other[20..22].copy_from_slice(&1001u16.to_be_bytes()); // another flow
        let mut c = Coalescer::default();
        let mut sizes = Vec::new();
        let mut sink = |b: &[u8]| -> Result<(), ()> {
            sizes.push((VnetHdr::parse(b).unwrap().gso_type, b.len() - VNET_HDR_LEN));
            Ok(())
        };
        for s in [&segs[0], &segs[1], &other, &segs[3], &segs[4]] {
            c.push(s, &mut sink).unwrap();
        }
        c.flush(&mut sink).unwrap();
        // [0,1] merge; `other` alone; 3 does not follow 1 (gap at 2), then 3+4 merge.
        let h = 52;
        assert_eq!(
            sizes,
            vec![
                (GSO_TCPV4, h + 2000),
                (GSO_NONE, h + 1000),
                (GSO_TCPV4, h + 2000)
            ]
        );
    }

    /// What one coalescer writes for `packets`, flushed at the end.
    fn coalesced<'a>(packets: impl IntoIterator<Item = &'a [u8]>) -> Vec<Vec<u8>> {
        let mut c = Coalescer::default();
        let mut out = Vec::new();
        let mut sink = |b: &[u8]| -> Result<(), ()> {
            out.push(b.to_vec());
            Ok(())
        };
        for p in packets {
            c.push(p, &mut sink).unwrap();
        }
        c.flush(&mut sink).unwrap();
        out
    }

    #[test]
    fn non_tcp_passes_through_marked_authenticated() {
        let icmp = [
            0x45u8, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 10, 1, 1, 10, 10, 2, 1, 10, 8, 0, 0, 0, 0,
            0, 0, 0,
        ];
        let out = coalesced([icmp.as_slice()]);
        assert_eq!(out.len(), 1);
        assert_eq!(VnetHdr::parse(&out[0]).unwrap(), VnetHdr::authenticated());
        assert_eq!(&out[0][VNET_HDR_LEN..], &icmp);
    }

    #[test]
    fn completes_partial_checksums_and_rejects_bad_offsets() {
        let (_, segs) = segments(false, 100, 1000, 0x18);
        let mut p = segs[0].clone();
        let partial = csum_fold(pseudo_header(&p, false, 6, p.len() - 20));
        p[36..38].copy_from_slice(&partial.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..Default::default()
        };
        complete_checksum(&hdr, &mut p).unwrap();
        assert_eq!(p, segs[0]);
        let bad = VnetHdr {
            csum_start: 2000,
            ..hdr
        };
        assert_eq!(complete_checksum(&bad, &mut p), Err(OffloadError));
        assert!(plan_segments(&VnetHdr { gso_size: 0, ..hdr }, &p).is_err());
        assert!(plan_segments(&hdr, &[0x45, 0, 0]).is_err());
    }
}
