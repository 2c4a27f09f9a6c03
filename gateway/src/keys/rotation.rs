//! Which key epoch the mesh is in, and which epochs are revoked: state
//! every member advertises in its record, so an operator's `keys rotate`
//! or `keys revoke` on any one appliance reaches all of them by gossip and
//! outlives the appliance it was run on. A plain state machine: merging
//! what a member advertises says what changed here.

use std::collections::BTreeSet;

use super::Epoch;

pub use crate::membership::info::MAX_REVOKED;

/// How far one member's record may move the mesh's epoch at once: a
/// rotation moves it by one (a revocation of the current one by one more),
/// so a record far ahead is a misconfigured member, not news.
pub const MAX_EPOCH_STEP: Epoch = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochState {
    current: Epoch,
    revoked: BTreeSet<Epoch>,
}

/// What a merge or an operator's command changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochChange {
    /// The epoch new SAs use from now on, if it moved.
    pub current: Option<Epoch>,
    /// Epochs revoked just now: their SAs go at once.
    pub revoked: Vec<Epoch>,
}

impl EpochChange {
    pub fn is_empty(&self) -> bool {
        self.current.is_none() && self.revoked.is_empty()
    }
}

/// Why an operator's command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochError {
    #[error("epoch {0} is not in use yet (the mesh is in epoch {1})")]
    Future(Epoch, Epoch),
    #[error("no epoch is left after {0}")]
    Exhausted(Epoch),
}

impl EpochState {
    pub fn new(current: Epoch) -> EpochState {
        EpochState {
            current,
            revoked: BTreeSet::new(),
        }
    }

    pub fn current(&self) -> Epoch {
        self.current
    }

    pub fn revoked(&self) -> Vec<Epoch> {
        self.revoked.iter().copied().collect()
    }

    /// The next epoch not revoked.
    fn next_after(&self, e: Epoch) -> Result<Epoch, EpochError> {
        let mut n = e;
        loop {
            n = n.checked_add(1).ok_or(EpochError::Exhausted(e))?;
            if !self.revoked.contains(&n) {
                return Ok(n);
            }
        }
    }

    fn trim(&mut self) {
        while self.revoked.len() > MAX_REVOKED {
            self.revoked.pop_first();
        }
    }

    /// `keys rotate`: the mesh moves to the next epoch.
    pub fn rotate(&mut self) -> Result<EpochChange, EpochError> {
        self.current = self.next_after(self.current)?;
        Ok(EpochChange {
            current: Some(self.current),
            revoked: Vec::new(),
        })
    }

    /// `keys revoke`: no SA of `epoch` may live; if it is the current one,
    /// the mesh moves on to the next.
    pub fn revoke(&mut self, epoch: Epoch) -> Result<EpochChange, EpochError> {
        if epoch > self.current {
            return Err(EpochError::Future(epoch, self.current));
        }
        let mut change = EpochChange::default();
        if epoch == self.current {
            let next = self.next_after(epoch)?;
            self.current = next;
            change.current = Some(next);
        }
        if self.revoked.insert(epoch) {
            change.revoked.push(epoch);
        }
        self.trim();
        Ok(change)
    }

    /// What another member advertises: a later epoch is adopted, and its
    /// revocations are taken.
    pub fn merge(&mut self, current: Epoch, revoked: &[Epoch]) -> EpochChange {
        let mut change = EpochChange::default();
        for &e in revoked {
            if self.revoked.insert(e) {
                change.revoked.push(e);
            }
        }
        let ahead = current.saturating_sub(self.current);
        if ahead > MAX_EPOCH_STEP {
            tracing::warn!(
                "a member advertises epoch {current}, {ahead} ahead of this one's {}: not adopted (a misconfigured [keys] epoch?)",
                self.current
            );
        } else if ahead > 0 && !self.revoked.contains(&current) {
            self.current = current;
            change.current = Some(current);
        }
        if self.revoked.contains(&self.current) {
            match self.next_after(self.current) {
                Ok(next) => {
                    self.current = next;
                    change.current = Some(next);
                }
                Err(e) => {
                    tracing::error!("the current epoch is revoked and {e}: no SA can be negotiated")
                }
            }
        }
        self.trim();
        change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_and_revocation_spread_by_merging() {
        let (mut a, mut b) = (EpochState::new(1), EpochState::new(1));
        assert_eq!(a.rotate().unwrap().current, Some(2));
        let change = b.merge(a.current(), &a.revoked());
        assert_eq!(
            change,
            EpochChange {
                current: Some(2),
                revoked: vec![]
            }
        );
        assert!(b.merge(a.current(), &a.revoked()).is_empty(), "idempotent");
        assert!(
            a.merge(1, &[]).is_empty(),
            "an older epoch advertised changes nothing"
        );

        // Revoking the current epoch moves the mesh on.
        let change = b.revoke(2).unwrap();
        assert_eq!(change.current, Some(3));
        assert_eq!(change.revoked, [2]);
        let change = a.merge(b.current(), &b.revoked());
        assert_eq!(
            change,
            EpochChange {
                current: Some(3),
                revoked: vec![2]
            }
        );
        // Revoking an old epoch only revokes it.
        assert_eq!(
            a.revoke(1).unwrap(),
            EpochChange {
                current: None,
                revoked: vec![1]
            }
        );
        assert_eq!(a.revoke(9), Err(EpochError::Future(9, 3)));
    }

    #[test]
    fn a_revoked_epoch_is_never_adopted_and_is_skipped() {
        let mut a = EpochState::new(1);
        let change = a.merge(2, &[2]);
        assert_eq!(change.current, None, "epoch 2 arrives revoked");
        assert_eq!(a.current(), 1);
        a.merge(1, &[3]);
        assert_eq!(a.rotate().unwrap().current, Some(4), "2 and 3 are revoked");
        assert_eq!(a.rotate().unwrap().current, Some(5));
        let mut z = EpochState::new(Epoch::MAX);
        assert_eq!(z.rotate(), Err(EpochError::Exhausted(Epoch::MAX)));
    }

    #[test]
    fn a_record_far_ahead_does_not_move_the_mesh() {
        let mut a = EpochState::new(3);
        assert!(a.merge(3 + MAX_EPOCH_STEP + 1, &[]).is_empty());
        assert_eq!(a.merge(3 + MAX_EPOCH_STEP, &[]).current, Some(19));
    }

    #[test]
    fn revocations_are_bounded() {
        let mut a = EpochState::new(1);
        for e in 0..200 {
            a.merge(1, &[e + 100]);
        }
        assert_eq!(a.revoked().len(), MAX_REVOKED);
        assert_eq!(a.revoked()[0], 300 - MAX_REVOKED as Epoch);
    }
}
