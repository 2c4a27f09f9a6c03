//! Underlay health: which of a member's labelled endpoints (`internet`,
//! `dx`, ...) the ESP path actually reaches, so a policy can move a peer
//! off a cut underlay and back once it heals.
//!
//! Each member probes the endpoints of every member it holds an SA with,
//! over every underlay both have, every 100 ms, through the ESP port (the
//! path ESP takes, not the signalling channel's). Probes are non-ESP
//! datagrams (RFC 3948's marker) MAC'd with a key derived from the pair's
//! SA key, so only the peer can answer and nothing else is parsed first.
//! A path no probe has come back over for 600 ms is down.
//!
//! - [`message`]: the probe and answer datagrams;
//! - [`keys`]: the probe keys, derived from the SAs the tunnels hold;
//! - [`prober`]: the sans-IO state machine (datagrams and time in,
//!   datagrams and path changes out);
//! - [`task`]: the shell (the ESP socket, the policy's view, metrics).

pub mod keys;
pub mod message;
pub mod prober;
pub mod task;

pub use keys::{ProbeKeys, SharedProbeKeys};
pub use prober::{PathReport, Prober};
