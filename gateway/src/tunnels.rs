//! The SAs this gateway holds with each member of the mesh, between the key
//! negotiator and the data plane: a sans-IO state machine. Membership and
//! negotiated keys come in; data-plane commands, SPIs to release and
//! rekey requests go out.
//!
//! Make-before-break: a new inbound SA is installed as soon as it is
//! negotiated, before the peer may send on it; when the outbound side
//! switches, the older inbound SAs of that peer are kept for a grace
//! period (packets in flight, and the peer's own switch) and then retired.
//! A member that goes down loses all its SAs at once.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::dataplane::{InboundCommand, OutboundCommand};
use crate::esp::Direction;
use crate::esp::SaDefaults;
use crate::esp::{KeyMaterial, LifetimeEvent, SaParams};
use crate::keys::Epoch;
use crate::membership::info::MemberInfo;
use crate::prefix::Prefix;

/// How long an inbound SA outlives its replacement.
pub const GRACE: Duration = Duration::from_secs(10);

/// The data-plane slot of each member: the index its routes name. A
/// member keeps its slot for the life of the process, so tables built
/// before and after a change agree.
#[derive(Default, Debug)]
pub struct Slots {
    by_id: HashMap<String, usize>,
    next: usize,
}

pub type SharedSlots = Arc<Mutex<Slots>>;

impl Slots {
    /// Slots numbered from `first` (after the configured peers').
    pub fn starting_at(first: usize) -> SharedSlots {
        Arc::new(Mutex::new(Slots {
            by_id: HashMap::new(),
            next: first,
        }))
    }

    /// The slot of `id`, if it has one.
    pub fn find(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// The slot of `id`, given one if it has none yet.
    pub fn slot(&mut self, id: &str) -> usize {
        if let Some(&s) = self.by_id.get(id) {
            return s;
        }
        let s = self.next;
        self.next += 1;
        self.by_id.insert(id.to_string(), s);
        s
    }
}

/// What the gateway must do.
pub enum Action {
    Outbound(OutboundCommand),
    Inbound(InboundCommand),
    /// An SPI this gateway received on is free again (tell the negotiator).
    Release(u32),
    /// Negotiate new SAs with this member.
    Rekey(String),
}

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Outbound(c) => write!(f, "{c:?}"),
            Action::Inbound(c) => write!(f, "{c:?}"),
            Action::Release(spi) => write!(f, "Release({spi:#010x})"),
            Action::Rekey(p) => write!(f, "Rekey({p})"),
        }
    }
}

struct InboundSa {
    spi: u32,
    epoch: Epoch,
    /// When it is retired, once a newer SA has replaced it.
    retire_at: Option<Instant>,
}

struct Peer {
    slot: usize,
    /// The data plane knows the peer (its inbound side does, at least).
    announced: bool,
    endpoint: Option<SocketAddr>,
    prefixes: Vec<Prefix>,
    /// An outbound SA negotiated before the member's record arrived with
    /// its endpoint: installed once the endpoint is known.
    waiting: Option<SaParams>,
    /// The SA we send on: SPI and epoch.
    outbound: Option<(u32, Epoch)>,
    /// Oldest first.
    inbound: Vec<InboundSa>,
}

/// The SAs of every member, as the data plane should hold them.
pub struct Tunnels {
    sa: SaDefaults,
    grace: Duration,
    slots: SharedSlots,
    peers: HashMap<String, Peer>,
    /// The underlay (endpoint label) the policy chose for each peer.
    underlays: HashMap<String, String>,
    actions: VecDeque<Action>,
    /// The underlay probes' keys, one per SA held (`underlay::keys`).
    probe_keys: Option<crate::underlay::SharedProbeKeys>,
}

/// The endpoint ESP goes to: the one the policy chose (`underlay`, its
/// label), else the one labelled `internet`, else the first.
fn esp_endpoint(info: &MemberInfo, underlay: Option<&String>) -> Option<SocketAddr> {
    let labelled = |label: &str| info.endpoints.iter().find(|(l, _)| l == label);
    underlay
        .and_then(|u| labelled(u))
        .or_else(|| labelled("internet"))
        .or(info.endpoints.first())
        .map(|(_, a)| *a)
}

impl Tunnels {
    pub fn new(sa: SaDefaults, grace: Duration, slots: SharedSlots) -> Tunnels {
        Tunnels {
            sa,
            grace,
            slots,
            peers: HashMap::new(),
            underlays: HashMap::new(),
            actions: VecDeque::new(),
            probe_keys: None,
        }
    }

    /// Keeps a probe key for each SA held in `keys` from now on.
    pub fn share_probe_keys(&mut self, keys: crate::underlay::SharedProbeKeys) {
        self.probe_keys = Some(keys);
    }

    fn add_probe_key(&self, peer: &str, spi: u32, outbound: bool, key: &KeyMaterial) {
        let Some(keys) = &self.probe_keys else {
            return;
        };
        if let (Some(k), Ok(mut keys)) = (crate::underlay::keys::ProbeKey::derive(key), keys.lock())
        {
            keys.insert(peer, spi, outbound, k);
        }
    }

