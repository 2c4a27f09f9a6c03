//! TUN -> route -> seal -> UDP.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::batch::{push_datagram, BatchIo, RawAddr, Train, BATCH};
use super::control::{NoticeSender, OutboundCommand};
use super::offload::{complete_checksum, plan_segments, write_segment, VnetHdr, VNET_HDR_LEN};
use super::persist::StateMsg;
use super::tables::SharedTables;
use super::StaticPeer;
use super::{inner, wait_readable_or, TICK};
use crate::esp::Direction;
use crate::esp::{
    DropReason, OutboundSa, SaError, SealError, ESP_HEADER_LEN, ICV_LEN, MAX_TRAILER_LEN,
};
use crate::metrics::{DropCounters, FlowCounters, Metrics};
use crate::seqstate::{Half, SeqFile, BLOCK};
use crate::tun::Tun;
use std::sync::mpsc::{Receiver, Sender};

/// The send buffer of one batch: room for several 64 KiB super-packets.
const SEND_BUFFER: usize = 1 << 20;

/// Length of the ESP packet that carries `inner` bytes: header, payload
/// padded with pad length and next header to 4 bytes (RFC 4303 §2.4), ICV.
fn esp_len(inner: usize) -> usize {
    ESP_HEADER_LEN + (inner + 2).next_multiple_of(4) + ICV_LEN
}

struct Peer {
    id: String,
    /// `None` until the first SA with a mesh member is negotiated.
    sa: Option<Sa>,
    endpoint: SocketAddr,
    dst: RawAddr,
}

struct Sa {
    sa: OutboundSa,
    /// Names a configured SA's key in the state file; negotiated SAs have
    /// fresh keys and are not persisted (their sequence numbers start at 1
    /// under a key never used before).
    fingerprint: Option<String>,
    /// A reservation request is on its way to the state thread.
    reserving: bool,
    counters: FlowCounters,
    cipher: &'static str,
}

/// Reservation requests to the state thread, and the (peer, resume point)
/// grants coming back.
type StateLink = (Sender<StateMsg>, Receiver<(usize, u64)>);

/// The outbound half of the data plane: routing table and outbound SAs.
pub struct Outbound {
    /// Where inner destinations go; swapped whole by the control plane.
    tables: SharedTables,
    /// By slot (the index the tables name).
    peers: Vec<Option<Peer>>,
    drops: DropCounters,
    metrics: Arc<Metrics>,
    /// Requests to and grants from the state thread, once attached.
    state: Option<StateLink>,
    /// Where lifetime events go, once attached.
    notices: Option<NoticeSender>,
    /// Echoes to send (`meshgate ping`), by peer slot.
    echoes: Vec<(usize, super::echo::Echo)>,
}

impl Outbound {
    pub fn new(
        configured: &[StaticPeer],
        metrics: &Arc<Metrics>,
        tables: SharedTables,
    ) -> Result<Outbound, SaError> {
        let mut peers = Vec::with_capacity(configured.len());
        let now = Instant::now();
        for p in configured {
            let s = &p.outbound;
            let sa = OutboundSa::new(s.clone(), now)?;
            let counters = metrics.flow(
                &p.id,
                s.spi,
                Direction::Out,
                s.suite.name(),
                s.lifetime.soft.time,
            );
            peers.push(Some(Peer {
                id: p.id.clone(),
                sa: Some(Sa {
                    sa,
                    fingerprint: Some(s.key.fingerprint()),
                    reserving: false,
                    counters,
                    cipher: s.suite.name(),
                }),
                endpoint: p.endpoint,
                dst: RawAddr::new(p.endpoint),
            }));
        }
        Ok(Outbound {
            tables,
            peers,
            drops: metrics.drops(),
            metrics: metrics.clone(),
            state: None,
            notices: None,
            echoes: Vec::new(),
        })
    }

    /// Drops the configured SAs: configured peers' keys are pre-shared
    /// secrets, and their SAs come from sessions (`keys::session`).
    pub fn clear_configured_sas(&mut self) {
        let now = Instant::now();
        for slot in 0..self.peers.len() {
            self.apply(OutboundCommand::ClearSa { slot }, now);
        }
    }

    /// Sends lifetime events to the control plane, which rekeys.
    pub fn attach_notices(&mut self, notices: NoticeSender) {
        self.notices = Some(notices);
    }

