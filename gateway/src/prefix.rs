//! IP prefixes (CIDR) and a longest-prefix-match table.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 prefix: an address and a length; matching is one mask
/// and compare on the address as an integer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// A prefix whose host bits are zero; `None` otherwise or if `len` is too long.
    pub fn new(addr: IpAddr, len: u8) -> Option<Prefix> {
        let p = Prefix { addr, len };
        (len <= p.max_len() && p.network() == addr).then_some(p)
    }

    /// Parses `addr/len` keeping host bits, as an interface address does.
    pub fn parse_host(s: &str) -> Result<Prefix, String> {
        let (addr, len) = split(s)?;
        let p = Prefix { addr, len };
        if len > p.max_len() {
            return Err(format!(
                "'{s}': prefix length {len} is longer than {}",
                p.max_len()
            ));
        }
        Ok(p)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }
    pub fn prefix_len(&self) -> u8 {
        self.len
    }
    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    fn max_len(&self) -> u8 {
        if self.addr.is_ipv4() {
            32
        } else {
            128
        }
    }

    /// The prefix with its host bits cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & v4_mask(self.len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & v6_mask(self.len))),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                (u32::from(a) ^ u32::from(n)) & v4_mask(self.len) == 0
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                (u128::from(a) ^ u128::from(n)) & v6_mask(self.len) == 0
            }
            _ => false,
        }
    }

    pub fn overlaps(&self, other: &Prefix) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }
}

fn v4_mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}
fn v6_mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

fn split(s: &str) -> Result<(IpAddr, u8), String> {
    let s = s.trim();
    let (a, l) = s.split_once('/').ok_or_else(|| {
        format!("'{s}' is not a prefix (expected address/length, for example 10.1.0.0/16)")
    })?;
    let addr = a
        .parse::<IpAddr>()
        .map_err(|_| format!("'{a}' is not an IP address"))?;
    let len = l
        .parse::<u8>()
        .map_err(|_| format!("'{l}' is not a prefix length"))?;
    Ok((addr, len))
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Prefix, String> {
        let p = Prefix::parse_host(s)?;
        if p.network() != p.addr {
            return Err(format!(
                "'{}' has host bits set; did you mean {}/{}?",
                s.trim(),
                p.network(),
                p.len
            ));
        }
        Ok(p)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Longest-prefix match from an address to a value. One hash map per
/// prefix length in use, probed from the longest: at most 33 (IPv4) or 129
/// (IPv6) probes, in practice a handful. Built once by the control plane and
/// then only read.
#[derive(Clone, Debug)]
pub struct PrefixMap<V> {
    v4: Vec<(u8, HashMap<u32, V>)>,
    v6: Vec<(u8, HashMap<u128, V>)>,
}

impl<V> Default for PrefixMap<V> {
    fn default() -> Self {
        PrefixMap {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

impl<V> PrefixMap<V> {
    /// Inserts `prefix`; returns the value it replaced.
    pub fn insert(&mut self, prefix: Prefix, value: V) -> Option<V> {
        match prefix.network() {
            IpAddr::V4(a) => slot(&mut self.v4, prefix.len).insert(u32::from(a), value),
            IpAddr::V6(a) => slot(&mut self.v6, prefix.len).insert(u128::from(a), value),
        }
    }

    /// The value stored for exactly `prefix`.
    pub fn get(&self, prefix: &Prefix) -> Option<&V> {
        match prefix.network() {
            IpAddr::V4(a) => self
                .v4
                .iter()
                .find(|(l, _)| *l == prefix.len)
                .and_then(|(_, m)| m.get(&u32::from(a))),
            IpAddr::V6(a) => self
                .v6
                .iter()
                .find(|(l, _)| *l == prefix.len)
                .and_then(|(_, m)| m.get(&u128::from(a))),
        }
    }

    pub fn lookup(&self, ip: IpAddr) -> Option<&V> {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .find_map(|(len, m)| m.get(&(a & v4_mask(*len))))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .iter()
                    .find_map(|(len, m)| m.get(&(a & v6_mask(*len))))
            }
        }
    }
}

/// The map for `len`, keeping the list sorted longest first.
fn slot<K, V>(levels: &mut Vec<(u8, HashMap<K, V>)>, len: u8) -> &mut HashMap<K, V> {
    let pos = match levels.iter().position(|(l, _)| *l <= len) {
        Some(p) if levels[p].0 == len => p,
        Some(p) => {
            levels.insert(p, (len, HashMap::new()));
            p
        }
        None => {
            levels.push((len, HashMap::new()));
            levels.len() - 1
        }
    };
    &mut levels[pos].1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_checks_host_bits() {
        assert_eq!(p("10.1.0.0/16").to_string(), "10.1.0.0/16");
        assert!("10.1.0.1/16"
            .parse::<Prefix>()
            .unwrap_err()
            .contains("did you mean 10.1.0.0/16"));
        assert!("10.1.0.0/33".parse::<Prefix>().is_err());
        assert!("fd00::/129".parse::<Prefix>().is_err());
        assert!("banana/8".parse::<Prefix>().is_err());
        assert!("10.0.0.0".parse::<Prefix>().is_err());
        assert_eq!(
            Prefix::parse_host("10.1.2.3/24").unwrap().network(),
            ip("10.1.2.0")
        );
        assert_eq!(p("0.0.0.0/0").network(), ip("0.0.0.0"));
    }

    #[test]
    fn longest_match_wins() {
        let mut m = PrefixMap::default();
        m.insert(p("10.0.0.0/8"), 1);
        m.insert(p("10.2.0.0/16"), 2);
        m.insert(p("10.2.3.0/24"), 3);
        m.insert(p("0.0.0.0/0"), 0);
        m.insert(p("fd00::/16"), 6);
        m.insert(p("fd00:2::/32"), 7);
        assert_eq!(m.lookup(ip("10.2.3.4")), Some(&3));
        assert_eq!(m.lookup(ip("10.2.4.4")), Some(&2));
        assert_eq!(m.lookup(ip("10.9.9.9")), Some(&1));
        assert_eq!(m.lookup(ip("192.0.2.1")), Some(&0));
        assert_eq!(m.lookup(ip("fd00:2::1")), Some(&7));
        assert_eq!(m.lookup(ip("fd00:3::1")), Some(&6));
        assert_eq!(m.lookup(ip("2001:db8::1")), None);
    }

    #[test]
    fn overlap_and_contains() {
        assert!(p("10.2.0.0/16").overlaps(&p("10.2.128.0/17")));
        assert!(!p("10.2.0.0/16").overlaps(&p("10.3.0.0/16")));
        assert!(!p("10.2.0.0/16").contains(ip("fd00::1")));
        assert!(p("::/0").contains(ip("fd00::1")));
    }
}
