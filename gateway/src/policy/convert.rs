//! Between the SDK's types (the gateway's model of the view and decisions)
//! and the contract's, as wasmtime's bindings generate them.

use std::net::IpAddr;

use meshgate_sdk as sdk;

use super::host::bindings::meshgate::policy::types as wit;

fn bits(ip: IpAddr) -> (bool, u64, u64) {
    let v: u128 = match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    (ip.is_ipv6(), (v >> 64) as u64, v as u64)
}

fn prefix_out(p: &sdk::Prefix) -> wit::Prefix {
    let (v6, hi, lo) = bits(p.addr);
    wit::Prefix {
        v6,
        hi,
        lo,
        len: p.len,
    }
}

pub(super) fn prefix_in(p: wit::Prefix) -> sdk::Prefix {
    let v = (u128::from(p.hi) << 64) | u128::from(p.lo);
    let addr = if p.v6 {
        IpAddr::V6(v.into())
    } else {
        IpAddr::V4((v as u32).into())
    };
    sdk::Prefix { addr, len: p.len }
}

fn member_out(m: &sdk::Member) -> wit::Member {
    wit::Member {
        handle: m.handle,
        id: m.id,
        region: m.region,
        zone: m.zone,
        account: m.account,
        role: match m.role {
            sdk::Role::Edge => wit::Role::Edge,
            sdk::Role::Leaf => wit::Role::Leaf,
            sdk::Role::Hub => wit::Role::Hub,
        },
        state: match m.state {
            sdk::State::Alive => wit::State::Alive,
            sdk::State::Suspect => wit::State::Suspect,
            sdk::State::Dead => wit::State::Dead,
        },
        group: m.group,
        prefixes: wit::Span {
            first: m.prefixes.first,
            count: m.prefixes.count,
        },
        endpoints: wit::Span {
            first: m.endpoints.first,
            count: m.endpoints.count,
        },
        health: wit::Health {
            rtt_us: m.health.rtt_us,
            loss_ppm: m.health.loss_ppm,
            load_permille: m.health.load_permille,
            changed_ms: m.health.changed_ms,
        },
        policy_version: m.policy_version,
    }
}

pub(super) fn view_out(v: &sdk::View) -> wit::View {
    wit::View {
        names: v.names.text.clone(),
        name_ends: v.names.ends.clone(),
        local: v.local,
        members: v.members.iter().map(member_out).collect(),
        prefixes: v.prefixes.iter().map(prefix_out).collect(),
        endpoints: v
            .endpoints
            .iter()
            .map(|e| {
                let (v6, hi, lo) = bits(e.addr);
                wit::Endpoint {
                    label: e.label,
                    v6,
                    hi,
                    lo,
                    port: e.port,
                }
            })
            .collect(),
        params: v
            .params
            .iter()
            .map(|(k, val)| wit::Param {
                key: k.clone(),
                value: val.clone(),
            })
            .collect(),
        groups: v
            .groups
            .iter()
            .map(|g| wit::Group {
                name: g.name,
                active: g.active,
                since_ms: g.since_ms,
            })
            .collect(),
        now_ms: v.now_ms,
    }
}

pub(super) fn peer_in(p: wit::Peer) -> sdk::Peer {
    sdk::Peer {
        member: p.member,
        endpoint: p.endpoint,
    }
}

pub(super) fn route_in(r: wit::Route) -> sdk::Route {
    sdk::Route {
        prefix: prefix_in(r.prefix),
        next_hops: match r.next_hops {
            wit::NextHops::Ordered(m) => sdk::NextHops::Ordered(m),
            wit::NextHops::Ecmp(m) => sdk::NextHops::Ecmp(m),
        },
        metric: r.metric,
    }
}

pub(super) fn failover_in(f: wit::Failover) -> sdk::Failover {
    sdk::Failover {
        group: f.group,
        active: f.active,
        claim_routes: f.claim_routes,
    }
}

pub(super) fn decisions_in(d: wit::Decisions) -> sdk::Decisions {
    sdk::Decisions {
        peers: d.peers.into_iter().map(peer_in).collect(),
        routes: d.routes.into_iter().map(route_in).collect(),
        failover: d.failover.into_iter().map(failover_in).collect(),
    }
}
