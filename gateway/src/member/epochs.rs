//! The mesh's key epochs at one member: an operator's `keys rotate` or
//! `keys revoke` here, or a newer state seen in another member's record,
//! is put into force the same way, and advertised in this member's record
//! so it spreads even if the member it started on goes away.

use std::time::Instant;

use super::{EpochReport, Member, NodeEvent};
use crate::keys::rotation::{EpochChange, EpochError};
use crate::membership::Observed;

impl Member {
    /// `keys rotate`: the mesh moves to the next epoch.
    pub fn rotate(&mut self, now: Instant) -> Result<EpochReport, EpochError> {
        let change = self.epochs.rotate();
        self.operator_command(change, now)
    }

    /// `keys revoke`: every SA of `epoch` goes, mesh-wide.
    pub fn revoke(
        &mut self,
        epoch: crate::keys::Epoch,
        now: Instant,
    ) -> Result<EpochReport, EpochError> {
        let change = self.epochs.revoke(epoch);
        self.operator_command(change, now)
    }

    fn operator_command(
        &mut self,
        change: Result<EpochChange, EpochError>,
        now: Instant,
    ) -> Result<EpochReport, EpochError> {
        let change = change?;
        let rekeying = self.apply_epochs(&change, now);
        tracing::info!(current = self.epochs.current(), revoked = ?change.revoked, rekeying, "key epochs changed by the operator");
        self.drive(now);
        Ok(EpochReport {
            current: self.epochs.current(),
            revoked: self.epochs.revoked(),
            rekeying,
        })
    }

    /// Merges the epochs the members advertise into ours.
    pub(super) fn merge_epochs(&mut self, observed: &[Observed], now: Instant) {
        let mut change = EpochChange::default();
        for o in observed.iter().filter(|o| o.state != foca::State::Down) {
            let c = self.epochs.merge(o.info.epoch, &o.info.revoked);
            change.current = c.current.or(change.current);
            change.revoked.extend(c.revoked);
        }
        if !change.is_empty() {
            tracing::info!(current = self.epochs.current(), revoked = ?change.revoked, "key epochs changed in the mesh");
            self.apply_epochs(&change, now);
        }
    }

    /// Puts a change into force: the negotiator's epoch and revocations,
    /// the SAs of revoked epochs torn down, every SA of an older epoch
    /// rekeyed, and this member's record advertising the new state.
    /// Returns how many peers are being rekeyed.
    fn apply_epochs(&mut self, change: &EpochChange, now: Instant) -> usize {
        let current = self.epochs.current();
        if let Some(n) = self.negotiator.as_mut() {
            n.set_epoch(current, now);
            for e in &change.revoked {
                n.revoke(*e);
            }
        }
        let mut rekeying = 0;
        if let Some(t) = self.tunnels.as_mut() {
            for e in &change.revoked {
                t.revoke(*e);
            }
            t.rekey_stale(current);
            rekeying = t.pending_rekeys();
        }
        self.info.epoch = current;
        self.info.revoked = self.epochs.revoked();
        self.readvertise(now, "the new epochs");
        self.events.push_back(NodeEvent::Epochs {
            current,
            revoked: self.epochs.revoked(),
        });
        rekeying
    }
}
