//! Which key epoch the mesh is in, which epochs are revoked, and which
//! appliance certificates, at one member: a plain state machine. The state moves only by orders the
//! mesh CA signed ([`MeshOrder`]); `keys rotate` and `keys revoke` work
//! out the next order from the state a member reports, and adopting an
//! order says what changed here.

use std::collections::{BTreeMap, BTreeSet};

use super::order::{
    cert_hex, CertId, MeshOrder, OrderError, SignedOrder, MAX_ORDER_CERTS, MAX_ORDER_REVOKED,
};
use super::wrapped::KeyDigest;
use super::Epoch;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochState {
    /// The serial of the order in force (0: none yet, the configured epoch).
    serial: u64,
    current: Epoch,
    /// Every epoch below is revoked.
    floor: Epoch,
    /// Revoked epochs at or above the floor.
    revoked: BTreeSet<Epoch>,
    /// The certificates the order in force lists as revoked.
    certs: Vec<CertId>,
    /// Every certificate revoked here, listed or since dropped from the
    /// list: revocations are never undone.
    revoked_certs: BTreeSet<CertId>,
    /// The order in force as signed, advertised in this member's record.
    signed: Option<SignedOrder>,
    /// With KMS epoch keys: the digest of each live epoch's data key.
    wrapped: BTreeMap<Epoch, KeyDigest>,
}

/// What adopting an order changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochChange {
    /// The epoch new SAs use from now on, if it moved.
    pub current: Option<Epoch>,
    /// The floor, if it moved up: SAs of every epoch below go at once.
    pub floor: Option<Epoch>,
    /// Epochs revoked just now: their SAs go at once.
    pub revoked: Vec<Epoch>,
    /// Certificates revoked just now: their holders are cut off.
    pub certs: Vec<CertId>,
}

impl EpochChange {
    pub fn is_empty(&self) -> bool {
        self.current.is_none()
            && self.floor.is_none()
            && self.revoked.is_empty()
            && self.certs.is_empty()
    }
}

impl EpochState {
    /// The state of a member before any order: the configured epoch.
    pub fn new(current: Epoch) -> EpochState {
        EpochState {
            serial: 0,
            current,
            floor: 0,
            revoked: BTreeSet::new(),
            certs: Vec::new(),
            revoked_certs: BTreeSet::new(),
            signed: None,
            wrapped: BTreeMap::new(),
        }
    }

    /// The state an order describes (what `keys rotate` starts from).
    pub fn from_order(order: &MeshOrder) -> EpochState {
        let mut s = EpochState::new(order.current);
        s.serial = order.serial;
        s.floor = order.floor;
        s.revoked = order
            .revoked
            .iter()
            .copied()
            .filter(|&e| e >= order.floor)
            .collect();
        s.certs = order.certs.clone();
        s.revoked_certs = order.certs.iter().copied().collect();
        s.wrapped = order.wrapped.iter().copied().collect();
        s
    }

    /// The digest of `epoch`'s KMS data key the order in force names.
    pub fn wrapped_digest(&self, epoch: Epoch) -> Option<KeyDigest> {
        self.wrapped.get(&epoch).copied()
    }

    pub fn current(&self) -> Epoch {
        self.current
    }

    pub fn serial(&self) -> u64 {
        self.serial
    }

    pub fn floor(&self) -> Epoch {
        self.floor
    }

    /// The revoked epochs at or above the floor.
    pub fn revoked(&self) -> Vec<Epoch> {
        self.revoked.iter().copied().collect()
    }

    pub fn is_revoked(&self, epoch: Epoch) -> bool {
        epoch < self.floor || self.revoked.contains(&epoch)
    }

    /// Whether the certificate `id` is revoked.
    pub fn cert_revoked(&self, id: &CertId) -> bool {
        self.revoked_certs.contains(id)
    }

