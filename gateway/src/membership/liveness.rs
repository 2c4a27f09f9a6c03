//! Fast failure detection beside SWIM: every member sends a small
//! heartbeat to each peer it watches every `interval` (as BFD does between
//! routers), and reports a peer silent for `detect` to all members. A peer
//! is declared down when `confirmations` distinct members report it within
//! `report_ttl`: one member's bad link (or a lossy path) never takes a
//! peer down, while a dead appliance, which every watcher sees at once, is
//! down within about `detect` plus a round trip. This is Lifeguard's rule
//! that independent confirmations shorten suspicion, with a direct
//! detector feeding it; SWIM's own suspicion, set long, stays the backstop
//! and covers members nobody watches directly.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::health::{Beat, PathHealth};

/// Detector settings, for inter-region paths.
#[derive(Clone, Copy, Debug)]
pub struct LivenessSettings {
    pub interval: Duration,
    /// Silence after which a watcher reports a peer.
    pub detect: Duration,
    /// Distinct reports (the local one included) that declare a peer down;
    /// fewer when fewer members can observe it (see [`Detector::quorum`]).
    pub confirmations: usize,
    /// How long a report counts unless renewed.
    pub report_ttl: Duration,
}

impl Default for LivenessSettings {
    fn default() -> Self {
        LivenessSettings {
            interval: Duration::from_millis(100),
            detect: Duration::from_millis(600),
            confirmations: 3,
            report_ttl: Duration::from_millis(1500),
        }
    }
}

/// What the detector asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LivenessAction {
    /// Send this heartbeat to this peer.
    Heartbeat(String, Beat),
    /// Tell every member that this one hears nothing from `subject`.
    Report { subject: String },
    /// Enough members agree: declare `subject` down.
    Down(String),
}

pub struct Detector {
    me: String,
    settings: LivenessSettings,
    /// Peers watched, and when each was last heard from.
    heard: BTreeMap<String, Instant>,
    /// Subjects this member currently reports, and when it last did.
    reporting: BTreeMap<String, Instant>,
    /// subject -> observer -> when reported.
    reports: BTreeMap<String, BTreeMap<String, Instant>>,
    declared: BTreeSet<String>,
    /// Subjects declared down here, still reported until the instant: a
    /// watcher that missed reports (lost on a lossy path) reaches the
    /// verdict from these, as a death is never taken from gossip.
    reported_after: BTreeMap<String, Instant>,
    next_beat: Option<Instant>,
    /// What the heartbeats measure of each watched path.
    paths: BTreeMap<String, PathHealth>,
    /// When [`tick`](Self::tick) last ran, to tell a stall of our own.
    last_tick: Option<Instant>,
    /// Per watched peer: when its last heartbeat came, and the largest gap
    /// between two of its heartbeats since [`take_gap`](Self::take_gap).
    gaps: BTreeMap<String, (Instant, Duration)>,
    /// How many members watch each subject (when not everyone does): the
    /// most reports that can come about it.
    watchers: BTreeMap<String, usize>,
    /// Peers watched only because they watch us (their view of the mesh
    /// differs from ours for now): beaten back while they beat us, and let
    /// go quietly, not reported, when they stop.
    courtesy: BTreeSet<String>,
}

impl Detector {
    pub fn new(me: &str, settings: LivenessSettings) -> Detector {
        Detector {
            me: me.to_string(),
            settings,
            heard: BTreeMap::new(),
            reporting: BTreeMap::new(),
            reports: BTreeMap::new(),
            declared: BTreeSet::new(),
            reported_after: BTreeMap::new(),
            next_beat: None,
            paths: BTreeMap::new(),
            last_tick: None,
            gaps: BTreeMap::new(),
            watchers: BTreeMap::new(),
            courtesy: BTreeSet::new(),
        }
    }

    /// Watches `peer` back because it beats us, though our plan does not
    /// name it (see [`courtesy`](Self#structfield.courtesy)).
    pub fn watch_back(&mut self, peer: &str, now: Instant) {
        if peer != self.me && !self.heard.contains_key(peer) {
            self.courtesy.insert(peer.to_string());
            self.watch(peer, now);
        }
    }

    /// `peer` is in our plan now: watched on its own account.
    pub fn adopt(&mut self, peer: &str) {
        self.courtesy.remove(peer);
    }

    /// Whether `peer` is watched only because it watches us.
    pub fn is_courtesy(&self, peer: &str) -> bool {
        self.courtesy.contains(peer)
    }

    /// Starts watching `peer` (as if just heard from).
    pub fn watch(&mut self, peer: &str, now: Instant) {
        if peer != self.me {
            self.heard.entry(peer.to_string()).or_insert(now);
            self.declared.remove(peer);
            self.next_beat.get_or_insert(now);
        }
    }

