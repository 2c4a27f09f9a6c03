//! The shell around a mesh member ([`crate::member::Member`]): one task
//! owns the QUIC endpoint and its connections, feeds the member what
//! arrives (each datagram and message attributed to the member id its
//! connection's certificate proves), carries out what the member asks
//! (sends, dials, closes, discovery, data-plane changes), and sleeps until
//! the member's next deadline. Every decision is the member's.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::discovery::{Discovery, Seed};
use super::messages::{self, Kind};
use super::queue::{PeerQueue, Slot, PER_PEER};
use super::records::CertRecords;
use super::transport::{accept, connect, endpoint, Credentials, PeerCert, TransportError};
use crate::dataplane::{DataplaneControl, SaNotice};
use crate::esp::CipherSuite;
use crate::keys::order::{MeshOrder, OrderError, SignedOrder};
use crate::keys::{self, KeyProvider};
use crate::member::{
    ConnId, EpochReport, Member, MemberConfig, NodeEvent, Output, Payload, Refusal,
};
use crate::membership::admission::Admission;
use crate::membership::info::{Infos, MemberInfo};
use crate::membership::liveness::LivenessSettings;
use crate::membership::{MemberId, Settings};
use crate::tunnels::Tunnels;

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
    /// With KMS epoch keys: the ciphertexts held at start, and where the
    /// set held goes to be decrypted (`cloud::kms`).
    pub kms: Option<KmsLink>,
}

pub struct KmsLink {
    pub wrapped: crate::keys::wrapped::WrappedKeys,
    pub unwrap: mpsc::UnboundedSender<Vec<(keys::Epoch, Vec<u8>)>>,
}

/// The data plane a member keys: the SA bookkeeping, the packet threads'
/// command channels, and their lifetime notices (which start rekeys).
pub struct TunnelLink {
    pub tunnels: Tunnels,
    pub dataplane: DataplaneControl,
    pub notices: mpsc::UnboundedReceiver<SaNotice>,
}

/// What the owner asks of a member.
#[derive(Debug)]
pub enum NodeCommand {
    /// The members the policy connects this one to.
    Peers(HashSet<String>),
    /// The underlay (endpoint label) the policy chose for each peer.
    Underlays(std::collections::HashMap<String, String>),
    /// This member's load (permille) or policy version changed.
    Update {
        load_permille: Option<u32>,
        policy_version: Option<u32>,
    },
    /// The epoch state in force, as an order (`keys show`, and what `keys
    /// rotate` and `keys revoke` start from).
    Epochs(oneshot::Sender<MeshOrder>),
    /// An operator's epoch order, signed by the mesh CA.
    Order(
        SignedOrder,
        oneshot::Sender<Result<EpochReport, OrderError>>,
    ),
    /// The operator's KMS data key for an epoch of the order in force.
    Wrapped(keys::Epoch, Vec<u8>, oneshot::Sender<Result<(), String>>),
    /// KMS decrypted an epoch's key: waiting exchanges go now.
    EpochKeyReady,
}

/// How long one signalling message may take to arrive whole.
const MESSAGE_DEADLINE: Duration = Duration::from_secs(5);

/// Closes the endpoint when the member stops (or its task is dropped): its
/// connections close, and the tasks reading them and accepting new ones end.
struct CloseOnDrop(quinn::Endpoint);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(0u32.into(), b"member stopped");
    }
}

