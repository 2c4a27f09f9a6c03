//! One member's whole membership logic: SWIM (foca) for who is in the
//! mesh and for spreading news, and the liveness detector for fast,
//! confirmed failure detection between the members it watches. Sans-IO:
//! datagrams from authenticated senders and the time in; datagrams,
//! membership events and the next deadline out. SWIM's relative timers are
//! kept here as absolute deadlines, so the caller sees one timer, as with
//! every other core: [`poll_timeout`](Agent::poll_timeout) and
//! [`handle_timeout`](Agent::handle_timeout).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use foca::{State, Timer};

use super::certs::CertFetch;
use super::core::{Membership, MembershipError, MembershipEvent, Settings};
use super::health::{Beat, BEAT_LEN};
use super::info::{Infos, MemberInfo};
use super::liveness::{Detector, LivenessAction, LivenessSettings};
use super::watch::WatchPlan;
use super::MemberId;

// The first byte of each membership datagram: what follows.
pub(crate) const SWIM: u8 = 0;
pub(crate) const HEARTBEAT: u8 = 1;
pub(crate) const REPORT: u8 = 2;
pub(crate) const RECORD: u8 = 3;
/// "Send me your record": a heartbeat said the sender's is newer than ours.
pub(crate) const RECORD_REQUEST: u8 = 4;
/// "Send me this member's certificate" (its id follows), and the answer
/// (the DER follows): see `certs`.
pub(crate) const CERT_REQUEST: u8 = 5;
pub(crate) const CERT: u8 = 6;

/// At most one record request to a member, and one answer to it, per this.
const RECORD_PACE: Duration = Duration::from_millis(500);

/// One member as this member sees it: its record, its state, the health
/// measured of the path to it, and since when its state has been what it is.
#[derive(Clone, Debug)]
pub struct Observed {
    pub info: MemberInfo,
    /// SWIM's state, except that a suspect the liveness detector still
    /// hears is alive.
    pub state: State,
    pub rtt: Option<Duration>,
    /// Inbound loss, 0 to 1.
    pub loss: f64,
    pub since: Instant,
    /// The largest gap between heartbeats received from it since the last
    /// observation (watched members).
    pub beat_gap: Option<Duration>,
}

pub struct Agent {
    swim: Membership,
    /// Each member's last state seen, and since when.
    states: std::collections::BTreeMap<String, (State, Instant)>,
    liveness: Option<Detector>,
    /// Who watches whom (a bounded set each); `dirty` when the members or
    /// their placement changed since the watch list was last made.
    plan: WatchPlan,
    dirty: bool,
    /// SWIM's suspicion timeout, to defer a verdict by.
    suspicion: Duration,
    out: VecDeque<(String, Vec<u8>)>,
    /// SWIM's timers by deadline; the sequence number keeps equal
    /// deadlines in the order they were armed.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    armed: HashMap<u64, Timer<MemberId>>,
    armed_seq: u64,
    events: VecDeque<MembershipEvent>,
    /// When a record was last asked of each member, or sent on request to it.
    asked: std::collections::HashMap<String, Instant>,
    answered: std::collections::HashMap<String, Instant>,
    certs: CertFetch,
}

impl Agent {
    /// `liveness`: watch every member directly (small meshes, such as the
    /// appliances of a few regions); `None`: SWIM alone.
    pub fn new(
        me: MemberId,
        settings: Settings,
        liveness: Option<LivenessSettings>,
        seed: u64,
    ) -> Agent {
        Self::with_infos(me, settings, liveness, seed, Infos::default())
    }

    /// As [`new`](Self::new), keeping records in `infos` (which may check
    /// their signatures).
    pub fn with_infos(
        me: MemberId,
        settings: Settings,
        liveness: Option<LivenessSettings>,
        seed: u64,
        infos: Infos,
    ) -> Agent {
        let id = me.id.clone();
        let mut plan = WatchPlan::default();
        plan.add(&id);
        Agent {
            swim: Membership::with_infos(me, settings, seed, infos),
            states: Default::default(),
            liveness: liveness.map(|l| Detector::new(&id, l)),
            plan,
            dirty: false,
            suspicion: settings.suspicion,
            out: VecDeque::new(),
            timers: BinaryHeap::new(),
            armed: HashMap::new(),
            armed_seq: 0,
            events: VecDeque::new(),
            asked: Default::default(),
            answered: Default::default(),
            certs: CertFetch::default(),
        }
    }

