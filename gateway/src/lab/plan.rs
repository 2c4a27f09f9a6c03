//! The lab's address plan: which region, zone, role, redundancy group,
//! prefixes and underlay address each appliance has. Printed before the
//! gateways start, in the `--json` summary, and the configs are written
//! from the same placement.

use serde::Serialize;

use super::*;

/// One appliance of the lab.
#[derive(Debug, Serialize)]
pub struct Appliance {
    pub id: String,
    pub region: String,
    /// Its availability zone (a lab with zones).
    pub zone: Option<String>,
    pub role: String,
    /// Its redundancy group (a pair, or the hubs).
    pub group: Option<String>,
    pub prefixes: Vec<String>,
    /// Its address on the internet underlay (and on dx, with --dx).
    pub underlay: String,
    pub dx: Option<String>,
}

impl Lab {
    /// Gateway `g`'s role and redundancy group: a leaf VPC's appliance is
    /// a leaf; with zones, each region's pair is one group; else as the
    /// topology places it.
    pub fn role_and_group(&self, g: usize) -> (&'static str, Option<String>) {
        let r = self.region_of(g);
        let (role, group) = placement(self.placed_as(), self.regions.len(), r.index);
        match (self.leaf_of(g), self.zones) {
            (Some(_), _) => ("leaf", None),
            (None, 1) => (role, group.map(str::to_string)),
            (None, _) => (role, Some(r.gateway_id())),
        }
    }

    /// Gateway `g`'s availability zone: its region and zone letter.
    pub fn zone_name(&self, g: usize) -> Option<String> {
        self.zone_of(g)
            .map(|z| format!("{}{z}", self.region_of(g).gateway_id()))
    }

    /// Every appliance, in gateway order.
    pub fn plan(&self) -> Vec<Appliance> {
        (0..self.gateway_count())
            .map(|g| {
                let (role, group) = self.role_and_group(g);
                let prefixes = match self.leaf_of(g) {
                    Some(l) => l.prefixes(),
                    None => self.region_of(g).prefixes(),
                };
                Appliance {
                    id: self.gateway_id(g),
                    region: self.region_of(g).gateway_id(),
                    zone: self.zone_name(g),
                    role: role.into(),
                    group,
                    prefixes: prefixes.to_vec(),
                    underlay: self.gateway_underlay_ip(g).to_string(),
                    dx: self.dx.then(|| self.gateway_dx_ip(g).to_string()),
                }
            })
            .collect()
    }
}

/// The plan as a table.
pub fn render(plan: &[Appliance]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<12} {:<10} {:<11} {:<5} {:<10} {:<16} {:<16} prefixes\n",
        "appliance", "region", "zone", "role", "group", "internet", "dx"
    );
    for a in plan {
        let _ = writeln!(
            out,
            "{:<12} {:<10} {:<11} {:<5} {:<10} {:<16} {:<16} {}",
            a.id,
            a.region,
            a.zone.as_deref().unwrap_or("-"),
            a.role,
            a.group.as_deref().unwrap_or("-"),
            a.underlay,
            a.dx.as_deref().unwrap_or("-"),
            a.prefixes.join(" ")
        );
    }
    out
}
