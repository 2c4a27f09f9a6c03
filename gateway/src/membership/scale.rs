//! Membership at 1,000 members as shipped: SWIM with the liveness
//! detector on, each member watching a bounded set (its ring neighbours
//! and its region), records advertised. Virtual time (`sim`).

use std::time::Duration;

use super::liveness::LivenessSettings;
use super::sim::{info, Sim};
use super::Settings;

const S: fn(u64) -> Duration = Duration::from_secs;

/// `n` members that know each other, each with a record that places it
/// in a region of two (an active/passive pair), records spread.
fn shipped(n: usize, seed: u64) -> Sim {
    let mut sim = Sim::converged(
        n,
        Settings::default(),
        Some(LivenessSettings::default()),
        seed,
    );
    for i in 0..n {
        let mut record = info(i, 1, 1);
        record.region = format!("region-{}", i / 2);
        sim.advertise(i, record);
    }
    sim.run_until(S(10));
    sim
}

/// Payload bytes each member sent per second over `window`, on average.
fn bytes_per_member(sim: &mut Sim, n: usize, window: Duration) -> f64 {
    let before: u64 = sim.sent_bytes.iter().sum();
    let kinds = sim.sent_by_kind.clone();
    let end = sim.now + window;
    sim.run_until(end);
    let per = |b: u64| b as f64 / n as f64 / window.as_secs_f64();
    let breakdown: Vec<String> = sim
        .sent_by_kind
        .iter()
        .map(|(k, b)| (k, per(b - kinds.get(k).copied().unwrap_or(0))))
        .filter(|(_, b)| *b >= 1.0)
        .map(|(k, b)| format!("{k} {b:.0}"))
        .collect();
    eprintln!("B/s per member by kind: {}", breakdown.join(", "));
    (sim.sent_bytes.iter().sum::<u64>() - before) as f64 / n as f64 / window.as_secs_f64()
}

/// 100 members as shipped (beyond the size where everyone watches
/// everyone): a newcomer is known to all within 2 s, a member killed is
/// declared down by every other within 1.5 s and nobody else is, and each
/// member sends at most 10 kB/s.
#[test]
fn at_100_members_joins_and_kills_are_seen_in_time_and_each_sends_under_10_kb_s() {
    scaled(100, 1);
}

/// The same at 1,000 members (about six minutes in a release build):
/// `cargo test -p meshgate --release --lib at_1000_members_joins -- --ignored --nocapture`.
#[test]
#[ignore]
fn at_1000_members_joins_and_kills_are_seen_in_time_and_each_sends_under_10_kb_s() {
    scaled(1000, 1);
}

fn scaled(n: usize, seed: u64) {
    let mut sim = shipped(n, seed);
    assert!(
        sim.downs.is_empty(),
        "false downs while settling: {:?}",
        sim.downs.len()
    );
    // A cold start of the whole fleet: every member advertised its record
    // at once, and gossip (at most `gossip_fanout` datagrams per
    // `gossip_period`, each at most one packet) carries that backlog to
    // every member. Stated window by window until it has drained; the
    // figure asserted is the steady state after it.
    let mut cold_start = Vec::new();
    while sim.now < S(300) {
        let window = bytes_per_member(&mut sim, n, S(10));
        cold_start.push(format!("{:.1} kB/s", window / 1000.0));
        if window <= 10_000.0 {
            break;
        }
    }
    eprintln!(
        "{n} members started at once: per member, 10 s windows from 10 s on: {}",
        cold_start.join(", ")
    );
    let per_member = bytes_per_member(&mut sim, n, S(10));
    // The kill first, among members that all know the victim.
    let victim = n / 2;
    let at = sim.now;
    sim.kill(victim);
    sim.run_until(at + S(5));
    let missing: Vec<usize> = sim
        .alive()
        .filter(|i| !sim.downs.contains_key(&(*i, victim)))
        .collect();
    assert!(
        missing.is_empty(),
        "{} members did not declare the victim down: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let killed = sim
        .alive()
        .filter_map(|i| sim.downs.get(&(i, victim)).map(|t| *t - at))
        .max()
        .unwrap_or_default();
    let newcomer = sim.add();
    let at = sim.now;
    sim.join(newcomer, 0);
    sim.run_until(at + S(5));
    let joined = sim
        .alive()
        .filter(|&i| i != newcomer)
        .map(|i| sim.ups.get(&(i, newcomer)).map(|t| *t - at))
        .collect::<Option<Vec<_>>>()
        .map(|v| v.into_iter().max().unwrap_or_default())
        .expect("every member learned of the newcomer");
    let false_downs = sim.downs.keys().filter(|(_, j)| *j != victim).count();
    if false_downs > 0 {
        let mut by: Vec<(usize, usize, Duration)> = sim
            .downs
            .iter()
            .filter(|((_, j), _)| *j != victim)
            .map(|((i, j), t)| (*i, *j, *t))
            .collect();
        by.sort();
        eprintln!(
            "false downs (observer, subject, when): {:?}",
            &by[..by.len().min(10)]
        );
    }
    eprintln!(
        "{n} members, detector on (bounded watch sets): newcomer known to all after {joined:?}; \
         a kill seen down by all after {killed:?}; {per_member:.0} B/s of payload sent per member; \
         {false_downs} false downs"
    );
    assert!(joined <= S(2), "{joined:?}");
    assert!(killed <= Duration::from_millis(1500), "{killed:?}");
    assert_eq!(false_downs, 0);
    assert!(per_member <= 10_000.0, "{per_member:.0} B/s");
}

/// 100 members as shipped, 10% of datagrams lost and 100 ms one way, for
/// a minute: nobody is declared down.
#[test]
fn at_100_members_10_percent_loss_declares_nobody_down() {
    lossy(100, S(60));
}

/// The same at 1,000 members for five minutes (release build, by hand):
/// `cargo test -p meshgate --release --lib at_1000_members_10_percent -- --ignored --nocapture`.
#[test]
#[ignore]
fn at_1000_members_10_percent_loss_for_five_minutes_declares_nobody_down() {
    lossy(1000, S(300));
}

fn lossy(n: usize, duration: Duration) {
    let mut sim = shipped(n, 7);
    sim.loss = 0.1;
    sim.delay = (Duration::from_millis(100), Duration::from_millis(100));
    // In windows of 10 s, each reported as it ends: a long run shows its
    // progress (and what it found so far, should it be stopped).
    let started = std::time::Instant::now();
    let mut sum = 0.0;
    let windows = (duration.as_secs() / 10).max(1);
    for _ in 0..windows {
        sum += bytes_per_member(&mut sim, n, duration / windows as u32);
        eprintln!(
            "{n} members, 10% loss: {:?} simulated in {:.0?}; {} false downs so far",
            sim.now,
            started.elapsed(),
            sim.downs.len()
        );
    }
    let per_member = sum / windows as f64;
    eprintln!(
        "{n} members, 10% loss, 100 ms one way, {duration:?}: {} false downs; {per_member:.0} B/s sent per member",
        sim.downs.len()
    );
    assert!(sim.downs.is_empty(), "{} false downs", sim.downs.len());
}
