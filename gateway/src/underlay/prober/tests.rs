//! Two probers on virtual time, joined by a network that delivers each
//! datagram 5 ms later unless its underlay is cut.

use super::*;
use crate::esp::{CipherSuite, KeyMaterial};
use crate::underlay::keys::ProbeKey;

const MS: Duration = Duration::from_millis(1);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn sa_key(byte: u8) -> KeyMaterial {
    KeyMaterial::new(CipherSuite::Aes128Gcm, &[byte; 20]).unwrap()
}

struct Net {
    t: Instant,
    a: Prober,
    b: Prober,
    keys_a: ProbeKeys,
    keys_b: ProbeKeys,
    /// Underlays that deliver nothing.
    cut: Vec<&'static str>,
    changes: Vec<(Duration, &'static str, Change)>,
    start: Instant,
}

const A: [(&str, &str); 2] = [("internet", "198.18.0.1:4500"), ("dx", "198.19.0.1:4500")];
const B: [(&str, &str); 2] = [("internet", "198.18.0.2:4500"), ("dx", "198.19.0.2:4500")];

fn endpoints(e: &[(&str, &str)]) -> Vec<(String, SocketAddr)> {
    e.iter().map(|(l, a)| (l.to_string(), addr(a))).collect()
}

impl Net {
    fn new() -> Net {
        let t = Instant::now();
        let labels = vec!["internet".to_string(), "dx".to_string()];
        let (mut a, mut b) = (Prober::new(labels.clone()), Prober::new(labels));
        a.set_members(vec![("b".into(), endpoints(&B))], t);
        b.set_members(vec![("a".into(), endpoints(&A))], t);
        // a -> b on SPI 0x100, b -> a on SPI 0x200, as the tunnels hold them.
        let (mut keys_a, mut keys_b) = (ProbeKeys::default(), ProbeKeys::default());
        let k = |b| ProbeKey::derive(&sa_key(b)).unwrap();
        keys_a.insert("b", 0x100, true, k(1));
        keys_a.insert("b", 0x200, false, k(2));
        keys_b.insert("a", 0x100, false, k(1));
        keys_b.insert("a", 0x200, true, k(2));
        Net {
            t,
            a,
            b,
            keys_a,
            keys_b,
            cut: Vec::new(),
            changes: Vec::new(),
            start: t,
        }
    }

    fn underlay_of(to: SocketAddr) -> &'static str {
        if to.to_string().starts_with("198.19.") {
            "dx"
        } else {
            "internet"
        }
    }

    /// Runs for `d` in 1 ms steps.
    fn run(&mut self, d: Duration) {
        let mut flight: Vec<(Instant, SocketAddr, Vec<u8>)> = Vec::new();
        let end = self.t + d;
        while self.t < end {
            self.t += MS;
            let now = self.t;
            self.a.handle_timeout(now, &self.keys_a);
            self.b.handle_timeout(now, &self.keys_b);
            for (to, payload) in flight
                .extract_if(.., |(at, _, _)| *at <= now)
                .map(|(_, t, p)| (t, p))
            {
                let to_a = A.iter().any(|(_, x)| addr(x) == to);
                let r = if to_a {
                    self.a.handle_datagram(now, &payload, &self.keys_a)
                } else {
                    self.b.handle_datagram(now, &payload, &self.keys_b)
                };
                assert!(!matches!(r, Received::Refused(_)), "{r:?}");
            }
            for (name, p) in [("a", &mut self.a), ("b", &mut self.b)] {
                while let Some(t) = p.poll_transmit() {
                    if !self.cut.contains(&Net::underlay_of(t.to)) {
                        flight.push((now + 5 * MS, t.to, t.payload));
                    }
                }
                while let Some(c) = p.poll_change() {
                    self.changes.push((now - self.start, name, c));
                }
            }
        }
    }

    fn state(&self, label: &str) -> PathState {
        self.a
            .report()
            .into_iter()
            .find(|r| r.label == label)
            .unwrap()
            .state
    }
}

#[test]
fn both_underlays_come_up_and_measure_their_round_trip() {
    let mut n = Net::new();
    n.run(500 * MS);
    for r in n.a.report() {
        assert_eq!(r.state, PathState::Up, "{r:?}");
        assert_eq!(r.rtt, Some(10 * MS), "{r:?}");
        assert_eq!(r.loss_ppm, 0);
        assert_eq!(r.changed, None, "found up: no change to hold down from");
    }
    assert_eq!(n.changes.len(), 4, "each side finds both paths up once");
}

