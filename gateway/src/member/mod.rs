//! One member of the mesh as a sans-IO value, in the style of quinn-proto
//! under quinn: it owns the membership agent, the key negotiator, the SAs
//! it holds with each member (tunnels), the key epochs, its own record,
//! whom it keys and when, and which connection carries what. Datagrams,
//! messages, connections coming and going, operator commands, data-plane
//! notices and the time go in; I/O to carry out ([`Output`]), news for the
//! owner ([`NodeEvent`]) and the next deadline
//! ([`poll_timeout`](Member::poll_timeout)) come out. The shell
//! (`signal::node`) only moves bytes, connections and timers, and
//! `sim` runs whole meshes of these on virtual time.

mod conns;
mod epochs;
pub mod health;
mod keying;
mod output;
mod sas;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
mod wrapped;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use keying::{HIGHER_ID_WAITS, RETRY_EVERY};
pub use output::{ConnId, EpochReport, NodeEvent, Output, Payload, Refusal};

use crate::dataplane::SaNotice;
use crate::esp::CipherSuite;
use crate::keys::order::{cert_hex, CertId, OrderAuthority};
use crate::keys::rotation::EpochState;
use crate::keys::{self, KeyProvider, Negotiator};
use crate::membership::info::{Infos, MemberInfo};
use crate::membership::liveness::LivenessSettings;
use crate::membership::{Agent, MemberId, MembershipEvent, Settings};
use crate::tunnels::Tunnels;
use conns::Conns;
use health::{health_moved, path_health, HEALTH_EVERY, OBSERVE_EVERY};
use keying::Keying;

/// Between announcements to the seeds while no other member is known alive.
pub const REJOIN_EVERY: Duration = Duration::from_secs(2);

/// What a member is made of.
pub struct MemberConfig {
    /// Its id, signalling address and generation (a restart is a new one).
    pub me: MemberId,
    /// Its record as configured (placement, prefixes, endpoints, epoch).
    pub info: MemberInfo,
    pub settings: Settings,
    pub liveness: Option<LivenessSettings>,
    /// Seeds SWIM's choices (any value; tests fix it).
    pub seed: u64,
    /// Where records are kept, and who vouches for them.
    pub infos: Infos,
    /// Negotiate SAs with the members: the key provider, the epoch, the
    /// cipher suite. `None`: membership only.
    pub keys: Option<(Arc<dyn KeyProvider>, keys::Epoch, CipherSuite)>,
    /// Who signs the epoch orders this member takes (the mesh CA).
    pub orders: Arc<dyn OrderAuthority>,
    /// With KMS epoch keys: the ciphertexts held at start (the configured
    /// epoch's). `None`: local keys.
    pub wrapped: Option<keys::wrapped::WrappedKeys>,
    /// Keep the negotiated SAs for a data plane (as [`Output::Outbound`]
    /// and [`Output::Inbound`]). `None`: hand the keys to the owner as
    /// [`NodeEvent::Keys`].
    pub tunnels: Option<Tunnels>,
}

pub struct Member {
    me: String,
    agent: Agent,
    negotiator: Option<Negotiator>,
    tunnels: Option<Tunnels>,
    epochs: EpochState,
    orders: Arc<dyn OrderAuthority>,
    wrapped: Option<keys::wrapped::WrappedKeys>,
    /// Per member, the signature of the last epoch order looked at in its
    /// record (each is checked once).
    orders_seen: HashMap<String, Vec<u8>>,
    /// The certificate each peer last connected with.
    peer_certs: HashMap<String, CertId>,
    /// Peers whose certificate the mesh CA revoked: no connection, no
    /// message, no SA, not in the view, until one with another certificate.
    cut_off: HashSet<String>,
    /// This member's record as advertised.
    info: MemberInfo,
    keying: Keying,
    conns: Conns,
    out: VecDeque<Output>,
    events: VecDeque<NodeEvent>,
    /// What handling one input gave to send; it leaves after the data-plane
    /// changes of the same input (make-before-break).
    sends: Vec<(String, Payload)>,
    next_observe: Instant,
    next_health_ad: Instant,
    /// While this member knows no other alive (at start, or cut off by a
    /// partition), it asks discovery again at this pace.
    next_rejoin: Instant,
    records_seen: u64,
    own_sent: u64,
    /// Where discovery says each seed listens: dialed, as are the
    /// addresses members' signed records vouch for, and nothing else.
    seeds: HashMap<String, SocketAddr>,
}

