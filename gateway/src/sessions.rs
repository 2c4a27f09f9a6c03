//! The shell around the sessions of configured peers
//! ([`keys::session`](crate::keys::session)): hellos the inbound thread
//! hands over (non-ESP datagrams on the ESP port) go to the session whose
//! MAC they carry, hellos out leave on the ESP socket for the peer's
//! configured endpoint, and each new session's keys go to the packet
//! threads as the peer's SAs. Nothing here waits on the data plane, and
//! the data plane never waits on this.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::dataplane::{DataplaneControl, InboundCommand, OutboundCommand};
use crate::esp::SaParams;
use crate::keys::session::{Session, SessionConfig, SessionEvent};
use crate::metrics::Metrics;

/// Hellos waiting for the session task at most (more are dropped; the
/// peer repeats its hello).
pub const QUEUED_HELLOS: usize = 256;

/// A configured peer, as its session needs it.
pub struct SessionPeer {
    pub slot: usize,
    pub id: String,
    pub endpoint: SocketAddr,
    /// The configured SAs: their keys are the pre-shared secrets, the rest
    /// (SPI, suite, ESN, lifetimes, window) is what each session's SAs use.
    pub outbound: SaParams,
    pub inbound: SaParams,
}

/// Runs the sessions of `peers` until the hello channel closes.
pub async fn run(
    peers: Vec<SessionPeer>,
    mut hellos: mpsc::Receiver<Vec<u8>>,
    socket: UdpSocket,
    control: DataplaneControl,
    metrics: Arc<Metrics>,
) {
    let now = Instant::now();
    let mut sessions = Vec::new();
    for p in peers {
        let cfg = SessionConfig {
            peer: p.id.clone(),
            suite: p.outbound.suite,
            psk_out: p.outbound.key.clone(),
            psk_in: p.inbound.key.clone(),
            spi_out: p.outbound.spi,
            spi_in: p.inbound.spi,
        };
        match Session::new(cfg, now) {
            Ok(s) => sessions.push((p, s, None)),
            Err(e) => tracing::error!(peer = %p.id, "no session with {}: {e}", p.id),
        }
    }
    let m = &metrics.sessions;
    loop {
        for (p, s, said) in sessions.iter_mut() {
            carry_out(p, s, said, &socket, &control, &metrics);
        }
        let up = sessions.iter().filter(|(_, s, _)| s.is_up()).count();
        m.up.set(up as i64);
        m.waiting.set((sessions.len() - up) as i64);
        let next = sessions
            .iter()
            .filter_map(|(_, s, _)| s.poll_timeout())
            .min();
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            hello = hellos.recv() => {
                let Some(hello) = hello else { return };
                let now = Instant::now();
                match sessions.iter_mut().find(|(_, s, _)| s.accepts(&hello)) {
                    Some((_, s, _)) => s.handle_datagram(&hello, now),
                    None => {
                        m.refused.with_label_values(&["unknown"]).inc();
                        tracing::debug!("a non-ESP datagram that is no configured peer's hello");
                    }
                }
            }
            () = sleep => {
                let now = Instant::now();
                for (_, s, _) in sessions.iter_mut() {
                    if s.poll_timeout().is_some_and(|t| t <= now) {
                        s.handle_timeout(now);
                    }
                }
            }
        }
    }
}

/// Refusals are said once per this per peer (all are counted).
const SAY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends what `s` has to send, and installs the keys of a new session.
fn carry_out(
    p: &SessionPeer,
    s: &mut Session,
    said: &mut Option<Instant>,
    socket: &UdpSocket,
    control: &DataplaneControl,
    metrics: &Metrics,
) {
    while let Some(d) = s.poll_transmit() {
        if let Err(e) = socket.send_to(&d, p.endpoint) {
            // The hello is repeated; the next one may pass.
            tracing::debug!(peer = %p.id, "sending a session hello to {}: {e}", p.endpoint);
        }
    }
    while let Some(e) = s.poll_event() {
        match e {
            SessionEvent::Keys { outbound, inbound } => {
                let out = SaParams {
                    key: outbound,
                    ..p.outbound.clone()
                };
                let inb = SaParams {
                    key: inbound,
                    ..p.inbound.clone()
                };
                // Inbound first: the peer may send on its new SA at once.
                // The SPIs are the configured ones: the last session's SA
                // on it goes (and its key with it).
                let spi = inb.spi;
                let installed = control
                    .inbound
                    .send(InboundCommand::RemoveSa { spi })
                    .is_ok()
                    && control
                        .inbound
                        .send(InboundCommand::Sa {
                            slot: p.slot,
                            params: inb,
                        })
                        .is_ok()
                    && control
                        .outbound
                        .send(OutboundCommand::Sa {
                            slot: p.slot,
                            params: out,
                        })
                        .is_ok();
                if installed {
                    metrics.sessions.keyed.inc();
                    tracing::info!(peer = %p.id, "a new session with {}: SAs keyed afresh", p.id);
                } else {
                    tracing::error!(peer = %p.id, "the data plane is gone; no session with {}", p.id);
                }
            }
            SessionEvent::Refused(kind, why) => {
                metrics.sessions.refused.with_label_values(&[kind]).inc();
                if said.is_none_or(|t| t.elapsed() >= SAY_EVERY) {
                    *said = Some(Instant::now());
                    tracing::warn!(peer = %p.id, "refused: {why} (counted in meshgate_session_refused_total)");
                }
            }
        }
    }
}
