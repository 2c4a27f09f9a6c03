//! AES-GCM backends behind one enum, so the packet path is monomorphic and
//! both implementations can be checked against each other and benchmarked.

use aes_gcm::aead::AeadInOut;
use aes_gcm::KeyInit;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_128_GCM, AES_256_GCM};

use super::keys::{KeyError, KeyMaterial};
use super::ICV_LEN;

/// Salt (4) || explicit IV (8), RFC 4106 §4.
pub const NONCE_LEN: usize = 12;

/// The ESP transforms meshgate speaks (RFC 4106, 16-octet ICV).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CipherSuite {
    Aes128Gcm,
    Aes256Gcm,
}

impl CipherSuite {
    pub const ALL: [CipherSuite; 2] = [CipherSuite::Aes128Gcm, CipherSuite::Aes256Gcm];

    /// AES key length alone.
    pub fn key_len(self) -> usize {
        match self {
            CipherSuite::Aes128Gcm => 16,
            CipherSuite::Aes256Gcm => 32,
        }
    }

    /// AES key plus the 4-byte salt (RFC 4106 §8.1): what keying supplies.
    pub fn key_material_len(self) -> usize {
        self.key_len() + 4
    }

    /// The IKEv2/strongSwan proposal name, also used in config files.
    pub fn name(self) -> &'static str {
        match self {
            CipherSuite::Aes128Gcm => "aes128gcm16",
            CipherSuite::Aes256Gcm => "aes256gcm16",
        }
    }

    /// Inverse of [`CipherSuite::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Which AES-GCM implementation an SA uses. Packets are byte-identical
/// either way; ring is the faster default (see ANCHORS.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Backend {
    #[default]
    Ring,
    RustCrypto,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Ring, Backend::RustCrypto];

    /// The name used in config files.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Ring => "ring",
            Backend::RustCrypto => "rustcrypto",
        }
    }

    /// Inverse of [`Backend::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// The backend refused the operation: a bad tag on open, or (on seal) input
/// longer than GCM allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("AEAD operation failed")]
pub struct AeadError;

/// A keyed AES-GCM instance. The nonce is built by the caller (salt || IV).
pub struct Aead(Keyed);

/// An enum rather than `Box<dyn>` keeps the packet path monomorphic; it is
/// private so the backends' types stay out of meshgate's API.
enum Keyed {
    Ring(LessSafeKey),
    Aes128(aes_gcm::Aes128Gcm),
    Aes256(aes_gcm::Aes256Gcm),
}

