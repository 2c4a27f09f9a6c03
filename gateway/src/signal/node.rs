//! The membership agent on the real channel: one task owns the agent, the
//! QUIC endpoint and its connections; datagrams carry membership messages
//! between members, each attributed to the member id its connection's
//! certificate proves. The agent's timers and ticks run on tokio's clock.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::discovery::Discovery;
use super::messages::{self, Kind};
use super::records::CertRecords;
use super::transport::{accept, connect, endpoint, Credentials, PeerCert, TransportError};
use crate::dataplane::{DataplaneControl, SaNotice};
use crate::esp::CipherSuite;
use crate::keys::rotation::{EpochChange, EpochState};
use crate::keys::{self, KeyProvider, Negotiator};
use crate::membership::info::{Infos, MemberInfo};
use crate::membership::liveness::LivenessSettings;
use crate::membership::{Agent, MemberId, MembershipEvent, Settings};
use crate::tunnels::{Action, Tunnels};

pub struct NodeConfig {
    pub creds: Arc<Credentials>,
    pub listen: SocketAddr,
    /// Where members to join through come from.
    pub discovery: Arc<dyn Discovery>,
    pub info: MemberInfo,
    pub settings: Settings,
    pub liveness: Option<LivenessSettings>,
    /// Negotiate SAs with every member that comes up: the key provider,
    /// the epoch, the cipher suite. `None`: membership only.
    pub keys: Option<(Arc<dyn KeyProvider>, keys::Epoch, CipherSuite)>,
    /// Put the negotiated SAs into a data plane. `None`: hand the keys to
    /// the owner as [`NodeEvent::Keys`].
    pub tunnels: Option<TunnelLink>,
}

/// The data plane a member keys: the SA bookkeeping, the packet threads'
/// command channels, and their lifetime notices (which start rekeys).
pub struct TunnelLink {
    pub tunnels: Tunnels,
    pub dataplane: DataplaneControl,
    pub notices: mpsc::UnboundedReceiver<SaNotice>,
}

/// What a change of epochs touches.
struct EpochCtx<'a> {
    epochs: &'a EpochState,
    negotiator: Option<&'a mut Negotiator>,
    tunnels: Option<&'a mut Tunnels>,
    agent: &'a mut Agent,
    info: &'a mut MemberInfo,
    events: &'a mpsc::UnboundedSender<NodeEvent>,
}

impl EpochCtx<'_> {
    /// Puts a change into force: the negotiator's epoch and revocations,
    /// the SAs of revoked epochs torn down, every SA of an older epoch
    /// rekeyed, and this member's record advertising the new state (so the
    /// change spreads even if the member it started on goes away).
    /// Returns how many peers are being rekeyed.
    fn apply(&mut self, change: &EpochChange, now: Instant) -> usize {
        let current = self.epochs.current();
        if let Some(n) = self.negotiator.as_deref_mut() {
            n.set_epoch(current);
            for e in &change.revoked {
                n.revoke(*e);
            }
        }
        let mut rekeying = 0;
        if let Some(t) = self.tunnels.as_deref_mut() {
            for e in &change.revoked {
                t.revoke(*e);
            }
            t.rekey_stale(current);
            rekeying = t.pending_rekeys();
        }
        self.info.epoch = current;
        self.info.revoked = self.epochs.revoked();
        self.info.version += 1;
        if let Err(e) = self.agent.advertise(self.info.clone(), now) {
            tracing::warn!("advertising the new epochs: {e}");
        }
        let _ = self.events.send(NodeEvent::Epochs {
            current,
            revoked: self.epochs.revoked(),
        });
        rekeying
    }
}

/// Carries out an operator's epoch command.
fn epoch_command(
    result: Result<EpochChange, keys::rotation::EpochError>,
    mut ctx: EpochCtx<'_>,
) -> Result<EpochReport, String> {
    let change = result.map_err(|e| e.to_string())?;
    let rekeying = ctx.apply(&change, Instant::now());
    tracing::info!(current = ctx.epochs.current(), revoked = ?change.revoked, rekeying, "key epochs changed by the operator");
    Ok(EpochReport {
        current: ctx.epochs.current(),
        revoked: ctx.epochs.revoked(),
        rekeying,
    })
}

