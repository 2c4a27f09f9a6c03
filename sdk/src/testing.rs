//! Helpers for policy unit tests: build a [`View`] in a few lines, and read
//! decisions back by member id.
//!
//! ```
//! use meshgate_sdk::{testing::ViewBuilder, Role, State};
//! let view = ViewBuilder::new()
//!     .member("hub-a", "eu-west-1", Role::Hub, &[]).group("hubs")
//!     .member("hub-b", "eu-west-1", Role::Hub, &[]).group("hubs").state(State::Dead)
//!     .member("spoke-1", "us-east-1", Role::Leaf, &["10.1.0.0/16"])
//!     .local("spoke-1")
//!     .build();
//! assert_eq!(view.local().role, Role::Leaf);
//! ```

use std::collections::BTreeMap;

use crate::{
    Endpoint, Failover, Group, Health, Member, NameIndex, PathHealth, PathState, Peer, Prefix,
    Role, Route, Span, State, View,
};

/// Builds a [`View`]: each `member` call adds a member (alive, in zone
/// `<region>a`, account `000000000000`), and the calls after it adjust that
/// member until the next one.
#[derive(Default)]
pub struct ViewBuilder {
    view: View,
    local: Option<String>,
}

impl ViewBuilder {
    pub fn new() -> ViewBuilder {
        ViewBuilder::default()
    }

    fn name(&mut self, s: &str) -> NameIndex {
        self.view.names.intern(s)
    }

    fn last(&mut self) -> &mut Member {
        self.view.members.last_mut().expect("add a member first")
    }

    /// Adds a member. Panics on a malformed prefix (this is test code).
    pub fn member(mut self, id: &str, region: &str, role: Role, prefixes: &[&str]) -> Self {
        let (id_n, region_n) = (self.name(id), self.name(region));
        let zone = self.name(&format!("{region}a"));
        let account = self.name("000000000000");
        let handle = self.view.members.len() as u64 + 1;
        let prefix_span = Span {
            first: self.view.prefixes.len() as u32,
            count: prefixes.len() as u32,
        };
        for p in prefixes {
            self.view
                .prefixes
                .push(Prefix::parse(p).unwrap_or_else(|| panic!("bad prefix {p}")));
        }
        self.view.members.push(Member {
            handle,
            id: id_n,
            region: region_n,
            zone,
            account,
            role,
            state: State::Alive,
            group: None,
            prefixes: prefix_span,
            endpoints: Span {
                first: self.view.endpoints.len() as u32,
                count: 0,
            },
            health: Health::default(),
            policy_version: 1,
            up_since_ms: 0,
        });
        self
    }

    pub fn state(mut self, state: State) -> Self {
        self.last().state = state;
        self
    }

    pub fn group(mut self, group: &str) -> Self {
        let g = self.name(group);
        self.last().group = Some(g);
        self
    }

    /// When the last member's gateway started (ms since the epoch).
    pub fn up_since(mut self, ms: u64) -> Self {
        self.last().up_since_ms = ms;
        self
    }

    pub fn zone(mut self, zone: &str) -> Self {
        let z = self.name(zone);
        self.last().zone = z;
        self
    }

    /// Adds an underlay endpoint `addr:port` labelled `label`.
    pub fn endpoint(mut self, label: &str, addr: &str) -> Self {
        let l = self.name(label);
        let sa: std::net::SocketAddr = addr
            .parse()
            .unwrap_or_else(|_| panic!("bad endpoint {addr}"));
        // A member's endpoints are one run: they follow their member.
        let m = self.view.members.last().expect("add a member first");
        assert_eq!(
            (m.endpoints.first + m.endpoints.count) as usize,
            self.view.endpoints.len(),
            "add endpoints right after their member"
        );
        self.view.endpoints.push(Endpoint {
            label: l,
            addr: sa.ip(),
            port: sa.port(),
            health: PathHealth::default(),
        });
        self.last().endpoints.count += 1;
        self
    }

    /// The path to the endpoint added last, as probes found it.
    pub fn path(mut self, state: PathState, loss_percent: u32, changed_ms: u64) -> Self {
        let e = self
            .view
            .endpoints
            .last_mut()
            .expect("add an endpoint first");
        e.health = PathHealth {
            state,
            rtt_us: e.health.rtt_us,
            loss_ppm: loss_percent * 10_000,
            changed_ms,
        };
        self
    }

    pub fn rtt_ms(mut self, ms: u32) -> Self {
        self.last().health.rtt_us = ms * 1000;
        self
    }

    pub fn loss_percent(mut self, percent: u32) -> Self {
        self.last().health.loss_ppm = percent * 10_000;
        self
    }

    pub fn changed_ms(mut self, at: u64) -> Self {
        self.last().health.changed_ms = at;
        self
    }

    /// Which member this gateway is (default: the first).
    pub fn local(mut self, id: &str) -> Self {
        self.local = Some(id.to_string());
        self
    }

    pub fn param(mut self, key: &str, value: &str) -> Self {
        self.view.params.push((key.to_string(), value.to_string()));
        self
    }

    /// Records that `member` is active in `group` since `since_ms`.
    pub fn active(mut self, group: &str, member: &str, since_ms: u64) -> Self {
        let name = self.name(group);
        let active = self.view.member_by_id(member).map(|(i, _)| i);
        self.view.groups.retain(|g| g.name != name);
        self.view.groups.push(Group {
            name,
            active,
            since_ms,
        });
        self
    }

    pub fn now_ms(mut self, now: u64) -> Self {
        self.view.now_ms = now;
        self
    }

    pub fn build(mut self) -> View {
        if let Some(id) = self.local.take() {
            let (i, _) = self
                .view
                .member_by_id(&id)
                .unwrap_or_else(|| panic!("no member {id}"));
            self.view.local = i;
        }
        self.view
    }
}

/// The ids of the members `peers` names, sorted.
pub fn peer_ids(view: &View, peers: &[Peer]) -> Vec<String> {
    let mut ids: Vec<String> = peers.iter().map(|p| id_of(view, p.member)).collect();
    ids.sort();
    ids
}

/// The routes as `prefix -> next-hop ids` (in the policy's order), keyed
/// by prefix for stable comparison.
pub fn route_table(view: &View, routes: &[Route]) -> BTreeMap<String, Vec<String>> {
    routes
        .iter()
        .map(|r| {
            (
                r.prefix.to_string(),
                r.next_hops
                    .members()
                    .iter()
                    .map(|m| id_of(view, *m))
                    .collect(),
            )
        })
        .collect()
}

/// The active member's id per group, for `failover` decisions.
pub fn active_ids(view: &View, decisions: &[Failover]) -> BTreeMap<String, Option<String>> {
    decisions
        .iter()
        .map(|f| {
            (
                view.name(f.group).to_string(),
                f.active.map(|m| id_of(view, m)),
            )
        })
        .collect()
}

fn id_of(view: &View, member: u32) -> String {
    view.members.get(member as usize).map_or_else(
        || format!("<no member {member}>"),
        |m| view.name(m.id).to_string(),
    )
}
