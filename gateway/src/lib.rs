//! meshgate: a multi-region VPN appliance.
//!
//! The crate is laid out as the architecture: [`esp`] is the sans-IO IPsec
//! core (SAs, replay window, lifetimes), [`dataplane`] is the thin threaded
//! shell that moves packets between the [`tun`] device and the UDP socket,
//! [`config`] parses and validates the TOML file, [`metrics`] and [`admin`]
//! expose counters, [`gateway`] ties them together for `meshgate run`, and
//! [`lab`] builds a multi-region lab in network namespaces ([`netns`]).

pub mod admin;
pub mod config;
pub mod dataplane;
/// The ESP core, a crate of its own (`esp/` in the workspace).
pub use meshgate_esp as esp;
pub mod gateway;
pub mod identity;
pub mod keys;
pub mod lab;
pub mod member;
pub mod membership;
pub mod mesh;
pub mod metrics;
pub mod netns;
pub mod policy;
pub mod prefix;
pub mod seqstate;
pub mod signal;
pub mod time;
pub mod tun;
pub mod tunnels;

#[cfg(test)]
mod layers;
