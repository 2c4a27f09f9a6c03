//! TUN -> route -> seal -> UDP.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::batch::{BatchIo, Buffers, RawAddr, BATCH};
use super::{inner, wait_readable, TICK};
use crate::config::Config;
use crate::esp::{DropReason, LifetimeEvent, OutboundSa, SaError, SaParams, SealError, ESP_HEADER_LEN, MAX_TRAILER_LEN};
use crate::metrics::{Direction, DropCounters, FlowCounters, Metrics};
use crate::prefix::PrefixMap;
use crate::tun::Tun;

struct Peer {
    id: String,
    sa: OutboundSa,
    endpoint: SocketAddr,
    dst: RawAddr,
    counters: FlowCounters,
}

/// The outbound half of the data plane: routing table and outbound SAs.
pub struct Outbound {
    routes: PrefixMap<usize>,
    peers: Vec<Peer>,
    drops: DropCounters,
    metrics: Arc<Metrics>,
}

impl Outbound {
    pub fn new(config: &Config, metrics: &Arc<Metrics>) -> Result<Outbound, SaError> {
        let mut routes = PrefixMap::default();
        let mut peers = Vec::with_capacity(config.peers.len());
        let now = Instant::now();
        for (i, p) in config.peers.iter().enumerate() {
            for prefix in &p.prefixes {
                routes.insert(*prefix, i);
            }
            let s = &p.outbound;
            let sa = OutboundSa::new(
                SaParams { spi: s.spi, suite: s.suite, key: s.key.clone(), esn: s.esn, backend: s.backend, lifetime: s.lifetime, replay_window: s.replay_window },
                now,
            )?;
            let counters = metrics.flow(&p.id, s.spi, Direction::Out, s.suite.name());
            peers.push(Peer { id: p.id.clone(), sa, endpoint: p.endpoint, dst: RawAddr::new(p.endpoint), counters });
        }
        Ok(Outbound { routes, peers, drops: metrics.drops(), metrics: metrics.clone() })
    }

    /// Seals the inner packet at `buf[ESP_HEADER_LEN..ESP_HEADER_LEN + len]`
    /// in place; returns the peer it goes to and the ESP packet's length.
    pub fn encapsulate(&mut self, now: Instant, buf: &mut [u8], len: usize) -> Result<(usize, usize), DropReason> {
        let end = ESP_HEADER_LEN.checked_add(len).ok_or(DropReason::TooBig)?;
        if end + MAX_TRAILER_LEN > buf.len() {
            return Err(DropReason::TooBig);
        }
        let hdr = inner::parse(&buf[ESP_HEADER_LEN..end]).ok_or(DropReason::Malformed)?;
        let &idx = self.routes.lookup(hdr.dst).ok_or(DropReason::NoRoute)?;
        let peer = &mut self.peers[idx];
        match peer.sa.seal(now, buf, hdr.len, hdr.next_header) {
            Ok(sealed) => {
                peer.counters.count(hdr.len);
                if let Some(ev) = sealed.event {
                    report(&self.metrics, &peer.id, &ev);
                }
                Ok((idx, sealed.len))
            }
            Err(SealError::BufferTooSmall) => Err(DropReason::TooBig),
            Err(_) => Err(DropReason::Expired),
        }
    }

    /// Reports lifetime limits in time that have passed.
    pub fn poll_lifetimes(&mut self, now: Instant) {
        for p in &mut self.peers {
            while let Some(ev) = p.sa.poll_lifetime(now) {
                report(&self.metrics, &p.id, &ev);
            }
        }
    }

    pub fn endpoint(&self, peer: usize) -> SocketAddr {
        self.peers[peer].endpoint
    }
}

fn report(metrics: &Metrics, peer: &str, ev: &LifetimeEvent) {
    metrics.lifetime_event(peer, Direction::Out, ev);
    match ev {
        LifetimeEvent::Soft { spi, kind } => tracing::warn!(peer, spi = format_args!("{spi:#010x}"), ?kind, "outbound SA reached its soft lifetime; rekey due"),
        LifetimeEvent::Hard { spi, kind } => tracing::error!(peer, spi = format_args!("{spi:#010x}"), ?kind, "outbound SA reached its hard lifetime; traffic to this peer is dropped until it is rekeyed"),
    }
}

/// The outbound loop: drain the TUN in batches, seal, send with sendmmsg.
pub(super) fn run(mut out: Outbound, tun: &Tun, socket: &UdpSocket, stop: &AtomicBool, size: usize) {
    if let Err(e) = tun.set_nonblocking(true) {
        tracing::error!("outbound: cannot make the TUN non-blocking: {e}");
        return;
    }
    let mut bufs = Buffers::new(size);
    let mut io = BatchIo::default();
    let mut items: Vec<(usize, usize, RawAddr)> = Vec::with_capacity(BATCH);
    let mut last_tick = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        items.clear();
        let now = Instant::now();
        for i in 0..BATCH {
            let buf = bufs.get_mut(i);
            let room = buf.len() - ESP_HEADER_LEN - MAX_TRAILER_LEN;
            let n = match tun.read(&mut buf[ESP_HEADER_LEN..ESP_HEADER_LEN + room]) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("outbound: reading {}: {e}", tun.name());
                    break;
                }
            };
            match out.encapsulate(now, buf, n) {
                Ok((peer, len)) => items.push((i, len, out.peers[peer].dst)),
                Err(reason) => out.drops.count(reason),
            }
        }
        if !items.is_empty() {
            let failed = io.send(socket, &mut bufs, &items);
            if failed > 0 {
                tracing::debug!("outbound: {failed} datagrams refused by the kernel");
            }
        }
        if now.duration_since(last_tick) >= TICK {
            out.poll_lifetimes(now);
            last_tick = now;
        }
        if items.is_empty() {
            if let Err(e) = wait_readable(tun.fd()) {
                tracing::error!("outbound: poll: {e}");
                return;
            }
        }
    }
}
