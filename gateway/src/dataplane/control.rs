//! How the control plane changes the SAs of the running packet threads,
//! and how the threads tell it that an SA is due for rekeying.
//!
//! Each thread owns its SAs outright; the control plane sends it commands
//! over a channel that the thread drains before each batch (a `try_recv`,
//! no lock on the packet path). Because a thread woken by a packet drains
//! its commands first, an SA installed before the peer was told to use it
//! is in place when the peer's first packet on it arrives.
//!
//! Peers are addressed by slot: the index the routing tables name. Slots
//! of configured peers are their config order; the mesh's members get
//! theirs from [`crate::tunnels::Slots`].

use std::net::SocketAddr;
use std::sync::Arc;

use crate::esp::Direction;
use crate::esp::{LifetimeEvent, SaParams};
use crate::prefix::Prefix;

/// Slots beyond this are refused (a bound on the tables a command can grow).
pub const MAX_SLOTS: usize = 1 << 16;

/// A change to the outbound thread's peers.
pub enum OutboundCommand {
    /// The peer in `slot` is `id`, at `endpoint`.
    Peer {
        slot: usize,
        id: String,
        endpoint: SocketAddr,
    },
    /// Send to the peer in `slot` on this SA from now on; the one it
    /// replaces is dropped (its keys zeroized).
    Sa { slot: usize, params: SaParams },
    /// Stop sending to the peer in `slot` (its SA's key is revoked).
    ClearSa { slot: usize },
    /// Forget the peer in `slot` and its SA.
    Remove { slot: usize },
    /// Send this echo (`meshgate ping`) to the peer in `slot` through its
    /// SA, writing the SA's SPI into it.
    Echo {
        slot: usize,
        echo: super::echo::Echo,
    },
}

/// A change to the inbound thread's SAs.
pub enum InboundCommand {
    /// The peer in `slot` is `id` and sends from `prefixes`.
    Peer {
        slot: usize,
        id: String,
        prefixes: Vec<Prefix>,
    },
    /// Receive from the peer in `slot` on this SA too.
    Sa { slot: usize, params: SaParams },
    /// Stop receiving on `spi`.
    RemoveSa { spi: u32 },
    /// Forget the peer in `slot` and every SA it sends on.
    Remove { slot: usize },
}

// The commands hold keys (`SaParams`): their `Debug` says which SA, by
// SPI, and never prints key bytes.
impl std::fmt::Debug for OutboundCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutboundCommand::Peer { slot, id, endpoint } => {
                write!(f, "Outbound::Peer({slot}, {id}, {endpoint})")
            }
            OutboundCommand::Sa { slot, params } => {
                write!(f, "Outbound::Sa({slot}, {:#010x})", params.spi)
            }
            OutboundCommand::ClearSa { slot } => write!(f, "Outbound::ClearSa({slot})"),
            OutboundCommand::Remove { slot } => write!(f, "Outbound::Remove({slot})"),
            OutboundCommand::Echo { slot, echo } => {
                write!(f, "Outbound::Echo({slot}, {:?} {})", echo.kind, echo.id)
            }
        }
    }
}

impl std::fmt::Debug for InboundCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InboundCommand::Peer { slot, id, .. } => write!(f, "Inbound::Peer({slot}, {id})"),
            InboundCommand::Sa { slot, params } => {
                write!(f, "Inbound::Sa({slot}, {:#010x})", params.spi)
            }
            InboundCommand::RemoveSa { spi } => write!(f, "Inbound::RemoveSa({spi:#010x})"),
            InboundCommand::Remove { slot } => write!(f, "Inbound::Remove({slot})"),
        }
    }
}

/// What the packet threads report back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaNotice {
    /// An SA of the peer in `slot` crossed a lifetime limit.
    Lifetime {
        slot: usize,
        direction: Direction,
        event: LifetimeEvent,
    },
}

/// The control plane's ends of the threads' command channels.
#[derive(Clone)]
pub struct DataplaneControl {
    pub outbound: OutboundSender,
    pub inbound: std::sync::mpsc::Sender<InboundCommand>,
}

/// Commands to the outbound thread, which is woken to take them at once
/// (an idle thread would otherwise wait for its next tick): an SA is in
/// place, and an echo on its way, without waiting for traffic.
#[derive(Clone)]
pub struct OutboundSender {
    tx: std::sync::mpsc::Sender<OutboundCommand>,
    wake: Arc<Wake>,
}

impl OutboundSender {
    pub(super) fn new(tx: std::sync::mpsc::Sender<OutboundCommand>, wake: Arc<Wake>) -> Self {
        OutboundSender { tx, wake }
    }

