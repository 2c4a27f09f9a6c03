//! UDP -> SPI lookup -> open -> anti-spoofing -> TUN.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::batch::{BatchIo, Buffers, Received, BATCH};
use super::control::{InboundCommand, NoticeSender};
use super::offload::Coalescer;
use super::persist::StateMsg;
use super::tables::SharedTables;
use super::StaticPeer;
use super::{inner, socket_fd, wait_readable, TICK};
use crate::esp::Direction;
use crate::esp::{
    classify_udp_payload, DropReason, InboundSa, SaError, UdpPayloadKind, NEXT_HEADER_NONE,
};
use crate::metrics::{DropCounters, FlowCounters, Metrics, UdpControlCounters};
use crate::prefix::Prefix;
use crate::seqstate::{Half, SeqFile};
use crate::tun::Tun;
use std::sync::mpsc::{Receiver, Sender};

struct Sa {
    peer: usize,
    sa: InboundSa,
    counters: FlowCounters,
    cipher: &'static str,
    /// Names a configured SA's key in the state file (negotiated SAs have
    /// fresh keys and nothing to persist).
    fingerprint: Option<String>,
    /// The window top last sent to the state thread.
    reported_top: u64,
}

struct Peer {
    id: String,
    prefixes: Vec<Prefix>,
}

/// The inbound half of the data plane: inbound SAs by SPI and the prefixes
/// each peer may send from.
pub struct Inbound {
    sas: HashMap<u32, Sa>,
    /// By slot (the index the tables name).
    peers: Vec<Option<Peer>>,
    drops: DropCounters,
    control: UdpControlCounters,
    metrics: Arc<Metrics>,
    /// Reports to the state thread, once attached.
    state: Option<Sender<StateMsg>>,
    /// The routes, for the reverse-path check of transit traffic.
    tables: SharedTables,
    /// Where lifetime events go, once attached.
    notices: Option<NoticeSender>,
    /// Where non-ESP datagrams (session hellos) go, once attached.
    hellos: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    /// Where non-ESP datagrams of other magics go (underlay probes).
    by_magic: Vec<([u8; 4], tokio::sync::mpsc::Sender<Vec<u8>>)>,
    /// Echoes (`meshgate ping`): where replies to requests go, who waits
    /// for replies, and how many replies may go this second.
    echo: Option<(super::control::OutboundSender, super::echo::EchoWaiters)>,
    echo_budget: super::echo::ReplyBudget,
    /// Echo requests answered and refused over the budget.
    echo_counts: [prometheus::IntCounter; 2],
}

/// What a datagram on the ESP port turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// An inner packet to write to the TUN, at this range of the buffer.
    Packet(Range<usize>),
    /// A NAT keepalive, non-ESP datagram or dummy packet: nothing to do.
    Nothing,
}

impl Inbound {
    pub fn new(
        configured: &[StaticPeer],
        metrics: &Arc<Metrics>,
        tables: SharedTables,
    ) -> Result<Inbound, SaError> {
        let now = Instant::now();
        let mut sas = HashMap::new();
        let mut peers = Vec::new();
        for (i, p) in configured.iter().enumerate() {
            let s = &p.inbound;
            let sa = InboundSa::new(s.clone(), now)?;
            let counters = metrics.flow(
                &p.id,
                s.spi,
                Direction::In,
                s.suite.name(),
                s.lifetime.soft.time,
            );
            sas.insert(
                s.spi,
                Sa {
                    peer: i,
                    sa,
                    counters,
                    cipher: s.suite.name(),
                    fingerprint: Some(s.key.fingerprint()),
                    reported_top: 0,
                },
            );
            peers.push(Some(Peer {
                id: p.id.clone(),
                prefixes: p.prefixes.clone(),
            }));
        }
        metrics.peers.set(peers.len() as i64);
        Ok(Inbound {
            sas,
            peers,
            drops: metrics.drops(),
            control: metrics.udp_control(),
            metrics: metrics.clone(),
            state: None,
            tables,
            notices: None,
            hellos: None,
            by_magic: Vec::new(),
            echo: None,
            echo_budget: super::echo::ReplyBudget::default(),
            echo_counts: metrics.echo_requests(),
        })
    }

