//! What another member's record may route into this gateway. Its
//! certificate bounds the prefixes it may advertise (the record authority
//! checks that); these are the checks only this gateway can make, the
//! same that configured peers get in `config`: a record's prefix must not
//! capture this gateway's own prefixes, a member's underlay address (its
//! ESP packets would be routed into the tunnel itself), or ranges that
//! never leave a host or a VPC (link-local and the instance metadata
//! service, loopback, multicast).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::info::MemberInfo;
use crate::prefix::Prefix;

/// Ranges no member may route into the mesh, and why.
fn reserved() -> [(Prefix, &'static str); 10] {
    let v4 = |a: [u8; 4], l| Prefix::new(IpAddr::V4(Ipv4Addr::from(a)), l);
    let v6 = |a: [u16; 8], l| Prefix::new(IpAddr::V6(Ipv6Addr::from(a)), l);
    let ranges = [
        (
            v4([169, 254, 0, 0], 16),
            "link-local, where the instance metadata service answers",
        ),
        (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "IPv6 link-local"),
        (
            v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0], 32),
            "the instance metadata and DNS services over IPv6",
        ),
        (v4([127, 0, 0, 0], 8), "loopback"),
        (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "IPv6 loopback"),
        (v4([0, 0, 0, 0], 8), "'this network'"),
        (v4([224, 0, 0, 0], 4), "multicast"),
        (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "IPv6 multicast"),
        (v4([240, 0, 0, 0], 4), "reserved and broadcast"),
        (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "the unspecified address"),
    ];
    // Literals above: every one is canonical.
    ranges.map(|(p, why)| (p.unwrap_or_else(|| unreachable!()), why))
}

/// This gateway's side of the checks.
#[derive(Clone, Debug)]
pub struct Admission {
    own: Vec<Prefix>,
    region: String,
    group: Option<String>,
    /// This gateway's own underlay addresses (ESP and signalling).
    addrs: Vec<IpAddr>,
    reserved: [(Prefix, &'static str); 10],
}

impl Admission {
    /// Checks against `me`, this gateway's own record, and its other
    /// addresses (`addrs`: where it listens for signalling).
    pub fn new(me: &MemberInfo, addrs: impl IntoIterator<Item = IpAddr>) -> Admission {
        let mut own_addrs: Vec<IpAddr> = me.endpoints.iter().map(|(_, a)| a.ip()).collect();
        own_addrs.extend(addrs);
        Admission {
            own: prefixes(me).collect(),
            region: me.region.clone(),
            group: me.group.clone(),
            addrs: own_addrs,
            reserved: reserved(),
        }
    }

    /// Why `info` may not be taken here, given the records `known`; `None`
    /// if it may.
    pub fn refusal(
        &self,
        info: &MemberInfo,
        known: &BTreeMap<String, MemberInfo>,
    ) -> Option<String> {
        // The other appliance of this gateway's redundancy group advertises
        // the same prefixes: that is what a pair is.
        let partner =
            info.region == self.region && info.group.is_some() && info.group == self.group;
        let endpoints = known
            .values()
            .chain(std::iter::once(info))
            .flat_map(|k| {
                k.endpoints
                    .iter()
                    .map(move |(_, a)| (k.id.as_str(), a.ip()))
            })
            .chain(self.addrs.iter().map(|a| ("this gateway", *a)));
        let endpoints: Vec<(&str, IpAddr)> = endpoints.collect();
        for p in prefixes(info) {
            if let Some((r, why)) = self.reserved.iter().find(|(r, _)| r.overlaps(&p)) {
                return Some(format!("it advertises {p}, which overlaps {r} ({why})"));
            }
            if let Some(o) = self
                .own
                .iter()
                .find(|o| o.overlaps(&p))
                .filter(|_| !partner)
            {
                return Some(format!(
                    "it advertises {p}, which overlaps {o}, this gateway's own"
                ));
            }
            if let Some((id, a)) = endpoints.iter().find(|(_, a)| p.contains(*a)) {
                return Some(format!(
                    "it advertises {p}, which holds {a}, an underlay address of {id}: its ESP packets would be routed into the tunnel itself"
                ));
            }
        }
        None
    }
}

fn prefixes(info: &MemberInfo) -> impl Iterator<Item = Prefix> + '_ {
    info.prefixes
        .iter()
        .filter_map(|(a, l)| Prefix::new(*a, *l))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, prefixes: &[&str], endpoint: &str) -> MemberInfo {
        MemberInfo {
            id: id.into(),
            version: 1,
            region: id.into(),
            role: "edge".into(),
            prefixes: prefixes
                .iter()
                .map(|p| {
                    let p: Prefix = p.parse().unwrap();
                    (p.addr(), p.prefix_len())
                })
                .collect(),
            endpoints: vec![("internet".into(), endpoint.parse().unwrap())],
            ..MemberInfo::default()
        }
    }

    #[test]
    fn records_that_would_capture_what_is_not_theirs_are_refused() {
        let me = record("r1", &["10.1.0.0/16"], "192.168.0.1:4500");
        let admission = Admission::new(&me, ["192.168.0.1".parse().unwrap()]);
        let mut known = BTreeMap::new();
        known.insert(
            "r2".into(),
            record("r2", &["10.2.0.0/16"], "192.168.0.2:4500"),
        );
        let refusal = |prefixes: &[&str]| {
            admission.refusal(&record("r3", prefixes, "192.168.0.3:4500"), &known)
        };
        assert_eq!(refusal(&["10.3.0.0/16", "fd00:3::/48"]), None);
        for (p, why) in [
            (
                "169.254.169.254/32",
                "overlaps 169.254.0.0/16 (link-local, where the instance metadata service answers)",
            ),
            (
                "fd00:ec2::254/128",
                "the instance metadata and DNS services over IPv6",
            ),
            ("10.1.5.0/24", "overlaps 10.1.0.0/16, this gateway's own"),
            ("10.0.0.0/8", "overlaps 10.1.0.0/16, this gateway's own"),
            (
                "192.168.0.2/32",
                "holds 192.168.0.2, an underlay address of r2",
            ),
            ("192.168.0.0/30", "an underlay address of"),
            (
                "192.168.0.3/32",
                "holds 192.168.0.3, an underlay address of r3",
            ),
            ("224.0.0.0/24", "multicast"),
            ("127.0.0.0/8", "loopback"),
        ] {
            let r = refusal(&["10.3.0.0/16", p]).unwrap_or_default();
            assert!(
                r.starts_with(&format!("it advertises {p}")) && r.contains(why),
                "{p}: {r}"
            );
        }
        // The other appliance of this gateway's redundancy group shares
        // its prefixes; a member of another group or region does not.
        let mut me = me;
        me.group = Some("pair".into());
        let admission = Admission::new(&me, []);
        let mut partner = record("r1", &["10.1.0.0/16"], "192.168.0.9:4500");
        partner.id = "r1b".into();
        partner.group = Some("pair".into());
        assert_eq!(admission.refusal(&partner, &known), None);
        partner.group = Some("other".into());
        assert!(admission.refusal(&partner, &known).is_some());
    }
}
