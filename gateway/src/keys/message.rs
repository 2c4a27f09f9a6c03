//! The key-exchange messages and their encoding. Parsing checks every
//! length before it reads, and a message is refused whole if anything in
//! it is off; the error says what.
//!
//! Layout (big-endian): magic `MGKX`, version 1, kind, body length u16,
//! then the body:
//! - init (1): exchange id u64, epoch u32, suite u8, initiator id and
//!   responder id (each a length byte and 1 to 63 bytes of letters, digits,
//!   `-`, `_`, `.`), nonce (16), X25519 public key (32), the SPI the
//!   initiator chose for its inbound SA u32;
//! - response (2): exchange id u64, nonce (16), public key (32), the SPI the
//!   responder chose u32, MAC (32);
//! - confirm (3): exchange id u64, MAC (32);
//! - wrapped key (4): epoch u32, a KMS ciphertext of 1 to 400 bytes (u16
//!   length first): an epoch's data key as it travels (`keys::wrapped`).

use crate::esp::CipherSuite;
use crate::ids::valid_id;

use super::epoch::Epoch;
use super::wrapped::MAX_WRAPPED_LEN;

const MAGIC: &[u8; 4] = b"MGKX";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 8;
/// No message is longer: a wrapped key of the largest ciphertext (an init
/// with two 63-byte ids is 201 bytes).
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + 6 + MAX_WRAPPED_LEN;
pub const NONCE_LEN: usize = 16;
pub const PUBLIC_LEN: usize = 32;
pub const MAC_LEN: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Init {
    pub exchange: u64,
    pub epoch: Epoch,
    pub suite: CipherSuite,
    pub initiator: String,
    pub responder: String,
    pub nonce: [u8; NONCE_LEN],
    pub public: [u8; PUBLIC_LEN],
    pub spi: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub exchange: u64,
    pub nonce: [u8; NONCE_LEN],
    pub public: [u8; PUBLIC_LEN],
    pub spi: u32,
    pub mac: [u8; MAC_LEN],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confirm {
    pub exchange: u64,
    pub mac: [u8; MAC_LEN],
}

/// An epoch's KMS data key as KMS encrypted it (never its plaintext).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wrapped {
    pub epoch: Epoch,
    pub ciphertext: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Init(Init),
    Response(Response),
    Confirm(Confirm),
    Wrapped(Wrapped),
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed key-exchange message: {0}")]
pub struct Malformed(pub String);

fn suite_code(s: CipherSuite) -> u8 {
    match s {
        CipherSuite::Aes128Gcm => 1,
        CipherSuite::Aes256Gcm => 2,
    }
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(MAX_MESSAGE_LEN);
        let kind = match self {
            Message::Init(m) => {
                body.extend_from_slice(&m.exchange.to_be_bytes());
                body.extend_from_slice(&m.epoch.to_be_bytes());
                body.push(suite_code(m.suite));
                for id in [&m.initiator, &m.responder] {
                    body.push(id.len() as u8);
                    body.extend_from_slice(id.as_bytes());
                }
                body.extend_from_slice(&m.nonce);
                body.extend_from_slice(&m.public);
                body.extend_from_slice(&m.spi.to_be_bytes());
                1
            }
            Message::Response(m) => {
                body.extend_from_slice(&m.exchange.to_be_bytes());
                body.extend_from_slice(&m.nonce);
                body.extend_from_slice(&m.public);
                body.extend_from_slice(&m.spi.to_be_bytes());
                body.extend_from_slice(&m.mac);
                2
            }
            Message::Confirm(m) => {
                body.extend_from_slice(&m.exchange.to_be_bytes());
                body.extend_from_slice(&m.mac);
                3
            }
            Message::Wrapped(m) => {
                body.extend_from_slice(&m.epoch.to_be_bytes());
                body.extend_from_slice(&(m.ciphertext.len() as u16).to_be_bytes());
                body.extend_from_slice(&m.ciphertext);
                4
            }
        };
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(kind);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Message, Malformed> {
        let bad = |s: String| Malformed(s);
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(bad(format!(
                "{} bytes, more than the {MAX_MESSAGE_LEN} any message has",
                bytes.len()
            )));
        }
        if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
            return Err(bad("not a meshgate key-exchange message".into()));
        }
        if bytes[4] != VERSION {
            return Err(bad(format!(
                "version {} (this gateway speaks {VERSION})",
                bytes[4]
            )));
        }
        let len = u16::from_be_bytes([bytes[6], bytes[7]]) as usize;
        let mut r = Reader {
            bytes: &bytes[HEADER_LEN..],
        };
        if r.bytes.len() != len {
            return Err(bad(format!(
                "the header says {len} body bytes, {} came",
                r.bytes.len()
            )));
        }
        let message = match bytes[5] {
            1 => {
                let exchange = r.u64()?;
                let epoch = r.u32()?;
                let suite = match r.u8()? {
                    1 => CipherSuite::Aes128Gcm,
                    2 => CipherSuite::Aes256Gcm,
                    s => return Err(bad(format!("unknown cipher suite {s}"))),
                };
                let initiator = r.id("initiator")?;
                let responder = r.id("responder")?;
                Message::Init(Init {
                    exchange,
                    epoch,
                    suite,
                    initiator,
                    responder,
                    nonce: r.array()?,
                    public: r.array()?,
                    spi: r.u32()?,
                })
            }
            2 => Message::Response(Response {
                exchange: r.u64()?,
                nonce: r.array()?,
                public: r.array()?,
                spi: r.u32()?,
                mac: r.array()?,
            }),
            3 => Message::Confirm(Confirm {
                exchange: r.u64()?,
                mac: r.array()?,
            }),
            4 => {
                let epoch = r.u32()?;
                let len = u16::from_be_bytes(r.array()?) as usize;
                if len == 0 || len > MAX_WRAPPED_LEN {
                    return Err(bad(format!(
                        "a wrapped key of {len} bytes (1 to {MAX_WRAPPED_LEN})"
                    )));
                }
                Message::Wrapped(Wrapped {
                    epoch,
                    ciphertext: r.take(len)?.to_vec(),
                })
            }
            k => return Err(bad(format!("unknown message kind {k}"))),
        };
        if !r.bytes.is_empty() {
            return Err(bad(format!("{} bytes after the message", r.bytes.len())));
        }
        Ok(message)
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], Malformed> {
        if self.bytes.len() < n {
            return Err(Malformed(format!(
                "truncated: {n} more bytes needed, {} left",
                self.bytes.len()
            )));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn id(&mut self, what: &str) -> Result<String, Malformed> {
        let len = self.u8()? as usize;
        let raw = self.take(len)?;
        match std::str::from_utf8(raw) {
            Ok(id) if valid_id(id) => Ok(id.to_string()),
            _ => Err(Malformed(format!("the {what} id is not a member id"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() -> Message {
        Message::Init(Init {
            exchange: 42,
            epoch: 3,
            suite: CipherSuite::Aes256Gcm,
            initiator: "region-1".into(),
            responder: "region-2".into(),
            nonce: [1; NONCE_LEN],
            public: [2; PUBLIC_LEN],
            spi: 0x1234,
        })
    }

    #[test]
    fn messages_round_trip() {
        for m in [
            init(),
            Message::Response(Response {
                exchange: 42,
                nonce: [3; NONCE_LEN],
                public: [4; PUBLIC_LEN],
                spi: 9,
                mac: [5; MAC_LEN],
            }),
            Message::Confirm(Confirm {
                exchange: 42,
                mac: [6; MAC_LEN],
            }),
            Message::Wrapped(Wrapped {
                epoch: 7,
                ciphertext: vec![8; MAX_WRAPPED_LEN],
            }),
        ] {
            assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        }
    }

    #[test]
    fn every_truncation_and_corruption_is_refused_with_a_reason() {
        let bytes = init().encode();
        for n in 0..bytes.len() {
            assert!(Message::decode(&bytes[..n]).is_err(), "{n} bytes");
        }
        let cases: [(usize, u8, &str); 5] = [
            (0, b'X', "not a meshgate key-exchange message"),
            (4, 2, "version 2 (this gateway speaks 1)"),
            (5, 9, "unknown message kind 9"),
            (20, 7, "unknown cipher suite 7"),
            (22, b' ', "the initiator id is not a member id"),
        ];
        for (at, value, reason) in cases {
            let mut b = bytes.clone();
            b[at] = value;
            let e = Message::decode(&b).unwrap_err().to_string();
            assert!(e.ends_with(reason), "byte {at}: {e}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(Message::decode(&long)
            .unwrap_err()
            .to_string()
            .contains("the header says"));
        assert!(Message::decode(&[0; 500])
            .unwrap_err()
            .to_string()
            .contains("500 bytes, more than the 414"));
        // A wrapped key: empty, or longer than it says.
        let w = |len: usize| {
            Message::Wrapped(Wrapped {
                epoch: 2,
                ciphertext: vec![1; len],
            })
            .encode()
        };
        assert!(Message::decode(&w(0))
            .unwrap_err()
            .to_string()
            .ends_with("a wrapped key of 0 bytes (1 to 400)"));
        let mut b = w(10);
        b[13] = 11;
        assert!(Message::decode(&b)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }
}