    /// Every certificate revoked (listed in an order, or remembered).
    pub fn revoked_certs(&self) -> impl Iterator<Item = CertId> + '_ {
        self.revoked_certs.iter().copied()
    }

    /// The order in force, as signed (none before the first).
    pub fn signed(&self) -> Option<&SignedOrder> {
        self.signed.as_ref()
    }

    /// The state as an order (its serial is the one in force).
    pub fn as_order(&self) -> MeshOrder {
        MeshOrder {
            serial: self.serial,
            current: self.current,
            floor: self.floor,
            revoked: self.revoked(),
            certs: self.certs.clone(),
            wrapped: self.wrapped.iter().map(|(e, d)| (*e, *d)).collect(),
        }
    }

    /// The next order: this state's, numbered after it.
    fn next(&self) -> MeshOrder {
        MeshOrder {
            serial: self.serial + 1,
            ..self.as_order()
        }
    }

    /// The next epoch not revoked.
    /// The next epoch not revoked: past the floor at once, then past the
    /// listed ones (a bounded set), never epoch by epoch up to the floor.
    fn next_after(&self, e: Epoch) -> Result<Epoch, OrderError> {
        let mut n = e
            .checked_add(1)
            .ok_or(OrderError::Exhausted(e))?
            .max(self.floor);
        while self.revoked.contains(&n) {
            n = n.checked_add(1).ok_or(OrderError::Exhausted(e))?;
        }
        Ok(n)
    }

    /// The order `keys rotate` signs: the next epoch, and the floor moved
    /// up to the epoch rotated from (so the one before it is revoked).
    pub fn rotate(&self) -> Result<MeshOrder, OrderError> {
        let current = self.next_after(self.current)?;
        let floor = self.floor.max(self.current);
        Ok(MeshOrder {
            current,
            floor,
            revoked: self
                .revoked
                .iter()
                .copied()
                .filter(|&e| e >= floor)
                .collect(),
            wrapped: self.live_wrapped(floor, &self.revoked),
            ..self.next()
        })
    }

    /// The data keys' digests an order keeps: live epochs' only (the new
    /// current one's is added by `keys rotate` when it makes that key).
    fn live_wrapped(&self, floor: Epoch, revoked: &BTreeSet<Epoch>) -> Vec<(Epoch, KeyDigest)> {
        self.wrapped
            .iter()
            .filter(|(e, _)| **e >= floor && !revoked.contains(e))
            .map(|(e, d)| (*e, *d))
            .collect()
    }

    /// The order `keys revoke` signs: no SA of `epoch` may live; if it is
    /// the current one, the mesh moves on to the next.
    pub fn revoke(&self, epoch: Epoch) -> Result<MeshOrder, OrderError> {
        if epoch > self.current {
            return Err(OrderError::Future(epoch, self.current));
        }
        if self.is_revoked(epoch) {
            return Err(OrderError::AlreadyRevoked(epoch));
        }
        let mut revoked = self.revoked.clone();
        revoked.insert(epoch);
        if revoked.len() > MAX_ORDER_REVOKED {
            return Err(OrderError::TooManyRevoked);
        }
        let current = if epoch == self.current {
            self.next_after(epoch)?
        } else {
            self.current
        };
        Ok(MeshOrder {
            current,
            wrapped: self.live_wrapped(self.floor, &revoked),
            revoked: revoked.into_iter().collect(),
            ..self.next()
        })
    }

    /// The order `cert revoke` signs: every member cuts off the holder of
    /// certificate `id`.
    pub fn revoke_cert(&self, id: CertId) -> Result<MeshOrder, OrderError> {
        if self.certs.contains(&id) {
            return Err(OrderError::CertRevoked(cert_hex(&id)));
        }
        if self.certs.len() >= MAX_ORDER_CERTS {
            return Err(OrderError::TooManyCerts);
        }
        let mut order = self.next();
        order.certs.push(id);
        Ok(order)
    }

    /// The order `cert revoke --drop` signs: certificate `id` leaves the
    /// list (once it has expired, and no TLS handshake takes it anyway).
    /// Members that saw it revoked keep it revoked.
    pub fn drop_cert(&self, id: CertId) -> Result<MeshOrder, OrderError> {
        let mut order = self.next();
        let before = order.certs.len();
        order.certs.retain(|c| *c != id);
        if order.certs.len() == before {
            return Err(OrderError::Malformed(format!(
                "certificate {} is not in the list",
                cert_hex(&id)
            )));
        }
        Ok(order)
    }

    /// Puts `order` (signed as `signed`, checked by the caller) into force
    /// if it is newer than the one in force. Revocations are never undone:
    /// what was revoked here stays revoked, whatever a later order says.
    pub fn adopt(
        &mut self,
        order: &MeshOrder,
        signed: SignedOrder,
    ) -> Result<EpochChange, OrderError> {
        if order.serial <= self.serial {
            return Err(OrderError::Stale {
                theirs: order.serial,
                ours: self.serial,
            });
        }
        let mut change = EpochChange::default();
        self.serial = order.serial;
        self.signed = Some(signed);
        if order.floor > self.floor {
            self.floor = order.floor;
            change.floor = Some(order.floor);
        }
        for &e in &order.revoked {
            if e >= self.floor && self.revoked.insert(e) {
                change.revoked.push(e);
            }
        }
        let floor = self.floor;
        self.revoked.retain(|&e| e >= floor);
        self.certs = order.certs.clone();
        self.wrapped = order.wrapped.iter().copied().collect();
        for &c in &order.certs {
            if self.revoked_certs.insert(c) {
                change.certs.push(c);
            }
        }
        let mut current = order.current;
        if self.is_revoked(current) {
            match self.next_after(current) {
                Ok(next) => current = next,
                Err(e) => {
                    tracing::error!(
                        "the ordered epoch {current} is revoked and {e}: no SA can be negotiated"
                    )
                }
            }
        }
        if current != self.current {
            self.current = current;
            change.current = Some(current);
        }
        Ok(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsigned() -> SignedOrder {
        SignedOrder::default()
    }

    /// What an operator's order does at a member that adopts it.
    fn adopt(s: &mut EpochState, o: &MeshOrder) -> EpochChange {
        s.adopt(o, unsigned()).expect("newer")
    }

    #[test]
    fn rotation_and_revocation_spread_by_adopting_orders() {
        let (mut a, mut b) = (EpochState::new(1), EpochState::new(1));
        let rotate = a.rotate().unwrap();
        assert_eq!((rotate.serial, rotate.current, rotate.floor), (1, 2, 1));
        for s in [&mut a, &mut b] {
            assert_eq!(
                adopt(s, &rotate),
                EpochChange {
                    current: Some(2),
                    floor: Some(1),
                    revoked: vec![],
                    certs: vec![]
                }
            );
        }
        assert_eq!(
            b.adopt(&rotate, unsigned()),
            Err(OrderError::Stale { theirs: 1, ours: 1 }),
            "an order is taken once; a replay changes nothing"
        );
        // Revoking the current epoch moves the mesh on.
        let revoke = b.revoke(2).unwrap();
        assert_eq!((revoke.current, revoke.revoked.clone()), (3, vec![2]));
        assert_eq!(
            adopt(&mut a, &revoke),
            EpochChange {
                current: Some(3),
                floor: None,
                revoked: vec![2],
                certs: vec![]
            }
        );
        // Revoking an old epoch only revokes it; one below the floor is
        // revoked already; a future one is no one's to revoke.
        let mut c = EpochState::new(5);
        assert_eq!(c.revoke(3).unwrap().current, 5);
        assert_eq!(a.revoke(0), Err(OrderError::AlreadyRevoked(0)));
        assert_eq!(a.revoke(9), Err(OrderError::Future(9, 3)));
        // The next rotation moves the floor to the epoch rotated from.
        let rotate = a.rotate().unwrap();
        assert_eq!(
            (rotate.current, rotate.floor, rotate.revoked),
            (4, 3, vec![])
        );
        adopt(&mut c, &a.rotate().unwrap());
        assert!(c.is_revoked(2) && c.is_revoked(0) && !c.is_revoked(4));
    }

    #[test]
    fn a_revoked_epoch_is_never_adopted_and_is_skipped() {
        let mut a = EpochState::new(1);
        let order = MeshOrder {
            wrapped: Vec::new(),
            serial: 1,
            current: 2,
            floor: 0,
            revoked: vec![2, 3],
            certs: vec![],
        };
        let change = adopt(&mut a, &order);
        assert_eq!(change.current, Some(4), "epochs 2 and 3 arrive revoked");
        assert_eq!(a.rotate().unwrap().current, 5);
        let z = EpochState::new(Epoch::MAX);
        assert_eq!(z.rotate(), Err(OrderError::Exhausted(Epoch::MAX)));
    }

    #[test]
    fn a_later_order_never_undoes_a_revocation() {
        let mut a = EpochState::new(1);
        adopt(
            &mut a,
            &MeshOrder {
                wrapped: Vec::new(),
                serial: 1,
                current: 3,
                floor: 0,
                revoked: vec![2],
                certs: vec![[1; 16]],
            },
        );
        // An order made from a stale state (without the revocation).
        let change = adopt(
            &mut a,
            &MeshOrder {
                wrapped: Vec::new(),
                serial: 2,
                current: 2,
                floor: 0,
                revoked: vec![],
                certs: vec![],
            },
        );
        assert!(a.is_revoked(2));
        assert!(a.cert_revoked(&[1; 16]), "nor a certificate's");
        assert_eq!(a.current(), 3, "the revoked epoch is skipped");
        assert_eq!(change.current, None);
    }

    #[test]
    fn revocations_beside_the_floor_are_bounded_and_rotation_clears_them() {
        let mut a = EpochState::new(100);
        for e in 0..MAX_ORDER_REVOKED as Epoch {
            let o = a.revoke(50 + e).unwrap();
            adopt(&mut a, &o);
        }
        assert_eq!(a.revoke(90), Err(OrderError::TooManyRevoked));
        let o = a.rotate().unwrap();
        assert!(o.revoked.is_empty() && o.floor == 100, "{o:?}");
        adopt(&mut a, &o);
        assert!(a.revoked().is_empty() && a.is_revoked(60) && a.is_revoked(99));
    }

    #[test]
    fn certificates_are_revoked_by_order_and_bounded() {
        let mut a = EpochState::new(1);
        let order = a.revoke_cert([7; 16]).unwrap();
        assert_eq!(
            (order.serial, order.current, order.certs.clone()),
            (1, 1, vec![[7; 16]])
        );
        let change = adopt(&mut a, &order);
        assert_eq!(change.certs, vec![[7; 16]]);
        assert!(change.current.is_none() && a.cert_revoked(&[7; 16]));
        assert_eq!(
            a.revoke_cert([7; 16]),
            Err(OrderError::CertRevoked("07".repeat(16)))
        );
        // A rotation carries the list along.
        assert_eq!(a.rotate().unwrap().certs, vec![[7; 16]]);
        for i in 1..MAX_ORDER_CERTS as u8 {
            let o = a.revoke_cert([i + 100; 16]).unwrap();
            adopt(&mut a, &o);
        }
        assert_eq!(a.revoke_cert([1; 16]), Err(OrderError::TooManyCerts));
        // Dropping one (expired) makes room; this member keeps it revoked.
        let o = a.drop_cert([7; 16]).unwrap();
        assert!(!o.certs.contains(&[7; 16]));
        adopt(&mut a, &o);
        assert!(a.cert_revoked(&[7; 16]));
        assert!(a.drop_cert([2; 16]).is_err());
    }

    /// An order whose epoch lies far below the floor this member holds
    /// moves it to the floor at once (seen while writing the order fuzz
    /// target: it used to count up epoch by epoch, some four billion
    /// steps).
    #[test]
    fn an_epoch_far_below_the_floor_moves_to_the_floor_at_once() {
        let mut a = EpochState::new(1);
        let high = MeshOrder {
            wrapped: Vec::new(),
            serial: 1,
            current: 4_000_000_000,
            floor: 4_000_000_000,
            revoked: vec![4_000_000_000],
            certs: vec![],
        };
        adopt(&mut a, &high);
        assert_eq!(a.current(), 4_000_000_001);
        let low = MeshOrder {
            wrapped: Vec::new(),
            serial: 2,
            current: 1,
            floor: 0,
            revoked: vec![],
            certs: vec![],
        };
        let started = std::time::Instant::now();
        adopt(&mut a, &low);
        assert_eq!(
            a.current(),
            4_000_000_001,
            "the floor and the listed stay revoked"
        );
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
    }
}