    /// Round-trip time and inbound loss measured to a watched `peer`.
    pub fn health(&self, peer: &str) -> Option<(Option<Duration>, f64)> {
        self.liveness.as_ref().and_then(|d| d.health(peer))
    }

    /// Every other member with a record, as seen now (what the policy view
    /// is made of).
    pub fn observe(&mut self, now: Instant) -> Vec<Observed> {
        let me = self.swim.me().id.clone();
        let current: Vec<(String, State)> = self
            .swim
            .members()
            .map(|(m, s)| (m.id.clone(), s))
            .filter(|(id, _)| *id != me)
            .collect();
        let mut out = Vec::new();
        for (id, state) in current {
            // SWIM suspects on a lost probe or two; a member the liveness
            // detector still hears is alive for everyone downstream (the
            // policy, the metrics). Suspect means: suspected, and silent.
            let heard = self.liveness.as_ref().is_some_and(|d| d.hears(&id, now));
            let state = if state == State::Suspect && heard {
                State::Alive
            } else {
                state
            };
            let entry = self.states.entry(id.clone()).or_insert((state, now));
            if entry.0 != state {
                *entry = (state, now);
            }
            let since = entry.1;
            let Some(info) = self.swim.infos().get(&id) else {
                continue;
            };
            let (rtt, loss) = self.health(&id).unwrap_or((None, 0.0));
            let beat_gap = self.liveness.as_mut().and_then(|d| d.take_gap(&id));
            out.push(Observed {
                info,
                state,
                rtt,
                loss,
                since,
                beat_gap,
            });
        }
        out
    }

    pub fn membership(&self) -> &Membership {
        &self.swim
    }

    /// Gossip updates refused since the last call: (sender, why).
    pub fn take_refused(&mut self) -> Vec<(String, String)> {
        self.swim.take_refused()
    }

    /// Gossip about others that no record vouched for in time: (sender,
    /// what it said).
    pub fn take_unvouched(&mut self) -> Vec<(String, String)> {
        self.swim.take_unvouched()
    }

    /// Advertises this member's record.
    pub fn advertise(
        &mut self,
        info: super::info::MemberInfo,
        now: Instant,
    ) -> Result<(), MembershipError> {
        let r = self.swim.advertise(info);
        self.collect(now);
        r
    }

    pub fn join(&mut self, seed: MemberId, now: Instant) -> Result<(), MembershipError> {
        let r = self.swim.join(seed);
        self.collect(now);
        r
    }

    /// Takes members as known (a restart, or a simulation starting converged).
    pub fn assume(
        &mut self,
        members: impl Iterator<Item = MemberId>,
        now: Instant,
    ) -> Result<(), MembershipError> {
        let r = self.swim.assume(members);
        self.collect(now);
        r
    }

