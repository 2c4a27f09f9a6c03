//! Whole clusters in memory on virtual time: every member a real
//! [`Membership`], datagrams delivered after a sampled one-way delay or
//! lost at a set rate, timers fired when due. Deterministic for a seed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::liveness::LivenessSettings;
use super::*;

enum Ev {
    Deliver {
        to: usize,
        from: usize,
        data: Vec<u8>,
    },
    /// The member's deadline (from `poll_timeout`) is due.
    Wake { node: usize },
}

/// Events in virtual-time order (equal times in the order scheduled).
pub(crate) struct EventQueue<E> {
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    pending: HashMap<u64, E>,
    seq: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            queue: BinaryHeap::new(),
            pending: HashMap::new(),
            seq: 0,
        }
    }
}

impl<E> EventQueue<E> {
    pub fn schedule(&mut self, at: Duration, ev: E) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.pending.insert(self.seq, ev);
    }

    /// The next event due at or before `end`, and its time.
    pub fn pop_until(&mut self, end: Duration) -> Option<(Duration, E)> {
        let Reverse((at, seq)) = self.queue.peek().copied()?;
        if at > end {
            return None;
        }
        self.queue.pop();
        self.pending.remove(&seq).map(|ev| (at, ev))
    }
}

/// A simulation on virtual time: the membership's clusters here, the
/// member cores' meshes in `member::sim`.
pub(crate) trait VirtualTime {
    fn now(&self) -> Duration;
    /// Runs every event up to `end`.
    fn run_until(&mut self, end: Duration);

    /// Runs in 50 ms steps until `cond` holds; how long that took.
    fn run_until_true(
        &mut self,
        limit: Duration,
        mut cond: impl FnMut(&Self) -> bool,
    ) -> Option<Duration>
    where
        Self: Sized,
    {
        let start = self.now();
        while self.now() - start <= limit {
            if cond(self) {
                return Some(self.now() - start);
            }
            let next = self.now() + Duration::from_millis(50);
            self.run_until(next);
        }
        None
    }
}

impl VirtualTime for Sim {
    fn now(&self) -> Duration {
        self.now
    }

    fn run_until(&mut self, end: Duration) {
        Sim::run_until(self, end);
    }
}

pub(crate) struct Sim {
    nodes: Vec<Option<Agent>>,
    index: HashMap<String, usize>,
    queue: EventQueue<Ev>,
    /// The deadline each member has an event queued for.
    wakes: Vec<Option<Instant>>,
    t0: Instant,
    pub now: Duration,
    rng: StdRng,
    settings: Settings,
    liveness: Option<LivenessSettings>,
    /// One-way delay, sampled uniformly.
    pub delay: (Duration, Duration),
    pub loss: f64,
    pub sent_bytes: Vec<u64>,
    /// Bytes sent by every member, by kind of message (see [`kind`]).
    pub sent_by_kind: std::collections::BTreeMap<String, u64>,
    /// (observer, subject) -> when the observer saw it down / up.
    pub downs: HashMap<(usize, usize), Duration>,
    pub ups: HashMap<(usize, usize), Duration>,
    /// Pairs of members that cannot reach each other (both ways).
    pub cut: std::collections::HashSet<(usize, usize)>,
}

/// What a datagram is, for the breakdown of bytes sent: the agent's tag,
/// and for SWIM the kind of message foca sent.
pub(crate) fn kind(data: &[u8]) -> String {
    use super::agent::{HEARTBEAT, RECORD, RECORD_REQUEST, REPORT, SWIM};
    match data.split_first() {
        Some((&SWIM, rest)) => match postcard::take_from_bytes::<foca::Header<MemberId>>(rest) {
            Ok((h, _)) => format!("swim {:?}", h.message)
                .split(['(', ' ', '{'])
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
            Err(_) => "swim ?".into(),
        },
        Some((&HEARTBEAT, _)) => "heartbeat".into(),
        Some((&REPORT, _)) => "report".into(),
        Some((&RECORD, _)) => "record".into(),
        Some((&RECORD_REQUEST, _)) => "record request".into(),
        _ => "other".into(),
    }
}