impl Member {
    /// A member that has just started: it advertises its record and asks
    /// discovery for members to join through.
    pub fn new(cfg: MemberConfig, now: Instant) -> Member {
        let me = cfg.me.id.clone();
        let mut agent = Agent::with_infos(cfg.me, cfg.settings, cfg.liveness, cfg.seed, cfg.infos);
        let negotiator = cfg
            .keys
            .as_ref()
            .map(|(provider, epoch, suite)| Negotiator::new(&me, *suite, provider.clone(), *epoch));
        let epochs = EpochState::new(cfg.keys.as_ref().map_or(cfg.info.epoch, |k| k.1));
        let mut info = cfg.info;
        // Its record vouches for its SWIM identity (see `membership::vouch`).
        info.signal = Some(agent.membership().me().addr);
        info.generation = agent.membership().me().generation;
        if let Err(e) = agent.advertise(info.clone(), now) {
            tracing::warn!("advertising this member's record: {e}");
        }
        let mut m = Member {
            keying: Keying::new(&me),
            me,
            agent,
            negotiator,
            tunnels: cfg.tunnels,
            epochs,
            orders: cfg.orders,
            wrapped: cfg.wrapped,
            orders_seen: HashMap::new(),
            peer_certs: HashMap::new(),
            cut_off: HashSet::new(),
            info,
            conns: Conns::default(),
            out: VecDeque::from([Output::Discover]),
            events: VecDeque::new(),
            sends: Vec::new(),
            next_observe: now,
            next_health_ad: now + HEALTH_EVERY,
            next_rejoin: now + REJOIN_EVERY,
            records_seen: 0,
            own_sent: 0,
            seeds: HashMap::new(),
        };
        m.wrapped_changed(&[]);
        m.drive(now);
        m
    }

    pub fn id(&self) -> &str {
        &self.me
    }

    /// A membership datagram from `from`, whom the channel authenticated.
    pub fn handle_datagram(&mut self, from: &str, data: &[u8], now: Instant) {
        if self.cut_off.contains(from) {
            return;
        }
        if let Err(e) = self.agent.handle(from, data, now) {
            self.refuse(from, "membership", e.kind(), e.to_string());
        }
        self.drive(now);
    }

    /// A key-exchange message from `from`, whom the channel authenticated.
    pub fn handle_message(&mut self, from: &str, body: &[u8], now: Instant) {
        if self.cut_off.contains(from) {
            return;
        }
        if let Ok(keys::message::Message::Wrapped(w)) = keys::message::Message::decode(body) {
            self.handle_wrapped(from, w, now);
            return;
        }
        if let Some(n) = self.negotiator.as_mut() {
            if let Err(e) = n.handle(from, body, now) {
                self.refuse(from, "key_exchange", e.kind(), e.to_string());
            }
        }
        self.drive(now);
    }

    /// A connection to `peer` is up, dialed by this side or accepted, with
    /// certificate `cert` (the shell has told the records' authority of
    /// it). A certificate the mesh CA revoked is closed at once.
    pub fn handle_connected(
        &mut self,
        peer: &str,
        conn: ConnId,
        cert: CertId,
        dialed_here: bool,
        now: Instant,
    ) {
        self.peer_certs.insert(peer.to_string(), cert);
        if self.epochs.cert_revoked(&cert) {
            self.out.push_back(Output::Close { conn });
            self.cut_off(peer, &cert);
            self.drive(now);
            return;
        }
        if self.cut_off.remove(peer) {
            // Back with a certificate of its own again (reissued).
            self.keying.up(peer, now);
        }
        if self.agent.membership().infos().certified(peer) {
            // Records that waited for this certificate may be taken now,
            // and the gossip that waited on those records applied.
            self.agent.records_changed(now);
            self.next_observe = now;
        }
        self.conns.connected(peer, conn, dialed_here, &mut self.out);
        self.send_wrapped_to(peer);
        self.drive(now);
    }

