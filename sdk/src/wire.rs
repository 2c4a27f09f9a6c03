//! The packed records of the contract: members, prefixes, endpoints, peers
//! and routes cross the component boundary as `list<u8>` of fixed-size
//! little-endian records (layouts in `wit/policy.wit`), because the
//! component model copies a byte list in one move where it lowers a list
//! of typed records field by field (about 120 µs for a 1,000-member view
//! against a few here). The gateway and the guest both encode and decode
//! through this module, so the two sides cannot disagree on a layout.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    Endpoint, Health, Member, MemberIndex, NextHops, PathHealth, PathState, Peer, Prefix, Role,
    Route, Span, State,
};

/// Bytes per member record.
pub const MEMBER_SIZE: usize = 80;
/// Bytes per prefix record.
pub const PREFIX_SIZE: usize = 20;
/// Bytes per endpoint record.
pub const ENDPOINT_SIZE: usize = 40;
/// Bytes per peer record.
pub const PEER_SIZE: usize = 8;
/// Bytes per route record.
pub const ROUTE_SIZE: usize = 36;

/// `group` of a member that belongs to none.
const NO_GROUP: u32 = u32::MAX;

/// A packed list that does not decode, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError {
    /// Which list (`members`, `routes`, ...).
    pub list: &'static str,
    /// The record's position, if the list's length was right.
    pub index: Option<usize>,
    pub reason: String,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}[{i}]: {}", self.list, self.reason),
            None => write!(f, "{}: {}", self.list, self.reason),
        }
    }
}

impl std::error::Error for WireError {}

/// The fixed-size records of a packed list; checking the size once here
/// lets every field read below compile to one load without bounds checks.
fn records<'a, const N: usize>(
    list: &'static str,
    bytes: &'a [u8],
) -> Result<impl Iterator<Item = (usize, &'a [u8; N])>, WireError> {
    let (records, rest) = bytes.as_chunks::<N>();
    if !rest.is_empty() {
        return Err(WireError {
            list,
            index: None,
            reason: format!(
                "{} bytes is not a whole number of {N}-byte records",
                bytes.len()
            ),
        });
    }
    Ok(records.iter().enumerate())
}

fn u16_at<const N: usize>(b: &[u8; N], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at<const N: usize>(b: &[u8; N], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at<const N: usize>(b: &[u8; N], at: usize) -> u64 {
    u64::from_le_bytes([
        b[at],
        b[at + 1],
        b[at + 2],
        b[at + 3],
        b[at + 4],
        b[at + 5],
        b[at + 6],
        b[at + 7],
    ])
}

/// Writes `v` little-endian at `at`.
fn put<const N: usize, const W: usize>(r: &mut [u8; N], at: usize, v: [u8; W]) {
    r[at..at + W].copy_from_slice(&v);
}

/// An address as 16 octets in network order (IPv4 in the first four) at
/// `at`, and its family byte (4 or 6) at `family_at`.
fn put_addr<const N: usize>(r: &mut [u8; N], at: usize, family_at: usize, addr: IpAddr) {
    match addr {
        IpAddr::V4(a) => {
            put(r, at, a.octets());
            r[family_at] = 4;
        }
        IpAddr::V6(a) => {
            put(r, at, a.octets());
            r[family_at] = 6;
        }
    }
}

fn addr_at<const N: usize>(b: &[u8; N], at: usize, family_at: usize) -> Result<IpAddr, String> {
    match b[family_at] {
        4 => Ok(IpAddr::V4(Ipv4Addr::new(
            b[at],
            b[at + 1],
            b[at + 2],
            b[at + 3],
        ))),
        6 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[at..at + 16]);
            Ok(IpAddr::V6(Ipv6Addr::from(a)))
        }
        f => Err(format!("address family {f} is neither 4 nor 6")),
    }
}

/// Decodes every record of a list with `f`, stopping at the first error.
/// A plain loop: wasm32 runs it markedly faster than `collect` into a
/// `Result`, and views are decoded on every evaluation.
fn decode_all<const N: usize, T>(
    list: &'static str,
    bytes: &[u8],
    f: impl Fn(&[u8; N]) -> Result<T, String>,
) -> Result<Vec<T>, WireError> {
    let mut out = Vec::with_capacity(bytes.len() / N);
    for (i, b) in records::<N>(list, bytes)? {
        match f(b) {
            Ok(v) => out.push(v),
            Err(reason) => {
                return Err(WireError {
                    list,
                    index: Some(i),
                    reason,
                })
            }
        }
    }
    Ok(out)
}