#[test]
fn a_cut_underlay_goes_down_within_700_ms_and_comes_back_when_it_heals() {
    let mut n = Net::new();
    n.run(1000 * MS);
    n.changes.clear();
    let cut_at = n.t - n.start;
    n.cut.push("dx");
    n.run(1000 * MS);
    assert_eq!(n.state("dx"), PathState::Down);
    assert_eq!(n.state("internet"), PathState::Up);
    let down: Vec<_> = n
        .changes
        .iter()
        .filter(|c| c.2.state == PathState::Down)
        .collect();
    assert_eq!(down.len(), 2, "both ends see dx down: {down:?}");
    for (at, _, c) in &down {
        assert_eq!(c.label, "dx");
        let after = *at - cut_at;
        assert!(
            after <= 700 * MS && after >= DOWN_AFTER - 100 * MS,
            "{after:?}"
        );
    }
    let loss =
        n.a.report()
            .into_iter()
            .find(|r| r.label == "dx")
            .unwrap()
            .loss_ppm;
    assert!(loss > 0, "probes lost while cut");
    n.changes.clear();
    n.cut.clear();
    let healed_at = n.t;
    n.run(300 * MS);
    assert_eq!(n.state("dx"), PathState::Up);
    let changed =
        n.a.report()
            .into_iter()
            .find(|r| r.label == "dx")
            .unwrap()
            .changed
            .unwrap();
    assert!(
        changed > healed_at && changed <= healed_at + 200 * MS,
        "the change is when it healed"
    );
    // Loss counts from the heal: the probes lost to the cut are not held
    // against the healed path.
    n.run(1000 * MS);
    let dx = n.a.report().into_iter().find(|r| r.label == "dx").unwrap();
    assert_eq!(dx.loss_ppm, 0, "{dx:?}");
}

#[test]
fn nothing_is_probed_without_an_sa_and_a_stranger_gets_no_answer() {
    let t = Instant::now();
    let mut p = Prober::new(vec!["internet".into()]);
    p.set_members(vec![("b".into(), endpoints(&B))], t);
    let keys = ProbeKeys::default();
    p.handle_timeout(t, &keys);
    assert!(p.poll_transmit().is_none(), "no SA with b: no probe");
    p.handle_timeout(t + 5 * DOWN_AFTER, &keys);
    assert_eq!(
        p.report()[0].state,
        PathState::Unknown,
        "never probed is not down"
    );
    // Only the underlays this gateway has: b's dx is not probed.
    assert_eq!(p.report().len(), 1);
    // A probe MAC'd with a key this gateway does not hold, or on an SA it
    // does not receive on, is refused and not answered.
    let mut keys = ProbeKeys::default();
    keys.insert("b", 0x100, false, ProbeKey::derive(&sa_key(1)).unwrap());
    let forged = message::build(Kind::Probe, "internet", 0x100, 1, &[9; 32]);
    assert_eq!(
        p.handle_datagram(t, &forged, &keys),
        Received::Refused("bad tag")
    );
    let unknown = message::build(Kind::Probe, "internet", 0x999, 1, &[9; 32]);
    assert_eq!(
        p.handle_datagram(t, &unknown, &keys),
        Received::Refused("no such SA")
    );
    assert!(p.poll_transmit().is_none());
    // An answer replayed (or never asked for) moves nothing.
    keys.insert("b", 0x200, true, ProbeKey::derive(&sa_key(2)).unwrap());
    let k = ProbeKey::derive(&sa_key(2)).unwrap();
    let answer = message::build(Kind::Answer, "internet", 0x200, 77, k.bytes());
    assert_eq!(p.handle_datagram(t, &answer, &keys), Received::Stale);
    assert_eq!(p.report()[0].state, PathState::Unknown);
    // A genuine probe over an underlay the sender has no endpoint on.
    let k1 = ProbeKey::derive(&sa_key(1)).unwrap();
    let over_dx = message::build(Kind::Probe, "dx", 0x100, 1, k1.bytes());
    p.set_members(vec![("b".into(), endpoints(&B[..1]))], t);
    assert_eq!(
        p.handle_datagram(t, &over_dx, &keys),
        Received::Refused("no endpoint on that underlay")
    );
}
