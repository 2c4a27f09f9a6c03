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
    pub outbound: std::sync::mpsc::Sender<OutboundCommand>,
    pub inbound: std::sync::mpsc::Sender<InboundCommand>,
}

/// Where the threads send their notices (never blocks them).
pub type NoticeSender = tokio::sync::mpsc::UnboundedSender<SaNotice>;
