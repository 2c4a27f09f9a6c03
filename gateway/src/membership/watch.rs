//! Whom the liveness detector watches: a bounded set per member, the same
//! at every member that sees the same membership, so any member can tell
//! who may report a member silent. In a mesh of up to [`WATCH_ALL_UP_TO`]
//! others everyone watches everyone; beyond, a member's watchers are its
//! [`RING_SIDE`] neighbours on either side of a ring of all members
//! ordered by a hash of their ids (spread across regions and zones, so one
//! zone's outage does not take all of a member's watchers), plus every
//! member of its region and of its redundancy group (so failover between
//! the appliances of a region is detected as fast as ever). Watching is
//! symmetric: if A watches B, B watches A, and heartbeats flow both ways.
//!
//! With everyone watching everyone, heartbeats grow with the square of the
//! mesh (about 10,000 a second per member at 1,000 members); with this,
//! with the number of neighbours.

use std::collections::{BTreeSet, HashMap};

/// Neighbours on each side of the ring each member watches.
pub const RING_SIDE: usize = 4;

/// In a mesh of up to this many other members, everyone watches everyone
/// (the regions of one deployment: every path measured, and a quorum that
/// any two survivors make).
pub const WATCH_ALL_UP_TO: usize = 16;

#[derive(Default)]
pub struct WatchPlan {
    /// Members in the mesh (this one included), by ring position.
    ring: BTreeSet<(u64, String)>,
    /// Each member's region and group, from its record.
    placement: HashMap<String, (String, Option<String>)>,
    /// Members by region and by group (from records; members out of the
    /// ring included, filtered on use).
    by_region: HashMap<String, BTreeSet<String>>,
    by_group: HashMap<String, BTreeSet<String>>,
}

/// A member's place on the ring: the first 8 bytes of SHA-256 of its id.
fn position(id: &str) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b)
}

impl WatchPlan {
    /// `id` is in the mesh (alive or suspect).
    pub fn add(&mut self, id: &str) -> bool {
        self.ring.insert((position(id), id.to_string()))
    }

    /// `id` left the mesh (declared down).
    pub fn remove(&mut self, id: &str) -> bool {
        self.ring.remove(&(position(id), id.to_string()))
    }

    /// `id`'s record places it in `region` and `group`; true if that is new.
    pub fn place(&mut self, id: &str, region: &str, group: Option<&str>) -> bool {
        let new = (region.to_string(), group.map(str::to_string));
        if self.placement.get(id) == Some(&new) {
            return false;
        }
        if let Some((old_region, old_group)) = self.placement.remove(id) {
            self.by_region.entry(old_region).or_default().remove(id);
            if let Some(g) = old_group {
                self.by_group.entry(g).or_default().remove(id);
            }
        }
        self.by_region
            .entry(new.0.clone())
            .or_default()
            .insert(id.to_string());
        if let Some(g) = &new.1 {
            self.by_group
                .entry(g.clone())
                .or_default()
                .insert(id.to_string());
        }
        self.placement.insert(id.to_string(), new);
        true
    }

    fn in_ring(&self, id: &str) -> bool {
        self.ring.contains(&(position(id), id.to_string()))
    }

    /// The members that watch `subject` (and that it watches): its ring
    /// neighbours and the members of its region and group, `subject` left
    /// out. Empty if `subject` is not in the mesh.
    pub fn watchers(&self, subject: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let key = (position(subject), subject.to_string());
        if !self.ring.contains(&key) {
            return out;
        }
        let others = self.ring.len() - 1;
        if others <= WATCH_ALL_UP_TO.max(2 * RING_SIDE) {
            out.extend(self.ring.iter().map(|(_, id)| id.clone()));
        } else {
            let after = self
                .ring
                .range(key.clone()..)
                .skip(1)
                .chain(self.ring.iter())
                .take(RING_SIDE);
            let before = self
                .ring
                .range(..key.clone())
                .rev()
                .chain(self.ring.iter().rev())
                .take(RING_SIDE);
            out.extend(after.chain(before).map(|(_, id)| id.clone()));
        }
        if let Some((region, group)) = self.placement.get(subject) {
            let peers = self.by_region.get(region).into_iter().flatten();
            let group_peers = group
                .as_ref()
                .and_then(|g| self.by_group.get(g))
                .into_iter()
                .flatten();
            out.extend(
                peers
                    .chain(group_peers)
                    .filter(|id| self.in_ring(id))
                    .cloned(),
            );
        }
        out.remove(subject);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: usize) -> String {
        format!("m{i}")
    }

    #[test]
    fn watching_is_bounded_symmetric_and_keeps_regions_and_groups_together() {
        let mut plan = WatchPlan::default();
        for i in 0..1000 {
            plan.add(&id(i));
            // Two appliances per region; pairs 0-1, 2-3, ... also a group.
            plan.place(&id(i), &format!("r{}", i / 2), Some(&format!("g{}", i / 2)));
        }
        let watchers: Vec<BTreeSet<String>> = (0..1000).map(|i| plan.watchers(&id(i))).collect();
        for (i, w) in watchers.iter().enumerate() {
            assert!(w.len() <= 2 * RING_SIDE + 1, "{}: {w:?}", id(i));
            assert!(w.len() >= 2 * RING_SIDE, "{}: {w:?}", id(i));
            assert!(!w.contains(&id(i)));
            assert!(
                w.contains(&id(i ^ 1)),
                "{} watches its region's other appliance",
                id(i)
            );
            for other in w {
                let j: usize = other[1..].parse().unwrap();
                assert!(
                    watchers[j].contains(&id(i)),
                    "{} watches {other}, not back",
                    id(i)
                );
            }
        }
        // A small mesh: everyone watches everyone.
        let mut small = WatchPlan::default();
        for i in 0..=WATCH_ALL_UP_TO {
            small.add(&id(i));
        }
        assert_eq!(small.watchers(&id(2)).len(), WATCH_ALL_UP_TO);
        // Gone from the ring: watched by nobody, and its neighbours close up.
        plan.remove(&id(7));
        assert!(plan.watchers(&id(7)).is_empty());
        let sum: usize = (0..1000)
            .filter(|&i| i != 7)
            .map(|i| plan.watchers(&id(i)).len())
            .sum();
        assert!((0..1000)
            .filter(|&i| i != 7)
            .all(|i| !plan.watchers(&id(i)).contains(&id(7))));
        assert!(sum >= 999 * 2 * RING_SIDE);
    }
}