/// When to start the first exchange with a member that just came up.
fn first_attempt(me: &str, peer: &str) -> std::time::Duration {
    if me < peer {
        std::time::Duration::ZERO
    } else {
        HIGHER_ID_WAITS
    }
}

/// Hands a negotiated SA to the tunnels; returns what the owner is told
/// (never the key).
fn install(t: &mut Tunnels, event: keys::Event, now: Instant) -> NodeEvent {
    match event {
        keys::Event::InstallInbound {
            peer,
            spi,
            key,
            epoch,
        } => {
            t.install_inbound(&peer, spi, key, epoch);
            NodeEvent::Installed {
                peer,
                spi,
                epoch,
                outbound: false,
            }
        }
        keys::Event::InstallOutbound {
            peer,
            spi,
            key,
            epoch,
        } => {
            t.install_outbound(&peer, spi, key, epoch, now);
            NodeEvent::Installed {
                peer,
                spi,
                epoch,
                outbound: true,
            }
        }
        keys::Event::RemoveInbound { peer, spi } => {
            t.remove_inbound(&peer, spi);
            NodeEvent::Keys(keys::Event::RemoveInbound { peer, spi })
        }
        other => NodeEvent::Keys(other),
    }
}

/// What a member hands its owner.
#[derive(Debug)]
pub enum NodeEvent {
    Membership(MembershipEvent),
    /// An SA to install or remove (the negotiator's events other than sends).
    Keys(keys::Event),
    /// Every other member as seen now: after membership changes, and each
    /// [`OBSERVE_EVERY`] for the health measured.
    Observed(Vec<crate::membership::Observed>),
    /// Something a peer sent, or a connection, was refused.
    Refused(Refusal),
    /// The epoch new SAs use, and those revoked, after a change.
    Epochs {
        current: keys::Epoch,
        revoked: Vec<keys::Epoch>,
    },
    /// How many SAs in the data plane are of each epoch.
    SaEpochs(Vec<(keys::Epoch, usize)>),
    /// This member's own record, as advertised now (after a change).
    OwnRecord(Box<MemberInfo>),
    /// A negotiated SA is in the data plane (with a [`TunnelLink`]).
    Installed {
        peer: String,
        spi: u32,
        epoch: keys::Epoch,
        outbound: bool,
    },
}

/// A refusal, for the log and the counters; never carries key bytes.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Who, as far as known: the authenticated member id, or an address.
    pub peer: String,
    /// `connection`, `message`, `membership` or `key_exchange`.
    pub what: &'static str,
    /// The counter's reason label.
    pub kind: &'static str,
    pub reason: String,
}

/// What the owner asks of a member.
#[derive(Debug)]
pub enum NodeCommand {
    /// The members the policy connects this one to: SAs are negotiated
    /// with these (and with whoever starts an exchange with us).
    Peers(std::collections::HashSet<String>),
    /// This member's load (permille) or policy version changed: its record
    /// is advertised anew.
    Update {
        load_permille: Option<u32>,
        policy_version: Option<u32>,
    },
    /// `keys rotate`: the mesh moves to the next epoch.
    Rotate(tokio::sync::oneshot::Sender<Result<EpochReport, String>>),
    /// `keys revoke`: every SA of this epoch goes, mesh-wide.
    Revoke(
        keys::Epoch,
        tokio::sync::oneshot::Sender<Result<EpochReport, String>>,
    ),
}

/// The epochs after an operator's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochReport {
    pub current: keys::Epoch,
    pub revoked: Vec<keys::Epoch>,
    /// Peers being rekeyed onto the current epoch.
    pub rekeying: usize,
}