/// Member layout: handle u64 @0; id, region, zone, account u32 @8..24;
/// group u32 @24 (all ones: none); role u8 @28 (0 edge, 1 leaf, 2 hub);
/// state u8 @29 (0 alive, 1 suspect, 2 dead); 2 zero bytes; prefixes
/// first, count u32 @32, 36; endpoints first, count u32 @40, 44; rtt-us,
/// loss-ppm, load-permille, policy-version u32 @48..64; changed-ms u64 @64;
/// up-since-ms u64 @72.
pub fn encode_members(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_members_into(members, &mut out);
    out
}

/// As [`encode_members`], into `out` (cleared first), so a caller that
/// encodes a view on every event reuses one buffer.
pub fn encode_members_into(members: &[Member], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(members.len() * MEMBER_SIZE);
    for m in members {
        let mut r = [0u8; MEMBER_SIZE];
        put(&mut r, 0, m.handle.to_le_bytes());
        put(&mut r, 8, m.id.to_le_bytes());
        put(&mut r, 12, m.region.to_le_bytes());
        put(&mut r, 16, m.zone.to_le_bytes());
        put(&mut r, 20, m.account.to_le_bytes());
        put(&mut r, 24, m.group.unwrap_or(NO_GROUP).to_le_bytes());
        r[28] = match m.role {
            Role::Edge => 0,
            Role::Leaf => 1,
            Role::Hub => 2,
        };
        r[29] = match m.state {
            State::Alive => 0,
            State::Suspect => 1,
            State::Dead => 2,
        };
        put(&mut r, 32, m.prefixes.first.to_le_bytes());
        put(&mut r, 36, m.prefixes.count.to_le_bytes());
        put(&mut r, 40, m.endpoints.first.to_le_bytes());
        put(&mut r, 44, m.endpoints.count.to_le_bytes());
        put(&mut r, 48, m.health.rtt_us.to_le_bytes());
        put(&mut r, 52, m.health.loss_ppm.to_le_bytes());
        put(&mut r, 56, m.health.load_permille.to_le_bytes());
        put(&mut r, 60, m.policy_version.to_le_bytes());
        put(&mut r, 64, m.health.changed_ms.to_le_bytes());
        put(&mut r, 72, m.up_since_ms.to_le_bytes());
        out.extend_from_slice(&r);
    }
}

pub fn decode_members(bytes: &[u8]) -> Result<Vec<Member>, WireError> {
    decode_all::<MEMBER_SIZE, _>("members", bytes, |b| {
        let role = match b[28] {
            0 => Role::Edge,
            1 => Role::Leaf,
            2 => Role::Hub,
            r => return Err(format!("role {r} is not 0, 1 or 2")),
        };
        let state = match b[29] {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Dead,
            s => return Err(format!("state {s} is not 0, 1 or 2")),
        };
        let group = u32_at(b, 24);
        Ok(Member {
            handle: u64_at(b, 0),
            id: u32_at(b, 8),
            region: u32_at(b, 12),
            zone: u32_at(b, 16),
            account: u32_at(b, 20),
            role,
            state,
            group: (group != NO_GROUP).then_some(group),
            prefixes: Span {
                first: u32_at(b, 32),
                count: u32_at(b, 36),
            },
            endpoints: Span {
                first: u32_at(b, 40),
                count: u32_at(b, 44),
            },
            health: Health {
                rtt_us: u32_at(b, 48),
                loss_ppm: u32_at(b, 52),
                load_permille: u32_at(b, 56),
                changed_ms: u64_at(b, 64),
            },
            policy_version: u32_at(b, 60),
            up_since_ms: u64_at(b, 72),
        })
    })
}

/// Prefix layout: address @0 (16 octets, network order, IPv4 in the first
/// four); length u8 @16; family u8 @17 (4 or 6); 2 zero bytes.
fn put_prefix<const N: usize>(r: &mut [u8; N], at: usize, p: &Prefix) {
    put_addr(r, at, at + 17, p.addr);
    r[at + 16] = p.len;
}

fn prefix_at<const N: usize>(b: &[u8; N], at: usize) -> Result<Prefix, String> {
    Ok(Prefix {
        addr: addr_at(b, at, at + 17)?,
        len: b[at + 16],
    })
}

pub fn encode_prefixes(prefixes: &[Prefix]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_prefixes_into(prefixes, &mut out);
    out
}

/// As [`encode_prefixes`], into `out` (cleared first), so a caller that
/// encodes a view on every event reuses one buffer.
pub fn encode_prefixes_into(prefixes: &[Prefix], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(prefixes.len() * PREFIX_SIZE);
    for p in prefixes {
        let mut r = [0u8; PREFIX_SIZE];
        put_prefix(&mut r, 0, p);
        out.extend_from_slice(&r);
    }
}

pub fn decode_prefixes(bytes: &[u8]) -> Result<Vec<Prefix>, WireError> {
    decode_all::<PREFIX_SIZE, _>("prefixes", bytes, |b| prefix_at(b, 0))
}

