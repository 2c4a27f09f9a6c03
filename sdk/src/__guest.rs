//! The component side (wasm32 only): bindings generated from
//! `wit/policy.wit`, and the conversions between them and the SDK's types.

pub mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "wit",
        default_bindings_module: "meshgate_sdk::__guest::bindings",
        pub_export_macro: true,
        export_macro_name: "export_raw",
    });
}

pub use bindings::{export_raw, Guest};

use crate::types::{addr_bits, addr_from_bits};
use crate::{
    Endpoint, Failover, Group, Health, Member, Names, NextHops, Peer, Policy, Prefix, Role, Route,
    Span, State, View,
};
use bindings::meshgate::policy::types as wit;

pub use wit::{
    Decisions as WitDecisions, Failover as WitFailover, Peer as WitPeer, Route as WitRoute,
    View as WitView,
};

fn split(bits: u128) -> (u64, u64) {
    ((bits >> 64) as u64, bits as u64)
}

fn join(hi: u64, lo: u64) -> u128 {
    (u128::from(hi) << 64) | u128::from(lo)
}

fn prefix_in(p: wit::Prefix) -> Prefix {
    Prefix {
        addr: addr_from_bits(p.v6, join(p.hi, p.lo)),
        len: p.len,
    }
}

fn prefix_out(p: Prefix) -> wit::Prefix {
    let (hi, lo) = split(addr_bits(p.addr));
    wit::Prefix {
        v6: p.addr.is_ipv6(),
        hi,
        lo,
        len: p.len,
    }
}

fn member_in(m: wit::Member) -> Member {
    Member {
        handle: m.handle,
        id: m.id,
        region: m.region,
        zone: m.zone,
        account: m.account,
        role: match m.role {
            wit::Role::Edge => Role::Edge,
            wit::Role::Leaf => Role::Leaf,
            wit::Role::Hub => Role::Hub,
        },
        state: match m.state {
            wit::State::Alive => State::Alive,
            wit::State::Suspect => State::Suspect,
            wit::State::Dead => State::Dead,
        },
        group: m.group,
        prefixes: Span {
            first: m.prefixes.first,
            count: m.prefixes.count,
        },
        endpoints: Span {
            first: m.endpoints.first,
            count: m.endpoints.count,
        },
        health: Health {
            rtt_us: m.health.rtt_us,
            loss_ppm: m.health.loss_ppm,
            load_permille: m.health.load_permille,
            changed_ms: m.health.changed_ms,
        },
        policy_version: m.policy_version,
    }
}

fn view_in(v: wit::View) -> View {
    View {
        names: Names {
            text: v.names,
            ends: v.name_ends,
        },
        local: v.local,
        members: v.members.into_iter().map(member_in).collect(),
        prefixes: v.prefixes.into_iter().map(prefix_in).collect(),
        endpoints: v
            .endpoints
            .into_iter()
            .map(|e| Endpoint {
                label: e.label,
                addr: addr_from_bits(e.v6, join(e.hi, e.lo)),
                port: e.port,
            })
            .collect(),
        params: v.params.into_iter().map(|p| (p.key, p.value)).collect(),
        groups: v
            .groups
            .into_iter()
            .map(|g| Group {
                name: g.name,
                active: g.active,
                since_ms: g.since_ms,
            })
            .collect(),
        now_ms: v.now_ms,
    }
}

fn peer_out(p: Peer) -> wit::Peer {
    wit::Peer {
        member: p.member,
        endpoint: p.endpoint,
    }
}

fn route_out(r: Route) -> wit::Route {
    wit::Route {
        prefix: prefix_out(r.prefix),
        next_hops: match r.next_hops {
            NextHops::Ordered(m) => wit::NextHops::Ordered(m),
            NextHops::Ecmp(m) => wit::NextHops::Ecmp(m),
        },
        metric: r.metric,
    }
}

fn failover_out(f: Failover) -> wit::Failover {
    wit::Failover {
        group: f.group,
        active: f.active,
        claim_routes: f.claim_routes,
    }
}

pub fn decide<P: Policy>(v: wit::View) -> wit::Decisions {
    let d = P::decide(&view_in(v));
    wit::Decisions {
        peers: d.peers.into_iter().map(peer_out).collect(),
        routes: d.routes.into_iter().map(route_out).collect(),
        failover: d.failover.into_iter().map(failover_out).collect(),
    }
}

pub fn peers<P: Policy>(v: wit::View) -> Vec<wit::Peer> {
    P::peers(&view_in(v)).into_iter().map(peer_out).collect()
}

pub fn routes<P: Policy>(v: wit::View) -> Vec<wit::Route> {
    P::routes(&view_in(v)).into_iter().map(route_out).collect()
}

pub fn failover<P: Policy>(v: wit::View) -> Vec<wit::Failover> {
    P::failover(&view_in(v))
        .into_iter()
        .map(failover_out)
        .collect()
}

pub fn on_timer<P: Policy>(v: wit::View) -> Option<u32> {
    P::on_timer(&view_in(v))
}
/// The contract's log level for the SDK's.
pub fn wit_level(level: crate::Level) -> wit::Level {
    match level {
        crate::Level::Debug => wit::Level::Debug,
        crate::Level::Info => wit::Level::Info,
        crate::Level::Warn => wit::Level::Warn,
        crate::Level::Error => wit::Level::Error,
    }
}