    pub fn handle_closed(&mut self, conn: ConnId) {
        self.conns.closed(conn);
    }

    /// Dialing `peer` failed (the shell reports the refusal itself).
    pub fn handle_dial_failed(&mut self, peer: &str) {
        self.conns.dial_failed(peer);
    }

    /// Whether the membership holds `peer` down and knows no newer
    /// incarnation of it. Members reach out to those now and then (how a
    /// healed partition is found), so a dial to one that fails is expected,
    /// not a refusal worth counting.
    pub fn holds_down(&self, peer: &str) -> bool {
        let mut states = self
            .agent
            .membership()
            .members()
            .filter(|(m, _)| m.id == peer)
            .map(|(_, s)| s)
            .peekable();
        states.peek().is_some() && states.all(|s| s == foca::State::Down)
    }

    /// What discovery found: members to join through.
    pub fn handle_seeds(
        &mut self,
        seeds: impl IntoIterator<Item = (String, SocketAddr)>,
        now: Instant,
    ) {
        for (id, addr) in seeds.into_iter().filter(|(id, _)| *id != self.me) {
            self.seeds.insert(id.clone(), addr);
            self.conns.ensure(&id, addr, &mut self.out);
            let seed = MemberId {
                id: id.clone(),
                addr,
                generation: 0,
            };
            if let Err(e) = self.agent.join(seed, now) {
                tracing::debug!("joining through {id}: {e}");
            }
        }
        self.drive(now);
    }

    /// The packet threads' notice of an SA's lifetime (which may start a
    /// rekey).
    pub fn handle_notice(&mut self, notice: SaNotice, now: Instant) {
        let SaNotice::Lifetime {
            slot,
            direction,
            event,
        } = notice;
        if let Some(t) = self.tunnels.as_mut() {
            t.lifetime(slot, direction, event);
        }
        self.drive(now);
    }

    /// The members the policy connects this one to: SAs are negotiated
    /// with these (and with whoever starts an exchange with us).
    pub fn set_peers(&mut self, ids: HashSet<String>, now: Instant) {
        let (agent, tunnels) = (&self.agent, &self.tunnels);
        let alive_unkeyed = |id: &str| {
            let alive = agent
                .membership()
                .members()
                .any(|(m, s)| m.id == id && s == foca::State::Alive);
            alive && !tunnels.as_ref().is_some_and(|t| t.keyed(id))
        };
        self.keying.set_wanted(ids, alive_unkeyed, now);
        self.drive(now);
    }

    /// The underlay the policy chose for each peer: where ESP to it goes
    /// from the next observation (at once), its SAs kept.
    pub fn set_underlays(&mut self, underlays: HashMap<String, String>, now: Instant) {
        if let Some(t) = self.tunnels.as_mut() {
            t.set_underlays(underlays);
            self.next_observe = now;
        }
        self.drive(now);
    }