    /// Drops the probe keys of SAs no longer held.
    fn sync_probe_keys(&self) {
        let Some(keys) = &self.probe_keys else {
            return;
        };
        let Ok(mut keys) = keys.lock() else {
            return;
        };
        keys.retain(|peer, spi, outbound| {
            self.peers.get(peer).is_some_and(|p| {
                if outbound {
                    p.outbound.is_some_and(|(s, _)| s == spi)
                } else {
                    p.inbound.iter().any(|s| s.spi == spi)
                }
            })
        });
    }

    /// The underlay the policy chose for each peer (an endpoint label);
    /// taken at each member's next record or observation. Moving a peer
    /// to another of its endpoints keeps its SAs: only where packets go
    /// changes, so nothing in flight is lost.
    pub fn set_underlays(&mut self, underlays: HashMap<String, String>) {
        self.underlays = underlays;
    }

    fn params(&self, spi: u32, key: KeyMaterial) -> SaParams {
        let mut lifetime = self.sa.negotiated_lifetime();
        // Up to 10% early, at random: the two ends of a pair (and the
        // pairs of a mesh started together) do not all rekey at once.
        if let Some(soft) = lifetime.soft.time {
            lifetime.soft.time = Some(soft.mul_f64(1.0 - rand::random::<f64>() * 0.1));
        }
        SaParams {
            spi,
            suite: self.sa.suite,
            key,
            esn: self.sa.esn,
            backend: self.sa.backend,
            lifetime,
            replay_window: self.sa.replay_window,
        }
    }

    fn peer(&mut self, id: &str) -> &mut Peer {
        let slots = &self.slots;
        self.peers.entry(id.to_string()).or_insert_with(|| Peer {
            slot: slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .slot(id),
            announced: false,
            endpoint: None,
            prefixes: Vec::new(),
            waiting: None,
            outbound: None,
            inbound: Vec::new(),
        })
    }

    /// A member's record, new or changed: where to send and what it may
    /// send from.
    pub fn member(&mut self, info: &MemberInfo) {
        let endpoint = esp_endpoint(info, self.underlays.get(&info.id));
        let prefixes: Vec<Prefix> = info
            .prefixes
            .iter()
            .filter_map(|(a, l)| Prefix::new(*a, *l))
            .collect();
        let peer = self.peer(&info.id);
        let slot = peer.slot;
        let mut out = Vec::new();
        if !peer.announced || peer.prefixes != prefixes {
            peer.prefixes = prefixes.clone();
            out.push(Action::Inbound(InboundCommand::Peer {
                slot,
                id: info.id.clone(),
                prefixes,
            }));
        }
        peer.announced = true;
        if peer.endpoint != endpoint {
            peer.endpoint = endpoint;
            if let Some(endpoint) = endpoint {
                out.push(Action::Outbound(OutboundCommand::Peer {
                    slot,
                    id: info.id.clone(),
                    endpoint,
                }));
                if let Some(params) = peer.waiting.take() {
                    out.push(Action::Outbound(OutboundCommand::Sa { slot, params }));
                }
            }
        }
        self.actions.extend(out);
    }

    /// Makes sure the inbound side knows `peer` before an SA of it is
    /// installed (its record may not have arrived yet).
    fn announce(&mut self, peer: &str) -> usize {
        let p = self.peer(peer);
        let slot = p.slot;
        if !p.announced {
            p.announced = true;
            self.actions
                .push_back(Action::Inbound(InboundCommand::Peer {
                    slot,
                    id: peer.to_string(),
                    prefixes: Vec::new(),
                }));
        }
        slot
    }

    /// The member is down: every SA with it goes.
    pub fn member_down(&mut self, id: &str) {
        let Some(peer) = self.peers.remove(id) else {
            return;
        };
        self.actions
            .push_back(Action::Outbound(OutboundCommand::Remove {
                slot: peer.slot,
            }));
        self.actions
            .push_back(Action::Inbound(InboundCommand::Remove { slot: peer.slot }));
        for sa in peer.inbound {
            self.actions.push_back(Action::Release(sa.spi));
        }
    }

    /// A negotiated SA to receive on.
    pub fn install_inbound(&mut self, peer: &str, spi: u32, key: KeyMaterial, epoch: Epoch) {
        self.add_probe_key(peer, spi, false, &key);
        let params = self.params(spi, key);
        let slot = self.announce(peer);
        self.peer(peer).inbound.push(InboundSa {
            spi,
            epoch,
            retire_at: None,
        });
        self.actions
            .push_back(Action::Inbound(InboundCommand::Sa { slot, params }));
    }

    /// A negotiated SA to send on from now on; the older inbound SAs of
    /// the peer are retired after the grace period.
    pub fn install_outbound(
        &mut self,
        peer: &str,
        spi: u32,
        key: KeyMaterial,
        epoch: Epoch,
        now: Instant,
    ) {
        self.add_probe_key(peer, spi, true, &key);
        let params = self.params(spi, key);
        let grace = self.grace;
        let p = self.peer(peer);
        p.outbound = Some((spi, epoch));
        if let Some((_, older)) = p.inbound.split_last_mut() {
            for sa in older.iter_mut().filter(|s| s.retire_at.is_none()) {
                sa.retire_at = Some(now + grace);
            }
        }
        let slot = p.slot;
        if p.endpoint.is_some() {
            self.actions
                .push_back(Action::Outbound(OutboundCommand::Sa { slot, params }));
        } else {
            p.waiting = Some(params);
        }
    }

