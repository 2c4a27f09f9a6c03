//! What the data plane is built from: the configured peers with their
//! SAs, where sequence-number state lives, and the TUN's MTU. (The config
//! file says all this among much else; the data plane needs only this.)

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::esp::SaParams;
use crate::prefix::Prefix;

pub struct DataplaneSettings {
    /// Peers with configured keys, in slot order (a mesh member has none:
    /// its SAs arrive as commands).
    pub peers: Vec<StaticPeer>,
    /// Where sequence numbers are reserved and replay windows recorded.
    pub state_file: PathBuf,
    pub mtu: u16,
    /// Configured peers' keys are pre-shared secrets and their SAs come
    /// from sessions (`keys::session`): hellos go here, and the configured
    /// SAs are not installed. `None`: installed as configured (tests of the
    /// data plane alone).
    pub hellos: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    /// Non-ESP datagrams whose magic (the 4 bytes after RFC 3948's
    /// marker) is listed go to its channel (underlay probes); the rest to
    /// `hellos`.
    pub by_magic: Vec<([u8; 4], tokio::sync::mpsc::Sender<Vec<u8>>)>,
}

/// A peer with configured SAs.
pub struct StaticPeer {
    pub id: String,
    pub endpoint: SocketAddr,
    /// What it may send from, and what is routed to it.
    pub prefixes: Vec<Prefix>,
    pub outbound: SaParams,
    pub inbound: SaParams,
}