impl Aead {
    /// Keys the chosen backend with the key part of `key` (the salt stays
    /// with the caller, which builds nonces).
    pub fn new(suite: CipherSuite, backend: Backend, key: &KeyMaterial) -> Result<Self, KeyError> {
        if key.suite() != suite {
            return Err(KeyError::SuiteMismatch {
                key: key.suite().name(),
                expected: suite.name(),
            });
        }
        let bytes = key.key();
        let wrong_len = || KeyError::length(suite, bytes.len() + 4);
        Ok(Aead(match (backend, suite) {
            (Backend::Ring, CipherSuite::Aes128Gcm) => Keyed::Ring(LessSafeKey::new(
                UnboundKey::new(&AES_128_GCM, bytes).map_err(|_| wrong_len())?,
            )),
            (Backend::Ring, CipherSuite::Aes256Gcm) => Keyed::Ring(LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| wrong_len())?,
            )),
            (Backend::RustCrypto, CipherSuite::Aes128Gcm) => {
                Keyed::Aes128(aes_gcm::Aes128Gcm::new_from_slice(bytes).map_err(|_| wrong_len())?)
            }
            (Backend::RustCrypto, CipherSuite::Aes256Gcm) => {
                Keyed::Aes256(aes_gcm::Aes256Gcm::new_from_slice(bytes).map_err(|_| wrong_len())?)
            }
        }))
    }

    /// Encrypts `data` in place and writes the 16-byte tag to `tag_out`.
    #[inline]
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag_out: &mut [u8; ICV_LEN],
    ) -> Result<(), AeadError> {
        match &self.0 {
            Keyed::Ring(key) => {
                let nonce = Nonce::assume_unique_for_key(*nonce);
                let tag = key
                    .seal_in_place_separate_tag(nonce, Aad::from(aad), data)
                    .map_err(|_| AeadError)?;
                tag_out.copy_from_slice(tag.as_ref());
            }
            Keyed::Aes128(key) => {
                let tag = key
                    .encrypt_inout_detached(&(*nonce).into(), aad, data.into())
                    .map_err(|_| AeadError)?;
                tag_out.copy_from_slice(&tag);
            }
            Keyed::Aes256(key) => {
                let tag = key
                    .encrypt_inout_detached(&(*nonce).into(), aad, data.into())
                    .map_err(|_| AeadError)?;
                tag_out.copy_from_slice(&tag);
            }
        }
        Ok(())
    }

    /// Verifies `tag` and decrypts `data` in place. On error the contents of
    /// `data` are unspecified (ring zeroes them): the caller drops the packet.
    #[inline]
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; ICV_LEN],
    ) -> Result<(), AeadError> {
        match &self.0 {
            Keyed::Ring(key) => {
                let nonce = Nonce::assume_unique_for_key(*nonce);
                key.open_in_place_separate_tag(nonce, Aad::from(aad), Tag::from(*tag), data, 0..)
                    .map(|_| ())
                    .map_err(|_| AeadError)
            }
            Keyed::Aes128(key) => key
                .decrypt_inout_detached(&(*nonce).into(), aad, data.into(), &(*tag).into())
                .map_err(|_| AeadError),
            Keyed::Aes256(key) => key
                .decrypt_inout_detached(&(*nonce).into(), aad, data.into(), &(*tag).into())
                .map_err(|_| AeadError),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_names_round_trip() {
        for suite in CipherSuite::ALL {
            assert_eq!(CipherSuite::from_name(suite.name()), Some(suite));
        }
        assert_eq!(CipherSuite::Aes128Gcm.key_material_len(), 20);
        assert_eq!(CipherSuite::Aes256Gcm.key_material_len(), 36);
        assert_eq!(CipherSuite::from_name("aes192gcm16"), None);
    }

    #[test]
    fn aead_refuses_key_of_other_suite() {
        let key = KeyMaterial::new(CipherSuite::Aes128Gcm, &[7; 20]).expect("valid key");
        assert!(matches!(
            Aead::new(CipherSuite::Aes256Gcm, Backend::Ring, &key),
            Err(KeyError::SuiteMismatch { .. })
        ));
    }

    /// Both backends agree byte for byte and reject each other's forgeries.
    #[test]
    fn backends_agree() {
        for suite in CipherSuite::ALL {
            let key =
                KeyMaterial::new(suite, &vec![0x5a; suite.key_material_len()]).expect("valid key");
            let ring = Aead::new(suite, Backend::Ring, &key).expect("ring");
            let rc = Aead::new(suite, Backend::RustCrypto, &key).expect("rustcrypto");
            let nonce = [3u8; NONCE_LEN];
            for len in [0usize, 1, 15, 16, 17, 100] {
                let plain: Vec<u8> = (0..len as u8).collect();
                let (mut a, mut b) = (plain.clone(), plain.clone());
                let (mut ta, mut tb) = ([0u8; ICV_LEN], [0u8; ICV_LEN]);
                ring.seal_in_place(&nonce, b"aad", &mut a, &mut ta)
                    .expect("seal");
                rc.seal_in_place(&nonce, b"aad", &mut b, &mut tb)
                    .expect("seal");
                assert_eq!((&a, ta), (&b, tb), "{suite:?} len {len}");

                rc.open_in_place(&nonce, b"aad", &mut a, &ta)
                    .expect("rustcrypto opens ring");
                ring.open_in_place(&nonce, b"aad", &mut b, &tb)
                    .expect("ring opens rustcrypto");
                assert_eq!(a, plain);
                assert_eq!(b, plain);

                tb[0] ^= 1;
                for aead in [&ring, &rc] {
                    let mut c = plain.clone();
                    let mut t = [0u8; ICV_LEN];
                    aead.seal_in_place(&nonce, b"aad", &mut c, &mut t)
                        .expect("seal");
                    assert_eq!(
                        aead.open_in_place(&nonce, b"aad", &mut c.clone(), &tb),
                        Err(AeadError)
                    );
                    assert_eq!(
                        aead.open_in_place(&nonce, b"AAD", &mut c.clone(), &t),
                        Err(AeadError)
                    );
                    aead.open_in_place(&nonce, b"aad", &mut c, &t)
                        .expect("genuine tag");
                }
            }
        }
    }
}
