//! Whole clusters in memory on virtual time: every member a real
//! [`Membership`], datagrams delivered after a sampled one-way delay or
//! lost at a set rate, timers fired when due. Deterministic for a seed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use foca::Timer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

enum Ev {
    Deliver { to: usize, data: Bytes },
    Timer { node: usize, timer: Timer<MemberId> },
}

pub(super) struct Sim {
    nodes: Vec<Option<Membership>>,
    index: HashMap<String, usize>,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    pending: HashMap<u64, Ev>,
    seq: u64,
    pub now: Duration,
    rng: StdRng,
    /// One-way delay, sampled uniformly.
    pub delay: (Duration, Duration),
    pub loss: f64,
    pub sent_bytes: Vec<u64>,
    /// (observer, subject) -> when the observer saw it down / up.
    pub downs: HashMap<(usize, usize), Duration>,
    pub ups: HashMap<(usize, usize), Duration>,
}

fn member(i: usize) -> MemberId {
    MemberId {
        id: format!("m{i}"),
        addr: std::net::SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 4433)),
        generation: 0,
    }
}

impl Sim {
    /// `n` members that already know each other.
    pub fn converged(n: usize, settings: Settings, seed: u64) -> Sim {
        let mut sim = Sim::empty(seed);
        for _ in 0..n {
            sim.add(settings);
        }
        for i in 0..n {
            let others = (0..n).filter(|&j| j != i).map(member);
            sim.nodes[i].as_mut().unwrap().assume(others).unwrap();
            sim.pump(i);
        }
        sim.ups.clear();
        sim
    }

    pub fn empty(seed: u64) -> Sim {
        Sim {
            nodes: Vec::new(),
            index: HashMap::new(),
            queue: BinaryHeap::new(),
            pending: HashMap::new(),
            seq: 0,
            now: Duration::ZERO,
            rng: StdRng::seed_from_u64(seed),
            delay: (Duration::from_millis(10), Duration::from_millis(125)),
            loss: 0.0,
            sent_bytes: Vec::new(),
            downs: HashMap::new(),
            ups: HashMap::new(),
        }
    }

    /// A new member, not yet joined; returns its index.
    pub fn add(&mut self, settings: Settings) -> usize {
        let i = self.nodes.len();
        let seed = self.rng.random();
        self.nodes
            .push(Some(Membership::new(member(i), settings, seed)));
        self.index.insert(member(i).id, i);
        self.sent_bytes.push(0);
        i
    }

    fn schedule(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.pending.insert(self.seq, ev);
    }

    /// Carries out what member `i` asked for.
    fn pump(&mut self, i: usize) {
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        let mut sends = Vec::new();
        let mut timers = Vec::new();
        while let Some(t) = node.poll_transmit() {
            sends.push(t);
        }
        while let Some(t) = node.poll_timer() {
            timers.push(t);
        }
        let mut events = Vec::new();
        while let Some(e) = node.poll_event() {
            events.push(e);
        }
        for (to, data) in sends {
            self.sent_bytes[i] += data.len() as u64;
            if self.loss > 0.0 && self.rng.random::<f64>() < self.loss {
                continue;
            }
            let Some(&j) = self.index.get(&to.id) else {
                continue;
            };
            let (lo, hi) = self.delay;
            let d = lo + (hi - lo).mul_f64(self.rng.random::<f64>());
            self.schedule(self.now + d, Ev::Deliver { to: j, data });
        }
        for (after, timer) in timers {
            self.schedule(self.now + after, Ev::Timer { node: i, timer });
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
        if let Some(n) = self.nodes[i].as_mut() {
            n.join(member(seed)).unwrap();
        }
        self.pump(i);
    }

    /// kill -9: the member stops; what is in flight to it is lost.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    pub fn run_until(&mut self, end: Duration) {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > end {
                break;
            }
            self.queue.pop();
            self.now = at;
            let Some(ev) = self.pending.remove(&seq) else {
                continue;
            };
            let i = match ev {
                Ev::Deliver { to, data } => {
                    if let Some(n) = self.nodes[to].as_mut() {
                        let _ = n.handle_data(&data);
                    }
                    to
                }
                Ev::Timer { node, timer } => {
                    if let Some(n) = self.nodes[node].as_mut() {
                        let _ = n.handle_timer(timer);
                    }
                    node
                }
            };
            self.pump(i);
        }
        self.now = end;
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

/// kill -9 of one of 30 members: every other declares it down, and no
/// one else is declared down. Prints the worst time over ten seeds; the
/// issue's target (1.5 s) is not met yet (see BENCHMARKS.md).
#[test]
fn a_killed_member_is_declared_down_by_every_other() {
    let mut worst = Duration::ZERO;
    for seed in 0..10 {
        let mut sim = Sim::converged(30, Settings::default(), seed);
        sim.run_until(S(5));
        assert!(
            sim.downs.is_empty(),
            "seed {seed}: nobody is down before the kill"
        );
        let at = sim.now;
        sim.kill(7);
        sim.run_until(at + S(10));
        let took = all_saw_down(&sim, 7, at)
            .unwrap_or_else(|| panic!("seed {seed}: not everyone saw m7 down"));
        worst = worst.max(took);
        let false_downs: Vec<_> = sim.downs.keys().filter(|(_, j)| *j != 7).collect();
        assert!(false_downs.is_empty(), "seed {seed}: {false_downs:?}");
    }
    eprintln!("30 members, one-way delay 10-125 ms: worst time to down everywhere {worst:?}");
}

/// A member that joins through one seed is known to all of 1,000 within
/// 2 s (virtual time), and what each member sends is stated.
#[test]
fn a_new_member_is_known_to_all_of_1000_within_2_s() {
    let mut sim = Sim::converged(1000, Settings::default(), 1);
    sim.run_until(S(3));
    let before: u64 = sim.sent_bytes.iter().sum();
    let (t0, window) = (sim.now, S(10));
    sim.run_until(t0 + window);
    let per_member =
        (sim.sent_bytes.iter().sum::<u64>() - before) as f64 / 1000.0 / window.as_secs_f64();
    let newcomer = sim.add(Settings::default());
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
/// downs under 10% loss. `cargo test -p meshgate --release --lib
/// compare_settings -- --ignored --nocapture`
#[test]
#[ignore]
fn compare_settings() {
    for (pp, rtt, susp) in [
        (500, 300, 500),
        (400, 250, 400),
        (300, 250, 400),
        (300, 200, 300),
        (250, 200, 300),
        (1000, 600, 2000),
    ] {
        let s = Settings {
            probe_period: Duration::from_millis(pp),
            probe_rtt: Duration::from_millis(rtt),
            suspicion: Duration::from_millis(susp),
            ..Settings::default()
        };
        let mut worst = Duration::ZERO;
        let mut total = Duration::ZERO;
        for seed in 0..20 {
            let mut sim = Sim::converged(30, s, seed);
            sim.run_until(S(5));
            let at = sim.now;
            sim.kill(7);
            sim.run_until(at + S(10));
            let took = all_saw_down(&sim, 7, at).unwrap_or(S(99));
            worst = worst.max(took);
            total += took;
        }
        let mut sim = Sim::converged(30, s, 99);
        sim.loss = 0.1;
        sim.delay = (Duration::from_millis(100), Duration::from_millis(100));
        sim.run_until(S(300));
        eprintln!(
            "probe {pp} ms, rtt {rtt} ms, suspicion {susp} ms: kill seen down everywhere after {:?} mean, {worst:?} worst; 10% loss, 100 ms delay, 5 min: {} false downs",
            total / 20,
            sim.downs.len()
        );
    }
}