    /// This member's load (permille) or policy version changed: its
    /// record is advertised anew if either moved.
    pub fn update_record(
        &mut self,
        load_permille: Option<u32>,
        policy_version: Option<u32>,
        now: Instant,
    ) {
        let before = (self.info.load_permille, self.info.policy_version);
        self.info.load_permille = load_permille.unwrap_or(self.info.load_permille);
        self.info.policy_version = policy_version.unwrap_or(self.info.policy_version);
        if (self.info.load_permille, self.info.policy_version) != before {
            self.readvertise(now, "the load or policy version");
        }
        self.drive(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.agent.poll_timeout(),
            self.negotiator.as_ref().and_then(Negotiator::poll_timeout),
            self.tunnels.as_ref().and_then(Tunnels::poll_timeout),
            Some(self.next_observe),
            (self.agent.membership().active() == 0).then_some(self.next_rejoin),
            self.negotiator.as_ref().and(self.keying.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.agent.handle_timeout(now);
        if let Some(t) = self.tunnels.as_mut() {
            if t.poll_timeout().is_some_and(|at| at <= now) {
                t.handle_timeout(now);
            }
        }
        if let Some(n) = self.negotiator.as_mut() {
            if n.poll_timeout().is_some_and(|t| t <= now) {
                n.handle_timeout(now);
            }
        }
        self.drive(now);
    }

    /// The next I/O to carry out, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next news for the owner.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// The membership as this member sees it.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    pub fn epochs(&self) -> &EpochState {
        &self.epochs
    }

    /// Whether `peer` is cut off (its certificate is revoked).
    pub fn is_cut_off(&self, peer: &str) -> bool {
        self.cut_off.contains(peer)
    }

    /// This member's record as advertised now.
    pub fn info(&self) -> &MemberInfo {
        &self.info
    }

    /// How many SAs of each epoch this member holds (with tunnels).
    pub fn sa_epochs(&self) -> Vec<(keys::Epoch, usize)> {
        self.tunnels
            .as_ref()
            .map(Tunnels::epochs)
            .unwrap_or_default()
    }

    fn refuse(&mut self, peer: &str, what: &'static str, kind: &'static str, reason: String) {
        self.events.push_back(NodeEvent::Refused(Refusal {
            peer: peer.to_string(),
            what,
            kind,
            reason,
        }));
    }

    /// Cuts `peer` off: its certificate is revoked. Its connections close,
    /// its SAs and exchanges go, and it is keyed no more.
    fn cut_off(&mut self, peer: &str, cert: &CertId) {
        self.cut_off.insert(peer.to_string());
        self.conns.drop_peer(peer, &mut self.out);
        if let Some(w) = self.wrapped.as_mut() {
            w.forget(peer);
        }
        self.keying.down(peer);
        if let Some(n) = self.negotiator.as_mut() {
            n.forget(peer);
        }
        if let Some(t) = self.tunnels.as_mut() {
            t.member_down(peer);
        }
        self.refuse(
            peer,
            "certificate",
            "revoked",
            format!(
                "its certificate {} is revoked by the mesh CA: cut off",
                cert_hex(cert)
            ),
        );
    }

    /// Cuts off every peer whose certificate is revoked now; records
    /// under those certificates are refused from now on.
    fn cut_off_revoked(&mut self) {
        self.agent
            .membership()
            .infos()
            .revoke_certs(self.epochs.revoked_certs());
        let mut revoked: Vec<(String, CertId)> = self
            .peer_certs
            .iter()
            .filter(|(p, c)| self.epochs.cert_revoked(c) && !self.cut_off.contains(*p))
            .map(|(p, c)| (p.clone(), *c))
            .collect();
        revoked.sort();
        for (peer, cert) in revoked {
            self.cut_off(&peer, &cert);
        }
    }

    /// Advertises this member's record with a new version.
    fn readvertise(&mut self, now: Instant, what: &str) {
        self.info.version += 1;
        if let Err(e) = self.agent.advertise(self.info.clone(), now) {
            tracing::warn!("advertising {what}: {e}");
        }
    }

    /// Takes in what the last input changed: membership news, records,
    /// epochs, keying, and the I/O that follows, in order.
    fn drive(&mut self, now: Instant) {
        let generation = self.agent.membership().me().generation;
        if generation != self.info.generation {
            // Rejoined under a new generation (declared down while alive):
            // its record must vouch for the new identity.
            self.info.generation = generation;
            self.readvertise(now, "a new generation");
        }
        if self.agent.membership().active() == 0 && now >= self.next_rejoin {
            self.next_rejoin = now + REJOIN_EVERY;
            self.out.push_back(Output::Discover);
        }
        for (by, why) in self.agent.membership().infos().take_refused() {
            self.refuse(&by, "record", "forged", why);
        }
        for (by, why) in self.agent.take_refused() {
            self.refuse(&by, "membership", "unauthorized", why);
        }
        for (by, why) in self.agent.take_unvouched() {
            self.refuse(&by, "membership", "unvouched", why);
        }
        let mut changed = false;
        while let Some(e) = self.agent.poll_event() {
            changed = true;
            self.on_membership(&e, now);
            self.events.push_back(NodeEvent::Membership(e));
        }
        // A record taken (a member's placement, prefixes or endpoint) is
        // news for the tunnels and the policy too.
        let record_changes = self.agent.membership().infos().changes();
        if record_changes != self.records_seen {
            self.records_seen = record_changes;
            changed = true;
        }
        if changed || now >= self.next_observe {
            self.observe(now);
        }
        self.key(now);
        while let Some((to, data)) = self.agent.poll_transmit() {
            self.sends.push((to, Payload::Datagram(data)));
        }
        for (to, payload) in std::mem::take(&mut self.sends) {
            if self.cut_off.contains(&to) {
                continue;
            }
            // Looked up only when the send dials.
            let addr = if self.conns.would_dial(&to) {
                self.vouched_addr(&to)
            } else {
                None
            };
            self.conns.send(to, payload, addr, &mut self.out);
        }
    }

    /// Where `peer` may be dialed: where its signed record says it
    /// listens, or where discovery found it; never an address gossip
    /// alone names (simulations, whose records are not signed, dial
    /// SWIM's).
    fn vouched_addr(&self, peer: &str) -> Option<SocketAddr> {
        let infos = self.agent.membership().infos();
        if !infos.signed() {
            return self
                .agent
                .membership()
                .members()
                .find(|(m, _)| m.id == peer)
                .map(|(m, _)| m.addr);
        }
        infos
            .get(peer)
            .and_then(|i| i.signal)
            .or_else(|| self.seeds.get(peer).copied())
    }

    fn on_membership(&mut self, e: &MembershipEvent, now: Instant) {
        match e {
            MembershipEvent::Up(m) | MembershipEvent::Renamed { new: m, .. }
                if self.cut_off.contains(&m.id) => {}
            MembershipEvent::Up(m) => self.keying.up(&m.id, now),
            MembershipEvent::Renamed { old, new } => {
                // A restarted member lost its keys: its old SAs go, and so
                // does any exchange with it under way (it may belong to
                // either incarnation); a fresh one follows.
                if let Some(n) = self.negotiator.as_mut() {
                    n.forget(&new.id);
                }
                if let Some(t) = self.tunnels.as_mut() {
                    t.member_down(&old.id);
                }
                if let Some(addr) = self.vouched_addr(&new.id) {
                    self.conns.restarted(&new.id, addr, &mut self.out);
                }
                self.keying.up(&new.id, now);
            }
            MembershipEvent::Down(m) => {
                self.keying.down(&m.id);
                if !self.cut_off.contains(&m.id) {
                    self.peer_certs.remove(&m.id);
                }
                // Its exchanges under way end first, so each SPI is
                // released by the one that holds it.
                if let Some(n) = self.negotiator.as_mut() {
                    n.forget(&m.id);
                }
                if let Some(t) = self.tunnels.as_mut() {
                    t.member_down(&m.id);
                }
            }
            MembershipEvent::Active | MembershipEvent::Idle => {}
        }
    }

    /// A fresh look at the members: their records to the tunnels, this
    /// member's health advertised if it moved, the mesh's epochs merged,
    /// and the whole to the owner.
    fn observe(&mut self, now: Instant) {
        self.next_observe = now + OBSERVE_EVERY;
        let mut observed = self.agent.observe(now);
        // Members cut off are out of the view (and of the policy's).
        if !self.cut_off.is_empty() {
            observed.retain(|o| !self.cut_off.contains(&o.info.id));
        }
        if let Some(t) = self.tunnels.as_mut() {
            for o in observed.iter().filter(|o| o.state == foca::State::Alive) {
                t.member(&o.info);
            }
            self.events.push_back(NodeEvent::SaEpochs(t.epochs()));
        }
        if now >= self.next_health_ad {
            self.next_health_ad = now + HEALTH_EVERY;
            let health = path_health(&observed);
            if health_moved((self.info.rtt_us, self.info.loss_ppm), health) {
                (self.info.rtt_us, self.info.loss_ppm) = health;
                self.readvertise(now, "health");
            }
        }
        self.merge_epochs(&observed, now);
        if self.info.version != self.own_sent {
            self.own_sent = self.info.version;
            self.events
                .push_back(NodeEvent::OwnRecord(Box::new(self.info.clone())));
        }
        self.events.push_back(NodeEvent::Observed(observed));
    }
}