/// How often the health of the paths to the members is reported.
pub const OBSERVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// When the first exchange with a member that just came up is started:
/// the lower id of the pair at once, the higher id only if none has
/// completed by then (so the two rarely collide, and neither depends on
/// the other alone). See [`first_attempt`].
const HIGHER_ID_WAITS: std::time::Duration = std::time::Duration::from_secs(2);
/// How long one signalling message may take to arrive whole.
const MESSAGE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// How often a member looks whether the health of its paths moved enough
/// to advertise it anew.
const HEALTH_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The median smoothed round-trip time (µs) and the mean inbound loss
/// (ppm) of the paths to the alive members.
pub(super) fn path_health(observed: &[crate::membership::Observed]) -> (u32, u32) {
    let alive: Vec<_> = observed
        .iter()
        .filter(|o| o.state == foca::State::Alive)
        .collect();
    let mut rtts: Vec<u32> = alive
        .iter()
        .filter_map(|o| o.rtt)
        .map(|r| u32::try_from(r.as_micros()).unwrap_or(u32::MAX))
        .collect();
    rtts.sort_unstable();
    let rtt = rtts.get(rtts.len() / 2).copied().unwrap_or(0);
    let loss = if alive.is_empty() {
        0.0
    } else {
        alive.iter().map(|o| o.loss.clamp(0.0, 1.0)).sum::<f64>() / alive.len() as f64
    };
    (rtt, (loss * 1e6) as u32)
}

/// Whether health moved enough to be worth a new record: the round trip
/// by a fifth, or the loss by a percentage point.
pub(super) fn health_moved((rtt0, loss0): (u32, u32), (rtt1, loss1): (u32, u32)) -> bool {
    rtt0.abs_diff(rtt1) > rtt0.max(rtt1) / 5 || loss0.abs_diff(loss1) >= 10_000
}

/// Between announcements to the seeds while no other member is known alive.
const REJOIN_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// Between attempts with a member that is up but not keyed.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// What waits for a peer's connection.
enum Outgoing {
    Datagram(Bytes),
    KeyExchange(Vec<u8>),
}

fn send_out(conn: &quinn::Connection, out: Outgoing) {
    match out {
        Outgoing::Datagram(d) => {
            let _ = conn.send_datagram(d);
        }
        Outgoing::KeyExchange(m) => {
            let conn = conn.clone();
            tokio::spawn(async move {
                if let Err(e) = messages::send(&conn, Kind::KeyExchange, &m).await {
                    tracing::debug!("key exchange message: {e}");
                }
            });
        }
    }
}

/// Closes the endpoint when the member stops (or its task is dropped): its
/// connections close, and the tasks reading them and accepting new ones end.
struct CloseOnDrop(quinn::Endpoint);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(0u32.into(), b"member stopped");
    }
}

/// Datagrams kept for a peer while its connection is being set up.
const QUEUED_PER_PEER: usize = 64;