    /// Applies a change from the control plane.
    pub fn apply(&mut self, command: OutboundCommand, now: Instant) {
        match command {
            OutboundCommand::Peer { slot, id, endpoint } => {
                if !super::control::make_room(&mut self.peers, slot, &id) {
                    return;
                }
                let sa = self.peers[slot].take().and_then(|p| {
                    if p.id == id {
                        p.sa
                    } else {
                        self.retire(&p.id, p.sa);
                        None
                    }
                });
                self.peers[slot] = Some(Peer {
                    id,
                    sa,
                    endpoint,
                    dst: RawAddr::new(endpoint),
                });
            }
            OutboundCommand::Sa { slot, params } => {
                let Some(Some(peer)) = self.peers.get_mut(slot) else {
                    tracing::warn!(
                        "outbound SA {:#010x} for an unknown peer slot {slot}; not installed",
                        params.spi
                    );
                    return;
                };
                let (spi, cipher, rekey) =
                    (params.spi, params.suite.name(), params.lifetime.soft.time);
                match OutboundSa::new(params, now) {
                    Ok(sa) => {
                        let counters =
                            self.metrics
                                .flow(&peer.id, spi, Direction::Out, cipher, rekey);
                        let old = peer.sa.replace(Sa {
                            sa,
                            fingerprint: None,
                            reserving: false,
                            counters,
                            cipher,
                        });
                        let id = peer.id.clone();
                        self.retire(&id, old);
                    }
                    Err(e) => {
                        tracing::error!(peer = %peer.id, "outbound SA {spi:#010x} refused: {e}")
                    }
                }
            }
            OutboundCommand::ClearSa { slot } => {
                if let Some(Some(p)) = self.peers.get_mut(slot) {
                    let (id, old) = (p.id.clone(), p.sa.take());
                    self.retire(&id, old);
                }
            }
            OutboundCommand::Remove { slot } => {
                if let Some(p) = self.peers.get_mut(slot).and_then(Option::take) {
                    self.retire(&p.id, p.sa);
                }
            }
            OutboundCommand::Echo { slot, echo } => {
                // Bounded like the replies that cause them.
                if self.echoes.len() < super::echo::REPLIES_PER_SEC as usize {
                    self.echoes.push((slot, echo));
                }
            }
        }
    }

    /// Sends each echo waiting, sealed by [`Outbound::seal_echo`].
    pub(super) fn send_echoes(&mut self, socket: &UdpSocket, now: Instant) {
        for (slot, echo) in std::mem::take(&mut self.echoes) {
            if let Some((datagram, to)) = self.seal_echo(slot, echo, now) {
                if socket.send_to(&datagram, to).is_err() {
                    self.drops.count(DropReason::SendFailed);
                }
            }
        }
    }

    /// `echo` as a dummy packet (next header 59) on the SA to the peer in
    /// `slot`, with that SA's SPI written in; the datagram and where it
    /// goes, or `None` without an SA.
    pub(super) fn seal_echo(
        &mut self,
        slot: usize,
        mut echo: super::echo::Echo,
        now: Instant,
    ) -> Option<(Vec<u8>, SocketAddr)> {
        use super::echo::{EchoKind, ECHO_LEN};
        let Some(Some(Peer {
            id,
            sa: Some(s),
            endpoint,
            ..
        })) = self.peers.get_mut(slot)
        else {
            return None;
        };
        match echo.kind {
            EchoKind::Request => echo.request_spi = s.sa.spi(),
            EchoKind::Reply => echo.reply_spi = s.sa.spi(),
        }
        let mut buf = vec![0u8; ESP_HEADER_LEN + ECHO_LEN + MAX_TRAILER_LEN];
        buf[ESP_HEADER_LEN..ESP_HEADER_LEN + ECHO_LEN].copy_from_slice(&echo.encode());
        match s
            .sa
            .seal(now, &mut buf, ECHO_LEN, crate::esp::NEXT_HEADER_NONE)
        {
            Ok(sealed) => {
                // A lifetime crossed by an echo counts like any other.
                lifetime_crossed(&self.metrics, self.notices.as_ref(), slot, id, sealed.event);
                buf.truncate(sealed.len);
                Some((buf, *endpoint))
            }
            Err(_) => {
                self.drops.count(DropReason::NoSa);
                None
            }
        }
    }

