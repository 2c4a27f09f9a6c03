//! The view a policy sees and the decisions it returns: the Rust side of
//! `wit/policy.wit`, field for field, with helpers.

use std::fmt;
use std::net::IpAddr;

/// Index of a member in [`View::members`].
pub type MemberIndex = u32;
/// Index of a string in [`View::names`].
pub type NameIndex = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A region's appliance in the inter-region mesh.
    Edge,
    /// A VPC attached to its region's edge.
    Leaf,
    /// A transit hub.
    Hub,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Edge, Role::Leaf, Role::Hub];

    /// The name in configs, certificates and member records.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Edge => "edge",
            Role::Leaf => "leaf",
            Role::Hub => "hub",
        }
    }

    /// Inverse of [`Role::as_str`].
    pub fn from_name(name: &str) -> Option<Role> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Alive,
    Suspect,
    Dead,
}

/// An IPv4 or IPv6 prefix.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    pub fn new(addr: IpAddr, len: u8) -> Prefix {
        Prefix { addr, len }
    }

    /// Parses `addr/len`; `None` if it is not one.
    pub fn parse(s: &str) -> Option<Prefix> {
        let (a, l) = s.split_once('/')?;
        let addr: IpAddr = a.parse().ok()?;
        let len: u8 = l.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some(Prefix { addr, len })
    }

    /// The address as a 128-bit number (IPv4 in the low 32 bits), as the
    /// contract carries it.
    pub fn bits(&self) -> u128 {
        addr_bits(self.addr)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let shift = width - u32::from(self.len);
        shift >= width || (addr_bits(ip) >> shift) == (self.bits() >> shift)
    }
}

pub(crate) fn addr_bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An underlay address of a member, labelled (`internet`, `dx`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub label: NameIndex,
    pub addr: IpAddr,
    pub port: u16,
    /// The path from this gateway to it, as this gateway's probes found it.
    pub health: PathHealth,
}

/// Whether probes over one underlay reach a member and come back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PathState {
    /// Not probed (no SA with the member yet, this gateway has no address
    /// on that underlay, or the endpoint is this gateway's own).
    #[default]
    Unknown,
    Up,
    /// No answer for the down time (600 ms): the underlay is cut somewhere.
    Down,
}

/// What this gateway's probes measured over one endpoint of a member:
/// authenticated probes every 100 ms through the ESP port, so the path is
/// the one ESP takes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathHealth {
    pub state: PathState,
    /// Smoothed round-trip time (0 until measured).
    pub rtt_us: u32,
    /// Probes unanswered of the last 50 (five seconds) since the path last
    /// came up, per million.
    pub loss_ppm: u32,
    /// When the path last went down or came back up, ms since the Unix
    /// epoch (0: never since it was first found up), for hold-downs.
    pub changed_ms: u64,
}

/// What the membership protocol measured of a member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    pub rtt_us: u32,
    pub loss_ppm: u32,
    pub load_permille: u32,
    pub changed_ms: u64,
}

/// A run of entries in one of the view's flat lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub first: u32,
    pub count: u32,
}

impl Span {
    /// The entries it covers, as indexes.
    pub fn range(self) -> std::ops::Range<usize> {
        let first = self.first as usize;
        first..first.saturating_add(self.count as usize)
    }
}

/// The view's name table: every string once, referred to by index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// All names concatenated.
    pub text: String,
    /// Where each name ends in `text`.
    pub ends: Vec<u32>,
}

impl Names {
    /// The name at `index` ("" if out of range or malformed).
    pub fn get(&self, index: NameIndex) -> &str {
        let i = index as usize;
        let Some(&end) = self.ends.get(i) else {
            return "";
        };
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start as usize..end as usize).unwrap_or("")
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The index of `name`, if present.
    pub fn index_of(&self, name: &str) -> Option<NameIndex> {
        (0..self.ends.len() as NameIndex).find(|&i| self.get(i) == name)
    }

    /// Adds `name` (or finds it) and returns its index.
    pub fn intern(&mut self, name: &str) -> NameIndex {
        if let Some(i) = self.index_of(name) {
            return i;
        }
        self.text.push_str(name);
        self.ends.push(self.text.len() as u32);
        (self.ends.len() - 1) as NameIndex
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Stable across evaluations.
    pub handle: u64,
    pub id: NameIndex,
    pub region: NameIndex,
    pub zone: NameIndex,
    pub account: NameIndex,
    pub role: Role,
    pub state: State,
    /// The redundancy group it belongs to, if any.
    pub group: Option<NameIndex>,
    /// Its entries in [`View::prefixes`]; see [`View::prefixes_of`].
    pub prefixes: Span,
    /// Its entries in [`View::endpoints`]; see [`View::endpoints_of`].
    pub endpoints: Span,
    pub health: Health,
    pub policy_version: u32,
    /// When its gateway started (ms since the epoch, from its record; 0
    /// if unknown): the same on every member, so an election that
    /// prefers the longest running member agrees everywhere, even on a
    /// member that has just joined and has no history.
    pub up_since_ms: u64,
}

impl Member {
    pub fn is_alive(&self) -> bool {
        self.state == State::Alive
    }
}

/// A redundancy group as the gateway currently runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: NameIndex,
    /// The member now active, if any.
    pub active: Option<MemberIndex>,
    /// Since when (ms since the epoch).
    pub since_ms: u64,
}

