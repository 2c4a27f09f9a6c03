//! What a member core hands its shell: I/O to carry out ([`Output`]) and
//! news for its owner ([`NodeEvent`]). None of these print key bytes.

use std::net::SocketAddr;

use crate::dataplane::{InboundCommand, OutboundCommand};
use crate::keys;
use crate::membership::info::MemberInfo;
use crate::membership::{MembershipEvent, Observed};

/// A connection of the signalling channel, as the shell numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What travels to a peer.
#[derive(Clone, PartialEq, Eq)]
pub enum Payload {
    /// A membership datagram (unreliable).
    Datagram(Vec<u8>),
    /// A key-exchange message (reliable, one stream each).
    Message(Vec<u8>),
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Datagram(d) => write!(f, "Datagram({} bytes)", d.len()),
            Payload::Message(m) => write!(f, "Message({} bytes)", m.len()),
        }
    }
}

/// I/O for the shell, in the order it must be carried out: data-plane
/// changes come before the messages that tell a peer to use them.
pub enum Output {
    Send {
        conn: ConnId,
        payload: Payload,
    },
    /// Open a connection to `peer` at `addr`; answer with
    /// `handle_connected` or `handle_dial_failed`.
    Dial {
        peer: String,
        addr: SocketAddr,
    },
    /// Close a superseded connection.
    Close {
        conn: ConnId,
    },
    /// Ask discovery for members to join through; answer with
    /// `handle_seeds`.
    Discover,
    /// A change for the outbound packet thread.
    Outbound(OutboundCommand),
    /// A change for the inbound packet thread.
    Inbound(InboundCommand),
    /// With KMS epoch keys: every data key held here, as ciphertext, by
    /// epoch (the shell decrypts new ones and forgets those gone).
    WrappedKeys(Vec<(keys::Epoch, Vec<u8>)>),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Send { conn, payload } => {
                write!(f, "Send {{ conn: {conn:?}, payload: {payload:?} }}")
            }
            Output::Dial { peer, addr } => write!(f, "Dial {{ peer: {peer:?}, addr: {addr} }}"),
            Output::Close { conn } => write!(f, "Close {{ conn: {conn:?} }}"),
            Output::Discover => write!(f, "Discover"),
            // The commands' own Debug names the SA by SPI, never its keys.
            Output::Outbound(c) => write!(f, "{c:?}"),
            Output::Inbound(c) => write!(f, "{c:?}"),
            Output::WrappedKeys(held) => {
                let epochs: Vec<_> = held.iter().map(|(e, _)| e).collect();
                write!(f, "WrappedKeys({epochs:?})")
            }
        }
    }
}

/// What a member hands its owner.
#[derive(Debug)]
pub enum NodeEvent {
    Membership(MembershipEvent),
    /// An SA to install or remove (the negotiator's events other than sends).
    Keys(keys::Event),
    /// Every other member as seen now: after membership changes, and each
    /// [`OBSERVE_EVERY`](super::health::OBSERVE_EVERY) for the health measured.
    Observed(Vec<Observed>),
    /// Something a peer sent, or a connection, was refused.
    Refused(Refusal),
    /// The epoch new SAs use, and those revoked (every one below the
    /// floor, and the others listed), after a change.
    Epochs {
        current: keys::Epoch,
        floor: keys::Epoch,
        revoked: Vec<keys::Epoch>,
    },
    /// How many SAs in the data plane are of each epoch.
    SaEpochs(Vec<(keys::Epoch, usize)>),
    /// This member's own record, as advertised now (after a change).
    OwnRecord(Box<MemberInfo>),
    /// A negotiated SA is in the data plane (when the member keeps tunnels).
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
    /// `connection`, `message`, `membership`, `record`, `epochs` or
    /// `key_exchange`.
    pub what: &'static str,
    /// The counter's reason label.
    pub kind: &'static str,
    pub reason: String,
}

/// The epochs after an operator's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochReport {
    /// The order's serial.
    pub serial: u64,
    pub current: keys::Epoch,
    /// Every epoch below is revoked.
    pub floor: keys::Epoch,
    pub revoked: Vec<keys::Epoch>,
    /// Peers being rekeyed onto the current epoch.
    pub rekeying: usize,
}