    /// Forgets an SA's metric series (its keys are zeroized as it drops).
    fn retire(&self, peer: &str, sa: Option<Sa>) {
        if let Some(sa) = sa {
            self.metrics
                .sa_retired(peer, sa.sa.spi(), Direction::Out, sa.cipher);
        }
    }

    /// Resumes every SA above what an earlier run may have used (per the
    /// state file) and reserves each its first block; the caller persists
    /// `file` before any packet is sealed.
    pub(super) fn resume(&mut self, file: &mut SeqFile) {
        for s in self
            .peers
            .iter_mut()
            .flatten()
            .filter_map(|p| p.sa.as_mut())
        {
            let Some(fingerprint) = &s.fingerprint else {
                continue;
            };
            if let Some(start) = file.get(Half::Out, s.sa.spi(), fingerprint) {
                s.sa.resume_at(start);
            }
            let resume = s.sa.next_seq().saturating_add(BLOCK);
            s.sa.set_seq_limit(resume - 1);
            file.set(Half::Out, s.sa.spi(), fingerprint, resume);
        }
    }

    /// Connects the SAs to the state thread for further reservations.
    pub(super) fn attach_state(
        &mut self,
        requests: Sender<StateMsg>,
        granted: Receiver<(usize, u64)>,
    ) {
        self.state = Some((requests, granted));
    }

    /// Asks for the next block of sequence numbers once half of the
    /// current one is used, and applies the blocks granted so far.
    fn renew_reservations(&mut self) {
        let Some((requests, granted)) = &self.state else {
            return;
        };
        while let Ok((peer, resume)) = granted.try_recv() {
            if let Some(s) = self
                .peers
                .get_mut(peer)
                .and_then(|p| p.as_mut()?.sa.as_mut())
            {
                s.sa.set_seq_limit(resume - 1);
                s.reserving = false;
            }
        }
        for (i, p) in self.peers.iter_mut().enumerate() {
            let Some(s) = p.as_mut().and_then(|p| p.sa.as_mut()) else {
                continue;
            };
            let Some(fingerprint) = &s.fingerprint else {
                continue;
            };
            let left = s.sa.seq_limit().saturating_sub(s.sa.next_seq());
            if !s.reserving && left < BLOCK / 2 && s.sa.seq_limit() < u64::MAX {
                let resume = s.sa.seq_limit().saturating_add(1).saturating_add(BLOCK);
                let msg = StateMsg::Reserve {
                    peer: i,
                    spi: s.sa.spi(),
                    fingerprint: fingerprint.clone(),
                    resume,
                };
                s.reserving = requests.send(msg).is_ok();
            }
        }
    }

    /// The peer whose prefixes hold the inner packet's destination.
    fn route(&self, inner_pkt: &[u8]) -> Result<(usize, inner::InnerHeader), DropReason> {
        let hdr = inner::parse(inner_pkt).ok_or(DropReason::Malformed)?;
        let tables = self.tables.load();
        let idx = tables
            .lookup(hdr.dst)
            .ok_or(DropReason::NoRoute)?
            .pick(hdr.src, hdr.dst);
        Ok((idx, hdr))
    }

    /// Seals `len` bytes of inner packet at `buf[ESP_HEADER_LEN..]` with
    /// `peer`'s SA; returns the ESP packet's length.
    fn seal(
        &mut self,
        peer: usize,
        now: Instant,
        buf: &mut [u8],
        len: usize,
        next_header: u8,
    ) -> Result<usize, DropReason> {
        let slot = peer;
        let Some(Some(Peer {
            id, sa: Some(s), ..
        })) = self.peers.get_mut(slot)
        else {
            return Err(DropReason::NoSa);
        };
        match s.sa.seal(now, buf, len, next_header) {
            Ok(sealed) => {
                s.counters.count(len);
                lifetime_crossed(&self.metrics, self.notices.as_ref(), slot, id, sealed.event);
                Ok(sealed.len)
            }
            Err(e) => {
                let reason = match e {
                    SealError::BufferTooSmall | SealError::TooLong => DropReason::TooBig,
                    SealError::NotReserved => DropReason::SeqNotReserved,
                    _ => DropReason::Expired,
                };
                // Laid at this SA's door as well as counted for the gateway.
                s.counters.drops.count(reason);
                Err(reason)
            }
        }
    }

