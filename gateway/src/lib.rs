//! meshgate: a multi-region VPN appliance.
//!
//! The crate is laid out as the architecture, in layers that only point
//! down (README.md draws them; a test fails on a cycle):
//!
//! - Cores, sans-IO, tested on virtual time: [`esp`] (the ESP crate: SAs,
//!   replay window, lifetimes), [`membership`] (SWIM, the liveness
//!   detector and whom it watches, member records), [`keys`] (key
//!   exchange, epochs), [`tunnels`] (the SAs held with each member),
//!   [`member`] (one mesh member composing them), [`policy`] (the wasm
//!   policy engine on its own thread, and the view and tables it works on).
//! - Shells around them: [`dataplane`] (the packet threads between the
//!   [`tun`] device and the UDP socket), [`signal`] (QUIC with mutual TLS,
//!   carrying a member's datagrams and messages), [`mesh`] (what a member
//!   reports, into metrics and policy events).
//! - The rest: [`config`] (the TOML file, validated with spans),
//!   [`metrics`] (with the [`sa_book`] of installed SAs), [`status`]
//!   (what `meshgate status` shows), [`admin`] (the admin API: reads on
//!   TCP, changes on the [`control`] socket), [`identity`] (the mesh CA and
//!   certificates), [`seqstate`] (sequence numbers across restarts),
//!   [`ids`] (what may name a member), [`prefix`], [`time`], and at the top [`gateway`] (`meshgate run`) and
//!   [`lab`] (a multi-region lab in network namespaces, [`netns`]).

pub mod admin;
pub mod certinfo;
pub mod claims;
pub mod cloud;
pub mod config;
pub mod control;
pub mod dataplane;
/// The ESP core, a crate of its own (`esp/` in the workspace).
pub use meshgate_esp as esp;
pub mod fleet;
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod identity;
pub mod ids;
pub mod keygen;
pub mod keys;
pub mod lab;
pub mod member;
pub mod membership;
pub mod mesh;
pub mod metrics;
pub mod netns;
pub mod ping;
pub mod policy;
pub mod prefix;
pub mod sa_book;
pub mod seqstate;
pub mod sessions;
pub mod signal;
pub mod start;
pub mod status;
pub mod time;
pub mod tun;
pub mod tunnels;
pub mod underlay;

#[cfg(test)]
mod layers;