/// Endpoint layout: address @0 (as in a prefix); port u16 @16; family u8
/// @18; path state u8 @19 (0 unknown, 1 up, 2 down); label u32 @20 (a name
/// index); the path's rtt-us u32 @24, loss-ppm u32 @28, changed-ms u64 @32.
pub fn encode_endpoints(endpoints: &[Endpoint]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_endpoints_into(endpoints, &mut out);
    out
}

/// As [`encode_endpoints`], into `out` (cleared first), so a caller that
/// encodes a view on every event reuses one buffer.
pub fn encode_endpoints_into(endpoints: &[Endpoint], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(endpoints.len() * ENDPOINT_SIZE);
    for e in endpoints {
        let mut r = [0u8; ENDPOINT_SIZE];
        put_addr(&mut r, 0, 18, e.addr);
        put(&mut r, 16, e.port.to_le_bytes());
        r[19] = match e.health.state {
            PathState::Unknown => 0,
            PathState::Up => 1,
            PathState::Down => 2,
        };
        put(&mut r, 20, e.label.to_le_bytes());
        put(&mut r, 24, e.health.rtt_us.to_le_bytes());
        put(&mut r, 28, e.health.loss_ppm.to_le_bytes());
        put(&mut r, 32, e.health.changed_ms.to_le_bytes());
        out.extend_from_slice(&r);
    }
}

pub fn decode_endpoints(bytes: &[u8]) -> Result<Vec<Endpoint>, WireError> {
    decode_all::<ENDPOINT_SIZE, _>("endpoints", bytes, |b| {
        let state = match b[19] {
            0 => PathState::Unknown,
            1 => PathState::Up,
            2 => PathState::Down,
            s => return Err(format!("path state {s} is not 0, 1 or 2")),
        };
        Ok(Endpoint {
            addr: addr_at(b, 0, 18)?,
            port: u16_at(b, 16),
            label: u32_at(b, 20),
            health: PathHealth {
                state,
                rtt_us: u32_at(b, 24),
                loss_ppm: u32_at(b, 28),
                changed_ms: u64_at(b, 32),
            },
        })
    })
}

/// Peer layout: member u32 @0; endpoint u32 @4.
pub fn encode_peers(peers: &[Peer]) -> Vec<u8> {
    let mut out = Vec::with_capacity(peers.len() * PEER_SIZE);
    for p in peers {
        let mut r = [0u8; PEER_SIZE];
        put(&mut r, 0, p.member.to_le_bytes());
        put(&mut r, 4, p.endpoint.to_le_bytes());
        out.extend_from_slice(&r);
    }
    out
}

pub fn decode_peers(bytes: &[u8]) -> Result<Vec<Peer>, WireError> {
    decode_all::<PEER_SIZE, _>("peers", bytes, |b| {
        Ok(Peer {
            member: u32_at(b, 0),
            endpoint: u32_at(b, 4),
        })
    })
}

/// Route layout: prefix @0 (20 bytes, as above); kind u8 @20 (0 ordered,
/// 1 ECMP); 3 zero bytes; metric u32 @24; next hops as a run of the hop
/// list, first u32 @28 and count u32 @32. Returns the routes and the hops.
pub fn encode_routes(routes: &[Route]) -> (Vec<u8>, Vec<MemberIndex>) {
    let mut out = Vec::with_capacity(routes.len() * ROUTE_SIZE);
    let mut hops = Vec::with_capacity(routes.len());
    for route in routes {
        let mut r = [0u8; ROUTE_SIZE];
        put_prefix(&mut r, 0, &route.prefix);
        r[20] = match route.next_hops {
            NextHops::Ordered(_) => 0,
            NextHops::Ecmp(_) => 1,
        };
        let members = route.next_hops.members();
        put(&mut r, 24, route.metric.to_le_bytes());
        put(&mut r, 28, (hops.len() as u32).to_le_bytes());
        put(&mut r, 32, (members.len() as u32).to_le_bytes());
        out.extend_from_slice(&r);
        hops.extend_from_slice(members);
    }
    (out, hops)
}

/// A route as its record carries it: the next hops are a run of the
/// shared hop list, so a large answer decodes without one allocation per
/// route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteRecord {
    pub prefix: Prefix,
    /// Spread flows over all next hops, rather than use the first alive.
    pub ecmp: bool,
    pub metric: u32,
    /// Its run of the hop list.
    pub hops: Span,
}