    /// Seals the inner packet at `buf[ESP_HEADER_LEN..ESP_HEADER_LEN + len]`
    /// in place; returns the peer it goes to and the ESP packet's length.
    pub fn encapsulate(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        len: usize,
    ) -> Result<(usize, usize), DropReason> {
        let end = ESP_HEADER_LEN.checked_add(len).ok_or(DropReason::TooBig)?;
        if end + MAX_TRAILER_LEN > buf.len() {
            return Err(DropReason::TooBig);
        }
        let (idx, hdr) = self.route(&buf[ESP_HEADER_LEN..end])?;
        let n = self.seal(idx, now, buf, hdr.len, hdr.next_header)?;
        Ok((idx, n))
    }

    /// Bytes of send buffer that [`Outbound::process_tun_read`] needs for
    /// this read (virtio header + packet) at most.
    pub fn output_len(read: &[u8]) -> usize {
        let Some(hdr) = VnetHdr::parse(read) else {
            return 0;
        };
        let pkt = &read[VNET_HDR_LEN..];
        match plan_segments(&hdr, pkt) {
            Ok(plan) if hdr.is_tcp_gso() => plan.count * esp_len(plan.full_len) + MAX_TRAILER_LEN,
            _ => ESP_HEADER_LEN + pkt.len() + MAX_TRAILER_LEN,
        }
    }

    /// Turns one TUN read (virtio header + packet, perhaps a TCP
    /// super-packet) into ESP datagrams at `send[base..]`, appending them
    /// to `trains` (as UDP GSO runs when `gso`); returns the bytes used.
    pub fn process_tun_read(
        &mut self,
        now: Instant,
        read: &mut [u8],
        send: &mut [u8],
        base: usize,
        trains: &mut Vec<Train>,
        gso: bool,
    ) -> Result<usize, DropReason> {
        let hdr = VnetHdr::parse(read).ok_or(DropReason::Malformed)?;
        let pkt = &mut read[VNET_HDR_LEN..];
        if inner::parse(pkt).is_some_and(|h| inner::is_link_scoped(h.dst)) {
            // The kernel's own link-scoped chatter on the TUN (MLD reports
            // of a router, for example) never crosses a tunnel; it is not
            // traffic we failed to route, so it is not counted as a drop.
            return Ok(0);
        }
        if !hdr.is_tcp_gso() {
            complete_checksum(&hdr, pkt).map_err(|_| DropReason::Malformed)?;
            let out = send.get_mut(base..).ok_or(DropReason::TooBig)?;
            let len = pkt.len();
            if ESP_HEADER_LEN + len + MAX_TRAILER_LEN > out.len() {
                return Err(DropReason::TooBig);
            }
            out[ESP_HEADER_LEN..ESP_HEADER_LEN + len].copy_from_slice(pkt);
            let (peer, n) = self.encapsulate(now, out, len)?;
            let dst = self.dst(peer).ok_or(DropReason::NoSa)?;
            push_datagram(trains, base, n, peer, dst, gso);
            return Ok(n);
        }
        let plan = plan_segments(&hdr, pkt).map_err(|_| DropReason::Malformed)?;
        let (peer, ih) = self.route(pkt)?;
        let stride = esp_len(plan.full_len);
        if base + plan.count * stride + MAX_TRAILER_LEN > send.len() {
            return Err(DropReason::TooBig);
        }
        let dst = self.dst(peer).ok_or(DropReason::NoSa)?;
        // What to restore if sealing fails half-way: the trains queued so
        // far must not cover bytes the caller will reuse.
        let first_train = trains.len();
        let previous = trains.last().map(|t| (t.len, t.segment));
        let mut used = 0;
        for i in 0..plan.count {
            let seg_len = if i + 1 == plan.count {
                plan.last_len
            } else {
                plan.full_len
            };
            let slot = &mut send[base + i * stride..];
            let sealed = write_segment(
                &hdr,
                pkt,
                i,
                &mut slot[ESP_HEADER_LEN..ESP_HEADER_LEN + seg_len],
            )
            .map_err(|_| DropReason::Malformed)
            .and_then(|()| self.seal(peer, now, slot, seg_len, ih.next_header));
            let n = match sealed {
                Ok(n) => n,
                Err(reason) => {
                    // Nothing of this read is sent: the caller reuses its bytes.
                    trains.truncate(first_train);
                    if let (Some(t), Some((len, segment))) = (trains.last_mut(), previous) {
                        (t.len, t.segment) = (len, segment);
                    }
                    return Err(reason);
                }
            };
            debug_assert_eq!(n, esp_len(seg_len));
            push_datagram(trains, base + i * stride, n, peer, dst, gso);
            used = i * stride + n;
        }
        Ok(used)
    }

