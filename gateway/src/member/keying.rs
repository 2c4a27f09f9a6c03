//! Whom this member keys, and when it tries: the policy says which
//! members it connects to; a member that comes up is tried at once by the
//! lower id of the pair and by the higher id only if nothing completed
//! within [`HIGHER_ID_WAITS`] (so the two rarely collide, and neither
//! depends on the other alone); a pair that stays unkeyed while its member
//! is up is tried again every [`RETRY_EVERY`].

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

pub const HIGHER_ID_WAITS: Duration = Duration::from_secs(2);
pub const RETRY_EVERY: Duration = Duration::from_secs(2);

pub(super) struct Keying {
    me: String,
    /// Members that are up and not yet keyed, and when to try next.
    unkeyed: HashMap<String, Instant>,
    /// The members the policy connects this one to (`None`: every member,
    /// until a policy says otherwise). Exchanges others start are answered
    /// whatever this says: their policy wants the pair.
    wanted: Option<HashSet<String>>,
}

impl Keying {
    pub fn new(me: &str) -> Keying {
        Keying {
            me: me.to_string(),
            unkeyed: HashMap::new(),
            wanted: None,
        }
    }

    /// Whether the policy connects this member to `id`.
    pub fn wants(&self, id: &str) -> bool {
        self.wanted.as_ref().is_none_or(|w| w.contains(id))
    }

    /// When to start the first exchange with a member that just came up.
    fn first_attempt(&self, peer: &str, now: Instant) -> Instant {
        if self.me.as_str() < peer {
            now
        } else {
            now + HIGHER_ID_WAITS
        }
    }

    /// `id` came up, or restarted (its old SAs are gone): key it afresh if
    /// the policy wants the pair.
    pub fn up(&mut self, id: &str, now: Instant) {
        if self.wants(id) {
            let at = self.first_attempt(id, now);
            self.unkeyed.insert(id.to_string(), at);
        }
    }

    pub fn down(&mut self, id: &str) {
        self.unkeyed.remove(id);
    }

    /// An outbound SA with `id` is in place.
    pub fn keyed(&mut self, id: &str) {
        self.unkeyed.remove(id);
    }

    /// An exchange with `id` failed: tried again while the member is up and
    /// the pair wanted (a pair already keyed is kept keyed even if only the
    /// peer wants it).
    pub fn failed(&mut self, id: &str, up: bool, keyed: bool, now: Instant) {
        if up && (self.wants(id) || keyed) {
            self.unkeyed
                .entry(id.to_string())
                .or_insert(now + RETRY_EVERY);
        }
    }

    /// The policy's peers: new wanted members that are alive and unkeyed
    /// are scheduled, members no longer wanted are not tried.
    pub fn set_wanted(
        &mut self,
        ids: HashSet<String>,
        alive_unkeyed: impl Fn(&str) -> bool,
        now: Instant,
    ) {
        self.unkeyed.retain(|id, _| ids.contains(id));
        for id in &ids {
            if alive_unkeyed(id) && !self.unkeyed.contains_key(id) {
                let at = self.first_attempt(id, now);
                self.unkeyed.insert(id.clone(), at);
            }
        }
        self.wanted = Some(ids);
    }

    /// The members due for an attempt now; each is next due after
    /// [`RETRY_EVERY`].
    pub fn due(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        for (peer, at) in self.unkeyed.iter_mut() {
            if *at <= now {
                *at = now + RETRY_EVERY;
                due.push(peer.clone());
            }
        }
        due.sort();
        due
    }

    /// Every member waiting for an attempt is due now (an epoch key they
    /// waited for is here).
    pub fn retry_now(&mut self, now: Instant) {
        for at in self.unkeyed.values_mut() {
            *at = now;
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.unkeyed.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lower_id_tries_first_and_failures_are_retried_while_wanted() {
        let t0 = Instant::now();
        let mut k = Keying::new("m2");
        k.up("m3", t0);
        k.up("m1", t0);
        assert_eq!(k.due(t0), ["m3"], "m2 < m3: at once; m1 < m2: m1 starts");
        assert_eq!(k.due(t0 + HIGHER_ID_WAITS), ["m1", "m3"]);
        k.keyed("m1");
        k.keyed("m3");
        assert_eq!(k.poll_timeout(), None);
        // A failure while up is retried; a failure of a member down is not.
        k.failed("m3", true, false, t0);
        k.failed("m1", false, false, t0);
        assert_eq!(k.due(t0 + RETRY_EVERY), ["m3"]);
        // The policy drops m3 and wants m4 (alive, unkeyed).
        let wanted = HashSet::from(["m4".to_string()]);
        k.set_wanted(wanted, |id| id == "m4", t0);
        assert!(!k.wants("m3"));
        assert_eq!(k.due(t0 + RETRY_EVERY * 2), ["m4"]);
        // A pair still keyed is kept keyed even if only the peer wants it.
        k.failed("m3", true, true, t0);
        k.up("m5", t0);
        assert_eq!(k.due(t0 + RETRY_EVERY * 3), ["m3", "m4"]);
    }
}