    /// Sends lifetime events to the control plane, which rekeys.
    pub fn attach_notices(&mut self, notices: NoticeSender) {
        self.notices = Some(notices);
    }

    /// Applies a change from the control plane.
    pub fn apply(&mut self, command: InboundCommand, now: Instant) {
        match command {
            InboundCommand::Peer { slot, id, prefixes } => {
                if !super::control::make_room(&mut self.peers, slot, &id) {
                    return;
                }
                if self.peers[slot].as_ref().is_some_and(|p| p.id != id) {
                    self.remove_peer(slot);
                }
                self.peers[slot] = Some(Peer { id, prefixes });
                self.metrics
                    .peers
                    .set(self.peers.iter().flatten().count() as i64);
            }
            InboundCommand::Sa { slot, params } => {
                let Some(Some(peer)) = self.peers.get(slot) else {
                    tracing::warn!(
                        "inbound SA {:#010x} for an unknown peer slot {slot}; not installed",
                        params.spi
                    );
                    return;
                };
                let (spi, cipher, rekey) =
                    (params.spi, params.suite.name(), params.lifetime.soft.time);
                if self.sas.contains_key(&spi) {
                    tracing::error!(peer = %peer.id, "inbound SPI {spi:#010x} is in use; the new SA is refused");
                    return;
                }
                match InboundSa::new(params, now) {
                    Ok(sa) => {
                        let counters =
                            self.metrics
                                .flow(&peer.id, spi, Direction::In, cipher, rekey);
                        self.sas.insert(
                            spi,
                            Sa {
                                peer: slot,
                                sa,
                                counters,
                                cipher,
                                fingerprint: None,
                                reported_top: 0,
                            },
                        );
                    }
                    Err(e) => {
                        tracing::error!(peer = %peer.id, "inbound SA {spi:#010x} refused: {e}")
                    }
                }
            }
            InboundCommand::RemoveSa { spi } => {
                if let Some(sa) = self.sas.remove(&spi) {
                    self.retire(spi, &sa);
                }
            }
            InboundCommand::Remove { slot } => {
                self.remove_peer(slot);
                self.metrics
                    .peers
                    .set(self.peers.iter().flatten().count() as i64);
            }
        }
    }

    fn remove_peer(&mut self, slot: usize) {
        let gone: Vec<u32> = self
            .sas
            .iter()
            .filter(|(_, sa)| sa.peer == slot)
            .map(|(spi, _)| *spi)
            .collect();
        for spi in gone {
            if let Some(sa) = self.sas.remove(&spi) {
                self.retire(spi, &sa);
            }
        }
        if let Some(p) = self.peers.get_mut(slot) {
            *p = None;
        }
    }

    /// Forgets an SA's metric series (its keys are zeroized as it drops).
    fn retire(&self, spi: u32, sa: &Sa) {
        if let Some(Some(p)) = self.peers.get(sa.peer) {
            self.metrics
                .sa_retired(&p.id, spi, Direction::In, sa.cipher);
        }
    }

    /// Starts every SA's replay window above what an earlier run accepted
    /// (per the state file).
    pub(super) fn resume(&mut self, file: &SeqFile) {
        for (spi, sa) in &mut self.sas {
            let Some(fingerprint) = &sa.fingerprint else {
                continue;
            };
            if let Some(top) = file.get(Half::In, *spi, fingerprint) {
                sa.sa.resume_after(top);
                sa.reported_top = top;
            }
        }
    }

    /// Hands non-ESP datagrams (session hellos) to `hellos`.
    pub fn attach_hellos(&mut self, hellos: tokio::sync::mpsc::Sender<Vec<u8>>) {
        self.hellos = Some(hellos);
    }

    /// Answers echo requests through `out`, and hands replies to their
    /// waiters.
    pub fn attach_echo(
        &mut self,
        out: super::control::OutboundSender,
        waiters: super::echo::EchoWaiters,
    ) {
        self.echo = Some((out, waiters));
    }

    /// Hands non-ESP datagrams with `magic` after the marker to `to`.
    pub fn attach_magic(&mut self, magic: [u8; 4], to: tokio::sync::mpsc::Sender<Vec<u8>>) {
        self.by_magic.push((magic, to));
    }