    /// A datagram from `from`, whom the channel authenticated.
    pub fn handle(&mut self, from: &str, data: &[u8], now: Instant) -> Result<(), MembershipError> {
        if let Some(d) = &mut self.liveness {
            d.heard(from, now);
        }
        let r = match data.split_first() {
            // SWIM's header names its sender: it must be the member the
            // connection's certificate proves, or anyone could speak (probe,
            // rejoin, move an address) in another's name.
            Some((&SWIM, rest)) => {
                match postcard::take_from_bytes::<foca::Header<MemberId>>(rest) {
                    Ok((h, _)) if h.src.id == from => self.swim.handle_data(rest, now),
                    Ok((h, _)) => Err(MembershipError::unauthorized(format!(
                        "a SWIM message in the name of {}",
                        h.src.id
                    ))),
                    Err(_) => Err(MembershipError::new("an undecodable SWIM message")),
                }
            }
            Some((&HEARTBEAT, body)) => {
                // The beat, then the version of the sender's record: records
                // are gossiped, and a heartbeat is how a member missing one
                // (lost, or relayed before it could be checked) notices.
                let (beat, version) = match body.len() {
                    BEAT_LEN => (Beat::decode(body), None),
                    n if n == BEAT_LEN + 8 => (
                        Beat::decode(&body[..BEAT_LEN]),
                        body[BEAT_LEN..].try_into().ok().map(u64::from_be_bytes),
                    ),
                    _ => (None, None),
                };
                match (beat, &mut self.liveness) {
                    (Some(b), Some(d)) => {
                        // It watches us, so we watch it back: while two
                        // members' views of the mesh differ (one just
                        // joined, or has not yet heard of a death) their
                        // plans may disagree, and a member beating only
                        // one way would be reported silent by its watchers.
                        // (A member this one has not heard of yet counts:
                        // the channel proved it is one of the mesh.)
                        let down = || {
                            self.swim
                                .members()
                                .any(|(m, s)| m.id == from && s == State::Down)
                        };
                        if !d.watched().any(|w| w == from) && !down() {
                            d.watch_back(from, now);
                            d.set_watchers(from, self.plan.watchers(from).len().max(1));
                        }
                        d.on_beat(from, b, now);
                        if let Some(v) = version {
                            self.want_record(from, v, now);
                        }
                        Ok(())
                    }
                    (Some(_), None) => Ok(()),
                    (None, _) => Err(MembershipError::new("a heartbeat of the wrong length")),
                }
            }
            Some((&RECORD_REQUEST, [])) => {
                let due = self
                    .answered
                    .get(from)
                    .is_none_or(|t| now.saturating_duration_since(*t) >= RECORD_PACE);
                if let (true, Some(own)) = (due, self.swim.own_record()) {
                    self.answered.insert(from.to_string(), now);
                    let mut msg = vec![RECORD];
                    msg.extend_from_slice(&own);
                    self.out.push_back((from.to_string(), msg));
                }
                Ok(())
            }
            Some((&RECORD, record)) => self.swim.learn(from, record),
            Some((&CERT_REQUEST, subject)) => {
                let infos = self.swim.infos().clone();
                self.certs.answer(from, subject, &infos, now).map(|der| {
                    if let Some(der) = der {
                        let mut msg = vec![CERT];
                        msg.extend_from_slice(&der);
                        self.out.push_back((from.to_string(), msg));
                    }
                })
            }
            Some((&CERT, der)) => {
                let infos = self.swim.infos().clone();
                self.certs.learn(from, der, &infos).map(|_| ())
            }
            Some((&REPORT, subject)) => match (std::str::from_utf8(subject), &mut self.liveness) {
                (Ok(s), Some(d)) if crate::membership::valid_id(s) => {
                    // A report counts only from one of the subject's
                    // watchers (the same at every member that sees the
                    // same mesh); others' word on it is ignored.
                    let watchers = self.plan.watchers(s);
                    // (While views differ, a member may think it watches
                    // one it no longer does here: counted, not acted on.)
                    if !watchers.contains(from) {
                        self.collect(now);
                        return Err(MembershipError::unauthorized(format!(
                            "a report that {s} is silent, from a member that does not watch it"
                        )));
                    }
                    let verdict = if d.watched().any(|w| w == s) {
                        d.report(from, s, now)
                    } else {
                        d.report_unwatched(from, s, watchers.len(), now)
                    };
                    if let Some(LivenessAction::Down(s)) = verdict {
                        self.declare_down(&s);
                    }
                    Ok(())
                }
                (Ok(_), None) => Ok(()),
                _ => Err(MembershipError::new("a report naming no member")),
            },
            _ => Err(MembershipError::new("not a membership datagram")),
        };
        self.collect(now);
        r
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due: SWIM's
    /// earliest timer or the liveness detector's next tick.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let swim = self.timers.peek().map(|Reverse((at, _))| *at);
        let tick = self.liveness.as_ref().and_then(Detector::next_tick);
        swim.into_iter()
            .chain(tick)
            .chain(self.swim.poll_timeout())
            .min()
    }