    /// An inbound SA of an exchange that did not complete.
    pub fn remove_inbound(&mut self, peer: &str, spi: u32) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.inbound.retain(|s| s.spi != spi);
        }
        self.actions
            .push_back(Action::Inbound(InboundCommand::RemoveSa { spi }));
        self.actions.push_back(Action::Release(spi));
    }

    /// An SA crossed a lifetime limit: if it is one in use (the outbound,
    /// or the newest inbound), its peer is rekeyed.
    pub fn lifetime(&mut self, slot: usize, direction: Direction, event: LifetimeEvent) {
        let spi = event.spi();
        let Some((id, p)) = self.peers.iter().find(|(_, p)| p.slot == slot) else {
            return;
        };
        let current = match direction {
            Direction::Out => p.outbound.is_some_and(|(s, _)| s == spi),
            Direction::In => p.inbound.last().is_some_and(|s| s.spi == spi),
        };
        if current {
            self.actions.push_back(Action::Rekey(id.clone()));
        }
    }

    /// Every SA derived from `epoch` goes at once (its key is revoked),
    /// and each peer that had one is rekeyed.
    pub fn revoke(&mut self, epoch: Epoch) {
        self.revoke_where(|e| e == epoch);
    }

    /// Every SA of an epoch below `floor` goes at once.
    pub fn revoke_below(&mut self, floor: Epoch) {
        self.revoke_where(|e| e < floor);
    }

    fn revoke_where(&mut self, revoked: impl Fn(Epoch) -> bool) {
        let mut out = Vec::new();
        let mut ids: Vec<&String> = self.peers.keys().collect();
        ids.sort();
        let ids: Vec<String> = ids.into_iter().cloned().collect();
        for id in ids {
            let Some(p) = self.peers.get_mut(&id) else {
                continue;
            };
            let mut hit = false;
            if p.outbound.is_some_and(|(_, e)| revoked(e)) {
                p.outbound = None;
                p.waiting = None;
                out.push(Action::Outbound(OutboundCommand::ClearSa { slot: p.slot }));
                hit = true;
            }
            for sa in p.inbound.iter().filter(|s| revoked(s.epoch)) {
                out.push(Action::Inbound(InboundCommand::RemoveSa { spi: sa.spi }));
                out.push(Action::Release(sa.spi));
                hit = true;
            }
            p.inbound.retain(|s| !revoked(s.epoch));
            if hit {
                out.push(Action::Rekey(id));
            }
        }
        self.actions.extend(out);
    }

    /// The mesh moved to epoch `current`: every peer whose SA is of another
    /// epoch is rekeyed (make-before-break, as for a lifetime).
    pub fn rekey_stale(&mut self, current: Epoch) {
        let mut stale: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.outbound.is_some_and(|(_, e)| e != current))
            .map(|(id, _)| id.clone())
            .collect();
        stale.sort();
        self.actions.extend(stale.into_iter().map(Action::Rekey));
    }

    /// Rekeys asked for and not yet taken by [`poll_action`](Self::poll_action).
    pub fn pending_rekeys(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| matches!(a, Action::Rekey(_)))
            .count()
    }

    /// Whether an SA to send to `peer` is in place.
    pub fn keyed(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(|p| p.outbound.is_some())
    }

    /// The epochs of the SAs in use, oldest first, with how many use each.
    pub fn epochs(&self) -> Vec<(Epoch, usize)> {
        let mut m = std::collections::BTreeMap::new();
        for p in self.peers.values() {
            for e in p
                .outbound
                .map(|(_, e)| e)
                .into_iter()
                .chain(p.inbound.iter().map(|s| s.epoch))
            {
                *m.entry(e).or_insert(0) += 1;
            }
        }
        m.into_iter().collect()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.peers
            .values()
            .flat_map(|p| p.inbound.iter().filter_map(|s| s.retire_at))
            .min()
    }

    /// Retires the inbound SAs whose grace period is over.
    pub fn handle_timeout(&mut self, now: Instant) {
        for p in self.peers.values_mut() {
            for sa in p
                .inbound
                .iter()
                .filter(|s| s.retire_at.is_some_and(|t| t <= now))
            {
                self.actions
                    .push_back(Action::Inbound(InboundCommand::RemoveSa { spi: sa.spi }));
                self.actions.push_back(Action::Release(sa.spi));
            }
            p.inbound.retain(|s| s.retire_at.is_none_or(|t| t > now));
        }
    }

    /// The next thing to do, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        let next = self.actions.pop_front();
        if next.is_none() {
            // Every change to the SAs held has been drained by now.
            self.sync_probe_keys();
        }
        next
    }
}

#[cfg(test)]
pub(crate) mod tests;