    /// Drops the configured SAs: configured peers' keys are pre-shared
    /// secrets, and their SAs come from sessions (`keys::session`).
    pub fn clear_configured_sas(&mut self) {
        let now = Instant::now();
        let spis: Vec<u32> = self.sas.keys().copied().collect();
        for spi in spis {
            self.apply(InboundCommand::RemoveSa { spi }, now);
        }
    }

    /// Connects the SAs to the state thread, which keeps their windows.
    pub(super) fn attach_state(&mut self, reports: Sender<StateMsg>) {
        self.state = Some(reports);
    }

    /// Handles one UDP payload in place.
    pub fn decapsulate(
        &mut self,
        now: Instant,
        datagram: &mut [u8],
    ) -> Result<Delivery, DropReason> {
        let spi = match classify_udp_payload(datagram) {
            UdpPayloadKind::Esp { spi } => spi,
            UdpPayloadKind::NatKeepalive => {
                self.control.nat_keepalive.inc();
                return Ok(Delivery::Nothing);
            }
            UdpPayloadKind::NonEsp => {
                self.control.non_esp.inc();
                let magic = datagram.get(4..8);
                if let Some((_, to)) = self.by_magic.iter().find(|(m, _)| Some(&m[..]) == magic) {
                    // Dropped when its reader is behind (a lost probe).
                    let _ = to.try_send(datagram.to_vec());
                } else if let Some(h) = &self.hellos {
                    // To the sessions of configured peers; dropped when
                    // they are behind (hellos are repeated).
                    let _ = h.try_send(datagram.to_vec());
                }
                return Ok(Delivery::Nothing);
            }
            UdpPayloadKind::Malformed => return Err(DropReason::Malformed),
        };
        let sa = self.sas.get_mut(&spi).ok_or(DropReason::UnknownSpi)?;
        let Some(Some(peer)) = self.peers.get(sa.peer) else {
            return Err(DropReason::UnknownSpi);
        };
        // A refusal is laid at this SA's door as well as counted for the
        // gateway.
        let opened = sa
            .sa
            .open(now, datagram)
            .inspect_err(|reason| sa.counters.drops.count(*reason))?;
        if let Some(ev) = opened.event {
            super::control::report(
                &self.metrics,
                self.notices.as_ref(),
                Direction::In,
                sa.peer,
                &peer.id,
                &ev,
            );
        }
        if opened.next_header == NEXT_HEADER_NONE {
            // A dummy packet (RFC 4303 §2.6, traffic flow confidentiality),
            // or an echo (opened, so from this peer and no replay).
            let slot = sa.peer;
            if let (Some(echo), Some((out, waiters))) = (
                super::echo::Echo::decode(&datagram[opened.inner.clone()]),
                &self.echo,
            ) {
                match echo.kind {
                    super::echo::EchoKind::Request if self.echo_budget.take(now) => {
                        self.echo_counts[0].inc();
                        let _ = out.send(super::control::OutboundCommand::Echo {
                            slot,
                            echo: echo.reply(),
                        });
                    }
                    super::echo::EchoKind::Request => {
                        self.echo_counts[1].inc();
                        // Said once a second at most, naming the peer.
                        if self.echo_budget.first_refusal() {
                            tracing::warn!(
                                peer = %peer.id,
                                "echo requests beyond {} a second: the rest of this second unanswered",
                                super::echo::REPLIES_PER_SEC
                            );
                        }
                    }
                    super::echo::EchoKind::Reply => {
                        let waiter = waiters.lock().ok().and_then(|mut w| w.remove(&echo.id));
                        if let Some(w) = waiter {
                            let _ = w.send(super::echo::EchoReply { echo, spi, at: now });
                        }
                    }
                }
            }
            return Ok(Delivery::Nothing);
        }
        let payload = &datagram[opened.inner.clone()];
        let dropped = |reason| {
            sa.counters.drops.count(reason);
            Err(reason)
        };
        let Some(hdr) = inner::parse(payload).filter(|h| h.next_header == opened.next_header)
        else {
            return dropped(DropReason::Malformed);
        };
        // Anti-spoofing: a peer may send from the prefixes behind it, or
        // from those our routes reach through it (transit).
        let own = peer.prefixes.iter().any(|p| p.contains(hdr.src));
        if !own && !self.tables.load().source_allowed(hdr.src, sa.peer) {
            return dropped(DropReason::Spoofed);
        }
        sa.counters.count(hdr.len);
        let start = opened.inner.start;
        Ok(Delivery::Packet(start..start + hdr.len))
    }

