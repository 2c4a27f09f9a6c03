//! Whole meshes of [`Member`] cores on virtual time, the way
//! `membership::sim` runs clusters of agents: connections that come up
//! after a round trip, datagrams delayed and lost at a set rate, key
//! exchange messages delivered in order unless a fault drops one, links
//! cut and healed, members killed and restarted, and each member's data
//! plane kept as the commands it was given. No sockets, no sleeps; the
//! order of events is fixed by a seed (the keys themselves are random).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::dataplane::{InboundCommand, OutboundCommand};
use crate::esp::SaParams;
use crate::keys::epoch::test_keys;
use crate::keys::kms::KmsKeys;
use crate::keys::wrapped::WrappedKeys;
use crate::keys::Epoch;
use crate::membership::sim::{EventQueue, VirtualTime};

impl VirtualTime for MeshSim {
    fn now(&self) -> Duration {
        self.now
    }

    fn run_until(&mut self, end: Duration) {
        MeshSim::run_until(self, end);
    }
}

/// The data plane of one member, as the commands it was given left it.
#[derive(Default)]
pub(crate) struct Plane {
    /// Slot -> member id.
    pub slots: HashMap<usize, String>,
    /// Slot -> the SA sent on.
    pub outbound: HashMap<usize, SaParams>,
    /// SPI -> (slot, SA) received on.
    pub inbound: HashMap<u32, (usize, SaParams)>,
}

impl Plane {
    fn apply(&mut self, o: Output) {
        match o {
            Output::Outbound(OutboundCommand::Peer { slot, id, .. })
            | Output::Inbound(InboundCommand::Peer { slot, id, .. }) => {
                self.slots.insert(slot, id);
            }
            Output::Outbound(OutboundCommand::Sa { slot, params }) => {
                self.outbound.insert(slot, params);
            }
            Output::Outbound(
                OutboundCommand::ClearSa { slot } | OutboundCommand::Remove { slot },
            ) => {
                self.outbound.remove(&slot);
            }
            Output::Inbound(InboundCommand::Sa { slot, params }) => {
                self.inbound.insert(params.spi, (slot, params));
            }
            Output::Inbound(InboundCommand::RemoveSa { spi }) => {
                self.inbound.remove(&spi);
            }
            Output::Inbound(InboundCommand::Remove { slot }) => {
                self.inbound.retain(|_, (s, _)| *s != slot);
            }
            _ => {}
        }
    }

    /// The SA this member sends to `peer` on.
    pub fn sends_to(&self, peer: &str) -> Option<&SaParams> {
        let slot = self.slots.iter().find(|(_, id)| *id == peer)?.0;
        self.outbound.get(slot)
    }
}

pub(crate) struct Node {
    pub member: Member,
    pub plane: Plane,
    /// With KMS keys: what the virtual KMS decrypted for it.
    kms: Option<Arc<KmsKeys>>,
    /// Every event the member gave, with when.
    pub events: Vec<(Duration, NodeEvent)>,
}

enum Ev {
    /// Both ends of a new connection are up.
    Connect {
        dialer: usize,
        gen: u64,
        acceptor: usize,
        gen_a: u64,
    },
    DialFailed {
        node: usize,
        gen: u64,
        peer: String,
    },
    Deliver {
        to: ConnId,
        payload: Payload,
    },
    Closed {
        conn: ConnId,
    },
    /// Connections across a cut time out if it still holds.
    Idle {
        conn: ConnId,
    },
    Seeds {
        node: usize,
        gen: u64,
    },
    Wake {
        node: usize,
    },
    /// The virtual KMS answers a member's held ciphertexts.
    Unwrap {
        node: usize,
        gen: u64,
        held: Vec<(Epoch, Vec<u8>)>,
    },
}

/// The ciphertext of epoch 1's data key every member is configured with
/// when [`MeshSim::kms`] is set.
pub const KMS_EPOCH_1: &[u8] = b"kms ciphertext of epoch 1";