pub(crate) fn member(i: usize) -> MemberId {
    MemberId {
        id: format!("m{i}"),
        addr: std::net::SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 4433)),
        generation: 0,
    }
}

impl Sim {
    /// `n` members that already know each other.
    pub fn converged(
        n: usize,
        settings: Settings,
        liveness: Option<LivenessSettings>,
        seed: u64,
    ) -> Sim {
        let mut sim = Sim::empty(settings, liveness, seed);
        for _ in 0..n {
            sim.add();
        }
        let at = sim.at();
        for i in 0..n {
            let others = (0..n).filter(|&j| j != i).map(member);
            sim.nodes[i].as_mut().unwrap().assume(others, at).unwrap();
            sim.pump(i);
        }
        sim.ups.clear();
        sim
    }

    pub fn empty(settings: Settings, liveness: Option<LivenessSettings>, seed: u64) -> Sim {
        Sim {
            nodes: Vec::new(),
            index: HashMap::new(),
            queue: EventQueue::default(),
            wakes: Vec::new(),
            t0: Instant::now(),
            now: Duration::ZERO,
            rng: StdRng::seed_from_u64(seed),
            settings,
            liveness,
            delay: (Duration::from_millis(10), Duration::from_millis(125)),
            loss: 0.0,
            sent_bytes: Vec::new(),
            sent_by_kind: Default::default(),
            downs: HashMap::new(),
            ups: HashMap::new(),
            cut: Default::default(),
        }
    }

    fn at(&self) -> Instant {
        self.t0 + self.now
    }

    /// A new member, not yet joined; returns its index.
    pub fn add(&mut self) -> usize {
        let i = self.nodes.len();
        let seed = self.rng.random();
        self.nodes.push(Some(Agent::new(
            member(i),
            self.settings,
            self.liveness,
            seed,
        )));
        self.index.insert(member(i).id, i);
        self.sent_bytes.push(0);
        self.wakes.push(None);
        i
    }

    fn schedule(&mut self, at: Duration, ev: Ev) {
        self.queue.schedule(at, ev);
    }

    /// Carries out what member `i` asked for.
    fn pump(&mut self, i: usize) {
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        let mut sends = Vec::new();
        let mut events = Vec::new();
        while let Some(t) = node.poll_transmit() {
            sends.push(t);
        }
        while let Some(e) = node.poll_event() {
            events.push(e);
        }
        let wake = node.poll_timeout();
        for (to, data) in sends {
            self.sent_bytes[i] += data.len() as u64;
            *self.sent_by_kind.entry(kind(&data)).or_default() += data.len() as u64;
            if self.loss > 0.0 && self.rng.random::<f64>() < self.loss {
                continue;
            }
            let Some(&j) = self.index.get(&to) else {
                continue;
            };
            if self.cut.contains(&(i.min(j), i.max(j))) {
                continue;
            }
            let (lo, hi) = self.delay;
            let d = lo + (hi - lo).mul_f64(self.rng.random::<f64>());
            self.schedule(
                self.now + d,
                Ev::Deliver {
                    to: j,
                    from: i,
                    data,
                },
            );
        }
        if let Some(t) = wake {
            if self.wakes[i] != Some(t) {
                self.wakes[i] = Some(t);
                let at = t.saturating_duration_since(self.t0).max(self.now);
                self.schedule(at, Ev::Wake { node: i });
            }
        }
        for e in events {
            match e {
                MembershipEvent::Down(m) => {
                    if let Some(&j) = self.index.get(&m.id) {
                        self.downs.entry((i, j)).or_insert(self.now);
                    }
                }
                MembershipEvent::Up(m) => {
                    if let Some(&j) = self.index.get(&m.id) {
                        self.ups.entry((i, j)).or_insert(self.now);
                    }
                }
                _ => {}
            }
        }
    }

    pub fn join(&mut self, i: usize, seed: usize) {
        let at = self.at();
        if let Some(n) = self.nodes[i].as_mut() {
            n.join(member(seed), at).unwrap();
        }
        self.pump(i);
    }