pub(super) enum Input {
    /// A datagram and a key-exchange message, each holding its place in
    /// its peer's queue until the loop has taken it.
    Datagram(String, Bytes, Slot),
    KeyExchange(String, Vec<u8>, Slot),
    /// Inputs of a peer dropped because its queue was full.
    Overflow(String, u64),
    Connected {
        peer: String,
        conn: quinn::Connection,
        dialed_here: bool,
        cert: PeerCert,
    },
    Closed(ConnId),
    BadMessage(String, messages::MessageError),
    /// What discovery found.
    Seeds(&'static str, Result<Vec<Seed>, String>),
    Refused(TransportError),
    /// A handshake from this address was asked to prove the address first
    /// (a QUIC retry), past [`VALIDATE_ABOVE`] handshakes in progress.
    Retried(SocketAddr),
}

/// Runs the member until the task is dropped; its events go to `events`.
/// Returns the address it listens on through `bound`.
pub async fn run(
    cfg: NodeConfig,
    events: mpsc::UnboundedSender<NodeEvent>,
    mut commands: mpsc::UnboundedReceiver<NodeCommand>,
    bound: oneshot::Sender<SocketAddr>,
) -> Result<(), TransportError> {
    let ep = endpoint(&cfg.creds, cfg.listen)?;
    let _close = CloseOnDrop(ep.clone());
    let addr = ep.local_addr().map_err(|e| TransportError::Bind {
        addr: cfg.listen,
        reason: e.to_string(),
    })?;
    let _ = bound.send(addr);
    // Records are signed with our key and checked against the members'
    // certificates, learnt from the connections.
    let records = Arc::new(CertRecords::new(&cfg.creds)?);
    let (tunnels, dataplane, mut notices) = match cfg.tunnels {
        Some(l) => (Some(l.tunnels), Some(l.dataplane), Some(l.notices)),
        None => (None, None, None),
    };
    let me = MemberId {
        id: cfg.creds.claims.id.clone(),
        addr,
        // A restart is a new generation: the start time the gateway put
        // in its record (now, if it did not).
        generation: match cfg.info.generation {
            0 => crate::time::unix_ms(),
            g => g,
        },
    };
    // And refused where they would route what is not theirs here.
    let admission = Admission::new(&cfg.info, [addr.ip()]);
    let mut member = Member::new(
        MemberConfig {
            me,
            info: cfg.info,
            settings: cfg.settings,
            liveness: cfg.liveness,
            seed: rand::random(),
            infos: Infos::with_authority(records.clone()).admitting(admission),
            keys: cfg.keys,
            orders: cfg.creds.ca().clone(),
            tunnels,
            wrapped: cfg.kms.as_ref().map(|k| k.wrapped.clone()),
        },
        Instant::now(),
    );
    let (tx, mut rx) = mpsc::unbounded_channel::<Input>();
    spawn_acceptor(ep.clone(), cfg.creds.clone(), tx.clone());
    let mut conns: HashMap<ConnId, quinn::Connection> = HashMap::new();
    let mut next_conn = 0u64;
    let mut commands_open = true;
    loop {
        while let Some(o) = member.poll_output() {
            match o {
                Output::Send { conn, payload } => {
                    if let Some(c) = conns.get(&conn) {
                        send(c, payload);
                    }
                }
                Output::Dial { peer, addr } => {
                    spawn_dial(ep.clone(), cfg.creds.clone(), peer, addr, tx.clone())
                }
                Output::Close { conn } => {
                    if let Some(c) = conns.get(&conn) {
                        c.close(0u32.into(), b"superseded");
                    }
                }
                Output::Discover => spawn_discover(cfg.discovery.clone(), tx.clone()),
                Output::Outbound(c) => {
                    if let Some(d) = &dataplane {
                        let _ = d.outbound.send(c);
                    }
                }
                Output::Inbound(c) => {
                    if let Some(d) = &dataplane {
                        let _ = d.inbound.send(c);
                    }
                }
                Output::WrappedKeys(held) => {
                    if let Some(k) = &cfg.kms {
                        let _ = k.unwrap.send(held);
                    }
                }
            }
        }
        while let Some(e) = member.poll_event() {
            let _ = events.send(e);
        }
        let wake = member.poll_timeout();
        let sleep = async {
            match wake {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let notice = async {
            match notices.as_mut() {
                Some(n) => n.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(n) = notice => member.handle_notice(n, Instant::now()),
            command = commands.recv(), if commands_open => match command {
                Some(NodeCommand::Peers(ids)) => member.set_peers(ids, Instant::now()),
                Some(NodeCommand::Underlays(map)) => member.set_underlays(map, Instant::now()),
                Some(NodeCommand::Update { load_permille, policy_version }) => {
                    member.update_record(load_permille, policy_version, Instant::now());
                }
                Some(NodeCommand::Epochs(reply)) => {
                    let _ = reply.send(member.epoch_order());
                }
                Some(NodeCommand::Order(order, reply)) => {
                    let _ = reply.send(member.order(order, Instant::now()));
                }
                Some(NodeCommand::Wrapped(epoch, ciphertext, reply)) => {
                    let _ = reply.send(member.operator_wrapped(epoch, ciphertext, Instant::now()));
                }
                Some(NodeCommand::EpochKeyReady) => member.epoch_key_ready(Instant::now()),
                None => commands_open = false,
            },
            input = rx.recv() => match input {
                Some(Input::KeyExchange(from, body, _slot)) => member.handle_message(&from, &body, Instant::now()),
                Some(Input::Datagram(from, data, _slot)) => member.handle_datagram(&from, &data, Instant::now()),
                Some(Input::Overflow(from, n)) => refuse(&events, from, "input", "overflow", format!(
                    "{n} datagrams or messages dropped: more than {PER_PEER} were waiting for the member loop"
                )),
                Some(Input::Connected { peer, conn, dialed_here, cert }) => {
                    records.learn(&cert);
                    next_conn += 1;
                    let id = ConnId(next_conn);
                    spawn_readers(&conn, id, &peer, &tx);
                    conns.insert(id, conn);
                    let cert_id = crate::identity::cert_id(&cert.cert);
                    member.handle_connected(&peer, id, cert_id, dialed_here, Instant::now());
                }
                Some(Input::Closed(id)) => {
                    conns.remove(&id);
                    member.handle_closed(id);
                }
                Some(Input::Seeds(_, Ok(seeds))) => member.handle_seeds(seeds, Instant::now()),
                Some(Input::Seeds(source, Err(e))) => {
                    tracing::warn!("discovery ({source}) failed: {e}; asking again in {:?}", crate::member::REJOIN_EVERY);
                }
                Some(Input::BadMessage(from, e)) => refuse(&events, from, "message", e.kind(), e.to_string()),
                Some(Input::Retried(from)) => refuse(&events, from.to_string(), "connection", "address_validation", format!(
                    "{VALIDATE_ABOVE} handshakes in progress: asked to prove its address first (QUIC retry)"
                )),
                Some(Input::Refused(e)) => {
                    let peer = match &e {
                        TransportError::Connect { peer, .. } => {
                            member.handle_dial_failed(peer);
                            Some(peer.clone()).filter(|p| !member.holds_down(p))
                        }
                        other => Some(other.peer().unwrap_or_default()),
                    };
                    match peer {
                        Some(peer) => refuse(&events, peer, "connection", e.kind(), e.to_string()),
                        None => tracing::debug!("a member held down is still unreachable: {e}"),
                    }
                }
                None => return Ok(()),
            },
            _ = sleep => member.handle_timeout(Instant::now()),
        }
    }
}

fn refuse(
    events: &mpsc::UnboundedSender<NodeEvent>,
    peer: String,
    what: &'static str,
    kind: &'static str,
    reason: String,
) {
    let _ = events.send(NodeEvent::Refused(Refusal {
        peer,
        what,
        kind,
        reason,
    }));
}

fn send(conn: &quinn::Connection, payload: Payload) {
    match payload {
        Payload::Datagram(d) => {
            let _ = conn.send_datagram(Bytes::from(d));
        }
        Payload::Message(m) => {
            let conn = conn.clone();
            tokio::spawn(async move {
                // A peer that stops reading holds no task for ever.
                match tokio::time::timeout(
                    MESSAGE_DEADLINE,
                    messages::send(&conn, Kind::KeyExchange, &m),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!("key exchange message: {e}"),
                    Err(_) => {
                        tracing::debug!("key exchange message not sent within {MESSAGE_DEADLINE:?}")
                    }
                }
            });
        }
    }
}

/// Handshakes in progress past which a client must first prove its address
/// (a QUIC retry, one round trip): a flood from spoofed addresses then
/// costs this gateway a stateless packet each, not a handshake.
pub(super) const VALIDATE_ABOVE: usize = 16;

/// Accepts connections; each that authenticates becomes an input.
pub(super) fn spawn_acceptor(
    ep: quinn::Endpoint,
    creds: Arc<Credentials>,
    tx: mpsc::UnboundedSender<Input>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let handshaking = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            if handshaking.load(Ordering::Acquire) >= VALIDATE_ABOVE
                && !incoming.remote_address_validated()
                && incoming.may_retry()
            {
                let from = incoming.remote_address();
                if incoming.retry().is_ok() {
                    let _ = tx.send(Input::Retried(from));
                }
                continue;
            }
            handshaking.fetch_add(1, Ordering::AcqRel);
            let (creds, tx, handshaking) = (creds.clone(), tx.clone(), handshaking.clone());
            tokio::spawn(async move {
                let accepted = accept(incoming, &creds).await;
                handshaking.fetch_sub(1, Ordering::AcqRel);
                let _ = tx.send(match accepted {
                    Ok((conn, cert)) => Input::Connected {
                        peer: cert.claims.id.clone(),
                        conn,
                        dialed_here: false,
                        cert,
                    },
                    Err(e) => Input::Refused(e),
                });
            });
        }
    });
}

fn spawn_dial(
    ep: quinn::Endpoint,
    creds: Arc<Credentials>,
    peer: String,
    at: SocketAddr,
    tx: mpsc::UnboundedSender<Input>,
) {
    tokio::spawn(async move {
        let _ = tx.send(match connect(&ep, &creds, &peer, at).await {
            Ok((conn, cert)) => Input::Connected {
                peer,
                conn,
                dialed_here: true,
                cert,
            },
            Err(e) => Input::Refused(e),
        });
    });
}

fn spawn_discover(discovery: Arc<dyn Discovery>, tx: mpsc::UnboundedSender<Input>) {
    tokio::spawn(async move {
        let found = discovery.discover().await;
        let _ = tx.send(Input::Seeds(discovery.name(), found));
    });
}

/// Reads a connection: its datagrams, and its key-exchange messages, one
/// per stream, each read on its own and given a deadline (a stream a peer
/// opens and never finishes holds up nothing else; QUIC's stream limit
/// bounds how many are open at once). Everything read on any of a peer's
/// connections counts.
pub(super) fn spawn_readers(
    conn: &quinn::Connection,
    id: ConnId,
    peer: &str,
    tx: &mpsc::UnboundedSender<Input>,
) {
    let queue = PeerQueue::default();
    let (c, tx2, from, q) = (conn.clone(), tx.clone(), peer.to_string(), queue.clone());
    tokio::spawn(async move {
        while let Ok(stream) = c.accept_uni().await {
            let (tx, from, q) = (tx2.clone(), from.clone(), q.clone());
            tokio::spawn(async move {
                let read = tokio::time::timeout(MESSAGE_DEADLINE, messages::read(stream));
                let input = match read.await {
                    Ok(Ok((Kind::KeyExchange, body))) => match q.slot() {
                        Some(slot) => Input::KeyExchange(from, body, slot),
                        None => return,
                    },
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
    let (c, tx, from) = (conn.clone(), tx.clone(), peer.to_string());
    tokio::spawn(async move {
        while let Ok(d) = c.read_datagram().await {
            let Some(slot) = queue.slot() else {
                continue;
            };
            if tx.send(Input::Datagram(from.clone(), d, slot)).is_err() {
                return;
            }
            // Said once the queue has room again, not per drop.
            let dropped = queue.take_dropped();
            if dropped > 0 && tx.send(Input::Overflow(from.clone(), dropped)).is_err() {
                return;
            }
        }
        let _ = tx.send(Input::Closed(id));
    });
}