enum Input {
    Datagram(String, Bytes),
    KeyExchange(String, Vec<u8>),
    Connected {
        peer: String,
        conn: quinn::Connection,
        dialer: String,
        cert: PeerCert,
    },
    /// A connection of this peer closed (its stable id).
    Closed(String, usize),
    BadMessage(String, messages::MessageError),
    /// What discovery found.
    Seeds(&'static str, Result<Vec<super::discovery::Seed>, String>),
    Refused(TransportError),
}

/// Runs the member until the task is dropped; membership events go to
/// `events`. Returns the address it listens on through `bound`.
pub async fn run(
    cfg: NodeConfig,
    events: mpsc::UnboundedSender<NodeEvent>,
    mut commands: mpsc::UnboundedReceiver<NodeCommand>,
    bound: tokio::sync::oneshot::Sender<SocketAddr>,
) -> Result<(), TransportError> {
    let ep = endpoint(&cfg.creds, cfg.listen)?;
    let _close = CloseOnDrop(ep.clone());
    let me_id = cfg.creds.claims.id.clone();
    let addr = ep.local_addr().map_err(|e| TransportError::Bind {
        addr: cfg.listen,
        reason: e.to_string(),
    })?;
    let _ = bound.send(addr);
    let me = MemberId {
        id: me_id.clone(),
        addr,
        generation: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    // Records are signed with our key and checked against the members'
    // certificates, learnt from the connections.
    let records = Arc::new(CertRecords::new(&cfg.creds)?);
    let mut agent = Agent::with_infos(
        me,
        cfg.settings,
        cfg.liveness,
        rand::random(),
        Infos::with_authority(records.clone()),
    );
    let mut negotiator = cfg
        .keys
        .as_ref()
        .map(|(provider, epoch, suite)| Negotiator::new(&me_id, *suite, provider.clone(), *epoch));
    let (tx, mut rx) = mpsc::unbounded_channel::<Input>();

    // Incoming connections.
    {
        let (ep, creds, tx) = (ep.clone(), cfg.creds.clone(), tx.clone());
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                let (creds, tx) = (creds.clone(), tx.clone());
                tokio::spawn(async move {
                    match accept(incoming, &creds).await {
                        Ok((conn, pc)) => {
                            let _ = tx.send(Input::Connected {
                                dialer: pc.claims.id.clone(),
                                peer: pc.claims.id.clone(),
                                conn,
                                cert: pc,
                            });
                        }
                        Err(e) => {
                            let _ = tx.send(Input::Refused(e));
                        }
                    }
                });
            }
        });
    }
    let dial = |peer: String, at: SocketAddr, tx: mpsc::UnboundedSender<Input>| {
        let (ep, creds, me) = (ep.clone(), cfg.creds.clone(), me_id.clone());
        tokio::spawn(async move {
            match connect(&ep, &creds, &peer, at).await {
                Ok((conn, pc)) => {
                    let _ = tx.send(Input::Connected {
                        peer,
                        conn,
                        dialer: me,
                        cert: pc,
                    });
                }
                Err(e) => {
                    let _ = tx.send(Input::Refused(e));
                }
            }
        });
    };
    let discover = |tx: mpsc::UnboundedSender<Input>| {
        let discovery = cfg.discovery.clone();
        tokio::spawn(async move {
            let found = discovery.discover().await;
            let _ = tx.send(Input::Seeds(discovery.name(), found));
        });
    };
    discover(tx.clone());
    let _ = agent.advertise(cfg.info.clone(), Instant::now());

    // Each peer's open connections and who dialed each, newest last: sends
    // go on the newest; if it closes, the one before takes over.
    let mut conns: HashMap<String, Vec<(quinn::Connection, String)>> = HashMap::new();
    // Peers being dialed, and what waits to be sent to them (bounded: SWIM
    // tolerates loss, and a peer that never answers must not grow it).
    let mut dialing: HashMap<String, Vec<Outgoing>> = HashMap::new();
    let mut timers: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut pending = HashMap::new();
    let mut seq = 0u64;
    // Members that are up and not yet keyed, and when to try next.
    let mut unkeyed: HashMap<String, Instant> = HashMap::new();
    // The members the policy connects this one to (`None`: every member,
    // until a policy says otherwise). Exchanges others start are answered
    // whatever this says: their policy wants the pair.
    let mut wanted: Option<std::collections::HashSet<String>> = None;
    let wants = |w: &Option<std::collections::HashSet<String>>, id: &str| {
        w.as_ref().is_none_or(|w| w.contains(id))
    };
    let mut next_observe = Instant::now();
    let mut records_seen = 0;
    let mut own_sent = 0;
    let mut next_health_ad = Instant::now() + HEALTH_EVERY;
    // While this member knows no other alive (at start, or cut off by a
    // partition), it announces itself to the seeds again at this pace.
    let mut next_rejoin = Instant::now() + REJOIN_EVERY;
    let mut commands_open = true;
    let mut info = cfg.info.clone();
    let mut epochs = EpochState::new(cfg.keys.as_ref().map_or(info.epoch, |(_, epoch, _)| *epoch));
    let (mut tunnels, mut notices) = match cfg.tunnels {
        Some(l) => (Some((l.tunnels, l.dataplane)), Some(l.notices)),
        None => (None, None),
    };
    loop {
        // Carry out what the agent asked for.
        let now = Instant::now();
        while let Some((after, timer)) = agent.poll_timer() {
            seq += 1;
            timers.push(Reverse((now + after, seq)));
            pending.insert(seq, timer);
        }
        if agent.membership().active() == 0 && now >= next_rejoin {
            next_rejoin = now + REJOIN_EVERY;
            discover(tx.clone());
        }
        for (by, why) in agent.membership().infos().take_refused() {
            let _ = events.send(NodeEvent::Refused(Refusal {
                peer: by,
                what: "record",
                kind: "forged",
                reason: why,
            }));
        }
        let mut out: Vec<(String, Outgoing)> = Vec::new();
        let mut changed = false;
        while let Some(e) = agent.poll_event() {
            changed = true;
            match &e {
                MembershipEvent::Up(m) if wants(&wanted, &m.id) => {
                    unkeyed.insert(m.id.clone(), now + first_attempt(&me_id, &m.id));
                }
                MembershipEvent::Renamed { old, new } => {
                    // A restarted member lost its keys: its old SAs go, and
                    // so does any exchange with it under way (it may belong
                    // to either incarnation); a fresh one follows.
                    if let Some(n) = negotiator.as_mut() {
                        n.forget(&new.id);
                    }
                    if let Some((t, _)) = tunnels.as_mut() {
                        t.member_down(&old.id);
                    }
                    if wants(&wanted, &new.id) {
                        unkeyed.insert(new.id.clone(), now + first_attempt(&me_id, &new.id));
                    }
                }
                MembershipEvent::Down(m) => {
                    unkeyed.remove(&m.id);
                    // Its exchanges under way end first, so each SPI is
                    // released by the one that holds it.
                    if let Some(n) = negotiator.as_mut() {
                        n.forget(&m.id);
                    }
                    if let Some((t, _)) = tunnels.as_mut() {
                        t.member_down(&m.id);
                    }
                }
                _ => {}
            }
            let _ = events.send(NodeEvent::Membership(e));
        }
        // A record taken (a member's placement, prefixes or endpoint) is
        // news for the tunnels and the policy too.
        let record_changes = agent.membership().infos().changes();
        if record_changes != records_seen {
            records_seen = record_changes;
            changed = true;
        }
        if changed || now >= next_observe {
            next_observe = now + OBSERVE_EVERY;
            let observed = agent.observe(now);
            if let Some((t, _)) = tunnels.as_mut() {
                for o in observed.iter().filter(|o| o.state == foca::State::Alive) {
                    t.member(&o.info);
                }
                let _ = events.send(NodeEvent::SaEpochs(t.epochs()));
            }
            if now >= next_health_ad {
                next_health_ad = now + HEALTH_EVERY;
                let (rtt_us, loss_ppm) = path_health(&observed);
                if health_moved((info.rtt_us, info.loss_ppm), (rtt_us, loss_ppm)) {
                    (info.rtt_us, info.loss_ppm) = (rtt_us, loss_ppm);
                    info.version += 1;
                    if let Err(e) = agent.advertise(info.clone(), now) {
                        tracing::warn!("advertising health: {e}");
                    }
                }
            }
            let mut change = keys::rotation::EpochChange::default();
            for o in observed.iter().filter(|o| o.state != foca::State::Down) {
                let c = epochs.merge(o.info.epoch, &o.info.revoked);
                change.current = c.current.or(change.current);
                change.revoked.extend(c.revoked);
            }
            if !change.is_empty() {
                tracing::info!(current = epochs.current(), revoked = ?change.revoked, "key epochs changed in the mesh");
                let mut ctx = EpochCtx {
                    epochs: &epochs,
                    negotiator: negotiator.as_mut(),
                    tunnels: tunnels.as_mut().map(|(t, _)| t),
                    agent: &mut agent,
                    info: &mut info,
                    events: &events,
                };
                ctx.apply(&change, now);
            }
            if info.version != own_sent {
                own_sent = info.version;
                let _ = events.send(NodeEvent::OwnRecord(Box::new(info.clone())));
            }
            let _ = events.send(NodeEvent::Observed(observed));
        }
        if let Some(n) = negotiator.as_mut() {
            for (peer, at) in unkeyed.iter_mut() {
                if *at <= now {
                    *at = now + RETRY_EVERY;
                    if let Err(err) = n.initiate(peer, now) {
                        tracing::warn!("no SA with {peer}: {err}");
                    }
                }
            }
            // Until quiet: the negotiator's events become SAs in the data
            // plane *before* any message goes out (below), so a peer told
            // to use an SA finds it installed; the tunnels' own actions may
            // in turn start exchanges.
            loop {
                let mut busy = false;
                while let Some(e) = n.poll_event() {
                    busy = true;
                    match e {
                        keys::Event::Send { peer, message } => {
                            out.push((peer, Outgoing::KeyExchange(message)))
                        }
                        other => {
                            match &other {
                                keys::Event::InstallOutbound { peer, .. } => {
                                    unkeyed.remove(peer);
                                }
                                keys::Event::Failed { peer, .. } => {
                                    // Try again while the member is up.
                                    let up = agent
                                        .membership()
                                        .members()
                                        .any(|(m, s)| m.id == *peer && s == foca::State::Alive);
                                    // (A pair we hold SAs with is kept
                                    // keyed even if only the peer wants it.)
                                    let keyed =
                                        tunnels.as_ref().is_some_and(|(t, _)| t.keyed(peer));
                                    if up && (wants(&wanted, peer) || keyed) {
                                        unkeyed.entry(peer.clone()).or_insert(now + RETRY_EVERY);
                                    }
                                }
                                _ => {}
                            }
                            let event = match tunnels.as_mut() {
                                Some((t, _)) => install(t, other, now),
                                None => NodeEvent::Keys(other),
                            };
                            let _ = events.send(event);
                        }
                    }
                }
                if let Some((t, dataplane)) = tunnels.as_mut() {
                    while let Some(a) = t.poll_action() {
                        busy = true;
                        match a {
                            Action::Outbound(c) => {
                                let _ = dataplane.outbound.send(c);
                            }
                            Action::Inbound(c) => {
                                let _ = dataplane.inbound.send(c);
                            }
                            Action::Release(spi) => n.release_spi(spi),
                            Action::Rekey(peer) if wants(&wanted, &peer) => {
                                tracing::debug!(peer, "rekeying with {peer}");
                                if let Err(err) = n.initiate(&peer, now) {
                                    tracing::warn!("cannot rekey with {peer}: {err}");
                                }
                            }
                            Action::Rekey(peer) => {
                                // Its SAs live out their lifetime unrenewed
                                // (unless the peer's policy still wants the
                                // pair and rekeys).
                                tracing::debug!(
                                    peer,
                                    "not rekeying with {peer}: the policy no longer connects it"
                                );
                            }
                        }
                    }
                }
                if !busy {
                    break;
                }
            }
        }
        while let Some((to, data)) = agent.poll_transmit() {
            out.push((to, Outgoing::Datagram(Bytes::from(data))));
        }
        for (to, o) in out {
            if let Some((conn, _)) = conns.get(&to).and_then(|v| v.last()) {
                send_out(conn, o);
            } else if let Some(queue) = dialing.get_mut(&to) {
                if queue.len() < QUEUED_PER_PEER {
                    queue.push(o);
                }
            } else if let Some(a) = agent
                .membership()
                .members()
                .find(|(m, _)| m.id == to)
                .map(|(m, _)| m.addr)
            {
                dialing.insert(to.clone(), vec![o]);
                dial(to, a, tx.clone());
            }
        }
        let next_timer = timers.peek().map(|Reverse((t, _))| *t);
        let wake = [
            next_timer,
            agent.next_tick(),
            negotiator.as_ref().and_then(Negotiator::poll_timeout),
            Some(next_observe),
            (agent.membership().active() == 0).then_some(next_rejoin),
            negotiator
                .as_ref()
                .and_then(|_| unkeyed.values().min().copied()),
            tunnels.as_ref().and_then(|(t, _)| t.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min();
        let sleep = async {
            match wake {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let refuse = |peer: &str, what, kind, reason: String| {
            let _ = events.send(NodeEvent::Refused(Refusal {
                peer: peer.to_string(),
                what,
                kind,
                reason,
            }));
        };
        let notice = async {
            match notices.as_mut() {
                Some(n) => n.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(SaNotice::Lifetime { slot, direction, event }) = notice => {
                if let Some((t, _)) = tunnels.as_mut() {
                    t.lifetime(slot, direction, event);
                }
            }
            command = commands.recv(), if commands_open => match command {
                Some(NodeCommand::Peers(ids)) => {
                    let now = Instant::now();
                    unkeyed.retain(|id, _| ids.contains(id));
                    for id in &ids {
                        let alive = agent
                            .membership()
                            .members()
                            .any(|(m, s)| m.id == *id && s == foca::State::Alive);
                        let keyed = tunnels.as_ref().is_some_and(|(t, _)| t.keyed(id));
                        if alive && !keyed {
                            unkeyed
                                .entry(id.clone())
                                .or_insert(now + first_attempt(&me_id, id));
                        }
                    }
                    wanted = Some(ids);
                }
                Some(NodeCommand::Update { load_permille, policy_version }) => {
                    let before = (info.load_permille, info.policy_version);
                    info.load_permille = load_permille.unwrap_or(info.load_permille);
                    info.policy_version = policy_version.unwrap_or(info.policy_version);
                    if (info.load_permille, info.policy_version) != before {
                        info.version += 1;
                        if let Err(e) = agent.advertise(info.clone(), Instant::now()) {
                            tracing::warn!("{e}");
                        }
                    }
                }
                Some(c @ (NodeCommand::Rotate(_) | NodeCommand::Revoke(..))) => {
                    let (result, reply) = match c {
                        NodeCommand::Revoke(epoch, reply) => (epochs.revoke(epoch), reply),
                        NodeCommand::Rotate(reply) => (epochs.rotate(), reply),
                        _ => continue, // (the pattern above admits no other)
                    };
                    let _ = reply.send(epoch_command(result, EpochCtx {
                        epochs: &epochs,
                        negotiator: negotiator.as_mut(),
                        tunnels: tunnels.as_mut().map(|(t, _)| t),
                        agent: &mut agent,
                        info: &mut info,
                        events: &events,
                    }));
                }
                None => commands_open = false,
            },
            input = rx.recv() => match input {
                Some(Input::KeyExchange(from, body)) => {
                    if let Some(n) = negotiator.as_mut() {
                        if let Err(e) = n.handle(&from, &body, Instant::now()) {
                            refuse(&from, "key_exchange", e.kind(), e.to_string());
                        }
                    }
                }
                Some(Input::Datagram(from, data)) => {
                    if let Err(e) = agent.handle(&from, &data, Instant::now()) {
                        refuse(&from, "membership", "malformed", e.to_string());
                    }
                }
                Some(Input::Connected { peer, conn, dialer, cert }) => {
                    records.learn(&cert);
                    if agent.membership().infos().certified(&peer) {
                        next_observe = Instant::now();
                    }
                    for o in dialing.remove(&peer).unwrap_or_default() {
                        send_out(&conn, o);
                    }
                    // Everything read on any of a peer's connections counts
                    // (two may exist for a while: both sides dialed at once,
                    // or the peer restarted while its old connection has
                    // not yet timed out); the newest is the one sent on.
                    let (c, tx2) = (conn.clone(), tx.clone());
                    let from = peer.clone();
                    // Key-exchange messages, one per stream, each read on
                    // its own and given a deadline: a stream a peer opens
                    // and never finishes holds up nothing else. (QUIC's
                    // stream limit bounds how many are open at once.)
                    tokio::spawn(async move {
                        while let Ok(stream) = c.accept_uni().await {
                            let (tx, from) = (tx2.clone(), from.clone());
                            tokio::spawn(async move {
                                let read = tokio::time::timeout(MESSAGE_DEADLINE, messages::read(stream));
                                let input = match read.await {
                                    Ok(Ok((Kind::KeyExchange, body))) => Input::KeyExchange(from, body),
                                    Ok(Err(e)) => Input::BadMessage(from, e),
                                    Err(_) => Input::BadMessage(
                                        from,
                                        messages::MessageError::Read(format!(
                                            "not finished within {MESSAGE_DEADLINE:?}"
                                        )),
                                    ),
                                };
                                let _ = tx.send(input);
                            });
                        }
                    });
                    let (c, tx) = (conn.clone(), tx.clone());
                    let from = peer.clone();
                    tokio::spawn(async move {
                        while let Ok(d) = c.read_datagram().await {
                            if tx.send(Input::Datagram(from.clone(), d)).is_err() {
                                return;
                            }
                        }
                        let _ = tx.send(Input::Closed(from, c.stable_id()));
                    });
                    let open = conns.entry(peer).or_default();
                    // A redial by the same side supersedes its old connection.
                    open.retain(|(old, old_dialer)| {
                        let superseded = *old_dialer == dialer;
                        if superseded {
                            old.close(0u32.into(), b"superseded");
                        }
                        !superseded
                    });
                    open.push((conn, dialer));
                }
                Some(Input::Closed(peer, id)) => {
                    if let Some(open) = conns.get_mut(&peer) {
                        open.retain(|(c, _)| c.stable_id() != id);
                        if open.is_empty() {
                            conns.remove(&peer);
                        }
                    }
                }
                Some(Input::Seeds(source, Ok(seeds))) => {
                    let now = Instant::now();
                    for (id, at) in seeds.into_iter().filter(|(id, _)| *id != me_id) {
                        if !conns.contains_key(&id) && !dialing.contains_key(&id) {
                            dialing.insert(id.clone(), Vec::new());
                            dial(id.clone(), at, tx.clone());
                        }
                        let seed = MemberId { id: id.clone(), addr: at, generation: 0 };
                        if let Err(e) = agent.join(seed, now) {
                            tracing::debug!("joining through {id} (from {source}): {e}");
                        }
                    }
                }
                Some(Input::Seeds(source, Err(e))) => {
                    tracing::warn!("discovery ({source}) failed: {e}; asking again in {REJOIN_EVERY:?}");
                }
                Some(Input::BadMessage(from, e)) => {
                    refuse(&from, "message", e.kind(), e.to_string());
                }
                Some(Input::Refused(e)) => {
                    let peer = match &e {
                        TransportError::Connect { peer, .. } => {
                            dialing.remove(peer);
                            peer.clone()
                        }
                        other => other.peer().unwrap_or_default(),
                    };
                    refuse(&peer, "connection", e.kind(), e.to_string());
                }
                None => return Ok(()),
            },
            _ = sleep => {}
        }
        let now = Instant::now();
        if agent.next_tick().is_some_and(|t| t <= now) {
            agent.tick(now);
        }
        if let Some((t, _)) = tunnels.as_mut() {
            if t.poll_timeout().is_some_and(|at| at <= now) {
                t.handle_timeout(now);
            }
        }
        if let Some(n) = negotiator.as_mut() {
            if n.poll_timeout().is_some_and(|t| t <= now) {
                n.handle_timeout(now);
            }
        }
        while let Some(Reverse((t, s))) = timers.peek().copied() {
            if t > now {
                break;
            }
            timers.pop();
            if let Some(timer) = pending.remove(&s) {
                let _ = agent.handle_timer(timer, now);
            }
        }
    }
}