    /// kill -9: the member stops; what is in flight to it is lost.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    pub fn run_until(&mut self, end: Duration) {
        while let Some((at, ev)) = self.queue.pop_until(end) {
            self.now = at;
            let now = self.at();
            let i = match ev {
                Ev::Deliver { to, from, data } => {
                    let from = member(from).id;
                    if let Some(n) = self.nodes[to].as_mut() {
                        let _ = n.handle(&from, &data, now);
                    }
                    to
                }
                Ev::Wake { node } => {
                    if self.wakes[node].is_some_and(|t| t > now) {
                        // An earlier deadline replaced this one; a later
                        // event is queued for it.
                        continue;
                    }
                    self.wakes[node] = None;
                    if let Some(n) = self.nodes[node].as_mut() {
                        n.handle_timeout(now);
                    }
                    node
                }
            };
            self.pump(i);
        }
        self.now = end;
    }

    pub fn advertise(&mut self, i: usize, info: super::info::MemberInfo) {
        let at = self.at();
        if let Some(n) = self.nodes[i].as_mut() {
            n.advertise(info, at).unwrap();
        }
        self.pump(i);
    }

    pub fn instant(&self) -> Instant {
        self.at()
    }

    pub fn agent_mut(&mut self, i: usize) -> &mut Agent {
        self.nodes[i].as_mut().expect("a running member")
    }

    pub fn agent(&self, i: usize) -> Option<&Agent> {
        self.nodes[i].as_ref()
    }

    /// Members still running.
    pub fn alive(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_some())
    }
}

const S: fn(u64) -> Duration = Duration::from_secs;

/// When every running member had declared `victim` down, counted from `at`.
fn all_saw_down(sim: &Sim, victim: usize, at: Duration) -> Option<Duration> {
    sim.alive()
        .map(|i| sim.downs.get(&(i, victim)).map(|t| *t - at))
        .collect::<Option<Vec<_>>>()
        .map(|v| v.into_iter().max().unwrap_or_default())
}

/// kill -9 of one of 30 members watching each other: every other declares
/// it down within 1.5 s (virtual time, ten seeds), and no one else is
/// declared down.
#[test]
fn a_killed_member_is_declared_down_by_every_other_within_1_5_s() {
    let mut worst = Duration::ZERO;
    for seed in 0..10 {
        let mut sim = Sim::converged(
            30,
            Settings::default(),
            Some(LivenessSettings::default()),
            seed,
        );
        sim.run_until(S(5));
        assert!(
            sim.downs.is_empty(),
            "seed {seed}: nobody is down before the kill"
        );
        let at = sim.now;
        sim.kill(7);
        sim.run_until(at + S(5));
        let took = all_saw_down(&sim, 7, at)
            .unwrap_or_else(|| panic!("seed {seed}: not everyone saw m7 down"));
        worst = worst.max(took);
        let false_downs: Vec<_> = sim.downs.keys().filter(|(_, j)| *j != 7).collect();
        assert!(false_downs.is_empty(), "seed {seed}: {false_downs:?}");
    }
    eprintln!("30 members, one-way delay 10-125 ms: worst time to down everywhere {worst:?}");
    assert!(worst <= Duration::from_millis(1500), "{worst:?}");
}

/// The two appliances of a redundancy group lose each other while both
/// stay reachable from the rest (a partition between the pair alone): for
/// two minutes neither is declared down anywhere, so every member's view,
/// and so every member's election of the group's active appliance, stays
/// what it was. This is how the design keeps a pair from claiming routes
/// back and forth: a death counts only from the liveness quorum of the
/// member's watchers (and SWIM's indirect probes go around the cut), and
/// the election is the same function of the same view on both.
#[test]
fn a_partition_between_two_members_alone_declares_neither_down() {
    let mut sim = Sim::converged(
        10,
        Settings::default(),
        Some(LivenessSettings::default()),
        5,
    );
    sim.run_until(S(5));
    sim.cut.insert((0, 1));
    sim.run_until(S(125));
    let downs: Vec<_> = sim.downs.keys().collect();
    assert!(downs.is_empty(), "declared down: {downs:?}");
    // A member cut from everyone, by contrast, is declared down.
    for j in 1..10 {
        sim.cut.insert((0, j));
    }
    sim.run_until(S(135));
    assert!(
        (1..10).all(|i| sim.downs.contains_key(&(i, 0))),
        "{:?}",
        sim.downs
    );
}

