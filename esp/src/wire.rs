//! What arrives on the wire before any SA is chosen: the SPI that picks the
//! SA, and RFC 3948 demultiplexing of the ESP-in-UDP port.

use super::{ESP_HEADER_LEN, ICV_LEN};

/// RFC 3948 §2.2/§4: what a datagram on the ESP-in-UDP port is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpPayloadKind {
    /// An ESP packet for the SA with this SPI.
    Esp { spi: u32 },
    /// A one-byte 0xFF NAT-keepalive (RFC 3948 §2.3): drop silently.
    NatKeepalive,
    /// Starts with the 4-byte zero non-ESP marker: IKE (RFC 3948 §2.2).
    NonEsp,
    /// Cannot be any of the above.
    Malformed,
}

/// The SPI of an ESP packet, for looking up its SA.
pub fn peek_spi(packet: &[u8]) -> Option<u32> {
    packet
        .first_chunk::<4>()
        .map(|spi| u32::from_be_bytes(*spi))
}

/// Classifies a UDP payload received on the ESP-in-UDP port.
pub fn classify_udp_payload(payload: &[u8]) -> UdpPayloadKind {
    if payload == [0xff] {
        return UdpPayloadKind::NatKeepalive;
    }
    match peek_spi(payload) {
        None => UdpPayloadKind::Malformed,
        Some(0) => UdpPayloadKind::NonEsp,
        Some(_) if payload.len() < ESP_HEADER_LEN + ICV_LEN => UdpPayloadKind::Malformed,
        // RFC 4303 §2.1: SPIs 1..=255 are reserved and never assigned.
        Some(1..=255) => UdpPayloadKind::Malformed,
        Some(spi) => UdpPayloadKind::Esp { spi },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esp(spi: u32, len: usize) -> Vec<u8> {
        let mut p = vec![0xab; len];
        p[..4].copy_from_slice(&spi.to_be_bytes());
        p
    }

    #[test]
    fn classifies() {
        use UdpPayloadKind::*;
        assert_eq!(classify_udp_payload(&[0xff]), NatKeepalive);
        assert_eq!(classify_udp_payload(&[0xfe]), Malformed);
        assert_eq!(classify_udp_payload(&[0xff, 0xff]), Malformed);
        assert_eq!(classify_udp_payload(&[]), Malformed);
        assert_eq!(classify_udp_payload(&[0, 0, 0]), Malformed);
        assert_eq!(classify_udp_payload(&esp(0, 4)), NonEsp);
        assert_eq!(
            classify_udp_payload(&esp(0, 300)),
            NonEsp,
            "IKE after the marker"
        );
        assert_eq!(
            classify_udp_payload(&esp(0x1234_5678, 31)),
            Malformed,
            "shorter than header + ICV"
        );
        assert_eq!(
            classify_udp_payload(&esp(0x1234_5678, 32)),
            Esp { spi: 0x1234_5678 }
        );
        assert_eq!(
            classify_udp_payload(&esp(1, 100)),
            Malformed,
            "reserved SPI"
        );
        assert_eq!(
            classify_udp_payload(&esp(255, 100)),
            Malformed,
            "reserved SPI"
        );
        assert_eq!(classify_udp_payload(&esp(256, 100)), Esp { spi: 256 });
        assert_eq!(
            classify_udp_payload(&esp(u32::MAX, 100)),
            Esp { spi: u32::MAX }
        );
    }

    #[test]
    fn peeks_spi() {
        assert_eq!(peek_spi(&esp(0xdead_beef, 4)), Some(0xdead_beef));
        assert_eq!(peek_spi(&[1, 2, 3]), None);
    }
}