    /// The peers watched now.
    pub fn watched(&self) -> impl Iterator<Item = &String> {
        self.heard.keys()
    }

    /// How many members watch `subject` (this one among them, if it does):
    /// the quorum for it never asks for more reports than that.
    pub fn set_watchers(&mut self, subject: &str, watchers: usize) {
        self.watchers.insert(subject.to_string(), watchers);
    }

    /// `subject` is in the mesh again (it rejoined): a verdict reached on
    /// it before does not stand in the way of the next one.
    pub fn forget(&mut self, subject: &str) {
        self.declared.remove(subject);
        self.reports.remove(subject);
        self.reported_after.remove(subject);
    }

    pub fn unwatch(&mut self, peer: &str) {
        self.courtesy.remove(peer);
        self.watchers.remove(peer);
        self.heard.remove(peer);
        self.paths.remove(peer);
        self.reporting.remove(peer);
        self.reports.remove(peer);
        self.gaps.remove(peer);
    }

    /// A heartbeat (or any datagram) came from `peer`.
    pub fn heard(&mut self, peer: &str, now: Instant) {
        if let Some(t) = self.heard.get_mut(peer) {
            *t = now;
        }
        // Alive after all: whatever was said of it is void.
        self.reporting.remove(peer);
        self.reports.remove(peer);
        self.declared.remove(peer);
        self.reported_after.remove(peer);
    }

    /// A heartbeat from `peer`.
    pub fn on_beat(&mut self, peer: &str, beat: Beat, now: Instant) {
        self.heard(peer, now);
        if self.heard.contains_key(peer) {
            self.paths
                .entry(peer.to_string())
                .or_default()
                .on_beat(beat, now);
            let (last, largest) = self
                .gaps
                .entry(peer.to_string())
                .or_insert((now, Duration::ZERO));
            *largest = (*largest).max(now.saturating_duration_since(*last));
            *last = now;
        }
    }

    /// The largest gap between two heartbeats received from `peer` since
    /// the last call (what a stall on either side, or loss, looks like
    /// from here); `None` before two have come.
    pub fn take_gap(&mut self, peer: &str) -> Option<Duration> {
        let (_, largest) = self.gaps.get_mut(peer)?;
        Some(std::mem::take(largest)).filter(|g| !g.is_zero())
    }

    /// The round-trip time and inbound loss measured to `peer`.
    pub fn health(&self, peer: &str) -> Option<(Option<Duration>, f64)> {
        self.paths.get(peer).map(|p| (p.rtt(), p.loss()))
    }