/// A member declared down is remembered for `forget_down_after` (so stale
/// gossip cannot bring it back) and then forgotten by every member: the
/// table holds today's members, not every member ever met.
#[test]
fn a_dead_member_is_forgotten_everywhere_after_the_configured_time() {
    let settings = Settings {
        forget_down_after: Duration::from_secs(60),
        ..Settings::default()
    };
    let mut sim = Sim::converged(10, settings, Some(LivenessSettings::default()), 3);
    sim.run_until(S(5));
    sim.kill(4);
    sim.run_until(S(10));
    let held = |sim: &Sim| {
        sim.alive()
            .filter(|&i| {
                sim.agent(i)
                    .is_some_and(|a| a.membership().members().any(|(m, _)| m.id == member(4).id))
            })
            .count()
    };
    assert_eq!(
        held(&sim),
        9,
        "remembered (down) by all nine others at first"
    );
    sim.run_until(S(80));
    assert_eq!(held(&sim), 0, "forgotten by all after 60 s");
}

/// 30 members, 10% of datagrams lost and 100 ms one-way delay for five
/// minutes: nobody is declared down. Two seeds here (seed 100 found verdict
/// timers acted on long after their suspicion was refuted); `--ignored`
/// runs ten.
#[test]
fn no_member_is_falsely_declared_down_under_10_percent_loss() {
    lossy_run(&[7, 100]);
}

#[test]
#[ignore]
fn no_member_is_falsely_declared_down_under_10_percent_loss_ten_seeds() {
    lossy_run(&[100, 101, 102, 103, 104, 105, 106, 107, 108, 109]);
}

/// At 10% loss and 100 ms each way, indirect probes cannot finish within
/// a probe period, so members are suspected every few seconds and refute
/// each time. The verdict timers of those suspicions run out 30 s later,
/// long refuted: none may tell its member it is down (it would rejoin
/// under a new generation, and the others would then see it restart).
#[test]
fn refuted_suspicions_make_no_member_rejoin() {
    for seed in [7, 100] {
        let mut sim = lossy_30(seed);
        sim.run_until(S(45));
        let rejoined: Vec<String> = sim
            .nodes
            .iter()
            .flatten()
            .map(|n| n.membership().me())
            .filter(|me| me.generation > 0)
            .map(|me| format!("{} (generation {})", me.id, me.generation))
            .collect();
        assert!(rejoined.is_empty(), "seed {seed}: rejoined: {rejoined:?}");
        assert!(sim.downs.is_empty(), "seed {seed}: {:?}", sim.downs);
    }
}

/// A member with a valid certificate gossips to every other that member
/// 2 is down (and, for good measure, that member 3 is). Before the screen,
/// every member took it: each declared both down (and would have torn
/// down their SAs). Now the updates are cut out, named and counted, and
/// nobody is declared down.
#[test]
fn a_member_cannot_declare_others_down() {
    use bytes::BufMut;
    use foca::Codec;
    let mut sim = Sim::converged(
        10,
        Settings::default(),
        Some(LivenessSettings::default()),
        3,
    );
    sim.run_until(S(3));
    let hostile = member(1);
    for j in (0..10).filter(|&j| j != 1) {
        let mut data = vec![super::agent::SWIM];
        let mut codec = foca::PostcardCodec;
        let header = foca::Header {
            src: hostile.clone(),
            src_incarnation: 0,
            dst: member(j),
            message: foca::Message::Gossip,
        };
        codec.encode_header(&header, &mut data).unwrap();
        data.put_u16(2);
        for victim in [2, 3] {
            codec
                .encode_member(
                    &foca::Member::new(member(victim), 0, foca::State::Down),
                    &mut data,
                )
                .unwrap();
        }
        let now = sim.instant();
        sim.agent_mut(j).handle(&hostile.id, &data, now).unwrap();
        let refused = sim.agent_mut(j).take_refused();
        assert_eq!(refused.len(), 2, "member {j}: {refused:?}");
        assert!(refused
            .iter()
            .all(|(by, why)| by == &hostile.id && why.contains("down")));
        sim.pump(j);
    }
    let end = sim.now + S(10);
    sim.run_until(end);
    assert!(sim.downs.is_empty(), "declared down: {:?}", sim.downs);
}