    /// Timer work: lifetime limits in time, and window tops to persist.
    pub fn poll_lifetimes(&mut self, now: Instant) {
        for (spi, sa) in &mut self.sas {
            let id = match self.peers.get(sa.peer) {
                Some(Some(p)) => p.id.as_str(),
                _ => "",
            };
            while let Some(ev) = sa.sa.poll_lifetime(now) {
                super::control::report(
                    &self.metrics,
                    self.notices.as_ref(),
                    Direction::In,
                    sa.peer,
                    id,
                    &ev,
                );
            }
            let top = sa.sa.window_top();
            let Some(fingerprint) = &sa.fingerprint else {
                continue;
            };
            if let Some(state) = &self.state {
                if top != sa.reported_top {
                    let msg = StateMsg::InboundTop {
                        spi: *spi,
                        fingerprint: fingerprint.clone(),
                        top,
                    };
                    if state.send(msg).is_ok() {
                        sa.reported_top = top;
                    }
                }
            }
        }
    }

    pub fn count_drop(&self, reason: DropReason) {
        self.drops.count(reason);
    }
}

/// The inbound loop: recvmmsg a batch (with UDP GRO, runs of datagrams
/// per buffer), open each datagram, coalesce inner TCP segments, write to
/// the TUN.
pub(super) fn run(
    mut inb: Inbound,
    tun: &Tun,
    socket: &UdpSocket,
    stop: &AtomicBool,
    buffer_size: usize,
    commands: Receiver<InboundCommand>,
) {
    let mut bufs = Buffers::new(buffer_size);
    let mut io = BatchIo::default();
    let mut got = [Received::default(); BATCH];
    let mut gro = Coalescer::default();
    let tun_failed = inb.drops.clone();
    let mut write = |pkt: &[u8]| -> Result<(), ()> {
        if let Err(e) = tun.write(pkt) {
            tun_failed.count(DropReason::TunWriteFailed);
            tracing::debug!("inbound: writing to {}: {e}", tun.name());
        }
        Ok(())
    };
    let mut last_tick = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let n = match io.recv(socket, &mut bufs, &mut got) {
            Ok(n) => n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted =>
            {
                0
            }
            Err(e) => {
                // ICMP errors surface here as ECONNREFUSED and the like; they
                // say nothing about our SAs, so keep going.
                tracing::debug!("inbound: recvmmsg: {e}");
                0
            }
        };
        let now = Instant::now();
        // Before the batch: an SA installed before the peer was told to
        // use it is in place for the peer's first packet on it.
        while let Ok(c) = commands.try_recv() {
            inb.apply(c, now);
        }
        for (i, r) in got.iter().enumerate().take(n) {
            if r.truncated {
                inb.count_drop(DropReason::TooBig);
                continue;
            }
            let seg = if r.segment > 0 {
                r.segment
            } else {
                r.len.max(1)
            };
            for datagram in bufs.get_mut(i)[..r.len].chunks_mut(seg) {
                match inb.decapsulate(now, datagram) {
                    Ok(Delivery::Packet(range)) => {
                        let _ = gro.push(&datagram[range], &mut write);
                    }
                    Ok(Delivery::Nothing) => {}
                    Err(reason) => inb.count_drop(reason),
                }
            }
        }
        let _ = gro.flush(&mut write);
        if now.duration_since(last_tick) >= TICK {
            inb.poll_lifetimes(now);
            last_tick = now;
        }
        if n == 0 {
            if let Err(e) = wait_readable(socket_fd(socket)) {
                tracing::error!("inbound: poll: {e}; the data plane stops");
                return;
            }
        }
    }
    // Report the final window tops, so a restart refuses everything seen.
    inb.poll_lifetimes(Instant::now());
}
