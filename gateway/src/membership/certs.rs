//! Certificates asked of the member that relayed a record. A record is
//! checked against its member's certificate, learnt first-hand only by
//! connecting to that member; but a member dials only the addresses that
//! checked records vouch for. The member that relayed the record checked
//! it, so it holds the certificate: asked for it, it answers with it, and
//! the asker checks it against the mesh CA as a handshake would. Both
//! directions are paced, so a member cannot make another do more than a
//! record's worth of work per request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::core::MembershipError;
use super::info::Infos;

/// At most one request for a member's certificate per this.
const ASK_PACE: Duration = Duration::from_secs(2);

/// Certificates sent to one member per second at most.
const ANSWERS_PER_SECOND: u32 = 64;

/// Requests and answers under way.
#[derive(Default)]
pub struct CertFetch {
    /// Per member whose certificate was asked for: of whom, and when.
    asked: HashMap<String, (String, Instant)>,
    /// Per asker: the second its answers are counted in, and how many.
    answered: HashMap<String, (Instant, u32)>,
}

impl CertFetch {
    /// Whom to ask for which certificate (the member ids): the records
    /// newly waiting in `infos`, each asked of the member that relayed it.
    pub fn ask(&mut self, infos: &Infos, now: Instant) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (subject, relay) in infos.take_wanted() {
            let due = self
                .asked
                .get(&subject)
                .is_none_or(|(_, t)| now.saturating_duration_since(*t) >= ASK_PACE);
            if due && infos.waits_on(&subject) {
                self.asked.insert(subject.clone(), (relay.clone(), now));
                out.push((relay, subject));
            }
        }
        self.asked
            .retain(|_, (_, t)| now.saturating_duration_since(*t) < ASK_PACE);
        out
    }

    /// `from` asks for the certificate of the member `body` names: the
    /// certificate's DER, if known here and within `from`'s pace.
    pub fn answer(
        &mut self,
        from: &str,
        body: &[u8],
        infos: &Infos,
        now: Instant,
    ) -> Result<Option<Vec<u8>>, MembershipError> {
        let subject = std::str::from_utf8(body)
            .ok()
            .filter(|s| super::valid_id(s))
            .ok_or_else(|| MembershipError::new("a certificate request naming no member"))?;
        let (since, count) = self.answered.entry(from.to_string()).or_insert((now, 0));
        if now.saturating_duration_since(*since) >= Duration::from_secs(1) {
            (*since, *count) = (now, 0);
        }
        if *count >= ANSWERS_PER_SECOND {
            return Err(MembershipError::unauthorized(format!(
                "more than {ANSWERS_PER_SECOND} certificate requests in a second"
            )));
        }
        *count += 1;
        if self.answered.len() > 4096 {
            self.answered
                .retain(|_, (t, _)| now.saturating_duration_since(*t) < Duration::from_secs(1));
        }
        Ok(infos.cert_of(subject))
    }

    /// A certificate `from` sent: learnt if it was asked of `from` and the
    /// mesh CA vouches for it.
    pub fn learn(
        &mut self,
        from: &str,
        der: &[u8],
        infos: &Infos,
    ) -> Result<String, MembershipError> {
        if !self.asked.values().any(|(relay, _)| relay == from) {
            return Err(MembershipError::unauthorized(
                "a certificate this member did not ask it for".into(),
            ));
        }
        let id = infos
            .learn_cert(der)
            .map_err(|why| MembershipError::unauthorized(format!("a certificate that {why}")))?;
        self.asked.remove(&id);
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::BufMut;
    use foca::{Codec, Header, Member, PostcardCodec, State};

    use crate::membership::agent::{CERT, CERT_REQUEST, SWIM};
    use crate::membership::info::tests::authority;
    use crate::membership::info::{Infos, MemberInfo};
    use crate::membership::vouch::VOUCH_WAIT;
    use crate::membership::{Agent, MemberId, Settings};

    fn id(name: &str, addr: &str, generation: u64) -> MemberId {
        MemberId {
            id: name.into(),
            addr: addr.parse().unwrap(),
            generation,
        }
    }

    /// A SWIM datagram from `src` to `dst` carrying `updates` and the
    /// sealed `records`, as foca frames them.
    fn gossip(
        src: &MemberId,
        dst: &MemberId,
        updates: &[Member<MemberId>],
        records: &[Vec<u8>],
    ) -> Vec<u8> {
        let mut codec = PostcardCodec;
        let mut out = vec![SWIM];
        let header = Header {
            src: src.clone(),
            src_incarnation: 0,
            dst: dst.clone(),
            message: foca::Message::Gossip,
        };
        codec.encode_header(&header, &mut out).unwrap();
        out.put_u16(updates.len() as u16);
        for u in updates {
            codec.encode_member(u, &mut out).unwrap();
        }
        for r in records {
            out.put_u16(r.len() as u16);
            out.extend_from_slice(r);
        }
        out
    }

    /// What a relay may say of others, at a member whose records are
    /// signed: another member's identity counts once that member's record,
    /// whose certificate is fetched from the relay, vouches for it; a moved
    /// generation, an invented member and an unasked certificate do not,
    /// and the relay is named for each.
    #[test]
    fn gossip_about_others_counts_once_their_record_vouches_for_it() {
        let t0 = Instant::now();
        let me = id("a", "192.0.2.1:4433", 1);
        let relay = id("h", "192.0.2.8:4433", 1);
        let mut a = Agent::with_infos(
            me.clone(),
            Settings::default(),
            None,
            1,
            Infos::with_authority(authority("a", &["h"])),
        );
        let b = id("b", "192.0.2.2:4433", 5);
        let b_record = Infos::with_authority(authority("b", &[])).seal(&MemberInfo {
            id: "b".into(),
            version: 1,
            signal: Some(b.addr),
            generation: 5,
            ..MemberInfo::default()
        });
        let ghost = id("ghost", "198.51.100.9:4433", 1);
        let updates = [
            Member::new(b.clone(), 0, State::Alive),
            Member::new(ghost.clone(), 0, State::Alive),
        ];
        a.handle("h", &gossip(&relay, &me, &updates, &[b_record]), t0)
            .unwrap();
        let members = |a: &Agent| -> Vec<MemberId> {
            a.membership().members().map(|(m, _)| m.clone()).collect()
        };
        assert_eq!(
            members(&a),
            std::slice::from_ref(&relay),
            "only the relay itself counts yet"
        );
        // b's record waits for b's certificate, asked of the relay.
        let sent: Vec<(String, Vec<u8>)> = std::iter::from_fn(|| a.poll_transmit()).collect();
        let ask = [vec![CERT_REQUEST], b"b".to_vec()].concat();
        assert!(sent.contains(&("h".into(), ask)), "{sent:?}");

        // The relay answers; b's record is checked and vouches for b.
        let t1 = t0 + Duration::from_millis(20);
        a.handle("h", &[vec![CERT], b"b".to_vec()].concat(), t1)
            .unwrap();
        assert!(members(&a).contains(&b), "{:?}", members(&a));
        assert!(a.take_refused().is_empty());

        // The relay bumps b's generation (a restart, everywhere) and moves
        // its address: neither counts.
        let moved = [
            Member::new(id("b", "192.0.2.2:4433", u64::MAX), 0, State::Alive),
            Member::new(id("b", "203.0.113.7:4433", 5), 1, State::Alive),
        ];
        a.handle("h", &gossip(&relay, &me, &moved[..1], &[]), t1)
            .unwrap();
        a.handle("h", &gossip(&relay, &me, &moved[1..], &[]), t1)
            .unwrap();
        // A certificate nobody asked for is refused.
        let e = a
            .handle("h", &[vec![CERT], b"c".to_vec()].concat(), t1)
            .unwrap_err();
        assert!(e.to_string().contains("did not ask"), "{e}");

        let later = t0 + VOUCH_WAIT + Duration::from_millis(30);
        a.handle_timeout(later);
        assert!(members(&a).contains(&b), "b is where its record says");
        assert!(!members(&a).iter().any(|m| m.id == "ghost"));
        assert!(a.take_refused().is_empty());
        let refused = a.take_unvouched();
        let said: Vec<&str> = refused
            .iter()
            .map(|(by, why)| {
                assert_eq!(by, "h");
                why.as_str()
            })
            .collect();
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(said.iter().any(|w| w.starts_with("says ghost is at 198.51.100.9:4433, generation 1, which no record of ghost vouches for")), "{said:?}");
        // One refusal per member (the newest identity said of it).
        assert!(
            said.iter()
                .any(|w| w
                    .starts_with("says b is at 192.0.2.2:4433, generation 18446744073709551615")),
            "{said:?}"
        );
        // Nothing is ever sent to the invented member.
        let sent: Vec<(String, Vec<u8>)> = std::iter::from_fn(|| a.poll_transmit()).collect();
        assert!(!sent.iter().any(|(to, _)| to == "ghost"));
    }
}

