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
#[cfg(feature = "aws")]
pub mod discovery;
pub mod dx;
pub mod failover;
pub mod impair;
#[cfg(feature = "aws")]
pub mod kms;
pub mod leaves;
pub mod monitoring;
#[cfg(feature = "aws")]
pub mod moto;
mod plan;
pub mod probe;
mod process;
mod report;
mod run;
mod topology;
pub mod underlay_cut;

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

/// One region: an appliance and the VPC host behind it; in a lab with
/// zones, a second appliance (zone b) and the VPC's router between them
/// and the host.
pub struct Region {
    pub index: usize,
    /// The appliance (zone a's, in a lab with zones).
    pub appliance: Netns,
    pub host: Netns,
    /// Zone b's appliance, the passive partner of zone a's.
    pub standby: Option<Netns>,
    /// The VPC's router: its main routing table is the VPC's route table,
    /// which the active appliance claims.
    pub router: Option<Netns>,
}

impl Region {
    /// 1-based region number used in names and addresses.
    pub fn number(&self) -> usize {
        self.index + 1
    }
    pub fn underlay_ip(&self) -> Ipv4Addr {
        underlay_ip(self.number(), 0)
    }
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.number() as u8, 1, 10)
    }
    /// The host's next hop: the appliance, or the VPC's router.
    pub fn lan_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.number() as u8, 1, 1)
    }
    /// The route table id of the region's VPC (a lab with zones).
    pub fn route_table(&self) -> String {
        format!("rtb-{}", self.number())
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
    /// Appliances per region: 1, or 2 (zones a and b, one redundancy
    /// group, behind the VPC's router).
    pub zones: usize,
    /// The lab's AWS (a moto server), when its gateways claim routes
    /// through the SDK rather than in the routers directly.
    #[cfg(feature = "aws")]
    pub moto: Option<moto::MotoCloud>,
    /// The mesh's epoch keys are KMS data keys in the lab's AWS
    /// ([`Lab::use_kms`]).
    #[cfg(feature = "aws")]
    pub kms: Option<kms::LabKms>,
    /// Leaf VPCs attached to the regions' edges (`--leaves`); their
    /// gateways come after the regions' appliances.
    pub leaves: Vec<leaves::Leaf>,
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
    /// Operator parameters of every gateway's policy (`[policy] params`).
    pub policy_params: Vec<(String, String)>,
    /// Every gateway is on the `dx` underlay too ([`Lab::add_dx_underlay`]).
    pub dx: bool,
    /// The gateways find seeds by EC2 tags in the lab's AWS
    /// (`Lab::register_instances`), not from a list.
    pub discovery: bool,
    /// The management network and its Prometheus ([`Lab::add_monitoring`]).
    pub monitoring: Option<monitoring::Monitoring>,
    /// Keep the configs and logs when the lab ends before [`Lab::finished`]
    /// is set (a failed `meshgate lab`), and say where; an interrupted or
    /// finished lab removes them.
    pub keep_on_failure: bool,
    pub finished: bool,
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

/// One appliance of the lab, by gateway index: region `g / zones`, zone
/// `g % zones`.
impl Lab {
    /// How many gateways the lab runs.
    pub fn gateway_count(&self) -> usize {
        self.regions.len() * self.zones + self.leaves.len()
    }

    /// The region of gateway `g` (a leaf's: the one it attaches to).
    pub fn region_of(&self, g: usize) -> &Region {
        match self.leaf_of(g) {
            Some(l) => &self.regions[l.region],
            None => &self.regions[g / self.zones],
        }
    }

    /// Gateway `g`'s namespace.
    pub fn gateway_ns(&self, g: usize) -> &Netns {
        if let Some(l) = self.leaf_of(g) {
            return &l.appliance;
        }
        let r = self.region_of(g);
        match (g % self.zones, &r.standby) {
            (1, Some(b)) => b,
            _ => &r.appliance,
        }
    }

    /// Gateway `g`'s zone letter, in a lab with zones.
    pub fn zone_of(&self, g: usize) -> Option<char> {
        (self.zones > 1 && self.leaf_of(g).is_none())
            .then(|| (b'a' + (g % self.zones) as u8) as char)
    }

    /// Gateway `g`'s member id: `region-N`, or `region-Na` with zones.
    pub fn gateway_id(&self, g: usize) -> String {
        if let Some(l) = self.leaf_of(g) {
            return l.id();
        }
        let r = self.region_of(g).gateway_id();
        match self.zone_of(g) {
            Some(z) => format!("{r}{z}"),
            None => r,
        }
    }

    /// Gateway `g`'s address on the underlay.
    pub fn gateway_underlay_ip(&self, g: usize) -> Ipv4Addr {
        match self.leaf_of(g) {
            Some(_) => leaves::leaf_underlay_ip(g - self.regions.len() * self.zones),
            None => underlay_ip(self.region_of(g).number(), g % self.zones),
        }
    }

    /// Gateway `g`'s addresses on its VPC subnet (the next hops its
    /// region's router uses when it is active).
    pub fn gateway_lan_ips(&self, g: usize) -> (Ipv4Addr, Ipv6Addr) {
        if let Some(l) = self.leaf_of(g) {
            return (l.lan_ip(), l.lan_ip6());
        }
        let r = self.region_of(g);
        if self.zones == 1 {
            return (r.lan_ip(), r.lan_ip6());
        }
        zone_lan_ips(r.number(), g % self.zones)
    }
}

/// The underlay address of region `num`'s (1-based) appliance in `zone`:
/// 198.18.0.N for zone a (or the only one), 198.18.0.(100+N) for zone b.
fn underlay_ip(num: usize, zone: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, num as u8 + if zone == 1 { 100 } else { 0 })
}

/// The VPC-subnet addresses of region `num`'s appliance in `zone` (a lab
/// with zones): 10.N.1.2 and .3, beside the router's .1.
fn zone_lan_ips(num: usize, zone: usize) -> (Ipv4Addr, Ipv6Addr) {
    let host = 2 + zone as u8;
    (
        Ipv4Addr::new(10, num as u8, 1, host),
        Ipv6Addr::new(0xfd00, num as u16, 0, 1, 0, 0, 0, host as u16),
    )
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
