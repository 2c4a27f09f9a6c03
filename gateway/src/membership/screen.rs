//! What a SWIM datagram may say about members other than its sender,
//! checked before foca reads it. The channel proves who sent a datagram,
//! and the header must name that member (the agent checks); the updates
//! it carries about the others are only its word. A member's death is
//! this member's own verdict (the liveness detector's quorum of watchers,
//! or SWIM's suspicion timing out here), never another's say-so: a member
//! declaring others down would otherwise make every peer tear down their
//! SAs. Such updates are refused and counted, unless this member holds
//! the subject down already (honest members gossip the deaths they have
//! seen): those are cut without a count. Updates naming an invalid id, or
//! a new member past the cap, are refused and counted too. An identity
//! (address, generation) of another member that this member does not
//! hold already is cut out to wait for that member's signed record to
//! vouch for it ([`vouch`](super::vouch)). What is cut or refused leaves
//! the datagram; the rest of it (the sender's own news, records) is taken.

use bytes::{Buf, BufMut};
use foca::{Codec, Header, Member, PostcardCodec, State};

use super::core::MembershipError;
use super::vouch::Vouch;
use super::MemberId;

/// A datagram as foca should read it, and the updates cut out of it.
pub struct Screened {
    pub data: Option<Vec<u8>>,
    /// The sender, as its header names it.
    pub sender: String,
    pub refused: Vec<String>,
    /// Updates about identities no record vouches for yet.
    pub deferred: Vec<Member<MemberId>>,
}

/// What the screen needs to know of this member's table.
pub trait Known {
    /// Whether a member of this id is in the table (any state).
    fn knows(&self, id: &str) -> bool;
    /// How many members the table holds.
    fn count(&self) -> usize;
    /// Whether this member holds `id` down (its own verdict).
    fn holds_down(&self, id: &str) -> bool;
    /// Whether `id` is this member's identity as it stands.
    fn is_me(&self, id: &MemberId) -> bool;
    /// Whether the table holds this very identity (address and generation).
    fn holds(&self, id: &MemberId) -> bool;
    /// What the member's signed record says of this identity of it.
    fn vouch(&self, id: &MemberId) -> Vouch;
}