#[cfg(test)]
mod hostile {
    use std::time::{Duration, Instant};

    use super::CertFetch;
    use crate::membership::info::tests::authority;
    use crate::membership::info::Infos;

    /// A member asking for certificates: a request naming no member is
    /// refused as malformed, one for a certificate not known here gets no
    /// answer, and past 64 a second per asker the requests are refused
    /// (counted by the caller, the asker named); the next second answers
    /// again.
    #[test]
    fn certificate_requests_are_checked_and_paced_per_asker() {
        let infos = Infos::with_authority(authority("a", &["b"]));
        let mut f = CertFetch::default();
        let t0 = Instant::now();
        let e = f.answer("h", b"Not An Id", &infos, t0).unwrap_err();
        assert_eq!(e.kind(), "malformed");
        assert_eq!(f.answer("h", b"zz", &infos, t0).unwrap(), None);
        for _ in 0..63 {
            assert_eq!(
                f.answer("h", b"b", &infos, t0).unwrap(),
                Some(b"b".to_vec())
            );
        }
        let e = f.answer("h", b"b", &infos, t0).unwrap_err();
        assert_eq!(e.kind(), "unauthorized");
        assert!(e.to_string().contains("more than 64"), "{e}");
        // (1 unknown and 63 answered: 64 in the second.) Another asker is
        // paced on its own; the first answers a second later.
        assert!(f.answer("g", b"b", &infos, t0).unwrap().is_some());
        let t1 = t0 + Duration::from_secs(1);
        assert!(f.answer("h", b"b", &infos, t1).unwrap().is_some());
    }
}
