//! The key schedule of the exchange: the transcript hash, the MACs, and
//! the keys an X25519 agreement and the epoch key yield.

use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::{digest, hkdf, hmac};
use zeroize::Zeroizing;

use super::message::{Response, MAC_LEN, PUBLIC_LEN};
use super::ExchangeError;
use crate::esp::{CipherSuite, KeyMaterial};

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// The keys one exchange yields.
pub(super) struct Derived {
    pub initiator_to_responder: KeyMaterial,
    pub responder_to_initiator: KeyMaterial,
    pub confirm: Zeroizing<[u8; 32]>,
}

/// A hash of everything both sides said, so the keys and MACs bind the
/// whole exchange (ids, epoch, suite, nonces, public keys and SPIs).
pub(super) fn transcript(init: &[u8], r: &Response) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"meshgate key exchange v1\0");
    ctx.update(init);
    ctx.update(&r.exchange.to_be_bytes());
    ctx.update(&r.nonce);
    ctx.update(&r.public);
    ctx.update(&r.spi.to_be_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

pub(super) fn mac(key: &[u8; 32], role: &[u8], transcript: &[u8; 32]) -> [u8; MAC_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(role);
    ctx.update(transcript);
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

pub(super) fn verify(
    key: &[u8; 32],
    role: &[u8],
    transcript: &[u8; 32],
    tag: &[u8; MAC_LEN],
) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut msg = Vec::with_capacity(role.len() + 32);
    msg.extend_from_slice(role);
    msg.extend_from_slice(transcript);
    hmac::verify(&key, &msg, tag).is_ok()
}

pub(super) fn derive(
    suite: CipherSuite,
    epoch_key: &[u8; 32],
    secret: EphemeralPrivateKey,
    peer_public: &[u8; PUBLIC_LEN],
    transcript: &[u8; 32],
) -> Result<Derived, ExchangeError> {
    agreement::agree_ephemeral(
        secret,
        &UnparsedPublicKey::new(&X25519, peer_public),
        |shared| expand(suite, epoch_key, shared, transcript),
    )
    .map_err(|_| ExchangeError::Crypto)?
}

/// The key schedule proper: HKDF-SHA256 (RFC 5869) with the epoch key as
/// salt, the shared secret as input, and the transcript in the info, into
/// the key and salt of each direction and the confirmation key.
fn expand(
    suite: CipherSuite,
    epoch_key: &[u8; 32],
    shared: &[u8],
    transcript: &[u8; 32],
) -> Result<Derived, ExchangeError> {
    let n = suite.key_material_len();
    let mut okm = Zeroizing::new([0u8; 2 * 36 + 32]);
    hkdf::Salt::new(hkdf::HKDF_SHA256, epoch_key)
        .extract(shared)
        .expand(&[b"meshgate sa keys v1", transcript], Len(2 * n + 32))
        .and_then(|o| o.fill(&mut okm[..2 * n + 32]))
        .map_err(|_| ExchangeError::Crypto)?;
    let mut confirm = Zeroizing::new([0u8; 32]);
    confirm.copy_from_slice(&okm[2 * n..2 * n + 32]);
    Ok(Derived {
        initiator_to_responder: KeyMaterial::new(suite, &okm[..n])
            .map_err(|_| ExchangeError::Crypto)?,
        responder_to_initiator: KeyMaterial::new(suite, &okm[n..2 * n])
            .map_err(|_| ExchangeError::Crypto)?,
        confirm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Known answers, computed with an independent HKDF-SHA256 and
    /// HMAC-SHA256 (Python's hmac and hashlib, RFC 5869 by hand) for epoch
    /// key 01.., shared secret 02.., transcript 03.., confirmation key 04..
    #[test]
    fn the_key_schedule_gives_the_known_answers() {
        let okm = hex("5e71714f2eb45876a2cb0ecd67b1b126c87dad809fb7db812ea75c04225b1eca57510fcc37a2e899d0540714ee5f6a0478fa9a5a1fe2e1fddee6e921896eaaf7c25f78c13d35bbf8");
        let d = expand(CipherSuite::Aes128Gcm, &[1; 32], &[2; 32], &[3; 32]).unwrap();
        let suite = CipherSuite::Aes128Gcm;
        assert!(d
            .initiator_to_responder
            .same_as(&KeyMaterial::new(suite, &okm[..20]).unwrap()));
        assert!(d
            .responder_to_initiator
            .same_as(&KeyMaterial::new(suite, &okm[20..40]).unwrap()));
        assert_eq!(&d.confirm[..], &okm[40..72]);
        let tag = mac(&[4; 32], b"initiator", &[3; 32]);
        assert_eq!(
            tag.to_vec(),
            hex("88c8d9386da1f528511b58fae0dd631691abf0da22f9a09b09ac5595103e5838")
        );
        assert!(verify(&[4; 32], b"initiator", &[3; 32], &tag));
        assert!(!verify(&[4; 32], b"responder", &[3; 32], &tag));
        // AES-256-GCM: the same schedule, 36 bytes of key and salt each way.
        let okm = hex("5e71714f2eb45876a2cb0ecd67b1b126c87dad809fb7db812ea75c04225b1eca57510fcc37a2e899d0540714ee5f6a0478fa9a5a1fe2e1fddee6e921896eaaf7c25f78c13d35bbf87867138c45762188fb143e5cc686cb9b32090e2784fddc14374a2e0485048e97");
        let suite = CipherSuite::Aes256Gcm;
        let d = expand(suite, &[1; 32], &[2; 32], &[3; 32]).unwrap();
        assert!(d
            .responder_to_initiator
            .same_as(&KeyMaterial::new(suite, &okm[36..72]).unwrap()));
        assert_eq!(&d.confirm[..], &okm[72..104]);
    }
}
