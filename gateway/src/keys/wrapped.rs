//! KMS data keys as they travel in the mesh: only their ciphertext, as
//! KMS encrypted it under the user's key. A member takes a ciphertext
//! from a peer only when its digest is the one the CA's order in force
//! names for that epoch (`keys::order`), before anything asks KMS about
//! it; one that came before the order naming it waits, a few per peer.
//! The configured epoch's ciphertext comes from the appliance's own file.

use std::collections::BTreeMap;

use super::rotation::EpochState;
use super::Epoch;

/// The first 128 bits of a ciphertext's SHA-256: what an order names.
pub type KeyDigest = [u8; 16];

/// The largest ciphertext taken (KMS's for a 32-byte data key is 184
/// bytes; moto's 96).
pub const MAX_WRAPPED_LEN: usize = 400;

/// Ciphertexts kept per peer before an order names them.
const PENDING_PER_PEER: usize = 2;

/// Bytes from their hex form (a ciphertext's file, the control socket).
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

/// The hex form of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn digest(ciphertext: &[u8]) -> KeyDigest {
    let d = ring::digest::digest(&ring::digest::SHA256, ciphertext);
    let mut out = [0u8; 16];
    out.copy_from_slice(&d.as_ref()[..16]);
    out
}

/// Why a ciphertext from a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WrappedError {
    #[error("its data key for epoch {0} is not the one the CA's order names")]
    Mismatch(Epoch),
    #[error("a data key for epoch {0}, which is revoked")]
    Revoked(Epoch),
}

/// The ciphertexts a member holds (checked), and those waiting for the
/// order that names them.
#[derive(Clone, Default)]
pub struct WrappedKeys {
    held: BTreeMap<Epoch, Vec<u8>>,
    pending: BTreeMap<String, BTreeMap<Epoch, Vec<u8>>>,
}

impl WrappedKeys {
    /// The configured epoch's ciphertext, from the appliance's own file.
    pub fn configured(epoch: Epoch, ciphertext: Vec<u8>) -> WrappedKeys {
        let mut w = WrappedKeys::default();
        w.held.insert(epoch, ciphertext);
        w
    }

    /// The ciphertexts held, by epoch.
    pub fn held(&self) -> impl Iterator<Item = (Epoch, &[u8])> {
        self.held.iter().map(|(e, c)| (*e, c.as_slice()))
    }

    /// A ciphertext from `from` (a peer, or the operator): `Ok(true)` if
    /// it is newly held, `Ok(false)` if known or waiting for its order.
    pub fn offer(
        &mut self,
        from: &str,
        epoch: Epoch,
        ciphertext: &[u8],
        state: &EpochState,
    ) -> Result<bool, WrappedError> {
        if state.is_revoked(epoch) {
            return Err(WrappedError::Revoked(epoch));
        }
        if self.held.get(&epoch).is_some_and(|c| c == ciphertext) {
            return Ok(false);
        }
        match state.wrapped_digest(epoch) {
            Some(d) if d == digest(ciphertext) => {
                self.held.insert(epoch, ciphertext.to_vec());
                Ok(true)
            }
            Some(_) => Err(WrappedError::Mismatch(epoch)),
            None => {
                let mine = self.pending.entry(from.to_string()).or_default();
                mine.insert(epoch, ciphertext.to_vec());
                while mine.len() > PENDING_PER_PEER {
                    mine.pop_first();
                }
                Ok(false)
            }
        }
    }

    /// A new order is in force: held ciphertexts it contradicts or revokes
    /// go, waiting ones it names are held. Returns the epochs newly held.
    pub fn adopt(&mut self, state: &EpochState) -> Vec<Epoch> {
        self.held.retain(|e, c| {
            !state.is_revoked(*e) && state.wrapped_digest(*e).is_none_or(|d| d == digest(c))
        });
        let mut new = Vec::new();
        for mine in self.pending.values_mut() {
            mine.retain(|&e, c| {
                if state.is_revoked(e) {
                    return false;
                }
                match state.wrapped_digest(e) {
                    Some(d) if d == digest(c) => {
                        if let std::collections::btree_map::Entry::Vacant(slot) = self.held.entry(e)
                        {
                            slot.insert(std::mem::take(c));
                            new.push(e);
                        }
                        false
                    }
                    Some(_) => false,
                    None => true,
                }
            });
        }
        self.pending.retain(|_, m| !m.is_empty());
        new
    }

