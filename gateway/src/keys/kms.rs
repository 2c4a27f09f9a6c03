//! Epoch keys from AWS KMS: each epoch's key is a data key the operator
//! made under the user's KMS key, with an encryption context naming the
//! mesh and the epoch. The appliance decrypts its ciphertext with its own
//! role (the shell's task, `cloud::kms`), keeps the plaintext in memory
//! only, and decrypts it again every few minutes: a key the user disabled
//! or deleted, or a role that may no longer decrypt, drops the plaintext
//! (zeroized) and every new SA of that epoch fails with KMS's reason.
//! The provider itself is a cache the negotiation reads without waiting.

use std::collections::BTreeMap;
use std::sync::Mutex;

use zeroize::Zeroizing;

use super::epoch::{Epoch, EpochKey, EpochKeyError, KeyProvider, KEY_LEN};

/// The encryption context of `epoch`'s data key: KMS decrypts a
/// ciphertext only under the context it was made with, so a data key of
/// one epoch or mesh cannot be passed off as another's.
pub fn encryption_context(mesh: &str, epoch: Epoch) -> [(&'static str, String); 2] {
    [
        ("meshgate:mesh", mesh.to_string()),
        ("meshgate:epoch", epoch.to_string()),
    ]
}

enum Slot {
    /// Its ciphertext is here; KMS has not answered yet.
    Waiting,
    Ready(Zeroizing<[u8; KEY_LEN]>),
    /// KMS refused it (the key disabled or deleted, access denied).
    Refused(String),
}

/// What `status` and the metrics show of one epoch's key (never the key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyState {
    Waiting,
    Ready,
    Refused(String),
}

/// The epoch keys KMS decrypted for this appliance.
#[derive(Default)]
pub struct KmsKeys {
    slots: Mutex<BTreeMap<Epoch, Slot>>,
}

impl KmsKeys {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<Epoch, Slot>) -> T) -> T {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut slots)
    }

    /// `epoch`'s ciphertext reached this appliance; KMS is asked.
    pub fn waiting(&self, epoch: Epoch) {
        self.with(|s| {
            s.entry(epoch).or_insert(Slot::Waiting);
        });
    }

    /// KMS decrypted `epoch`'s data key. Anything but 32 bytes is refused.
    pub fn ready(&self, epoch: Epoch, plaintext: &[u8]) {
        let slot = match <[u8; KEY_LEN]>::try_from(plaintext) {
            Ok(k) => Slot::Ready(Zeroizing::new(k)),
            Err(_) => Slot::Refused(format!(
                "KMS returned a data key of {} bytes, not {KEY_LEN}",
                plaintext.len()
            )),
        };
        self.with(|s| s.insert(epoch, slot));
    }

    /// KMS refused `epoch`'s data key: its plaintext is dropped (zeroized).
    pub fn refuse(&self, epoch: Epoch, reason: String) {
        self.with(|s| s.insert(epoch, Slot::Refused(reason)));
    }

    /// An epoch revoked or past: its key goes.
    pub fn forget(&self, epoch: Epoch) {
        self.with(|s| s.remove(&epoch));
    }

    pub fn states(&self) -> Vec<(Epoch, KeyState)> {
        self.with(|s| {
            s.iter()
                .map(|(e, slot)| {
                    let state = match slot {
                        Slot::Waiting => KeyState::Waiting,
                        Slot::Ready(_) => KeyState::Ready,
                        Slot::Refused(r) => KeyState::Refused(r.clone()),
                    };
                    (*e, state)
                })
                .collect()
        })
    }
}

impl KeyProvider for KmsKeys {
    fn epoch_key(&self, epoch: Epoch) -> Result<EpochKey, EpochKeyError> {
        self.with(|s| match s.get(&epoch) {
            Some(Slot::Ready(k)) => Ok(EpochKey::new(epoch, k.clone())),
            Some(Slot::Refused(r)) => Err(EpochKeyError::Kms(r.clone())),
            Some(Slot::Waiting) => Err(EpochKeyError::Kms(
                "KMS has not decrypted its data key yet".into(),
            )),
            None => Err(EpochKeyError::Kms(
                "its KMS data key has not reached this appliance (no order names one, or no member sent it yet)".into(),
            )),
        })
    }

    fn kind(&self) -> &'static str {
        "kms"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_key_fails_closed_and_says_why() {
        let k = KmsKeys::default();
        let why = |k: &KmsKeys, e| k.epoch_key(e).err().map(|e| e.to_string());
        assert!(why(&k, 1)
            .unwrap()
            .contains("has not reached this appliance"));
        k.waiting(1);
        assert!(why(&k, 1)
            .unwrap()
            .contains("not decrypted its data key yet"));
        k.ready(1, &[7; 32]);
        assert_eq!(k.epoch_key(1).unwrap().bytes(), &[7; 32]);
        k.refuse(1, "Decrypt: DisabledException: key is disabled".into());
        assert!(
            why(&k, 1).unwrap().contains("DisabledException"),
            "{:?}",
            why(&k, 1)
        );
        assert_eq!(
            k.states(),
            vec![(
                1,
                KeyState::Refused("Decrypt: DisabledException: key is disabled".into())
            )]
        );
        k.ready(2, &[1; 16]);
        assert!(why(&k, 2).unwrap().contains("16 bytes"));
        k.forget(2);
        assert_eq!(k.states().len(), 1);
    }
}
