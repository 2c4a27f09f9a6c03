//! The probe datagrams: RFC 3948's non-ESP marker, our magic, then
//!
//! ```text
//! kind u8 (1 probe, 2 answer) | label length u8 | label | SPI u32 | seq u64 | tag (16)
//! ```
//!
//! The SPI names the SA of the pair (the prober's outbound, the
//! answerer's inbound) whose derived key MACs the datagram; the label is
//! the underlay the probe was sent over, and the answer goes back over the
//! same one. The tag is HMAC-SHA256 over everything before it, truncated.

use ring::hmac;

/// RFC 3948's non-ESP marker, then ours.
const MARKER: [u8; 4] = [0; 4];
pub const MAGIC: &[u8; 4] = b"MGU1";
const TAG_LEN: usize = 16;
/// The longest label (as `gateway.endpoints` allows).
pub const MAX_LABEL: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Probe,
    Answer,
}

/// A probe or answer, before its tag is checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: Kind,
    pub label: &'a str,
    pub spi: u32,
    pub seq: u64,
    /// The bytes the tag covers, and the tag.
    signed: &'a [u8],
    tag: &'a [u8],
}

/// Whether a non-ESP datagram on the ESP port is a probe or an answer
/// (the sessions' hellos carry another magic).
pub fn is_probe(datagram: &[u8]) -> bool {
    datagram.len() > 8 && datagram[..4] == MARKER && &datagram[4..8] == MAGIC
}

/// Splits a datagram into its fields; `None` if it is not a well-formed
/// probe or answer. Nothing here is trusted until [`Message::verify`].
pub fn parse(datagram: &[u8]) -> Option<Message<'_>> {
    if !is_probe(datagram) {
        return None;
    }
    let kind = match *datagram.get(8)? {
        1 => Kind::Probe,
        2 => Kind::Answer,
        _ => return None,
    };
    let len = usize::from(*datagram.get(9)?);
    if len == 0 || len > MAX_LABEL || datagram.len() != 10 + len + 12 + TAG_LEN {
        return None;
    }
    let label = std::str::from_utf8(&datagram[10..10 + len]).ok()?;
    let at = 10 + len;
    let spi = u32::from_be_bytes(datagram[at..at + 4].try_into().ok()?);
    let seq = u64::from_be_bytes(datagram[at + 4..at + 12].try_into().ok()?);
    let (signed, tag) = datagram.split_at(at + 12);
    Some(Message {
        kind,
        label,
        spi,
        seq,
        signed,
        tag,
    })
}

impl Message<'_> {
    /// Whether the tag is the one `key` makes (in constant time).
    pub fn verify(&self, key: &[u8; 32]) -> bool {
        let k = hmac::Key::new(hmac::HMAC_SHA256, key);
        let full = hmac::sign(&k, self.signed);
        // Constant time: every byte compared whatever the first differing.
        let diff = full.as_ref()[..TAG_LEN]
            .iter()
            .zip(self.tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        self.tag.len() == TAG_LEN && diff == 0
    }
}

/// A probe or answer over `label`, on the SA `spi`, MAC'd with `key`.
pub fn build(kind: Kind, label: &str, spi: u32, seq: u64, key: &[u8; 32]) -> Vec<u8> {
    let label = &label.as_bytes()[..label.len().min(MAX_LABEL)];
    let mut out = Vec::with_capacity(10 + label.len() + 12 + TAG_LEN);
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(MAGIC);
    out.push(match kind {
        Kind::Probe => 1,
        Kind::Answer => 2,
    });
    out.push(label.len() as u8);
    out.extend_from_slice(label);
    out.extend_from_slice(&spi.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&k, &out);
    out.extend_from_slice(&tag.as_ref()[..TAG_LEN]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_round_trips_and_only_its_key_verifies_it() {
        let key = [7u8; 32];
        let d = build(Kind::Probe, "dx", 0x1234_5678, 42, &key);
        let m = parse(&d).unwrap();
        assert_eq!(
            (m.kind, m.label, m.spi, m.seq),
            (Kind::Probe, "dx", 0x1234_5678, 42)
        );
        assert!(m.verify(&key));
        assert!(!m.verify(&[8u8; 32]));
    }

    #[test]
    fn a_changed_byte_fails_the_tag_and_junk_does_not_parse() {
        let key = [7u8; 32];
        let d = build(Kind::Probe, "dx", 1, 2, &key);
        for i in 8..d.len() {
            let mut t = d.clone();
            t[i] ^= 1;
            assert!(parse(&t).is_none_or(|m| !m.verify(&key)), "byte {i}");
        }
        // An answer made from a probe by flipping the kind does not verify.
        let mut t = d.clone();
        t[8] = 2;
        assert!(!parse(&t).unwrap().verify(&key));
        for junk in [
            &b""[..],
            &[0; 8],
            &[0, 0, 0, 0, b'M', b'G', b'U', b'1', 1],
            &d[..d.len() - 1],
        ] {
            assert!(parse(junk).is_none());
        }
        let mut long = d.clone();
        long.push(0);
        assert!(parse(&long).is_none());
        // Hellos of configured peers carry another magic.
        assert!(!is_probe(b"\0\0\0\0MGS1rest-of-a-hello"));
    }
}