    /// Runs what is due at `now`: SWIM's timers that ran out, and the
    /// liveness detector's tick (heartbeats, reports, verdicts).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, seq))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(timer) = self.armed.remove(&seq) {
                if let Err(e) = self.handle_timer(timer, now) {
                    tracing::debug!("a membership timer: {e}");
                }
            }
        }
        if self
            .liveness
            .as_ref()
            .and_then(Detector::next_tick)
            .is_some_and(|t| t <= now)
        {
            self.tick(now);
        }
        self.collect(now);
    }

    /// Records changed outside a datagram (a certificate learnt from a
    /// connection): gossip that waited on them may be applied now.
    pub fn records_changed(&mut self, now: Instant) {
        self.collect(now);
    }

    fn arm(&mut self, at: Instant, timer: Timer<MemberId>) {
        self.armed_seq += 1;
        self.timers.push(Reverse((at, self.armed_seq)));
        self.armed.insert(self.armed_seq, timer);
    }

    /// One of SWIM's timers ran out. A verdict timer the suspect has
    /// refuted since is dropped (see [`Membership::suspect_at`]). SWIM's
    /// verdict on a suspect this member hears from directly is deferred:
    /// the suspicion came from lossy paths elsewhere, and declaring a live
    /// member down would take it out of every table (Lifeguard's rule of
    /// not confirming a death there is local evidence against).
    fn handle_timer(
        &mut self,
        timer: Timer<MemberId>,
        now: Instant,
    ) -> Result<(), MembershipError> {
        if let Timer::ChangeSuspectToDown {
            member_id,
            incarnation,
            ..
        } = &timer
        {
            if !self.swim.suspect_at(member_id, *incarnation) {
                // Refuted (or superseded) since it was armed.
                return Ok(());
            }
            if self
                .liveness
                .as_ref()
                .is_some_and(|d| d.hears(&member_id.id, now))
            {
                self.arm(now + self.suspicion, timer);
                return Ok(());
            }
        }
        let r = self.swim.handle_timer(timer);
        self.collect(now);
        r
    }

    /// Sends heartbeats and reports, declares confirmed failures.
    pub fn tick(&mut self, now: Instant) {
        let actions = match &mut self.liveness {
            Some(d) => d.tick(now),
            None => return,
        };
        for a in actions {
            match a {
                LivenessAction::Heartbeat(peer, beat) => {
                    let mut msg = vec![HEARTBEAT];
                    msg.extend_from_slice(&beat.encode());
                    if let Some(v) = self.swim.own_version() {
                        msg.extend_from_slice(&v.to_be_bytes());
                    }
                    self.out.push_back((peer, msg));
                }
                LivenessAction::Report { subject } => {
                    let mut msg = vec![REPORT];
                    msg.extend_from_slice(subject.as_bytes());
                    let to: Vec<String> = self
                        .swim
                        .members()
                        .filter(|(m, s)| *s != State::Down && m.id != subject)
                        .map(|(m, _)| m.id.clone())
                        .collect();
                    for peer in to {
                        self.out.push_back((peer, msg.clone()));
                    }
                }
                LivenessAction::Down(subject) => self.declare_down(&subject),
            }
        }
        self.collect(now);
    }

    /// `from` has record version `version`: asks for it if ours is older.
    fn want_record(&mut self, from: &str, version: u64, now: Instant) {
        let have = self.swim.infos().version_of(from);
        let due = self
            .asked
            .get(from)
            .is_none_or(|t| now.saturating_duration_since(*t) >= RECORD_PACE);
        if have.is_none_or(|h| h < version) && due {
            self.asked.insert(from.to_string(), now);
            self.out.push_back((from.to_string(), vec![RECORD_REQUEST]));
        }
    }

    fn declare_down(&mut self, subject: &str) {
        let _ = self.swim.declare_down(subject);
    }

    /// Moves SWIM's output into ours (its timers as deadlines from `now`),
    /// and keeps the watch list in step.
    fn collect(&mut self, now: Instant) {
        self.swim.settle(now);
        let infos = self.swim.infos().clone();
        for (relay, subject) in self.certs.ask(&infos, now) {
            let mut msg = vec![CERT_REQUEST];
            msg.extend_from_slice(subject.as_bytes());
            self.out.push_back((relay, msg));
        }
        while let Some((after, timer)) = self.swim.poll_timer() {
            self.arm(now + after, timer);
        }
        while let Some((to, data)) = self.swim.poll_transmit() {
            let mut msg = Vec::with_capacity(data.len() + 1);
            msg.push(SWIM);
            msg.extend_from_slice(&data);
            self.out.push_back((to.id, msg));
        }
        while let Some(e) = self.swim.poll_event() {
            // A member that joins gets our record straight away: gossip
            // spreads news, not what everyone already knows.
            if let (MembershipEvent::Up(m), Some(own)) = (&e, self.swim.own_record()) {
                let mut msg = vec![RECORD];
                msg.extend_from_slice(&own);
                self.out.push_back((m.id.clone(), msg));
            }
            match &e {
                MembershipEvent::Up(m) | MembershipEvent::Renamed { new: m, .. } => {
                    self.dirty |= self.plan.add(&m.id);
                    if let Some(d) = &mut self.liveness {
                        d.forget(&m.id);
                    }
                }
                MembershipEvent::Down(m) => {
                    self.dirty |= self.plan.remove(&m.id);
                    if let Some(d) = &mut self.liveness {
                        d.unwatch(&m.id);
                    }
                }
                MembershipEvent::Active | MembershipEvent::Idle => {}
            }
            self.events.push_back(e);
        }
        for (id, region, group) in self.swim.infos().take_placements() {
            self.dirty |= self.plan.place(&id, &region, group.as_deref());
        }
        if std::mem::take(&mut self.dirty) {
            self.rewatch(now);
        }
    }

    /// Makes the detector watch the members the plan says, and tells it
    /// how many watch each.
    fn rewatch(&mut self, now: Instant) {
        let Some(d) = &mut self.liveness else {
            return;
        };
        let me = self.swim.me().id.clone();
        let wanted = self.plan.watchers(&me);
        // Peers watched back because they watch us stay until they stop.
        let gone: Vec<String> = d
            .watched()
            .filter(|w| !wanted.contains(*w) && !d.is_courtesy(w))
            .cloned()
            .collect();
        for peer in gone {
            d.unwatch(&peer);
        }
        for peer in &wanted {
            // In our plan now: watched on its own account.
            d.adopt(peer);
            d.watch(peer, now);
            d.set_watchers(peer, self.plan.watchers(peer).len());
        }
    }

    pub fn poll_transmit(&mut self) -> Option<(String, Vec<u8>)> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<MembershipEvent> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::sim::{info, member};

    /// Records lost in transit (and no gossip to bring them) are fetched
    /// when a heartbeat shows a newer version than the one held.
    #[test]
    fn a_lost_record_is_asked_for_when_a_heartbeat_shows_it() {
        let t0 = Instant::now();
        let mut agents: Vec<Agent> = (0..2)
            .map(|i| {
                let mut a = Agent::new(
                    member(i),
                    Settings::default(),
                    Some(LivenessSettings::default()),
                    i as u64,
                );
                a.assume(std::iter::once(member(1 - i)), t0).unwrap();
                a.advertise(info(i, 7, 1), t0).unwrap();
                a
            })
            .collect();
        let mut now = t0;
        let mut requests = 0;
        for _ in 0..20 {
            now += Duration::from_millis(100);
            for i in 0..2 {
                agents[i].tick(now);
                while let Some((to, msg)) = agents[i].poll_transmit() {
                    // No gossip, and every record sent unasked is lost.
                    match msg.first() {
                        Some(&SWIM) => continue,
                        Some(&RECORD) if requests == 0 => continue,
                        Some(&RECORD_REQUEST) => requests += 1,
                        _ => {}
                    }
                    let j = if to == member(0).id { 0 } else { 1 };
                    agents[j].handle(&member(i).id, &msg, now).unwrap();
                }
            }
        }
        assert!(requests >= 1);
        for (i, agent) in agents.iter().enumerate() {
            let other = agent.membership().infos().get(&member(1 - i).id);
            assert_eq!(other.map(|r| r.version), Some(7), "agent {i}");
        }
        assert!(
            requests <= 4,
            "asked once each, not on every beat: {requests}"
        );
    }

    /// A member's death counts only from its watchers: reports about it
    /// from any number of others are refused as unauthorized (each named
    /// and counted by the member core) and change nothing; its watchers'
    /// reports declare it down.
    #[test]
    fn reports_from_members_that_do_not_watch_the_subject_are_refused() {
        let t0 = Instant::now();
        let mut agent = Agent::new(
            member(0),
            Settings::default(),
            Some(LivenessSettings::default()),
            0,
        );
        agent.assume((1..40).map(member), t0).unwrap();
        let subject = member(20).id;
        let watchers = agent.plan.watchers(&subject);
        assert!(!watchers.is_empty() && watchers.len() < 20, "{watchers:?}");
        let report = [&[REPORT][..], subject.as_bytes()].concat();
        let now = t0 + Duration::from_millis(100);
        let others: Vec<String> = (1..40)
            .map(|i| member(i).id)
            .filter(|m| *m != subject && !watchers.contains(m))
            .collect();
        for other in &others {
            let refused = agent.handle(other, &report, now).unwrap_err();
            assert_eq!(refused.kind(), "unauthorized");
            assert!(refused.to_string().contains(&subject), "{refused}");
        }
        let down = |a: &mut Agent| {
            std::iter::from_fn(|| a.poll_event())
                .any(|e| matches!(&e, MembershipEvent::Down(m) if m.id == subject))
        };
        assert!(
            !down(&mut agent),
            "{} non-watchers declared it down",
            others.len()
        );
        // Once declared down it leaves the plan, and further reports
        // about it count for nothing: stop at the verdict.
        let (mut reported, mut declared) = (0, false);
        for w in &watchers {
            agent.handle(w, &report, now).unwrap();
            reported += 1;
            declared = down(&mut agent);
            if declared {
                break;
            }
        }
        assert!(declared, "its watchers' reports declare it down");
        assert_eq!(reported, LivenessSettings::default().confirmations);
    }
}
