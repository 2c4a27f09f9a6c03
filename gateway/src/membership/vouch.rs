//! Who may move a member's address or generation. SWIM names each member
//! by (id, signalling address, generation), and gossip relays what others
//! say of it: a relay could move another member's address (every member
//! then dials the relay's choice), bump its generation (seen everywhere as
//! a restart: SAs torn down, or the member silenced for good at the
//! largest generation), or invent members for everyone to dial. So an
//! identity of member X that this member does not hold already counts
//! only from X itself (the channel proves who sends), or when X's own
//! signed record names it. Gossip ahead of the record (the usual order
//! for a newcomer: its record and its certificate follow a round trip
//! later) waits here; what no record vouches for within [`VOUCH_WAIT`] is
//! refused, counted, and the relay named.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use foca::Member;

use super::info::MemberInfo;
use super::MemberId;

/// How long gossip about an identity waits for a record that vouches for
/// it: records and certificates follow gossip within a few round trips.
pub const VOUCH_WAIT: Duration = Duration::from_secs(10);

/// Updates waiting at most, one per member.
pub const MAX_WAITING: usize = 1024;

/// What a member's record says of an identity of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vouch {
    /// The record names this address and generation.
    Yes,
    /// The record names a later generation: the update is old news.
    Stale,
    /// No record, or one that names another address or an earlier
    /// generation (yet).
    No,
}

/// What `record`, the member's signed record known here, says of `id`.
pub fn vouch(record: Option<&MemberInfo>, id: &MemberId) -> Vouch {
    match record {
        Some(r) if r.generation > id.generation => Vouch::Stale,
        Some(r) if r.generation == id.generation && r.signal == Some(id.addr) => Vouch::Yes,
        _ => Vouch::No,
    }
}

/// Gossip about identities no record vouches for yet: the update, who
/// relayed it, and since when it waits.
#[derive(Default)]
pub struct Waiting {
    updates: HashMap<String, (Member<MemberId>, String, Instant)>,
}

impl Waiting {
    /// Keeps `update` from `by` until a record vouches for it; the newest
    /// identity of each member is kept. Refused if too many wait.
    pub fn defer(
        &mut self,
        update: Member<MemberId>,
        by: &str,
        now: Instant,
    ) -> Result<(), String> {
        let subject = update.id().id.clone();
        if let Some((held, held_by, _)) = self.updates.get_mut(&subject) {
            let newer = (update.id().generation, update.incarnation())
                > (held.id().generation, held.incarnation());
            if newer {
                *held = update;
                *held_by = by.to_string();
            }
            return Ok(());
        }
        if self.updates.len() >= MAX_WAITING {
            return Err(format!(
                "an update about {subject} while {MAX_WAITING} wait for a record to vouch for them"
            ));
        }
        self.updates.insert(subject, (update, by.to_string(), now));
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }

    /// Takes out what the records (`record_of`) vouch for now, to apply,
    /// drops what they make stale, and refuses what waited past
    /// [`VOUCH_WAIT`]: (who relayed it, why).
    pub fn settle(
        &mut self,
        record_of: impl Fn(&str) -> Option<MemberInfo>,
        now: Instant,
    ) -> (Vec<Member<MemberId>>, Vec<(String, String)>) {
        let mut ready = Vec::new();
        let mut refused = Vec::new();
        self.updates.retain(|subject, (update, by, since)| {
            match vouch(record_of(subject).as_ref(), update.id()) {
                Vouch::Yes => {
                    ready.push(update.clone());
                    false
                }
                Vouch::Stale => false,
                Vouch::No if now.saturating_duration_since(*since) >= VOUCH_WAIT => {
                    let id = update.id();
                    refused.push((
                        by.clone(),
                        format!(
                            "says {subject} is at {}, generation {}, which no record of {subject} vouches for",
                            id.addr, id.generation
                        ),
                    ));
                    false
                }
                Vouch::No => true,
            }
        });
        refused.sort();
        (ready, refused)
    }

    /// When the oldest waiting update runs out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.updates
            .values()
            .map(|(_, _, since)| *since + VOUCH_WAIT)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::State;

    fn id(name: &str, addr: &str, generation: u64) -> MemberId {
        MemberId {
            id: name.into(),
            addr: addr.parse().unwrap(),
            generation,
        }
    }

    fn record(name: &str, addr: &str, generation: u64) -> MemberInfo {
        MemberInfo {
            id: name.into(),
            signal: Some(addr.parse().unwrap()),
            generation,
            ..MemberInfo::default()
        }
    }

    #[test]
    fn a_record_vouches_for_its_own_address_and_generation_only() {
        let r = record("m2", "192.0.2.2:4433", 7);
        assert_eq!(vouch(Some(&r), &id("m2", "192.0.2.2:4433", 7)), Vouch::Yes);
        assert_eq!(vouch(Some(&r), &id("m2", "192.0.2.66:4433", 7)), Vouch::No);
        assert_eq!(vouch(Some(&r), &id("m2", "192.0.2.2:4433", 8)), Vouch::No);
        assert_eq!(
            vouch(Some(&r), &id("m2", "192.0.2.2:4433", u64::MAX)),
            Vouch::No
        );
        assert_eq!(
            vouch(Some(&r), &id("m2", "192.0.2.66:4433", 6)),
            Vouch::Stale
        );
        assert_eq!(vouch(None, &id("m2", "192.0.2.2:4433", 7)), Vouch::No);
    }

    #[test]
    fn gossip_waits_for_its_record_and_what_none_vouches_for_is_refused() {
        let t0 = Instant::now();
        let mut w = Waiting::default();
        let alive = |m: MemberId| Member::new(m, 0, State::Alive);
        w.defer(alive(id("m2", "192.0.2.2:4433", 7)), "m1", t0)
            .unwrap();
        w.defer(alive(id("ghost", "198.51.100.9:4433", 1)), "m1", t0)
            .unwrap();
        // A later identity of m2 replaces the one waiting; an earlier one not.
        w.defer(alive(id("m2", "192.0.2.2:4433", 9)), "m3", t0)
            .unwrap();
        w.defer(alive(id("m2", "192.0.2.2:4433", 8)), "m1", t0)
            .unwrap();
        assert_eq!(w.poll_timeout(), Some(t0 + VOUCH_WAIT));

        // Nothing vouches yet: all wait.
        let (ready, refused) = w.settle(|_| None, t0 + Duration::from_secs(1));
        assert!(ready.is_empty() && refused.is_empty());
        // m2's record arrives.
        let records = |s: &str| (s == "m2").then(|| record("m2", "192.0.2.2:4433", 9));
        let (ready, refused) = w.settle(records, t0 + Duration::from_secs(2));
        assert_eq!(ready, [alive(id("m2", "192.0.2.2:4433", 9))]);
        assert!(refused.is_empty());
        // The invented member never gets one.
        let (ready, refused) = w.settle(records, t0 + VOUCH_WAIT);
        assert!(ready.is_empty());
        assert_eq!(
            refused,
            [(
                "m1".to_string(),
                "says ghost is at 198.51.100.9:4433, generation 1, which no record of ghost vouches for".to_string()
            )]
        );
        assert!(w.is_empty() && w.poll_timeout().is_none());

        // Bounded.
        for k in 0..MAX_WAITING {
            w.defer(alive(id(&format!("m{k}"), "192.0.2.2:4433", 1)), "m1", t0)
                .unwrap();
        }
        let e = w
            .defer(alive(id("one-more", "192.0.2.2:4433", 1)), "m1", t0)
            .unwrap_err();
        assert!(e.contains("1024 wait"), "{e}");
    }
}