/// 30 members as shipped, 10% of datagrams lost, 100 ms each way.
fn lossy_30(seed: u64) -> Sim {
    let mut sim = Sim::converged(
        30,
        Settings::default(),
        Some(LivenessSettings::default()),
        seed,
    );
    sim.loss = 0.1;
    sim.delay = (Duration::from_millis(100), Duration::from_millis(100));
    sim
}

fn lossy_run(seeds: &[u64]) {
    for &seed in seeds {
        let mut sim = lossy_30(seed);
        sim.run_until(S(300));
        assert!(
            sim.downs.is_empty(),
            "seed {seed}: {} false downs",
            sim.downs.len()
        );
        let per_member = sim.sent_bytes.iter().sum::<u64>() as f64 / 30.0 / 300.0;
        eprintln!("seed {seed}: no false down in 5 min at 10% loss; {per_member:.0} B/s of payload sent per member");
    }
}

/// Heartbeats measure each watched path: 10 members, 50 ms each way, 5%
/// loss; after a minute every member's estimates of every other are close.
#[test]
fn heartbeats_measure_round_trip_and_loss() {
    let mut sim = Sim::converged(
        10,
        Settings::default(),
        Some(LivenessSettings::default()),
        3,
    );
    sim.delay = (Duration::from_millis(50), Duration::from_millis(50));
    sim.loss = 0.05;
    sim.run_until(S(60));
    let mut losses = Vec::new();
    for i in 0..10 {
        for j in (0..10).filter(|&j| j != i) {
            let (rtt, loss) = sim
                .agent(i)
                .unwrap()
                .health(&member(j).id)
                .expect("watched");
            let rtt = rtt.expect("measured");
            assert!(
                rtt >= Duration::from_millis(100) && rtt <= Duration::from_millis(110),
                "m{i} -> m{j}: {rtt:?}"
            );
            losses.push(loss);
        }
    }
    let mean = losses.iter().sum::<f64>() / losses.len() as f64;
    eprintln!("round trips 100-110 ms measured; inbound loss {mean:.3} mean for 0.05 injected");
    assert!((0.03..0.07).contains(&mean), "{mean}");
}

pub(crate) fn info(i: usize, version: u64, prefixes: usize) -> super::info::MemberInfo {
    super::info::MemberInfo {
        id: member(i).id,
        version,
        region: format!("region-{}", i % 5),
        zone: format!("region-{}a", i % 5),
        account: "123456789012".into(),
        role: "edge".into(),
        group: None,
        prefixes: (0..prefixes)
            .map(|k| (std::net::IpAddr::from([10, i as u8, k as u8, 0]), 24))
            .collect(),
        endpoints: vec![("internet".into(), member(i).addr)],
        policy_version: 1,
        epoch: 1,
        ..Default::default()
    }
}