    pub fn send(&self, c: OutboundCommand) -> Result<(), ThreadGone> {
        self.tx.send(c).map_err(|_| ThreadGone)?;
        self.wake.wake();
        Ok(())
    }
}

/// The packet thread a command was for has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadGone;

/// An eventfd a thread polls beside its device: written to wake it.
pub(super) struct Wake(std::os::fd::OwnedFd);

impl Wake {
    pub(super) fn new() -> std::io::Result<Wake> {
        // SAFETY: eventfd with flags only; a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor we own.
        Ok(Wake(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    pub(super) fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a u64 we own; a full counter (never
        // here) only means the thread is woken already.
        unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }

    /// Clears the wake-up (the thread then drains its commands).
    pub(super) fn clear(&self) {
        let mut n: u64 = 0;
        // SAFETY: reads 8 bytes into a u64 we own; EAGAIN when not woken.
        unsafe { libc::read(self.fd(), (&mut n as *mut u64).cast(), 8) };
    }
}

/// Where the threads send their notices (never blocks them).
pub type NoticeSender = tokio::sync::mpsc::UnboundedSender<SaNotice>;

/// Grows a thread's peer table to hold `slot`; false (and said) for a slot
/// out of range, which is not installed.
pub(super) fn make_room<T>(peers: &mut Vec<Option<T>>, slot: usize, id: &str) -> bool {
    if slot >= MAX_SLOTS {
        tracing::error!(peer = %id, "peer slot {slot} is out of range; not installed");
        return false;
    }
    if peers.len() <= slot {
        peers.resize_with(slot + 1, || None);
    }
    true
}

/// An SA of the peer in `slot` crossed a lifetime limit: counted, told to
/// the control plane (which rekeys a mesh member's SAs), and logged by how
/// much it matters: routine for a member that rekeys by itself, a warning
/// for a configured SA that needs an operator, an error at a hard limit.
pub(super) fn report(
    metrics: &crate::metrics::Metrics,
    notices: Option<&NoticeSender>,
    direction: Direction,
    slot: usize,
    peer: &str,
    ev: &LifetimeEvent,
) {
    metrics.lifetime_event(peer, direction, ev);
    if let Some(n) = notices {
        let _ = n.send(SaNotice::Lifetime {
            slot,
            direction,
            event: *ev,
        });
    }
    let which = match direction {
        Direction::In => "inbound",
        Direction::Out => "outbound",
    };
    let hard = match direction {
        Direction::In => "its packets are dropped",
        Direction::Out => "traffic to this peer is dropped until it is rekeyed",
    };
    match ev {
        LifetimeEvent::Soft { spi, kind } if notices.is_some() => tracing::debug!(
            peer,
            spi = format_args!("{spi:#010x}"),
            ?kind,
            "{which} SA reached its soft lifetime; rekeying"
        ),
        LifetimeEvent::Soft { spi, kind } => tracing::warn!(
            peer,
            spi = format_args!("{spi:#010x}"),
            ?kind,
            "{which} SA reached its soft lifetime; rekey due"
        ),
        LifetimeEvent::Hard { spi, kind } => tracing::error!(
            peer,
            spi = format_args!("{spi:#010x}"),
            ?kind,
            "{which} SA reached its hard lifetime; {hard}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esp::{Backend, CipherSuite, KeyMaterial, Lifetime};

    /// Commands are logged at debug level: an SA shows by SPI, and no
    /// byte of its key, in any radix the derived form would use.
    #[test]
    fn commands_print_the_spi_and_never_the_key() {
        let key = [0xa7u8; 20];
        let params = || SaParams {
            spi: 0x1234_5678,
            suite: CipherSuite::Aes128Gcm,
            key: KeyMaterial::new(CipherSuite::Aes128Gcm, &key).unwrap(),
            esn: true,
            backend: Backend::Ring,
            lifetime: Lifetime::default(),
            replay_window: 1024,
        };
        let printed = [
            format!(
                "{:?}",
                OutboundCommand::Sa {
                    slot: 3,
                    params: params()
                }
            ),
            format!(
                "{:?}",
                InboundCommand::Sa {
                    slot: 3,
                    params: params()
                }
            ),
        ];
        for p in &printed {
            assert!(p.contains("0x12345678"), "{p}");
            for key_form in ["a7", "A7", "167"] {
                assert!(!p.contains(key_form), "{p}");
            }
        }
        assert_eq!(printed[0], "Outbound::Sa(3, 0x12345678)");
    }
}
