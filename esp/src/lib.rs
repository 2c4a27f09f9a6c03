//! Sans-IO IPsec ESP core: RFC 4303 tunnel mode with RFC 4106 AES-GCM.
//!
//! Nothing here touches a socket, a device or a clock. The data plane hands
//! in caller-owned buffers and `Instant`s and acts on what comes back:
//! [`OutboundSa::seal`] turns an inner IP packet into an ESP packet in place,
//! [`InboundSa::open`] turns an ESP packet back into the inner packet or a
//! [`DropReason`], and both report [`LifetimeEvent`]s so the control plane
//! knows when to rekey.
//!
//! A crate of its own so that it builds and tests without the gateway's
//! runtime (tokio, quinn, wasmtime), and so that no `unsafe` enters it.

#![forbid(unsafe_code)]

pub mod aead;
mod defaults;
mod keys;
mod lifetime;
mod replay;
mod sa;
mod wire;

#[cfg(test)]
mod tests;

pub use aead::{Aead, AeadError, Backend, CipherSuite};
pub use defaults::{SaDefaults, NEGOTIATED_HARD_SECONDS, NEGOTIATED_SOFT_SECONDS};
pub use keys::{KeyError, KeyMaterial};
pub use lifetime::{Lifetime, LifetimeEvent, LifetimeLimits, LimitKind};
pub use replay::{ReplayWindow, MAX_REPLAY_WINDOW, MIN_REPLAY_WINDOW};
pub use sa::{InboundSa, Opened, OutboundSa, SaError, SaParams, SealError, Sealed};
pub use wire::{classify_udp_payload, peek_spi, UdpPayloadKind};

/// SPI (4) + sequence number (4) + explicit IV (8, RFC 4106 §3.1).
pub const ESP_HEADER_LEN: usize = 16;
/// AES-GCM with a 16-octet ICV (RFC 4106 §6).
pub const ICV_LEN: usize = 16;
/// Largest trailer `seal` appends: padding to 4-byte alignment (at most 3),
/// pad length, next header and the ICV.
pub const MAX_TRAILER_LEN: usize = 3 + 2 + ICV_LEN;
/// Smallest well-formed ESP packet: header, a 4-byte payload holding only the
/// pad length and next header (plus 2 pad bytes), and the ICV.
pub const MIN_ESP_PACKET_LEN: usize = ESP_HEADER_LEN + 4 + ICV_LEN;
/// Largest ESP packet `open` accepts: nothing bigger fits in one IP datagram.
pub const MAX_ESP_PACKET_LEN: usize = 65_535;
/// Largest inner packet `seal` accepts: the largest IP packet without jumbograms.
pub const MAX_INNER_LEN: usize = 65_535;

/// Next header for an IPv4 inner packet (tunnel mode).
pub const NEXT_HEADER_IPV4: u8 = 4;
/// Next header for an IPv6 inner packet (tunnel mode).
pub const NEXT_HEADER_IPV6: u8 = 41;
/// Next header of a dummy packet (RFC 4303 §2.6): the receiver discards it.
pub const NEXT_HEADER_NONE: u8 = 59;

/// Which way an SA carries traffic, relative to this gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    In,
    Out,
}

impl Direction {
    /// The `direction` label of the metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// Every reason the data plane drops a packet; maps 1:1 onto the `reason`
/// label of the drop counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Too short, too long, misaligned, or bad padding after decryption.
    Malformed,
    /// Duplicate, or left of the anti-replay window.
    Replay,
    /// The ICV did not verify: forged, corrupted, or the wrong SA.
    Icv,
    /// No inbound SA has this SPI.
    UnknownSpi,
    /// The SA has reached a hard lifetime limit.
    Expired,
    /// The inner destination matches no route.
    NoRoute,
    /// The inner source is not one the peer may send from.
    Spoofed,
    /// The packet does not fit the path MTU.
    TooBig,
    /// The kernel refused to send the ESP datagram on the underlay.
    SendFailed,
    /// The kernel refused the inner packet on the TUN device.
    TunWriteFailed,
    /// The SA's sequence numbers are not yet persisted (the state
    /// directory cannot keep up or cannot be written): fail closed.
    SeqNotReserved,
    /// The route's next hop has no outbound SA yet (still negotiating, or
    /// its keys could not be agreed): fail closed.
    NoSa,
}

impl DropReason {
    /// Every reason, in `index` order, so counters can be pre-registered.
    pub const ALL: [DropReason; 12] = [
        DropReason::Malformed,
        DropReason::Replay,
        DropReason::Icv,
        DropReason::UnknownSpi,
        DropReason::Expired,
        DropReason::NoRoute,
        DropReason::Spoofed,
        DropReason::TooBig,
        DropReason::SendFailed,
        DropReason::TunWriteFailed,
        DropReason::SeqNotReserved,
        DropReason::NoSa,
    ];

    /// The value of the drop counter's `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Replay => "replay",
            DropReason::Icv => "icv",
            DropReason::UnknownSpi => "unknown_spi",
            DropReason::Expired => "expired",
            DropReason::NoRoute => "no_route",
            DropReason::Spoofed => "spoofed",
            DropReason::TooBig => "too_big",
            DropReason::SendFailed => "send_failed",
            DropReason::TunWriteFailed => "tun_write_failed",
            DropReason::SeqNotReserved => "seq_not_reserved",
            DropReason::NoSa => "no_sa",
        }
    }

    /// Position in [`DropReason::ALL`], for array-backed per-thread counters.
    pub fn index(self) -> usize {
        match self {
            DropReason::Malformed => 0,
            DropReason::Replay => 1,
            DropReason::Icv => 2,
            DropReason::UnknownSpi => 3,
            DropReason::Expired => 4,
            DropReason::NoRoute => 5,
            DropReason::Spoofed => 6,
            DropReason::TooBig => 7,
            DropReason::SendFailed => 8,
            DropReason::TunWriteFailed => 9,
            DropReason::SeqNotReserved => 10,
            DropReason::NoSa => 11,
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