    /// A peer gone: what it sent that no order named goes with it.
    pub fn forget(&mut self, peer: &str) {
        self.pending.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::order::{MeshOrder, SignedOrder};

    fn state(current: Epoch, floor: Epoch, wrapped: Vec<(Epoch, KeyDigest)>) -> EpochState {
        let mut s = EpochState::new(1);
        let order = MeshOrder {
            serial: 1,
            current,
            floor,
            revoked: Vec::new(),
            certs: Vec::new(),
            wrapped,
        };
        s.adopt(&order, SignedOrder::default()).expect("newer");
        s
    }

    #[test]
    fn a_ciphertext_is_held_only_when_the_order_in_force_names_it() {
        let (good, forged) = (b"kms ciphertext 2".to_vec(), b"a member's own".to_vec());
        let s = state(2, 1, vec![(2, digest(&good))]);
        let mut w = WrappedKeys::configured(1, b"epoch 1".to_vec());
        assert_eq!(
            w.offer("m2", 2, &forged, &s),
            Err(WrappedError::Mismatch(2))
        );
        assert_eq!(w.offer("m2", 2, &good, &s), Ok(true));
        assert_eq!(w.offer("m3", 2, &good, &s), Ok(false), "known");
        let held: Vec<Epoch> = w.held().map(|(e, _)| e).collect();
        assert_eq!(held, vec![1, 2]);
        // An epoch below the floor is refused outright.
        assert_eq!(w.offer("m2", 0, &good, &s), Err(WrappedError::Revoked(0)));
    }

    #[test]
    fn a_ciphertext_ahead_of_its_order_waits_and_a_hostile_peer_cannot_displace_it() {
        let good = b"kms ciphertext 3".to_vec();
        let before = state(2, 1, vec![]);
        let mut w = WrappedKeys::default();
        assert_eq!(w.offer("m2", 3, &good, &before), Ok(false), "waits");
        // A hostile peer floods junk for the same epoch: only its own slots.
        for i in 0..10u8 {
            let _ = w.offer("evil", 3 + u32::from(i % 3), &[i; 8], &before);
        }
        let after = {
            let mut s = before.clone();
            let order = MeshOrder {
                serial: 2,
                current: 3,
                floor: 2,
                revoked: Vec::new(),
                certs: Vec::new(),
                wrapped: vec![(3, digest(&good))],
            };
            s.adopt(&order, SignedOrder::default()).expect("newer");
            s
        };
        assert_eq!(w.adopt(&after), vec![3]);
        assert_eq!(w.held().collect::<Vec<_>>(), vec![(3, good.as_slice())]);
        assert!(w.pending.values().all(|m| m.len() <= PENDING_PER_PEER));
        w.forget("evil");
        assert!(!w.pending.contains_key("evil"));
    }

    #[test]
    fn an_order_drops_revoked_and_contradicted_ciphertexts() {
        let mut w = WrappedKeys::configured(1, b"epoch 1".to_vec());
        // The CA's order names another ciphertext for epoch 1, and moves
        // past it later.
        let s = state(1, 1, vec![(1, digest(b"the real one"))]);
        assert!(w.adopt(&s).is_empty());
        assert_eq!(w.held().count(), 0);
        let mut w = WrappedKeys::configured(1, b"epoch 1".to_vec());
        assert!(w.adopt(&state(3, 2, vec![])).is_empty());
        assert_eq!(w.held().count(), 0, "epoch 1 is below the floor");
    }
}