    /// Whether `peer` is watched and was heard from within `detect`.
    pub fn hears(&self, peer: &str, now: Instant) -> bool {
        self.heard
            .get(peer)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.settings.detect)
    }

    /// `observer` reports `subject` silent.
    pub fn report(
        &mut self,
        observer: &str,
        subject: &str,
        now: Instant,
    ) -> Option<LivenessAction> {
        // Only members this one watches: reports naming anything else
        // would grow the table at a remote member's will.
        if subject == self.me
            || self.declared.contains(subject)
            || !self.heard.contains_key(subject)
        {
            return None;
        }
        self.reports
            .entry(subject.to_string())
            .or_default()
            .insert(observer.to_string(), now);
        self.check(subject, now)
    }

    /// `observer`, one of the `watchers` of a `subject` this member does not
    /// watch itself, reports it silent (the caller has checked that the
    /// observer watches it, and that the subject is in the mesh). Enough
    /// such reports declare it down here as at its watchers, without
    /// waiting for the news to spread by gossip.
    pub fn report_unwatched(
        &mut self,
        observer: &str,
        subject: &str,
        watchers: usize,
        now: Instant,
    ) -> Option<LivenessAction> {
        if subject == self.me || self.declared.contains(subject) || self.heard.contains_key(subject)
        {
            return None;
        }
        let ttl = self.settings.report_ttl;
        let by = self.reports.entry(subject.to_string()).or_default();
        by.insert(observer.to_string(), now);
        by.retain(|_, at| now.saturating_duration_since(*at) <= ttl);
        if by.len() >= self.settings.confirmations.min(watchers).max(1) {
            self.declared.insert(subject.to_string());
            self.reports.remove(subject);
            return Some(LivenessAction::Down(subject.to_string()));
        }
        None
    }

    /// Reports needed to declare `subject` down: `confirmations`, or all
    /// who can observe it when they are fewer: this member and every other
    /// watched member it still hears, and never more than watch it. In a mesh of two, or three with one
    /// gone, the survivors agree among themselves; on the small side of a
    /// partition, a member that hears nobody decides alone what it cannot
    /// reach (the far side refutes it when the partition heals).
    pub fn quorum(&self, subject: &str, now: Instant) -> usize {
        let detect = self.settings.detect;
        let observers = 1 + self
            .heard
            .iter()
            .filter(|(p, at)| *p != subject && now.saturating_duration_since(**at) < detect)
            .count();
        let watchers = self.watchers.get(subject).copied().unwrap_or(usize::MAX);
        self.settings
            .confirmations
            .min(observers)
            .min(watchers)
            .max(1)
    }

    fn check(&mut self, subject: &str, now: Instant) -> Option<LivenessAction> {
        // Local evidence against: a member we hear is not declared down,
        // whatever others report (a partial partition).
        if self.hears(subject, now) {
            return None;
        }
        let ttl = self.settings.report_ttl;
        let needed = self.quorum(subject, now);
        let by = self.reports.get_mut(subject)?;
        by.retain(|_, at| now.saturating_duration_since(*at) <= ttl);
        if by.len() >= needed {
            self.declared.insert(subject.to_string());
            self.reports.remove(subject);
            let last = self.reporting.remove(subject).unwrap_or(now);
            self.reporting.insert(subject.to_string(), last);
            self.reported_after
                .insert(subject.to_string(), now + self.settings.report_ttl);
            self.heard.remove(subject);
            return Some(LivenessAction::Down(subject.to_string()));
        }
        None
    }

    /// When [`tick`](Self::tick) is next due.
    pub fn next_tick(&self) -> Option<Instant> {
        self.next_beat
    }

    /// Heartbeats to send, reports to make, and verdicts, at `now`.
    pub fn tick(&mut self, now: Instant) -> Vec<LivenessAction> {
        let mut out = Vec::new();
        // This member itself was stalled (a busy control loop, a paused
        // VM) past the detection window: the silence is ours, not theirs.
        // Everyone gets a fresh window instead of a verdict.
        if self
            .last_tick
            .is_some_and(|t| now.saturating_duration_since(t) >= self.settings.detect / 2)
        {
            for at in self.heard.values_mut() {
                *at = (*at).max(now);
            }
            self.reporting.clear();
        }
        self.last_tick = Some(now);
        if self.next_beat.is_none_or(|t| t <= now) {
            self.next_beat = Some(now + self.settings.interval);
            for p in self.heard.keys() {
                let beat = self.paths.entry(p.clone()).or_default().beat(now);
                out.push(LivenessAction::Heartbeat(p.clone(), beat));
            }
        }
        self.reported_after.retain(|_, until| now < *until);
        let every = (self.settings.interval * 3).min(self.settings.report_ttl / 2);
        for subject in self.reported_after.keys() {
            let due = self
                .reporting
                .get(subject)
                .is_none_or(|at| now.saturating_duration_since(*at) >= every);
            if due {
                self.reporting.insert(subject.clone(), now);
                out.push(LivenessAction::Report {
                    subject: subject.clone(),
                });
            }
        }
        self.reporting
            .retain(|s, _| self.heard.contains_key(s) || self.reported_after.contains_key(s));
        let silent: Vec<String> = self
            .heard
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) >= self.settings.detect)
            .map(|(p, _)| p.clone())
            .collect();
        for subject in silent {
            if self.courtesy.contains(&subject) {
                // It stopped watching us (our views agree again, or it is
                // gone: its own watchers say so).
                self.unwatch(&subject);
                continue;
            }
            // Report, and repeat it every three heartbeat intervals while
            // the silence lasts: a report lost on a lossy path is made up
            // for well within the time a verdict should take (and the
            // repeats keep it from expiring).
            let due = self
                .reporting
                .get(&subject)
                .is_none_or(|at| now.saturating_duration_since(*at) >= every);
            if due {
                self.reporting.insert(subject.clone(), now);
                out.push(LivenessAction::Report {
                    subject: subject.clone(),
                });
                let me = self.me.clone();
                if let Some(a) = self.report(&me, &subject, now) {
                    out.push(a);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn one_report_is_not_enough_three_are() {
        let t0 = Instant::now();
        let mut d = Detector::new("a", LivenessSettings::default());
        for p in ["b", "c", "x"] {
            d.watch(p, t0);
        }
        let beats = d.tick(t0);
        assert_eq!(beats.len(), 3);
        // x goes silent; b and c keep talking.
        let mut t = t0;
        let mut reported = false;
        while t < t0 + 700 * MS {
            t += 100 * MS;
            d.heard("b", t);
            d.heard("c", t);
            for a in d.tick(t) {
                if a == (LivenessAction::Report {
                    subject: "x".into(),
                }) {
                    reported = true;
                }
                assert!(!matches!(a, LivenessAction::Down(_)), "our report alone");
            }
        }
        assert!(reported);
        assert_eq!(d.report("b", "x", t), None, "two reports");
        assert_eq!(
            d.report("c", "x", t),
            Some(LivenessAction::Down("x".into()))
        );
        assert_eq!(d.report("c", "x", t), None, "declared once");
        // After its verdict this member goes on reporting x for the
        // reports' lifetime, so a watcher that lost reports on a lossy
        // path still gets three: deaths are not taken from gossip.
        let ttl = LivenessSettings::default().report_ttl;
        let mut after = 0;
        let end = t + ttl + 500 * MS;
        while t < end {
            t += 100 * MS;
            d.heard("b", t);
            d.heard("c", t);
            for a in d.tick(t) {
                if a == (LivenessAction::Report {
                    subject: "x".into(),
                }) {
                    assert!(t <= end - 500 * MS + 100 * MS, "reported past its lifetime");
                    after += 1;
                }
                assert!(!matches!(a, LivenessAction::Down(_)));
            }
        }
        assert!(
            (4..=6).contains(&after),
            "{after} reports after the verdict"
        );
    }

    #[test]
    fn fewer_observers_need_fewer_reports() {
        let t0 = Instant::now();
        // Three members, one gone: the two survivors agree.
        let mut d = Detector::new("a", LivenessSettings::default());
        d.watch("b", t0);
        d.watch("x", t0);
        let t = t0 + 700 * MS;
        d.heard("b", t);
        assert_eq!(d.quorum("x", t), 2);
        let actions = d.tick(t);
        assert!(actions.contains(&LivenessAction::Report {
            subject: "x".into()
        }));
        assert!(!actions.iter().any(|a| matches!(a, LivenessAction::Down(_))));
        assert_eq!(
            d.report("b", "x", t),
            Some(LivenessAction::Down("x".into()))
        );

        // Cut off from everyone: alone, it declares what it cannot reach.
        let mut d = Detector::new("a", LivenessSettings::default());
        d.watch("b", t0);
        d.watch("c", t0);
        let t = t0 + 700 * MS;
        assert_eq!(d.quorum("b", t), 1);
        let downs: Vec<_> = d
            .tick(t)
            .into_iter()
            .filter(|a| matches!(a, LivenessAction::Down(_)))
            .collect();
        assert_eq!(
            downs,
            [
                LivenessAction::Down("b".into()),
                LivenessAction::Down("c".into())
            ]
        );
    }

    #[test]
    fn a_stall_of_our_own_gives_fresh_windows_not_verdicts() {
        let t0 = Instant::now();
        let mut d = Detector::new("a", LivenessSettings::default());
        for p in ["b", "c"] {
            d.watch(p, t0);
        }
        d.tick(t0);
        // The loop stalls for 2 s: nobody was heard meanwhile.
        let t = t0 + 2000 * MS;
        let actions = d.tick(t);
        assert!(
            actions
                .iter()
                .all(|a| matches!(a, LivenessAction::Heartbeat(..))),
            "{actions:?}"
        );
        // A real silence afterwards is still caught.
        let mut downs = 0;
        for k in 1..=8 {
            let t = t + 100 * k * MS;
            downs += d
                .tick(t)
                .iter()
                .filter(|a| matches!(a, LivenessAction::Down(_)))
                .count();
        }
        assert_eq!(downs, 2, "alone, it declares what it cannot reach");
    }

    #[test]
    fn what_we_hear_is_not_declared_down_and_unwatched_names_are_ignored() {
        let t0 = Instant::now();
        let mut d = Detector::new("a", LivenessSettings::default());
        for p in ["b", "c", "x"] {
            d.watch(p, t0);
        }
        let t = t0 + 300 * MS;
        d.heard("x", t);
        assert_eq!(d.report("b", "x", t), None);
        assert_eq!(d.report("c", "x", t), None, "we hear x ourselves");
        assert_eq!(d.report("b", "nobody", t), None);
        assert!(!d.reports.contains_key("nobody"), "not kept");
    }

    #[test]
    fn reports_expire_and_hearing_from_the_subject_voids_them() {
        let t0 = Instant::now();
        let mut d = Detector::new("a", LivenessSettings::default());
        // Four observers besides us, all still heard: three reports needed.
        let hear_all = |d: &mut Detector, t| {
            for p in ["b", "c", "d", "e"] {
                d.watch(p, t);
                d.heard(p, t);
            }
        };
        d.watch("x", t0);
        hear_all(&mut d, t0);
        assert_eq!(d.report("b", "x", t0), None);
        hear_all(&mut d, t0 + 1600 * MS);
        assert_eq!(
            d.report("c", "x", t0 + 1600 * MS),
            None,
            "b's report expired"
        );
        d.heard("x", t0 + 1700 * MS);
        hear_all(&mut d, t0 + 1700 * MS);
        assert_eq!(d.report("d", "x", t0 + 1700 * MS), None, "c's was voided");
        assert_eq!(d.report("e", "x", t0 + 1700 * MS), None, "two reports");
        assert_eq!(
            d.report("a2", "a", t0),
            None,
            "nobody declares us down to us"
        );
    }
}
