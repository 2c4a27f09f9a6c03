//! The mesh's key epochs, and the appliance certificates revoked, at one
//! member. They move only by orders the mesh CA signed (`keys::order`): one an operator gives this member over the
//! control socket, or a newer one seen in another member's record. Either
//! is put into force the same way, and advertised in this member's record
//! so it spreads even if the member it started on goes away. An order
//! that the CA did not sign is refused, counted and its carrier named.

use std::time::Instant;

use super::{EpochReport, Member, NodeEvent};
use crate::keys::order::{MeshOrder, OrderError, SignedOrder};
use crate::keys::rotation::EpochChange;
use crate::membership::Observed;

impl Member {
    /// The epoch state in force, as an order (what `keys rotate` and `keys
    /// revoke` start from).
    pub fn epoch_order(&self) -> MeshOrder {
        self.epochs.as_order()
    }

    /// An operator's order (`keys rotate`, `keys revoke`): taken if the CA
    /// signed it and it is newer than the one in force.
    pub fn order(&mut self, signed: SignedOrder, now: Instant) -> Result<EpochReport, OrderError> {
        let order = signed.open(self.orders.as_ref())?;
        // On a KMS mesh, an order that moves to an epoch whose data key no
        // one could have is refused (a cert revocation in the configured
        // epoch, whose ciphertext every member holds, is not).
        let held =
            |w: &crate::keys::wrapped::WrappedKeys| w.held().any(|(e, _)| e == order.current);
        if self.wrapped.as_ref().is_some_and(|w| !held(w))
            && !order.wrapped.iter().any(|(e, _)| *e == order.current)
        {
            return Err(OrderError::Malformed(format!(
                "this mesh's epoch keys are KMS data keys, and the order names none for epoch {} (rotate with --kms-key)",
                order.current
            )));
        }
        let change = self.epochs.adopt(&order, signed)?;
        let rekeying = self.apply_epochs(&change, now);
        tracing::info!(serial = order.serial, current = self.epochs.current(), floor = self.epochs.floor(), revoked = ?self.epochs.revoked(), rekeying, "key epochs changed by the operator's order");
        self.drive(now);
        Ok(EpochReport {
            serial: self.epochs.serial(),
            current: self.epochs.current(),
            floor: self.epochs.floor(),
            revoked: self.epochs.revoked(),
            rekeying,
        })
    }

    /// Takes the newest order the members' records carry, if newer than
    /// ours. Each member's order is checked once (by its signature bytes),
    /// so a mesh that agrees costs a comparison per record.
    pub(super) fn merge_epochs(&mut self, observed: &[Observed], now: Instant) {
        let ours = self.epochs.signed().map(|o| o.signature.clone());
        let mut newest: Option<(MeshOrder, SignedOrder)> = None;
        let mut refused = Vec::new();
        for o in observed.iter().filter(|o| o.state != foca::State::Down) {
            let Some(signed) = o.info.order.as_ref() else {
                continue;
            };
            if ours.as_ref() == Some(&signed.signature)
                || self.orders_seen.get(&o.info.id) == Some(&signed.signature)
            {
                continue;
            }
            self.orders_seen
                .insert(o.info.id.clone(), signed.signature.clone());
            match signed.open(self.orders.as_ref()) {
                Ok(order) => {
                    if order.serial > newest.as_ref().map_or(self.epochs.serial(), |n| n.0.serial) {
                        newest = Some((order, signed.clone()));
                    }
                }
                Err(e) => refused.push((o.info.id.clone(), e)),
            }
        }
        // Forget members gone from the view (the map stays as large as it).
        if self.orders_seen.len() > observed.len() {
            let present: std::collections::HashSet<&str> =
                observed.iter().map(|o| o.info.id.as_str()).collect();
            self.orders_seen
                .retain(|id, _| present.contains(id.as_str()));
        }
        for (by, e) in refused {
            self.refuse(
                &by,
                "epochs",
                "unauthorized",
                format!("its record carries an epoch order that was refused: {e}"),
            );
        }
        let Some((order, signed)) = newest else {
            return;
        };
        if let Ok(change) = self.epochs.adopt(&order, signed) {
            tracing::info!(serial = order.serial, current = self.epochs.current(), floor = self.epochs.floor(), revoked = ?self.epochs.revoked(), "key epochs changed in the mesh");
            self.apply_epochs(&change, now);
        }
    }

    /// Puts a change into force: the negotiator's epoch and revocations,
    /// the SAs of revoked epochs torn down, every SA of an older epoch
    /// rekeyed, and this member's record advertising the order in force.
    /// Returns how many peers are being rekeyed.
    fn apply_epochs(&mut self, change: &EpochChange, now: Instant) -> usize {
        let current = self.epochs.current();
        if let Some(n) = self.negotiator.as_mut() {
            n.set_epoch(current, now);
            if let Some(floor) = change.floor {
                n.revoke_below(floor);
            }
            for e in &change.revoked {
                n.revoke(*e);
            }
        }
        let mut rekeying = 0;
        if let Some(t) = self.tunnels.as_mut() {
            if let Some(floor) = change.floor {
                t.revoke_below(floor);
            }
            for e in &change.revoked {
                t.revoke(*e);
            }
            t.rekey_stale(current);
            rekeying = t.pending_rekeys();
        }
        if !change.certs.is_empty() {
            self.cut_off_revoked();
        }
        self.adopt_wrapped();
        self.info.epoch = current;
        self.info.order = self.epochs.signed().cloned();
        self.readvertise(now, "the new epochs");
        self.events.push_back(NodeEvent::Epochs {
            current,
            floor: self.epochs.floor(),
            revoked: self.epochs.revoked(),
        });
        rekeying
    }
}
