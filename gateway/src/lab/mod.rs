//! `meshgate lab`: a multi-region deployment on one machine.
//!
//! Per region an appliance namespace runs a real `meshgate` process and a
//! VPC host namespace sits behind it with its own prefix; the appliances
//! share an underlay bridge. The integration tests build the same lab.
//!
//! ```text
//!   host-1 10.1.1.10         host-2 10.2.1.10         host-3 10.3.1.10
//!          fd00:1:0:1::10           fd00:2:0:1::10           fd00:3:0:1::10
//!        |  lan                   |  lan                   |  lan
//!   app-1 10.1.1.1            app-2 10.2.1.1           app-3 10.3.1.1
//!   [meshgate, mg0]           [meshgate, mg0]          [meshgate, mg0]
//!        |  198.18.0.1            |  198.18.0.2            |  198.18.0.3
//!   =============== underlay bridge (ESP-in-UDP, port 4500) ===========
//! ```

mod configs;
pub mod impair;
pub mod probe;
mod process;
mod report;
mod run;
mod topology;

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::RngCore;

use crate::netns::{veth, Netns};
pub use process::{catch_signals, check_interrupted};
pub use run::{run_lab, LabOptions};

/// The admin listener of every lab gateway, inside its own namespace.
pub const ADMIN: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9100);
/// The ESP-in-UDP port the lab gateways use.
pub const ESP_PORT: u16 = 4500;
/// The signalling (QUIC) port of the lab gateways.
pub const SIGNAL_PORT: u16 = 4433;
/// How many of the first regions serve as seeds for the others.
pub const SEEDS: usize = 2;

/// One region: an appliance and the VPC host behind it.
pub struct Region {
    pub index: usize,
    pub appliance: Netns,
    pub host: Netns,
}

impl Region {
    /// 1-based region number used in names and addresses.
    pub fn number(&self) -> usize {
        self.index + 1
    }
    pub fn underlay_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, self.number() as u8)
    }
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.number() as u8, 1, 10)
    }
    pub fn lan_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.number() as u8, 1, 1)
    }
    pub fn host_ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, self.number() as u16, 0, 1, 0, 0, 0, 0x10)
    }
    pub fn lan_ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, self.number() as u16, 0, 1, 0, 0, 0, 1)
    }
    /// The region's VPC prefixes, IPv4 and IPv6.
    pub fn prefixes(&self) -> [String; 2] {
        [
            format!("10.{}.0.0/16", self.number()),
            format!("fd00:{}::/48", self.number()),
        ]
    }
    pub fn gateway_id(&self) -> String {
        format!("region-{}", self.number())
    }
}

/// A running lab; dropping it stops the gateways and removes every
/// namespace and file it made.
pub struct Lab {
    pub tag: String,
    pub dir: PathBuf,
    gateways: Vec<Option<Child>>,
    pub regions: Vec<Region>,
    pub underlay: Netns,
    /// The body of every gateway's `[sa]` section.
    pub sa_settings: String,
    /// The policy every gateway runs (a built-in name).
    pub policy: String,
    /// The topology whose roles and groups the members get (see
    /// [`placement`]); `None`: the one `policy` builds. Differing lets a
    /// lab start on one policy and be reloaded into another.
    pub placement: Option<String>,
}

/// A region's place in a topology: its role and redundancy group. With
/// `hub-spoke`, region 1 (and region 2 in labs of four or more, as its
/// passive partner) is a hub and the others are spokes; otherwise every
/// region is an edge.
pub fn placement(
    policy: &str,
    regions: usize,
    index: usize,
) -> (&'static str, Option<&'static str>) {
    match policy {
        "hub-spoke" if index == 0 || (index == 1 && regions >= 4) => ("hub", Some("hubs")),
        "hub-spoke" => ("leaf", None),
        _ => ("edge", None),
    }
}

/// The SPI of the SA from region `from` to region `to` (0-based): unique
/// per receiver, and readable in captures.
pub fn spi(from: usize, to: usize) -> u32 {
    0x0100_0000 | ((from as u32 + 1) << 12) | (to as u32 + 1)
}

/// A short tag for names, unique per process.
pub fn default_tag() -> String {
    format!("mg{}", std::process::id() % 10000)
}