/// The route records of `bytes`, whose next hops are runs of a hop list of
/// `hops_len` entries.
pub fn decode_route_records(bytes: &[u8], hops_len: usize) -> Result<Vec<RouteRecord>, WireError> {
    decode_all::<ROUTE_SIZE, _>("routes", bytes, |b| {
        let prefix = prefix_at(b, 0)?;
        let (first, count) = (u32_at(b, 28), u32_at(b, 32));
        if (first as usize)
            .checked_add(count as usize)
            .is_none_or(|end| end > hops_len)
        {
            return Err(format!(
                "next hops {first}..{first}+{count} lie outside the {hops_len} hops returned"
            ));
        }
        let ecmp = match b[20] {
            0 => false,
            1 => true,
            k => return Err(format!("next-hop kind {k} is neither 0 nor 1")),
        };
        Ok(RouteRecord {
            prefix,
            ecmp,
            metric: u32_at(b, 24),
            hops: Span { first, count },
        })
    })
}

/// The routes of `bytes` with their next hops from `hops`.
pub fn decode_routes(bytes: &[u8], hops: &[MemberIndex]) -> Result<Vec<Route>, WireError> {
    Ok(decode_route_records(bytes, hops.len())?
        .into_iter()
        .map(|r| r.to_route(hops))
        .collect())
}

impl RouteRecord {
    /// The route, its next hops taken from `hops` (none if its run lies
    /// outside: decoding has checked that it does not).
    pub fn to_route(&self, hops: &[MemberIndex]) -> Route {
        let run = hops.get(self.hops.range()).unwrap_or(&[]).to_vec();
        Route {
            prefix: self.prefix,
            next_hops: if self.ecmp {
                NextHops::Ecmp(run)
            } else {
                NextHops::Ordered(run)
            },
            metric: self.metric,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ViewBuilder;

    #[test]
    fn every_record_round_trips() {
        let mut v = ViewBuilder::new()
            .member("a", "eu-west-1", Role::Hub, &["10.1.0.0/16", "fd00::/48"])
            .endpoint("internet", "192.0.2.1:4500")
            .endpoint("dx", "[2001:db8::1]:4501")
            .group("hubs")
            .member("b", "us-east-1", Role::Leaf, &["0.0.0.0/0"])
            .state(State::Suspect)
            .local("a")
            .build();
        v.members[1].health = Health {
            rtt_us: 70_123,
            loss_ppm: 5,
            load_permille: 999,
            changed_ms: u64::MAX - 1,
        };
        v.members[1].policy_version = 7;
        assert_eq!(
            decode_members(&encode_members(&v.members)).unwrap(),
            v.members
        );
        assert_eq!(
            decode_prefixes(&encode_prefixes(&v.prefixes)).unwrap(),
            v.prefixes
        );
        assert_eq!(
            decode_endpoints(&encode_endpoints(&v.endpoints)).unwrap(),
            v.endpoints
        );
        let peers = [
            Peer {
                member: 1,
                endpoint: 0,
            },
            Peer {
                member: 9,
                endpoint: 3,
            },
        ];
        assert_eq!(decode_peers(&encode_peers(&peers)).unwrap(), peers);
        let routes = vec![
            Route {
                prefix: v.prefixes[0],
                next_hops: NextHops::Ordered(vec![1, 0]),
                metric: 10,
            },
            Route {
                prefix: v.prefixes[1],
                next_hops: NextHops::Ecmp(vec![]),
                metric: u32::MAX,
            },
        ];
        let (bytes, hops) = encode_routes(&routes);
        assert_eq!(bytes.len(), 2 * ROUTE_SIZE);
        assert_eq!(decode_routes(&bytes, &hops).unwrap(), routes);
    }

    #[test]
    fn malformed_lists_say_what_and_where() {
        let e = decode_peers(&[0; 9]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "peers: 9 bytes is not a whole number of 8-byte records"
        );
        let route = Route {
            prefix: Prefix::parse("10.0.0.0/8").unwrap(),
            next_hops: NextHops::Ordered(vec![1]),
            metric: 1,
        };
        let (mut bytes, hops) = encode_routes(&[route.clone(), route]);
        bytes[ROUTE_SIZE + 17] = 5;
        let e = decode_routes(&bytes, &hops).unwrap_err();
        assert_eq!(
            e.to_string(),
            "routes[1]: address family 5 is neither 4 nor 6"
        );
        bytes[ROUTE_SIZE + 17] = 4;
        bytes[ROUTE_SIZE + 32] = 200;
        let e = decode_routes(&bytes, &hops).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("routes[1]: next hops 1..1+200 lie outside"),
            "{e}"
        );
        let mut m = encode_members(
            &ViewBuilder::new()
                .member("a", "r", Role::Edge, &[])
                .local("a")
                .build()
                .members,
        );
        m[28] = 3;
        assert_eq!(
            decode_members(&m).unwrap_err().to_string(),
            "members[0]: role 3 is not 0, 1 or 2"
        );
    }
}
