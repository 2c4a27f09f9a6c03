//! The prober: a sans-IO state machine. Members' endpoints, datagrams and
//! time in; probes, answers and path changes out.
//!
//! Every [`PROBE_EVERY`] it probes each endpoint of each member it holds
//! an outbound SA with, over each underlay this gateway has too. An answer
//! that verifies marks the path up and measures its round trip; no answer
//! for [`DOWN_AFTER`] marks it down. Up and down are reported as they
//! happen, so the policy can move the peer within a second of a cut.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshgate_sdk::PathState;

use super::keys::ProbeKeys;
use super::message::{self, Kind};

pub const PROBE_EVERY: Duration = Duration::from_millis(100);
/// Silence after which a path is down: six probes in a row unanswered.
pub const DOWN_AFTER: Duration = Duration::from_millis(600);
/// Probe outcomes the loss figure covers (five seconds).
const WINDOW: usize = 50;

/// A datagram to send on the ESP socket.
#[derive(Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub payload: Vec<u8>,
}

/// A path went up or down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub peer: String,
    pub label: String,
    pub state: PathState,
}

/// What a datagram handed to the prober was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// A peer's probe, answered.
    Probe,
    /// An answer to a probe of ours still waited for.
    Answer,
    /// An answer that verifies but is late, repeated or not asked for.
    Stale,
    /// Not a probe, no SA of ours, a tag that does not verify, or a probe
    /// over an underlay the sender has no endpoint on.
    Refused(&'static str),
}

/// One path as the view and metrics show it.
#[derive(Debug, Clone, PartialEq)]
pub struct PathReport {
    pub peer: String,
    pub label: String,
    pub state: PathState,
    pub rtt: Option<Duration>,
    pub loss_ppm: u32,
    /// When it last went down or came back up.
    pub changed: Option<Instant>,
}

struct Path {
    to: SocketAddr,
    state: PathState,
    next_probe: Instant,
    /// When probing began, or the last answer came.
    heard: Option<Instant>,
    started: Option<Instant>,
    /// Probes out: sequence number and when sent, oldest first.
    waiting: VecDeque<(u64, Instant)>,
    /// Outcomes of the last [`WINDOW`] probes (true: answered).
    outcomes: VecDeque<bool>,
    srtt: Option<Duration>,
    changed: Option<Instant>,
}

impl Path {
    fn new(to: SocketAddr, now: Instant) -> Path {
        Path {
            to,
            state: PathState::Unknown,
            next_probe: now,
            heard: None,
            started: None,
            waiting: VecDeque::new(),
            outcomes: VecDeque::new(),
            srtt: None,
            changed: None,
        }
    }

    fn outcome(&mut self, answered: bool) {
        if self.outcomes.len() == WINDOW {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back(answered);
    }

    fn loss_ppm(&self) -> u32 {
        if self.outcomes.is_empty() {
            return 0;
        }
        let lost = self.outcomes.iter().filter(|a| !**a).count();
        (lost * 1_000_000 / self.outcomes.len()) as u32
    }

    /// When it goes down unless an answer comes first.
    fn down_at(&self) -> Option<Instant> {
        match self.state {
            PathState::Down => None,
            _ => Some(self.heard.or(self.started)? + DOWN_AFTER),
        }
    }
}

/// The paths of this gateway to its peers, one per peer and underlay.
pub struct Prober {
    /// This gateway's own underlays: a path exists only over these.
    labels: Vec<String>,
    /// Each member's endpoints, by id (answers go to these).
    endpoints: HashMap<String, Vec<(String, SocketAddr)>>,
    paths: BTreeMap<(String, String), Path>,
    next_seq: u64,
    out: VecDeque<Transmit>,
    changes: VecDeque<Change>,
}

impl Prober {
    /// A prober for a gateway with endpoints on `labels`.
    pub fn new(labels: Vec<String>) -> Prober {
        Prober {
            labels,
            endpoints: HashMap::new(),
            paths: BTreeMap::new(),
            next_seq: 1,
            out: VecDeque::new(),
            changes: VecDeque::new(),
        }
    }

    /// The members that are up and their endpoints: paths to them over
    /// the underlays both have; the paths of members gone are dropped.
    pub fn set_members(&mut self, members: Vec<(String, Vec<(String, SocketAddr)>)>, now: Instant) {
        let mut wanted = BTreeMap::new();
        for (id, endpoints) in &members {
            for (label, to) in endpoints {
                if self.labels.contains(label) {
                    wanted.insert((id.clone(), label.clone()), *to);
                }
            }
        }
        self.paths.retain(|k, _| wanted.contains_key(k));
        for (k, to) in wanted {
            let p = self.paths.entry(k).or_insert_with(|| Path::new(to, now));
            p.to = to;
        }
        self.endpoints = members.into_iter().collect();
    }