/// Screens `data`, a SWIM datagram whose header names its sender (checked
/// before). `data` is kept as it is (`data: None`) when nothing is cut.
pub fn screen(data: &[u8], known: &impl Known, cap: usize) -> Result<Screened, MembershipError> {
    let malformed =
        |e: postcard::Error| MembershipError::new(&format!("an undecodable SWIM message: {e}"));
    let mut codec = PostcardCodec;
    let mut rest = data;
    let header: Header<MemberId> = codec.decode_header(&mut rest).map_err(malformed)?;
    let header_len = data.len() - rest.len();
    let untouched = Screened {
        data: None,
        sender: header.src.id.clone(),
        refused: Vec::new(),
        deferred: Vec::new(),
    };
    // As foca reads them: a broadcast and an announce carry no updates,
    // and the payload of a message addressed to another identity of this
    // member (an earlier generation) is ignored.
    if rest.remaining() < 2
        || matches!(
            header.message,
            foca::Message::Broadcast | foca::Message::Announce
        )
        || !known.is_me(&header.dst)
    {
        return Ok(untouched);
    }
    let count = rest.get_u16();
    // Whether a member is known is asked only near the cap.
    let near_cap = known.count() + usize::from(count) >= cap;
    let mut kept = Vec::with_capacity(usize::from(count));
    let mut refused = Vec::new();
    let mut deferred = Vec::new();
    let mut deaths_cut = 0;
    let mut new_members = 0;
    for _ in 0..count {
        let m: Member<MemberId> = codec.decode_member(&mut rest).map_err(malformed)?;
        let subject = &m.id().id;
        let why = if subject == &header.src.id {
            None // About itself: its own word is the word.
        } else if !super::valid_id(subject) {
            Some("an update about a member whose id is not one".to_string())
        } else if m.state() == State::Down && known.holds_down(subject) {
            // Cut, but not counted: honest members gossip the deaths they
            // have seen, and this member has reached the same verdict.
            deaths_cut += 1;
            continue;
        } else if m.state() == State::Down {
            Some(format!(
                "declares {subject} down (a death counts only from this member's own verdict)"
            ))
        } else if known.holds(m.id()) {
            None // No change of address or generation.
        } else if known.vouch(m.id()) == Vouch::Stale {
            deaths_cut += 1; // Old news: its record names a later generation.
            continue;
        } else if known.vouch(m.id()) == Vouch::No {
            deferred.push(m);
            continue;
        } else if near_cap && !known.knows(subject) {
            if known.count() + new_members >= cap {
                Some(format!(
                    "a new member {subject} past the cap of {cap} members"
                ))
            } else {
                new_members += 1;
                None
            }
        } else {
            None
        };
        match why {
            None => kept.push(m),
            Some(w) => refused.push(w),
        }
    }
    if refused.is_empty() && deaths_cut == 0 && deferred.is_empty() {
        return Ok(untouched);
    }
    let mut out = Vec::with_capacity(data.len());
    out.extend_from_slice(&data[..header_len]);
    out.put_u16(kept.len() as u16);
    for m in &kept {
        codec.encode_member(m, &mut out).map_err(malformed)?;
    }
    // The custom broadcasts (member records) after the updates, unchanged.
    out.extend_from_slice(rest);
    Ok(Screened {
        data: Some(out),
        sender: header.src.id,
        refused,
        deferred,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    struct Table(BTreeSet<String>);
    impl Known for Table {
        fn is_me(&self, id: &MemberId) -> bool {
            id.id == "me"
        }
        fn holds(&self, id: &MemberId) -> bool {
            self.0.contains(&id.id)
                && id.generation == 1
                && id.addr.port() == 4433
                && id.addr.ip().to_string() == "192.0.2.1"
        }
        fn vouch(&self, id: &MemberId) -> Vouch {
            // Records of generation 1 at 192.0.2.1 for every member but m7.
            let record = (id.id != "m7").then(|| crate::membership::info::MemberInfo {
                signal: Some("192.0.2.1:4433".parse().unwrap()),
                generation: 1,
                ..Default::default()
            });
            crate::membership::vouch::vouch(record.as_ref(), id)
        }
        fn holds_down(&self, id: &str) -> bool {
            id == "m9"
        }
        fn knows(&self, id: &str) -> bool {
            self.0.contains(id)
        }
        fn count(&self) -> usize {
            self.0.len()
        }
    }

    fn id(name: &str) -> MemberId {
        MemberId {
            id: name.into(),
            addr: "192.0.2.1:4433".parse().unwrap(),
            generation: 1,
        }
    }

    fn moved(name: &str, addr: &str, generation: u64) -> MemberId {
        MemberId {
            addr: addr.parse().unwrap(),
            generation,
            ..id(name)
        }
    }

    fn datagram(updates: &[Member<MemberId>], tail: &[u8]) -> Vec<u8> {
        let mut codec = PostcardCodec;
        let mut out = Vec::new();
        let header = Header {
            src: id("m1"),
            src_incarnation: 0,
            dst: id("me"),
            message: foca::Message::Ping(7),
        };
        codec.encode_header(&header, &mut out).unwrap();
        out.put_u16(updates.len() as u16);
        for u in updates {
            codec.encode_member(u, &mut out).unwrap();
        }
        out.extend_from_slice(tail);
        out
    }

    #[test]
    fn deaths_of_others_invalid_ids_and_members_past_the_cap_are_cut_out() {
        let table = Table(["me", "m1", "m2", "m3", "m9"].map(String::from).into());
        let fine = [
            Member::new(id("m1"), 3, State::Down), // about itself
            Member::new(id("m2"), 1, State::Suspect),
            Member::new(id("m4"), 0, State::Alive), // a newcomer
        ];
        let d = datagram(&fine, b"records");
        let s = screen(&d, &table, 10).unwrap();
        assert!(s.data.is_none() && s.refused.is_empty());

        let hostile = [
            Member::new(id("m2"), 1, State::Alive),
            Member::new(id("m3"), 1, State::Down),
            Member::new(id("me"), 1, State::Down),
            Member::new(id("Not An Id"), 0, State::Alive),
            Member::new(id("m5"), 0, State::Alive),
            Member::new(id("m6"), 0, State::Alive),
            // Held down here already: gossip of a death seen, cut uncounted.
            Member::new(id("m9"), 1, State::Down),
        ];
        let d = datagram(&hostile, b"records");
        let s = screen(&d, &table, 6).unwrap();
        assert_eq!(s.refused.len(), 4, "{:?}", s.refused);
        assert!(s.refused[0].starts_with("declares m3 down"));
        assert!(s.refused[1].starts_with("declares me down"));
        assert!(s.refused[2].contains("id is not one"));
        assert_eq!(s.refused[3], "a new member m6 past the cap of 6 members");
        // What is left reads as a datagram of the two fine updates and the
        // same records.
        assert_eq!(
            s.data.unwrap(),
            datagram(&[hostile[0].clone(), hostile[4].clone()], b"records")
        );
        // Identities no record vouches for wait; old ones are dropped.
        let moving = [
            Member::new(moved("m2", "198.51.100.1:4433", 1), 1, State::Alive),
            Member::new(moved("m3", "192.0.2.1:4433", u64::MAX), 0, State::Alive),
            Member::new(id("m7"), 0, State::Alive), // invented: no record
            Member::new(moved("m2", "192.0.2.1:4433", 0), 0, State::Alive), // stale
            Member::new(id("m2"), 2, State::Suspect), // held as it is: fine
        ];
        let d = datagram(&moving, b"records");
        let s = screen(&d, &table, 10).unwrap();
        assert!(s.refused.is_empty(), "{:?}", s.refused);
        assert_eq!(s.deferred, moving[..3]);
        assert_eq!(s.data.unwrap(), datagram(&moving[4..], b"records"));

        // Garbage is refused whole.
        assert!(screen(&d[..d.len() / 3], &table, 6).is_err());
    }
}