/// One end of a connection: whose, to whom, and the other end's id.
#[derive(Clone, Copy)]
struct End {
    node: usize,
    gen: u64,
    peer: usize,
    other: ConnId,
}

pub(crate) struct MeshSim {
    pub nodes: Vec<Option<Node>>,
    /// Epoch keys from a virtual KMS (ciphertext to plaintext, answered
    /// 20 ms after a member asks) instead of a local master key.
    pub kms: Option<HashMap<Vec<u8>, [u8; 32]>>,
    generations: Vec<u64>,
    t0: Instant,
    pub now: Duration,
    queue: EventQueue<Ev>,
    rng: StdRng,
    wakes: Vec<Option<Instant>>,
    ends: HashMap<ConnId, End>,
    next_conn: u64,
    /// One-way delay, sampled uniformly.
    pub delay: (Duration, Duration),
    /// Datagram loss rate.
    pub loss: f64,
    /// Pairs that cannot reach each other (lower index first).
    cut: HashSet<(usize, usize)>,
    /// Key-exchange messages sent from one member to another so far.
    pub messages: HashMap<(usize, usize), usize>,
    /// Which to lose: (from, to, nth message of that pair, from 1).
    pub lose_messages: HashSet<(usize, usize, usize)>,
    /// Pairs (from, to) whose every key-exchange message is lost while
    /// listed (membership datagrams still pass).
    pub block_messages: HashSet<(usize, usize)>,
    /// What discovery answers: these members.
    pub seeds: Vec<usize>,
    pub settings: Settings,
    pub liveness: Option<LivenessSettings>,
    /// Bytes each member sent (datagrams and messages).
    pub sent: Vec<u64>,
}

const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Member `i`'s certificate, as orders name it.
pub fn cert_of(i: usize) -> crate::keys::order::CertId {
    let mut c = [0xce; 16];
    c[..8].copy_from_slice(&(i as u64).to_be_bytes());
    c
}

/// The simulated mesh's CA, which signs the operator's epoch orders.
pub const MESH_CA: crate::keys::order::tests::TestCa =
    crate::keys::order::tests::TestCa(b"the mesh CA");

pub(crate) fn id(i: usize) -> String {
    format!("m{i:02}")
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 4433))
}

/// A member's record: a region and prefix of its own, an ESP endpoint.
pub(crate) fn record(i: usize) -> MemberInfo {
    MemberInfo {
        id: id(i),
        version: 1,
        region: format!("region-{i}"),
        zone: format!("region-{i}a"),
        role: "edge".into(),
        prefixes: vec![(std::net::IpAddr::from([10, 100, i as u8, 0]), 24)],
        endpoints: vec![(
            "internet".into(),
            SocketAddr::from(([198, 18, (i >> 8) as u8, i as u8], 4500)),
        )],
        policy_version: 1,
        epoch: 1,
        ..Default::default()
    }
}

impl MeshSim {
    /// `n` members, none started; discovery answers the first.
    pub fn new(n: usize, seed: u64) -> MeshSim {
        MeshSim {
            kms: None,
            nodes: (0..n).map(|_| None).collect(),
            generations: vec![0; n],
            t0: Instant::now(),
            now: Duration::ZERO,
            queue: EventQueue::default(),
            rng: StdRng::seed_from_u64(seed),
            wakes: vec![None; n],
            ends: HashMap::new(),
            next_conn: 0,
            delay: (Duration::from_millis(10), Duration::from_millis(60)),
            loss: 0.0,
            cut: HashSet::new(),
            messages: HashMap::new(),
            lose_messages: HashSet::new(),
            block_messages: HashSet::new(),
            seeds: vec![0],
            settings: Settings::default(),
            liveness: Some(LivenessSettings::default()),
            sent: vec![0; n],
        }
    }

    pub fn at(&self) -> Instant {
        self.t0 + self.now
    }