    /// Timer work: lifetime limits in time, and sequence reservations.
    pub fn poll_lifetimes(&mut self, now: Instant) {
        self.renew_reservations();
        for (slot, p) in self.peers.iter_mut().enumerate() {
            let Some(Peer {
                id, sa: Some(s), ..
            }) = p
            else {
                continue;
            };
            while let Some(ev) = s.sa.poll_lifetime(now) {
                super::control::report(
                    &self.metrics,
                    self.notices.as_ref(),
                    Direction::Out,
                    slot,
                    id,
                    &ev,
                );
            }
        }
    }

    /// Where the peer in `slot` receives, if the slot is in use.
    pub fn endpoint(&self, slot: usize) -> Option<SocketAddr> {
        Some(self.peers.get(slot)?.as_ref()?.endpoint)
    }

    fn dst(&self, slot: usize) -> Option<RawAddr> {
        Some(self.peers.get(slot)?.as_ref()?.dst)
    }
}

/// The outbound loop: drain the TUN (segmenting super-packets), seal into
/// one send buffer, send the batch with sendmmsg and UDP GSO. Returns only
/// when stopped or on an error the TUN will not recover from.
pub(super) fn run(
    mut out: Outbound,
    tun: &Tun,
    socket: &UdpSocket,
    stop: &AtomicBool,
    mut gso: bool,
    (commands, wake): (Receiver<OutboundCommand>, &super::control::Wake),
) {
    if let Err(e) = tun.set_nonblocking(true) {
        tracing::error!("outbound: cannot make the TUN non-blocking: {e}");
        return;
    }
    let mut read = vec![0u8; VNET_HDR_LEN + 65_535];
    let mut send = vec![0u8; SEND_BUFFER];
    let mut io = BatchIo::default();
    let mut trains: Vec<Train> = Vec::with_capacity(4 * BATCH);
    let mut last_tick = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        while let Ok(c) = commands.try_recv() {
            out.apply(c, now);
        }
        out.send_echoes(socket, now);
        let mut used = 0;
        let mut reads = 0;
        while reads < BATCH {
            let n = match tun.read(&mut read) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(
                        "outbound: reading {}: {e}; the data plane stops",
                        tun.name()
                    );
                    return;
                }
            };
            reads += 1;
            // The kernel reports a packet's full length even when it had to
            // cut it to fit the buffer.
            let Some(read) = read.get_mut(..n) else {
                out.drops.count(DropReason::TooBig);
                continue;
            };
            if used + Outbound::output_len(read) > send.len() {
                flush(&mut out, &mut io, socket, &mut send, &mut trains, &mut gso);
                used = 0;
            }
            match out.process_tun_read(now, read, &mut send, used, &mut trains, gso) {
                Ok(n) => used += n,
                Err(reason) => out.drops.count(reason),
            }
        }
        flush(&mut out, &mut io, socket, &mut send, &mut trains, &mut gso);
        if now.duration_since(last_tick) >= TICK {
            out.poll_lifetimes(now);
            last_tick = now;
        }
        if reads == 0 {
            if let Err(e) = wait_readable_or(tun.fd(), Some(wake.fd())) {
                tracing::error!("outbound: poll: {e}; the data plane stops");
                return;
            }
            // Woken or not, the commands are drained next: one read
            // clears the wake-up, only on this idle path.
            wake.clear();
        }
    }
}

/// Reports a lifetime limit a seal crossed, if it did.
fn lifetime_crossed(
    metrics: &Metrics,
    notices: Option<&NoticeSender>,
    slot: usize,
    peer: &str,
    event: Option<crate::esp::LifetimeEvent>,
) {
    if let Some(ev) = event {
        super::control::report(metrics, notices, Direction::Out, slot, peer, &ev);
    }
}

fn flush(
    out: &mut Outbound,
    io: &mut BatchIo,
    socket: &UdpSocket,
    send: &mut [u8],
    trains: &mut Vec<Train>,
    gso: &mut bool,
) {
    if trains.is_empty() {
        return;
    }
    let failed = io.send(socket, send, trains, gso);
    for _ in 0..failed {
        out.drops.count(DropReason::SendFailed);
    }
    trains.clear();
}
