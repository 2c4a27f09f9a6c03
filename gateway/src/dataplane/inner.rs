//! Just enough of the inner IP header to route and filter a packet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::esp::{NEXT_HEADER_IPV4, NEXT_HEADER_IPV6};

/// The addresses of an inner packet, and its length per its own header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InnerHeader {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Length the IP header claims; at most the buffer's length.
    pub len: usize,
    /// The ESP next-header value for this packet (4 or 41).
    pub next_header: u8,
}

/// Parses the IPv4 or IPv6 header at the start of `p`; `None` if it is not
/// a well-formed IP packet that fits in `p`.
pub fn parse(p: &[u8]) -> Option<InnerHeader> {
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if p.len() < 20 || ihl < 20 {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([p[2], p[3]]));
            if len < ihl || len > p.len() {
                return None;
            }
            let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            Some(InnerHeader {
                src: src.into(),
                dst: dst.into(),
                len,
                next_header: NEXT_HEADER_IPV4,
            })
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let len = 40 + usize::from(u16::from_be_bytes([p[4], p[5]]));
            if len > p.len() {
                return None;
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&p[8..24]);
            let src = Ipv6Addr::from(a);
            a.copy_from_slice(&p[24..40]);
            let dst = Ipv6Addr::from(a);
            Some(InnerHeader {
                src: src.into(),
                dst: dst.into(),
                len,
                next_header: NEXT_HEADER_IPV6,
            })
        }
        _ => None,
    }
}

/// Destinations that by their scope never leave the link: IPv6 link-local
/// unicast and interface- or link-local multicast, IPv4 224.0.0.0/24.
pub fn is_link_scoped(dst: IpAddr) -> bool {
    match dst {
        IpAddr::V6(a) => {
            let s = a.segments();
            (s[0] & 0xffc0) == 0xfe80 || (s[0] & 0xff00 == 0xff00 && (s[0] & 0x000f) <= 2)
        }
        IpAddr::V4(a) => a.octets()[..3] == [224, 0, 0],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_and_v6_and_rejects_junk() {
        let mut v4 = vec![0u8; 28];
        v4[0] = 0x45;
        v4[2..4].copy_from_slice(&28u16.to_be_bytes());
        v4[12..16].copy_from_slice(&[10, 1, 1, 10]);
        v4[16..20].copy_from_slice(&[10, 2, 1, 10]);
        let h = parse(&v4).unwrap();
        assert_eq!(
            (h.src, h.dst, h.len, h.next_header),
            (
                "10.1.1.10".parse().unwrap(),
                "10.2.1.10".parse().unwrap(),
                28,
                4
            )
        );
        v4.push(0); // trailing TFC padding is ignored
        assert_eq!(parse(&v4).unwrap().len, 28);
        v4[2..4].copy_from_slice(&100u16.to_be_bytes());
        assert!(parse(&v4).is_none(), "claims more than the buffer holds");

        let mut v6 = vec![0u8; 48];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&8u16.to_be_bytes());
        v6[8] = 0xfd;
        v6[24] = 0xfd;
        v6[39] = 2;
        let h = parse(&v6).unwrap();
        assert_eq!(
            (h.dst, h.len, h.next_header),
            ("fd00::2".parse().unwrap(), 48, 41)
        );

        for (a, local) in [
            ("ff02::16", true),
            ("fe80::1", true),
            ("ff05::1", false),
            ("fd00::1", false),
            ("224.0.0.22", true),
            ("239.1.1.1", false),
        ] {
            assert_eq!(is_link_scoped(a.parse().unwrap()), local, "{a}");
        }
        for junk in [&[][..], &[0x45][..], &[0x70; 60][..], &[0x60; 39][..]] {
            assert!(parse(junk).is_none());
        }
    }
}