    /// Starts member `i` (again, after a kill: a new generation).
    pub fn start(&mut self, i: usize) {
        self.generations[i] += 1;
        let kms = self.kms.as_ref().map(|_| Arc::new(KmsKeys::default()));
        let provider: Arc<dyn crate::keys::KeyProvider> = match &kms {
            Some(k) => k.clone(),
            None => Arc::new(test_keys(9)),
        };
        let cfg = MemberConfig {
            wrapped: kms
                .as_ref()
                .map(|_| WrappedKeys::configured(1, KMS_EPOCH_1.to_vec())),
            me: MemberId {
                id: id(i),
                addr: addr(i),
                generation: self.generations[i],
            },
            info: record(i),
            settings: self.settings,
            liveness: self.liveness,
            seed: self.rng.random(),
            infos: Infos::default(),
            keys: Some((provider, 1, CipherSuite::Aes128Gcm)),
            orders: Arc::new(MESH_CA),
            tunnels: Some(crate::tunnels::tests::tunnels()),
        };
        let member = Member::new(cfg, self.at());
        self.nodes[i] = Some(Node {
            member,
            kms,
            plane: Plane::default(),
            events: Vec::new(),
        });
        self.pump(i);
    }

    /// kill -9: the member and its connections are gone; the other ends
    /// time out.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
        let mine: Vec<ConnId> = self
            .ends
            .iter()
            .filter(|(_, e)| e.node == i)
            .map(|(c, _)| *c)
            .collect();
        for c in mine {
            if let Some(e) = self.ends.remove(&c) {
                self.schedule(self.now + IDLE_TIMEOUT, Ev::Closed { conn: e.other });
            }
        }
    }

    /// Cuts every path between the two groups; connections across time
    /// out if the cut outlasts the idle timeout.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x.min(y), x.max(y)));
            }
        }
        let across: Vec<ConnId> = self
            .ends
            .iter()
            .filter(|(_, e)| self.is_cut(e.node, e.peer))
            .map(|(c, _)| *c)
            .collect();
        for c in across {
            self.schedule(self.now + IDLE_TIMEOUT, Ev::Idle { conn: c });
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn running(&self, i: usize, gen: u64) -> bool {
        self.nodes[i].is_some() && self.generations[i] == gen
    }

    fn index(&self, peer: &str) -> Option<usize> {
        peer.strip_prefix('m')?
            .parse()
            .ok()
            .filter(|&i: &usize| i < self.nodes.len())
    }

    fn sample_delay(&mut self) -> Duration {
        let (lo, hi) = self.delay;
        lo + (hi - lo).mul_f64(self.rng.random::<f64>())
    }

    fn schedule(&mut self, at: Duration, ev: Ev) {
        self.queue.schedule(at, ev);
    }

    /// Carries out what member `i` asked for.
    fn pump(&mut self, i: usize) {
        let gen = self.generations[i];
        let Some(node) = self.nodes[i].as_mut() else {
            return;
        };
        let mut io = Vec::new();
        while let Some(o) = node.member.poll_output() {
            io.push(o);
        }
        while let Some(e) = node.member.poll_event() {
            node.events.push((self.now, e));
        }
        let wake = node.member.poll_timeout();
        for o in io {
            match o {
                Output::Send { conn, payload } => self.send(i, conn, payload),
                Output::Dial { peer, addr: at } => {
                    let target = self.index(&peer).filter(|&j| addr(j) == at);
                    match target.filter(|&j| self.nodes[j].is_some() && !self.is_cut(i, j)) {
                        Some(j) => {
                            let rtt = self.sample_delay() * 2;
                            let gen_a = self.generations[j];
                            self.schedule(
                                self.now + rtt,
                                Ev::Connect {
                                    dialer: i,
                                    gen,
                                    acceptor: j,
                                    gen_a,
                                },
                            );
                        }
                        None => self.schedule(
                            self.now + Duration::from_secs(1),
                            Ev::DialFailed { node: i, gen, peer },
                        ),
                    }
                }
                Output::Close { conn } => {
                    if let Some(e) = self.ends.remove(&conn) {
                        let d = self.sample_delay();
                        self.schedule(self.now + d, Ev::Closed { conn: e.other });
                    }
                }
                Output::WrappedKeys(held) => self.schedule(
                    self.now + Duration::from_millis(20),
                    Ev::Unwrap { node: i, gen, held },
                ),
                Output::Discover => {
                    let d = Duration::from_millis(1);
                    self.schedule(self.now + d, Ev::Seeds { node: i, gen });
                }
                dp @ (Output::Outbound(_) | Output::Inbound(_)) => {
                    if let Some(n) = self.nodes[i].as_mut() {
                        n.plane.apply(dp);
                    }
                }
            }
        }
        if let Some(t) = wake {
            if self.wakes[i] != Some(t) {
                self.wakes[i] = Some(t);
                let at = t.saturating_duration_since(self.t0).max(self.now);
                self.schedule(at, Ev::Wake { node: i });
            }
        }
    }

    fn send(&mut self, i: usize, conn: ConnId, payload: Payload) {
        let Some(end) = self.ends.get(&conn).copied() else {
            return;
        };
        let len = match &payload {
            Payload::Datagram(d) => d.len(),
            Payload::Message(m) => m.len(),
        };
        self.sent[i] += len as u64;
        if self.is_cut(i, end.peer) {
            return;
        }
        match payload {
            Payload::Datagram(_) if self.loss > 0.0 && self.rng.random::<f64>() < self.loss => {
                return
            }
            Payload::Message(_) => {
                let nth = self.messages.entry((i, end.peer)).or_default();
                *nth += 1;
                if self.lose_messages.remove(&(i, end.peer, *nth))
                    || self.block_messages.contains(&(i, end.peer))
                {
                    return;
                }
            }
            Payload::Datagram(_) => {}
        }
        let d = self.sample_delay();
        self.schedule(
            self.now + d,
            Ev::Deliver {
                to: end.other,
                payload,
            },
        );
    }

    /// Runs events up to `end`.
    pub fn run_until(&mut self, end: Duration) {
        while let Some((at, ev)) = self.queue.pop_until(end) {
            self.now = at;
            let now = self.at();
            let touched: Vec<usize> = match ev {
                Ev::Connect {
                    dialer,
                    gen,
                    acceptor,
                    gen_a,
                } => {
                    if !self.running(dialer, gen)
                        || !self.running(acceptor, gen_a)
                        || self.is_cut(dialer, acceptor)
                    {
                        self.schedule(
                            self.now,
                            Ev::DialFailed {
                                node: dialer,
                                gen,
                                peer: id(acceptor),
                            },
                        );
                        continue;
                    }
                    self.next_conn += 2;
                    let (cd, ca) = (ConnId(self.next_conn - 1), ConnId(self.next_conn));
                    self.ends.insert(
                        cd,
                        End {
                            node: dialer,
                            gen,
                            peer: acceptor,
                            other: ca,
                        },
                    );
                    self.ends.insert(
                        ca,
                        End {
                            node: acceptor,
                            gen: gen_a,
                            peer: dialer,
                            other: cd,
                        },
                    );
                    if let Some(n) = self.nodes[acceptor].as_mut() {
                        n.member
                            .handle_connected(&id(dialer), ca, cert_of(dialer), false, now);
                    }
                    if let Some(n) = self.nodes[dialer].as_mut() {
                        n.member
                            .handle_connected(&id(acceptor), cd, cert_of(acceptor), true, now);
                    }
                    vec![acceptor, dialer]
                }
                Ev::DialFailed { node, gen, peer } => {
                    if !self.running(node, gen) {
                        continue;
                    }
                    if let Some(n) = self.nodes[node].as_mut() {
                        n.member.handle_dial_failed(&peer);
                    }
                    vec![node]
                }
                Ev::Deliver { to, payload } => {
                    let Some(end) = self.ends.get(&to).copied() else {
                        continue;
                    };
                    if !self.running(end.node, end.gen) || self.is_cut(end.node, end.peer) {
                        continue;
                    }
                    let from = id(end.peer);
                    if let Some(n) = self.nodes[end.node].as_mut() {
                        match payload {
                            Payload::Datagram(d) => n.member.handle_datagram(&from, &d, now),
                            Payload::Message(m) => n.member.handle_message(&from, &m, now),
                        }
                    }
                    vec![end.node]
                }
                Ev::Closed { conn } => {
                    let Some(end) = self.ends.remove(&conn) else {
                        continue;
                    };
                    if let Some(n) = self.nodes[end.node]
                        .as_mut()
                        .filter(|_| self.generations[end.node] == end.gen)
                    {
                        n.member.handle_closed(conn);
                    }
                    vec![end.node]
                }
                Ev::Idle { conn } => {
                    let Some(end) = self.ends.get(&conn).copied() else {
                        continue;
                    };
                    if self.is_cut(end.node, end.peer) {
                        self.schedule(self.now, Ev::Closed { conn });
                    }
                    continue;
                }
                Ev::Seeds { node, gen } => {
                    if !self.running(node, gen) {
                        continue;
                    }
                    let seeds: Vec<(String, SocketAddr)> =
                        self.seeds.iter().map(|&s| (id(s), addr(s))).collect();
                    if let Some(n) = self.nodes[node].as_mut() {
                        n.member.handle_seeds(seeds, now);
                    }
                    vec![node]
                }
                Ev::Unwrap { node, gen, held } => {
                    let Some(n) = self.nodes[node]
                        .as_mut()
                        .filter(|_| self.generations[node] == gen)
                    else {
                        continue;
                    };
                    if let (Some(keys), Some(kms)) = (&n.kms, &self.kms) {
                        for (epoch, ciphertext) in held {
                            match kms.get(&ciphertext) {
                                Some(plain) => keys.ready(epoch, plain),
                                None => keys.refuse(epoch, "InvalidCiphertextException".into()),
                            }
                        }
                    }
                    n.member.epoch_key_ready(now);
                    vec![node]
                }
                Ev::Wake { node } => {
                    if self.wakes[node].is_some_and(|t| t > now) {
                        continue;
                    }
                    self.wakes[node] = None;
                    if let Some(n) = self.nodes[node].as_mut() {
                        n.member.handle_timeout(now);
                    }
                    vec![node]
                }
            };
            for i in touched {
                self.pump(i);
            }
        }
        self.now = end;
    }

    /// Runs something on member `i` and carries out what it asked for.
    pub fn with<T>(&mut self, i: usize, f: impl FnOnce(&mut Member, Instant) -> T) -> T {
        let now = self.at();
        let n = self.nodes[i].as_mut().expect("a running member");
        let r = f(&mut n.member, now);
        self.pump(i);
        r
    }

    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("a running member")
    }

    /// Whether `a` and `b` send to each other on SAs the other receives
    /// on with the same key.
    pub fn keyed(&self, a: usize, b: usize) -> bool {
        let (Some(na), Some(nb)) = (self.nodes[a].as_ref(), self.nodes[b].as_ref()) else {
            return false;
        };
        let one_way = |x: &Node, y: &Node, to: usize| {
            x.plane.sends_to(&id(to)).is_some_and(|out| {
                y.plane
                    .inbound
                    .get(&out.spi)
                    .is_some_and(|(_, inb)| inb.key.same_as(&out.key))
            })
        };
        one_way(na, nb, b) && one_way(nb, na, a)
    }

    /// Every pair of the given members keyed.
    pub fn all_keyed(&self, members: &[usize]) -> bool {
        members.iter().all(|&a| {
            members
                .iter()
                .filter(|&&b| b > a)
                .all(|&b| self.keyed(a, b))
        })
    }
}