/// Everything a policy decides from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    pub names: Names,
    /// The member this gateway is.
    pub local: MemberIndex,
    pub members: Vec<Member>,
    /// Every member's prefixes, one run per member.
    pub prefixes: Vec<Prefix>,
    /// Every member's endpoints, one run per member.
    pub endpoints: Vec<Endpoint>,
    /// Operator parameters from the gateway's config.
    pub params: Vec<(String, String)>,
    /// The redundancy groups and who is active in each now.
    pub groups: Vec<Group>,
    pub now_ms: u64,
}

impl View {
    /// The string `index` names ("" if out of range).
    pub fn name(&self, index: NameIndex) -> &str {
        self.names.get(index)
    }

    /// The index of `name` in the name table, if present.
    pub fn name_index(&self, name: &str) -> Option<NameIndex> {
        self.names.index_of(name)
    }

    /// `member`'s prefixes (empty if its span is out of range).
    pub fn prefixes_of(&self, member: &Member) -> &[Prefix] {
        self.prefixes.get(member.prefixes.range()).unwrap_or(&[])
    }

    /// `member`'s underlay endpoints (empty if its span is out of range).
    pub fn endpoints_of(&self, member: &Member) -> &[Endpoint] {
        self.endpoints.get(member.endpoints.range()).unwrap_or(&[])
    }

    /// This gateway's own member record.
    pub fn local(&self) -> &Member {
        &self.members[self.local as usize]
    }

    /// Every member but this gateway, with its index.
    pub fn others(&self) -> impl Iterator<Item = (MemberIndex, &Member)> {
        let local = self.local;
        self.members
            .iter()
            .enumerate()
            .map(|(i, m)| (i as MemberIndex, m))
            .filter(move |(i, _)| *i != local)
    }

    /// An operator parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The member whose id is `id`.
    pub fn member_by_id(&self, id: &str) -> Option<(MemberIndex, &Member)> {
        let n = self.name_index(id)?;
        self.members
            .iter()
            .enumerate()
            .find(|(_, m)| m.id == n)
            .map(|(i, m)| (i as MemberIndex, m))
    }

    /// The group named `name`, if the gateway runs one.
    pub fn group(&self, name: NameIndex) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// An operator parameter parsed as a number, or `default`.
    pub fn param_u64(&self, key: &str, default: u64) -> u64 {
        self.param(key)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(default)
    }

    /// An operator parameter read as a switch (`true`/`yes`/`on`/`1`), or `default`.
    pub fn param_bool(&self, key: &str, default: bool) -> bool {
        self.param(key)
            .map_or(default, |v| matches!(v.trim(), "true" | "yes" | "on" | "1"))
    }

    /// How much longer the path to `endpoint` is held back after coming
    /// up from a cut (`hold_down_ms` after it healed), or `None` if it may
    /// carry tunnels now. A path found down is held back indefinitely
    /// (`Some(u64::MAX)`); one never probed is not held back.
    pub fn path_held_for(&self, endpoint: &Endpoint, hold_down_ms: u64) -> Option<u64> {
        let h = endpoint.health;
        match h.state {
            PathState::Unknown => None,
            PathState::Down => Some(u64::MAX),
            PathState::Up if h.changed_ms == 0 => None,
            PathState::Up => {
                let held = h
                    .changed_ms
                    .saturating_add(hold_down_ms)
                    .saturating_sub(self.now_ms);
                (held > 0).then_some(held)
            }
        }
    }

    /// In how many milliseconds the first path labelled `label` to another
    /// member that is held back after a cut may carry tunnels again (for
    /// a policy's timer); `None` if none is held back for a known time.
    pub fn next_path_release_ms(&self, label: &str, hold_down_ms: u64) -> Option<u32> {
        let l = self.name_index(label)?;
        self.others()
            .flat_map(|(_, m)| self.endpoints_of(m))
            .filter(|e| e.label == l)
            .filter_map(|e| self.path_held_for(e, hold_down_ms))
            .filter(|&ms| ms != u64::MAX)
            .min()
            .map(|ms| u32::try_from(ms).unwrap_or(u32::MAX))
    }

    /// The index of the first endpoint of `member` labelled `label`.
    pub fn endpoint_labelled(&self, member: &Member, label: &str) -> Option<u32> {
        let l = self.name_index(label)?;
        self.endpoints_of(member)
            .iter()
            .position(|e| e.label == l)
            .map(|i| i as u32)
    }
}

/// All of a policy's decisions for one view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decisions {
    pub peers: Vec<Peer>,
    pub routes: Vec<Route>,
    pub failover: Vec<Failover>,
}

/// Hold a tunnel to `member` over its endpoint number `endpoint`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Peer {
    pub member: MemberIndex,
    pub endpoint: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextHops {
    /// Use the first alive one; the rest are backups, in order.
    Ordered(Vec<MemberIndex>),
    /// Spread flows over all of them.
    Ecmp(Vec<MemberIndex>),
}

impl NextHops {
    pub fn members(&self) -> &[MemberIndex] {
        match self {
            NextHops::Ordered(m) | NextHops::Ecmp(m) => m,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub prefix: Prefix,
    pub next_hops: NextHops,
    pub metric: u32,
}

/// For one redundancy group: which member is active, and whether it should
/// claim the cloud routes now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failover {
    pub group: NameIndex,
    pub active: Option<MemberIndex>,
    pub claim_routes: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}
