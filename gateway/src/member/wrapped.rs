//! KMS data keys between members: a member sends the ciphertexts it holds
//! to each peer that connects and to every member whenever it holds a new
//! one, and takes a peer's only against the digest in the CA's order in
//! force (`keys::wrapped`). The shell decrypts what is held with KMS
//! ([`Output::WrappedKeys`]) and says when a key is ready
//! ([`Member::epoch_key_ready`]).

use std::time::Instant;

use super::{Member, Output, Payload};
use crate::keys::message::{Message, Wrapped};
use crate::keys::Epoch;

impl Member {
    /// A wrapped key from `from` (a peer over the channel, or the operator
    /// with an order).
    pub(super) fn handle_wrapped(&mut self, from: &str, m: Wrapped, now: Instant) {
        let Some(w) = self.wrapped.as_mut() else {
            self.refuse(
                from,
                "wrapped_key",
                "unexpected",
                "a KMS data key, but this gateway's epoch keys are local".into(),
            );
            return;
        };
        match w.offer(from, m.epoch, &m.ciphertext, &self.epochs) {
            Ok(true) => {
                tracing::info!(
                    epoch = m.epoch,
                    from,
                    "the KMS data key of epoch {} arrived",
                    m.epoch
                );
                self.wrapped_changed(&[m.epoch]);
            }
            Ok(false) => {}
            Err(e) => self.refuse(from, "wrapped_key", "unauthorized", e.to_string()),
        }
        self.drive(now);
    }

    /// The operator's wrapped key, given with its order (`keys rotate
    /// --kms-key`): checked against the order in force like a peer's.
    pub fn operator_wrapped(
        &mut self,
        epoch: Epoch,
        ciphertext: Vec<u8>,
        now: Instant,
    ) -> Result<(), String> {
        let Some(w) = self.wrapped.as_mut() else {
            return Err("this gateway's epoch keys are local, not KMS data keys".into());
        };
        match w.offer("the operator", epoch, &ciphertext, &self.epochs) {
            Ok(new) => {
                if new {
                    self.wrapped_changed(&[epoch]);
                }
                self.drive(now);
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// After an order: the held keys it names, contradicts or revokes.
    pub(super) fn adopt_wrapped(&mut self) {
        let Some(w) = self.wrapped.as_mut() else {
            return;
        };
        let new = w.adopt(&self.epochs);
        self.wrapped_changed(&new);
    }

    /// The held set changed: the shell decrypts it, and the new ones go to
    /// every member alive.
    pub(super) fn wrapped_changed(&mut self, new: &[Epoch]) {
        let Some(w) = self.wrapped.as_ref() else {
            return;
        };
        let held: Vec<(Epoch, Vec<u8>)> = w.held().map(|(e, c)| (e, c.to_vec())).collect();
        let alive: Vec<String> = self
            .agent
            .membership()
            .members()
            .filter(|(m, s)| *s == foca::State::Alive && m.id != self.me)
            .map(|(m, _)| m.id.clone())
            .collect();
        for (epoch, ciphertext) in held.iter().filter(|(e, _)| new.contains(e)) {
            let bytes = Message::Wrapped(Wrapped {
                epoch: *epoch,
                ciphertext: ciphertext.clone(),
            })
            .encode();
            for peer in &alive {
                self.sends
                    .push((peer.clone(), Payload::Message(bytes.clone())));
            }
        }
        self.out.push_back(Output::WrappedKeys(held));
    }

    /// A peer connected: it gets the keys held here (it may have started
    /// after they were sent, or be an epoch behind).
    pub(super) fn send_wrapped_to(&mut self, peer: &str) {
        let Some(w) = self.wrapped.as_ref() else {
            return;
        };
        for (epoch, ciphertext) in w.held() {
            let bytes = Message::Wrapped(Wrapped {
                epoch,
                ciphertext: ciphertext.to_vec(),
            })
            .encode();
            self.sends.push((peer.to_string(), Payload::Message(bytes)));
        }
    }

    /// KMS decrypted an epoch's key: the exchanges waiting for it go now
    /// rather than at their next retry.
    pub fn epoch_key_ready(&mut self, now: Instant) {
        self.keying.retry_now(now);
        self.drive(now);
    }
}
