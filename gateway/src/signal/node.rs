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

use super::messages::{self, Kind};
use super::transport::{accept, connect, endpoint, Credentials, TransportError};
use crate::esp::CipherSuite;
use crate::keys::{self, KeyProvider, Negotiator};
use crate::membership::info::MemberInfo;
use crate::membership::liveness::LivenessSettings;
use crate::membership::{Agent, MemberId, MembershipEvent, Settings};

pub struct NodeConfig {
    pub creds: Arc<Credentials>,
    pub listen: SocketAddr,
    /// Members to join through: id and signalling address.
    pub seeds: Vec<(String, SocketAddr)>,
    pub info: MemberInfo,
    pub settings: Settings,
    pub liveness: Option<LivenessSettings>,
    /// Negotiate SAs with every member that comes up: the key provider,
    /// the epoch, the cipher suite. `None`: membership only.
    pub keys: Option<(Arc<dyn KeyProvider>, keys::Epoch, CipherSuite)>,
}

/// What a member hands its owner.
#[derive(Debug)]
pub enum NodeEvent {
    Membership(MembershipEvent),
    /// An SA to install or remove (the negotiator's events other than sends).
    Keys(keys::Event),
}

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
    },
    Closed(String),
    Refused(TransportError),
}

/// Runs the member until the task is dropped; membership events go to
/// `events`. Returns the address it listens on through `bound`.
pub async fn run(
    cfg: NodeConfig,
    events: mpsc::UnboundedSender<NodeEvent>,
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
    let mut agent = Agent::new(me, cfg.settings, cfg.liveness, rand::random());
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
                        Ok((conn, claims)) => {
                            let _ = tx.send(Input::Connected {
                                dialer: claims.id.clone(),
                                peer: claims.id,
                                conn,
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
                Ok((conn, _)) => {
                    let _ = tx.send(Input::Connected {
                        peer,
                        conn,
                        dialer: me,
                    });
                }
                Err(e) => {
                    let _ = tx.send(Input::Refused(e));
                }
            }
        });
    };
    for (id, at) in &cfg.seeds {
        dial(id.clone(), *at, tx.clone());
    }
    let now = Instant::now();
    let _ = agent.advertise(cfg.info.clone(), now);
    for (id, at) in &cfg.seeds {
        let _ = agent.join(
            MemberId {
                id: id.clone(),
                addr: *at,
                generation: 0,
            },
            now,
        );
    }

    let mut conns: HashMap<String, (quinn::Connection, String)> = HashMap::new();
    // Peers being dialed, and what waits to be sent to them (bounded: SWIM
    // tolerates loss, and a peer that never answers must not grow it).
    let mut dialing: HashMap<String, Vec<Outgoing>> = cfg
        .seeds
        .iter()
        .map(|(id, _)| (id.clone(), Vec::new()))
        .collect();
    let mut timers: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut pending = HashMap::new();
    let mut seq = 0u64;
    loop {
        // Carry out what the agent asked for.
        let now = Instant::now();
        while let Some((after, timer)) = agent.poll_timer() {
            seq += 1;
            timers.push(Reverse((now + after, seq)));
            pending.insert(seq, timer);
        }
        let mut out: Vec<(String, Outgoing)> = Vec::new();
        while let Some(e) = agent.poll_event() {
            // The lower id of a pair starts the key exchange.
            if let (MembershipEvent::Up(m), Some(n)) = (&e, negotiator.as_mut()) {
                if me_id < m.id {
                    if let Err(err) = n.initiate(&m.id, now) {
                        tracing::warn!("no SA with {}: {err}", m.id);
                    }
                }
            }
            let _ = events.send(NodeEvent::Membership(e));
        }
        if let Some(n) = negotiator.as_mut() {
            while let Some(e) = n.poll_event() {
                match e {
                    keys::Event::Send { peer, message } => {
                        out.push((peer, Outgoing::KeyExchange(message)))
                    }
                    other => {
                        let _ = events.send(NodeEvent::Keys(other));
                    }
                }
            }
        }
        while let Some((to, data)) = agent.poll_transmit() {
            out.push((to, Outgoing::Datagram(Bytes::from(data))));
        }
        for (to, o) in out {
            if let Some((conn, _)) = conns.get(&to) {
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
        tokio::select! {
            input = rx.recv() => match input {
                Some(Input::KeyExchange(from, body)) => {
                    if let Some(n) = negotiator.as_mut() {
                        if let Err(e) = n.handle(&from, &body, Instant::now()) {
                            tracing::warn!("key exchange from {from} refused: {e}");
                        }
                    }
                }
                Some(Input::Datagram(from, data)) => {
                    if let Err(e) = agent.handle(&from, &data, Instant::now()) {
                        tracing::debug!("membership datagram from {from} refused: {e}");
                    }
                }
                Some(Input::Connected { peer, conn, dialer }) => {
                    for o in dialing.remove(&peer).unwrap_or_default() {
                        send_out(&conn, o);
                    }
                    // Both sides keep the connection dialed by the lower id.
                    let keep_new = match conns.get(&peer) {
                        None => true,
                        Some((_, old_dialer)) => dialer < *old_dialer,
                    };
                    if keep_new {
                        let (c, tx2) = (conn.clone(), tx.clone());
                        let from = peer.clone();
                        // Key-exchange messages, one per stream.
                        tokio::spawn(async move {
                            while let Ok(stream) = c.accept_uni().await {
                                match messages::read(stream).await {
                                    Ok((Kind::KeyExchange, body)) => {
                                        if tx2.send(Input::KeyExchange(from.clone(), body)).is_err() {
                                            return;
                                        }
                                    }
                                    Err(e) => tracing::warn!("signalling message from {from} refused: {e}"),
                                }
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
                            let _ = tx.send(Input::Closed(from));
                        });
                        conns.insert(peer, (conn, dialer));
                    }
                }
                Some(Input::Closed(peer)) => {
                    if conns.get(&peer).is_some_and(|(c, _)| c.close_reason().is_some()) {
                        conns.remove(&peer);
                    }
                }
                Some(Input::Refused(e)) => {
                    if let TransportError::Connect { peer, .. } = &e {
                        dialing.remove(peer);
                    }
                    tracing::warn!("{e}");
                }
                None => return Ok(()),
            },
            _ = sleep => {}
        }
        let now = Instant::now();
        if agent.next_tick().is_some_and(|t| t <= now) {
            agent.tick(now);
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
