//! ESP key material: AES key || 4-byte salt, as RFC 4106 §8.1 keys it and as
//! strongSwan and tshark write it.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

use super::aead::CipherSuite;

/// Longest key material of any suite (AES-256 key + salt).
const MAX_LEN: usize = 36;
const SALT_LEN: usize = 4;

/// AES key followed by the 4-byte salt. Lives in a fixed array (no heap copy
/// to forget), is zeroized on drop and never printed.
#[derive(Clone)]
pub struct KeyMaterial {
    suite: CipherSuite,
    bytes: [u8; MAX_LEN],
}

/// Why key material was refused. Messages never contain key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("expected {expected} bytes (AES-{bits} key + 4-byte salt) for {suite}, got {got}")]
    Length {
        suite: &'static str,
        bits: usize,
        expected: usize,
        got: usize,
    },
    #[error("invalid hex digit at offset {offset} of the key")]
    Hex { offset: usize },
    #[error("odd number of hex digits ({digits}) in the key")]
    OddHex { digits: usize },
    #[error("{bytes} bytes asked of HKDF-SHA256, which gives at most 8160")]
    DeriveTooLong { bytes: usize },
    #[error("key material is for {key} but {expected} was asked for")]
    SuiteMismatch {
        key: &'static str,
        expected: &'static str,
    },
}

impl KeyError {
    pub(crate) fn length(suite: CipherSuite, got: usize) -> Self {
        KeyError::Length {
            suite: suite.name(),
            bits: suite.key_len() * 8,
            expected: suite.key_material_len(),
            got,
        }
    }
}

impl KeyMaterial {
    /// `bytes` is the AES key followed by the salt: 20 or 36 bytes.
    pub fn new(suite: CipherSuite, bytes: &[u8]) -> Result<Self, KeyError> {
        if bytes.len() != suite.key_material_len() {
            return Err(KeyError::length(suite, bytes.len()));
        }
        let mut key = KeyMaterial {
            suite,
            bytes: [0; MAX_LEN],
        };
        key.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(key)
    }

    /// Hex as in strongSwan and tshark configs; an optional `0x` prefix and
    /// surrounding whitespace are accepted.
    pub fn from_hex(suite: CipherSuite, hex: &str) -> Result<Self, KeyError> {
        let hex = hex.trim();
        let digits = hex
            .strip_prefix("0x")
            .or_else(|| hex.strip_prefix("0X"))
            .unwrap_or(hex)
            .as_bytes();
        if !digits.len().is_multiple_of(2) {
            return Err(KeyError::OddHex {
                digits: digits.len(),
            });
        }
        let len = digits.len() / 2;
        if len != suite.key_material_len() {
            return Err(KeyError::length(suite, len));
        }
        let mut buf = Zeroizing::new([0u8; MAX_LEN]);
        for (i, pair) in digits.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or(KeyError::Hex { offset: 2 * i })?;
            let lo = hex_value(pair[1]).ok_or(KeyError::Hex { offset: 2 * i + 1 })?;
            buf[i] = hi << 4 | lo;
        }
        Self::new(suite, &buf[..len])
    }

    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The AES key alone.
    pub(crate) fn key(&self) -> &[u8] {
        &self.bytes[..self.suite.key_len()]
    }

    /// Whether two key materials are equal (compared without early exit;
    /// used to refuse configs that give two SAs one key).
    pub fn same_as(&self, other: &KeyMaterial) -> bool {
        self.suite == other.suite
            && self
                .bytes
                .iter()
                .zip(other.bytes.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// A short, non-secret name for this key: SHA-256 over a domain label
    /// and the key, truncated. It lets state on disk (sequence-number
    /// reservations) be tied to a key without storing the key.
    pub fn fingerprint(&self) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"meshgate sa key fingerprint v1\0");
        ctx.update(&self.bytes[..self.suite.key_material_len()]);
        ctx.finish().as_ref()[..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Keying material derived from this one as a pre-shared secret:
    /// HKDF-SHA256 (RFC 5869) with this key (all of it, salt included) as
    /// the input keying material, `salt` and `info`, filling `out`. How a
    /// configured key yields fresh SA keys per session without leaving
    /// this type.
    pub fn expand(&self, salt: &[u8], info: &[&[u8]], out: &mut [u8]) -> Result<(), KeyError> {
        struct Len(usize);
        impl ring::hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt)
            .extract(&self.bytes[..self.suite.key_material_len()]);
        let too_long = KeyError::DeriveTooLong { bytes: out.len() };
        prk.expand(info, Len(out.len()))
            .and_then(|okm| okm.fill(out))
            .map_err(|_| too_long)
    }

    /// The salt that prefixes every nonce (RFC 4106 §4).
    pub(crate) fn salt(&self) -> [u8; SALT_LEN] {
        let at = self.suite.key_len();
        let mut salt = [0; SALT_LEN];
        salt.copy_from_slice(&self.bytes[at..at + SALT_LEN]);
        salt
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl Drop for KeyMaterial {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyMaterial(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX128: &str = "000102030405060708090a0b0c0d0e0fdeadbeef";

    #[test]
    fn splits_key_and_salt() {
        let k = KeyMaterial::from_hex(CipherSuite::Aes128Gcm, HEX128).expect("valid");
        assert_eq!(k.key(), (0u8..16).collect::<Vec<_>>());
        assert_eq!(k.salt(), [0xde, 0xad, 0xbe, 0xef]);
        let k = KeyMaterial::new(CipherSuite::Aes256Gcm, &[9; 36]).expect("valid");
        assert_eq!(k.key(), [9; 32]);
        assert_eq!(k.salt(), [9; 4]);
    }

    #[test]
    fn hex_accepts_prefix_whitespace_and_case() {
        let plain = KeyMaterial::from_hex(CipherSuite::Aes128Gcm, HEX128).expect("valid");
        for variant in [
            format!("0x{HEX128}"),
            format!("  0X{}\n", HEX128.to_uppercase()),
            format!("\t{HEX128} "),
        ] {
            let k = KeyMaterial::from_hex(CipherSuite::Aes128Gcm, &variant).expect("valid");
            assert_eq!((k.key(), k.salt()), (plain.key(), plain.salt()));
        }
    }

    #[test]
    fn errors_name_the_problem_not_the_key() {
        let err = KeyMaterial::new(CipherSuite::Aes128Gcm, &[0xab; 16]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected 20 bytes (AES-128 key + 4-byte salt) for aes128gcm16, got 16"
        );
        let err = KeyMaterial::from_hex(CipherSuite::Aes256Gcm, HEX128).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected 36 bytes (AES-256 key + 4-byte salt) for aes256gcm16, got 20"
        );
        let bad = HEX128.replace("0e", "0g");
        let err = KeyMaterial::from_hex(CipherSuite::Aes128Gcm, &bad).unwrap_err();
        assert_eq!(err, KeyError::Hex { offset: 29 });
        assert!(!err.to_string().contains("0g"));
        let err = KeyMaterial::from_hex(CipherSuite::Aes128Gcm, &HEX128[1..]).unwrap_err();
        assert_eq!(err, KeyError::OddHex { digits: 39 });
        assert!(!err.to_string().contains(&HEX128[1..]));
    }

    #[test]
    fn debug_is_redacted() {
        let k = KeyMaterial::from_hex(CipherSuite::Aes128Gcm, HEX128).expect("valid");
        assert_eq!(format!("{k:?}"), "KeyMaterial(<redacted>)");
        assert_eq!(format!("{:?}", k.clone()), "KeyMaterial(<redacted>)");
    }
}