    /// A non-ESP datagram from the ESP port.
    pub fn handle_datagram(&mut self, now: Instant, datagram: &[u8], keys: &ProbeKeys) -> Received {
        let Some(m) = message::parse(datagram) else {
            return Received::Refused("malformed");
        };
        match m.kind {
            Kind::Probe => {
                let Some((peer, key)) = keys.lookup(m.spi, false) else {
                    return Received::Refused("no such SA");
                };
                if !m.verify(key.bytes()) {
                    return Received::Refused("bad tag");
                }
                let back = self
                    .endpoints
                    .get(peer)
                    .and_then(|e| e.iter().find(|(l, _)| l == m.label));
                let Some((_, to)) = back else {
                    return Received::Refused("no endpoint on that underlay");
                };
                let payload = message::build(Kind::Answer, m.label, m.spi, m.seq, key.bytes());
                self.out.push_back(Transmit { to: *to, payload });
                Received::Probe
            }
            Kind::Answer => {
                let Some((peer, key)) = keys.lookup(m.spi, true) else {
                    return Received::Refused("no such SA");
                };
                if !m.verify(key.bytes()) {
                    return Received::Refused("bad tag");
                }
                let Some(path) = self.paths.get_mut(&(peer.to_string(), m.label.to_string()))
                else {
                    return Received::Stale;
                };
                let Some(i) = path.waiting.iter().position(|(s, _)| *s == m.seq) else {
                    return Received::Stale;
                };
                let (_, sent) = path.waiting.remove(i).unwrap_or((0, now));
                let rtt = now.saturating_duration_since(sent);
                path.srtt = Some(path.srtt.map_or(rtt, |s| (s * 7 + rtt) / 8));
                path.heard = Some(now);
                path.outcome(true);
                if path.state != PathState::Up {
                    // First found up: no hold-down applies; back up after
                    // a cut: the change is when it healed.
                    if path.state == PathState::Down {
                        path.changed = Some(now);
                        // Loss counts from here: the outage is over, and
                        // the hold-down, not old losses, keeps a flapping
                        // path from being used at once.
                        // (Probes still waiting were sent into the cut.)
                        path.outcomes.clear();
                        path.waiting.clear();
                        path.outcome(true);
                    }
                    path.state = PathState::Up;
                    self.changes.push_back(Change {
                        peer: peer.to_string(),
                        label: m.label.to_string(),
                        state: PathState::Up,
                    });
                }
                Received::Answer
            }
        }
    }

    /// Sends the probes due, expires the unanswered, marks the silent down.
    pub fn handle_timeout(&mut self, now: Instant, keys: &ProbeKeys) {
        for ((peer, label), path) in &mut self.paths {
            while path
                .waiting
                .front()
                .is_some_and(|(_, sent)| now >= *sent + DOWN_AFTER)
            {
                path.waiting.pop_front();
                path.outcome(false);
            }
            if path.down_at().is_some_and(|t| now >= t) {
                path.state = PathState::Down;
                path.changed = Some(now);
                path.srtt = None;
                self.changes.push_back(Change {
                    peer: peer.clone(),
                    label: label.clone(),
                    state: PathState::Down,
                });
            }
            if now < path.next_probe {
                continue;
            }
            path.next_probe = now + PROBE_EVERY;
            // No SA with the member yet: nothing to probe with.
            let Some((spi, key)) = keys.outbound(peer) else {
                continue;
            };
            path.started.get_or_insert(now);
            let seq = self.next_seq;
            self.next_seq += 1;
            path.waiting.push_back((seq, now));
            let payload = message::build(Kind::Probe, label, spi, seq, key.bytes());
            self.out.push_back(Transmit {
                to: path.to,
                payload,
            });
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.paths
            .values()
            .flat_map(|p| {
                [
                    Some(p.next_probe),
                    p.waiting.front().map(|(_, s)| *s + DOWN_AFTER),
                    p.down_at(),
                ]
            })
            .flatten()
            .min()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    pub fn poll_change(&mut self) -> Option<Change> {
        self.changes.pop_front()
    }

    /// Every path, for the view and the metrics.
    pub fn report(&self) -> Vec<PathReport> {
        self.paths
            .iter()
            .map(|((peer, label), p)| PathReport {
                peer: peer.clone(),
                label: label.clone(),
                state: p.state,
                rtt: p.srtt,
                loss_ppm: p.loss_ppm(),
                changed: p.changed,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