/// Every member's record reaches every other; a newcomer learns them all;
/// a new version replaces the old everywhere.
#[test]
fn member_records_spread_to_all_and_newer_versions_replace_older() {
    let mut sim = Sim::converged(
        30,
        Settings::default(),
        Some(LivenessSettings::default()),
        5,
    );
    for i in 0..30 {
        sim.advertise(i, info(i, 1, 2));
    }
    let knows_all = |sim: &Sim, i: usize, n: usize| {
        sim.agent(i)
            .is_some_and(|a| a.membership().infos().all().len() == n)
    };
    let spread = sim
        .run_until_true(S(10), |sim| (0..30).all(|i| knows_all(sim, i, 30)))
        .expect("every record reached every member");
    let newcomer = sim.add();
    sim.advertise(newcomer, info(newcomer, 1, 1));
    sim.join(newcomer, 0);
    let learned = sim
        .run_until_true(S(10), |sim| (0..31).all(|i| knows_all(sim, i, 31)))
        .expect("the newcomer learned every record and every member its");
    sim.advertise(5, info(5, 2, 3));
    let updated = sim
        .run_until_true(S(10), |sim| {
            (0..31).all(|i| {
                sim.agent(i)
                    .and_then(|a| a.membership().infos().get("m5"))
                    .is_some_and(|r| r.version == 2 && r.prefixes.len() == 3)
            })
        })
        .expect("the new version replaced the old everywhere");
    eprintln!("30 members: records everywhere after {spread:?}; a newcomer and everyone in sync after {learned:?}; an update everywhere after {updated:?}");
}

/// A member that joins through one seed is known to all of 1,000 within
/// 2 s (virtual time), and what each member sends is stated.
#[test]
fn a_new_member_is_known_to_all_of_1000_within_2_s() {
    let mut sim = Sim::converged(1000, Settings::default(), None, 1);
    sim.run_until(S(3));
    let before: u64 = sim.sent_bytes.iter().sum();
    let (t0, window) = (sim.now, S(10));
    sim.run_until(t0 + window);
    let per_member =
        (sim.sent_bytes.iter().sum::<u64>() - before) as f64 / 1000.0 / window.as_secs_f64();
    let newcomer = sim.add();
    let at = sim.now;
    sim.join(newcomer, 0);
    sim.run_until(at + S(5));
    let took = (0..1000)
        .map(|i| sim.ups.get(&(i, newcomer)).map(|t| *t - at))
        .collect::<Option<Vec<_>>>()
        .map(|v| v.into_iter().max().unwrap_or_default());
    eprintln!(
        "1000 members: newcomer known to all after {took:?}; {per_member:.0} B/s sent per member"
    );
    let took = took.expect("every member learned of the newcomer");
    assert!(took <= S(2), "{took:?}");
}

/// Settings side by side: kill-detection time over 20 seeds, and false
/// downs in five minutes of 10% loss and 100 ms delay, SWIM alone with
/// short suspicions against SWIM with the liveness detector.
/// `cargo test -p meshgate --release --lib compare_settings -- --ignored --nocapture`
#[test]
#[ignore]
fn compare_settings() {
    let ms = Duration::from_millis;
    let rows: [(u64, u64, u64, Option<LivenessSettings>); 5] = [
        (500, 300, 500, None),
        (300, 200, 300, None),
        (250, 200, 300, None),
        (1000, 600, 2000, None),
        (500, 300, 30_000, Some(LivenessSettings::default())),
    ];
    for (probe, rtt, susp, liveness) in rows {
        let s = Settings {
            probe_period: ms(probe),
            probe_rtt: ms(rtt),
            suspicion: ms(susp),
            ..Settings::default()
        };
        let mut worst = Duration::ZERO;
        let mut total = Duration::ZERO;
        for seed in 0..20 {
            let mut sim = Sim::converged(30, s, liveness, seed);
            sim.run_until(S(5));
            let at = sim.now;
            sim.kill(7);
            sim.run_until(at + S(10));
            let took = all_saw_down(&sim, 7, at).unwrap_or(S(99));
            worst = worst.max(took);
            total += took;
        }
        let mut sim = Sim::converged(30, s, liveness, 99);
        sim.loss = 0.1;
        sim.delay = (ms(100), ms(100));
        sim.run_until(S(300));
        eprintln!(
            "probe {probe} ms, timeout {rtt} ms, suspicion {susp} ms, liveness {}: kill seen down everywhere after {:?} mean, {worst:?} worst; 10% loss, 100 ms delay, 5 min: {} false downs",
            if liveness.is_some() { "on" } else { "off" },
            total / 20,
            sim.downs.len()
        );
    }
}
