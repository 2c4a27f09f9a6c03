//! Leaf VPCs (`meshgate lab --leaves N`): per region N more VPCs, each
//! with an appliance of its own (role `leaf`) and a host, attached to the
//! region's edges, for the `mesh-with-leaves` topology: leaf -> edge ->
//! edge -> leaf.
//!
//! ```text
//!   lhost-R-K 10.(100+R).K.10 ── leafR-K 10.(100+R).K.1 [meshgate, leaf]
//!                                      │ 198.18.0.(150+i) on the underlay
//! ```

use super::*;

/// One leaf VPC: its appliance and host.
pub struct Leaf {
    /// The region (0-based) whose edges it attaches to.
    pub region: usize,
    /// 1-based within its region.
    pub number: usize,
    pub appliance: Netns,
    pub host: Netns,
}

impl Leaf {
    fn r(&self) -> u8 {
        self.region as u8 + 1
    }
    /// Its member id: `region-R-leafK`.
    pub fn id(&self) -> String {
        format!("region-{}-leaf{}", self.r(), self.number)
    }
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 100 + self.r(), self.number as u8, 10)
    }
    pub fn lan_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 100 + self.r(), self.number as u8, 1)
    }
    pub fn host_ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd01,
            u16::from(self.r()),
            self.number as u16,
            1,
            0,
            0,
            0,
            0x10,
        )
    }
    pub fn lan_ip6(&self) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd01,
            u16::from(self.r()),
            self.number as u16,
            1,
            0,
            0,
            0,
            1,
        )
    }
    /// Its VPC's prefixes: outside every region's, so no route of an
    /// edge's VPC covers them.
    pub fn prefixes(&self) -> [String; 2] {
        [
            format!("10.{}.{}.0/24", 100 + u16::from(self.r()), self.number),
            format!("fd01:{}:{}::/48", self.r(), self.number),
        ]
    }
}

/// A host the lab probes from and to: a region's VPC host or a leaf's.
pub struct Site<'a> {
    pub name: String,
    /// The region it belongs to (0-based).
    pub region: usize,
    pub host: &'a Netns,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
}

impl Lab {
    /// Adds `per_region` leaf VPCs to every region, on the underlay
    /// (call after building, before the configs are written).
    pub fn add_leaves(&mut self, per_region: usize) -> Result<()> {
        if self.regions.len() * per_region > 95 {
            bail!(
                "a lab has at most 95 leaves in all, not {}",
                self.regions.len() * per_region
            );
        }
        for region in 0..self.regions.len() {
            for number in 1..=per_region {
                let tag = &self.tag;
                let r = region + 1;
                let appliance = Netns::create(&format!("{tag}-leaf{r}-{number}"))?;
                let host = Netns::create(&format!("{tag}-lhost{r}-{number}"))?;
                for ns in [&appliance, &host] {
                    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
                }
                let leaf = Leaf {
                    region,
                    number,
                    appliance,
                    host,
                };
                let index = self.leaves.len();
                let port = format!("lf{r}-{number}");
                veth(&leaf.appliance, "ul0", &self.underlay, &port)?;
                self.underlay.ip(&["link", "set", &port, "master", "br0"])?;
                let ul = leaf_underlay_ip(index);
                leaf.appliance
                    .ip(&["addr", "add", &format!("{ul}/24"), "dev", "ul0"])?;
                veth(&leaf.appliance, "lan0", &leaf.host, "eth0")?;
                let (a, h) = (&leaf.appliance, &leaf.host);
                a.ip(&[
                    "addr",
                    "add",
                    &format!("{}/24", leaf.lan_ip()),
                    "dev",
                    "lan0",
                ])?;
                h.ip(&[
                    "addr",
                    "add",
                    &format!("{}/24", leaf.host_ip()),
                    "dev",
                    "eth0",
                ])?;
                h.ip(&["route", "add", "default", "via", &leaf.lan_ip().to_string()])?;
                a.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{}/64", leaf.lan_ip6()),
                    "dev",
                    "lan0",
                    "nodad",
                ])?;
                h.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{}/64", leaf.host_ip6()),
                    "dev",
                    "eth0",
                    "nodad",
                ])?;
                h.ip(&[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &leaf.lan_ip6().to_string(),
                ])?;
                a.sysctl("net.ipv4.ip_forward", "1")?;
                a.sysctl("net.ipv6.conf.all.forwarding", "1")?;
                self.leaves.push(leaf);
            }
        }
        Ok(())
    }

    /// The leaf gateway `g` is, if it is one (leaves come after the
    /// regions' appliances).
    pub fn leaf_of(&self, g: usize) -> Option<&Leaf> {
        g.checked_sub(self.regions.len() * self.zones)
            .and_then(|i| self.leaves.get(i))
    }

    /// Every host the lab probes: the regions' VPC hosts, then the
    /// leaves'.
    pub fn sites(&self) -> Vec<Site<'_>> {
        let mut out: Vec<Site<'_>> = self
            .regions
            .iter()
            .map(|r| Site {
                name: format!("host-{}", r.number()),
                region: r.index,
                host: &r.host,
                ip: r.host_ip(),
                ip6: r.host_ip6(),
            })
            .collect();
        out.extend(self.leaves.iter().map(|l| Site {
            name: format!("lhost-{}-{}", l.region + 1, l.number),
            region: l.region,
            host: &l.host,
            ip: l.host_ip(),
            ip6: l.host_ip6(),
        }));
        out
    }
}

/// The underlay address of the `index`-th leaf (0-based, over all
/// regions): after the appliances' (1-50, 101-150).
pub(super) fn leaf_underlay_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, 151 + index as u8)
}
