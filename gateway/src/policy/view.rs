//! The gateway's side of the contract: the view it gives a policy, and the
//! data-plane tables it makes of the answer.
//!
//! A gateway with configured peers sees itself and them
//! ([`from_peers`]); a mesh member sees what membership tells it
//! ([`from_observed`]).

use meshgate_sdk::{Endpoint, Health, Member, Names, Span, State, View};

use crate::dataplane::tables::{NextHops, Tables};
use crate::prefix::Prefix;

use super::Decisions;

/// Where a member stands: what policies decide by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub region: String,
    pub zone: String,
    pub account: String,
    pub role: meshgate_sdk::Role,
    /// Its redundancy group, if it is one of an active/passive pair.
    pub group: Option<String>,
}

/// A peer with configured keys, as its gateway's view shows it.
pub struct ConfiguredPeer<'a> {
    pub id: &'a str,
    pub placement: &'a Placement,
    pub prefixes: &'a [Prefix],
    pub endpoint: std::net::SocketAddr,
}

fn member(
    names: &mut Names,
    view: &mut View,
    handle: u64,
    id: &str,
    p: &Placement,
    prefixes: &[Prefix],
    endpoint: Option<std::net::SocketAddr>,
) -> Member {
    let first = view.prefixes.len() as u32;
    view.prefixes.extend(
        prefixes
            .iter()
            .map(|p| meshgate_sdk::Prefix::new(p.addr(), p.prefix_len())),
    );
    let efirst = view.endpoints.len() as u32;
    if let Some(e) = endpoint {
        let label = names.intern("internet");
        view.endpoints.push(Endpoint {
            label,
            addr: e.ip(),
            port: e.port(),
            health: Default::default(),
        });
    }
    Member {
        handle,
        id: names.intern(id),
        region: names.intern(&p.region),
        zone: names.intern(&p.zone),
        account: names.intern(&p.account),
        role: p.role,
        state: State::Alive,
        group: p.group.as_deref().map(|g| names.intern(g)),
        prefixes: Span {
            first,
            count: prefixes.len() as u32,
        },
        endpoints: Span {
            first: efirst,
            count: view.endpoints.len() as u32 - efirst,
        },
        health: Health::default(),
        policy_version: 1,
        up_since_ms: 0,
    }
}

/// The view of a gateway with configured peers: itself (member 0) and
/// its peers (member i + 1 is peer i), all alive, each with its endpoint
/// labelled `internet`.
pub fn from_peers(
    id: &str,
    placement: &Placement,
    params: &[(String, String)],
    peers: &[ConfiguredPeer<'_>],
    now_ms: u64,
) -> View {
    let mut view = View {
        now_ms,
        params: params.to_vec(),
        ..View::default()
    };
    let mut names = Names::default();
    let local = member(&mut names, &mut view, 1, id, placement, &[], None);
    view.members.push(local);
    for (i, p) in peers.iter().enumerate() {
        let m = member(
            &mut names,
            &mut view,
            i as u64 + 2,
            p.id,
            p.placement,
            p.prefixes,
            Some(p.endpoint),
        );
        view.members.push(m);
    }
    view.names = names;
    view
}

/// Interns names in constant time each: the SDK's `Names::intern` searches
/// the table, fine for a config's few names, not for the thousands of a
/// large mesh's view, rebuilt on every membership or health change.
#[derive(Default)]
struct Interner {
    names: Names,
    index: std::collections::HashMap<String, meshgate_sdk::NameIndex>,
}

impl Interner {
    fn intern(&mut self, name: &str) -> meshgate_sdk::NameIndex {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        self.names.text.push_str(name);
        self.names.ends.push(self.names.text.len() as u32);
        let i = (self.names.ends.len() - 1) as meshgate_sdk::NameIndex;
        self.index.insert(name.to_string(), i);
        i
    }
}

/// The view membership gives: this member first, then every other member
/// it knows a record of, with its state, measured health and since when
/// its state has held. `now` and `now_ms` are the same moment on the
/// monotonic and the wall clock. Member handles are stable per member id.
pub fn from_observed(
    local: &crate::membership::info::MemberInfo,
    observed: &[crate::membership::Observed],
    params: &[(String, String)],
    now: std::time::Instant,
    now_ms: u64,
) -> View {
    use crate::membership::info::MemberInfo;
    let mut view = View {
        now_ms,
        params: params.to_vec(),
        ..View::default()
    };
    let mut names = Interner::default();
    let mut add = |view: &mut View, info: &MemberInfo, state: State, health: Health| {
        let first = view.prefixes.len() as u32;
        view.prefixes.extend(
            info.prefixes
                .iter()
                .map(|(a, l)| meshgate_sdk::Prefix::new(*a, *l)),
        );
        let efirst = view.endpoints.len() as u32;
        for (label, addr) in &info.endpoints {
            let label = names.intern(label);
            view.endpoints.push(Endpoint {
                label,
                addr: addr.ip(),
                port: addr.port(),
                health: Default::default(),
            });
        }
        // Records are checked against the certificate's role; an unknown
        // one (a newer member) counts as an edge.
        let role = meshgate_sdk::Role::from_name(&info.role).unwrap_or(meshgate_sdk::Role::Edge);
        view.members.push(Member {
            handle: handle_of(&info.id),
            id: names.intern(&info.id),
            region: names.intern(&info.region),
            zone: names.intern(&info.zone),
            account: names.intern(&info.account),
            role,
            state,
            group: info.group.as_deref().map(|g| names.intern(g)),
            prefixes: Span {
                first,
                count: info.prefixes.len() as u32,
            },
            endpoints: Span {
                first: efirst,
                count: view.endpoints.len() as u32 - efirst,
            },
            health,
            policy_version: info.policy_version,
            up_since_ms: info.generation,
        });
    };
    add(
        &mut view,
        local,
        State::Alive,
        // This member changed last when it started (its generation): as
        // others see it, so a member that has just restarted does not
        // count itself steadier than the partner that ran on.
        Health {
            load_permille: local.load_permille,
            changed_ms: local.generation.min(now_ms),
            ..Health::default()
        },
    );
    for o in observed {
        let state = match o.state {
            foca::State::Alive => State::Alive,
            foca::State::Suspect => State::Suspect,
            foca::State::Down => State::Dead,
        };
        let age = now.saturating_duration_since(o.since).as_millis() as u64;
        let health = Health {
            rtt_us: o
                .rtt
                .map_or(0, |r| u32::try_from(r.as_micros()).unwrap_or(u32::MAX)),
            loss_ppm: (o.loss.clamp(0.0, 1.0) * 1e6) as u32,
            load_permille: o.info.load_permille,
            changed_ms: now_ms.saturating_sub(age),
        };
        add(&mut view, &o.info, state, health);
    }
    view.names = names.names;
    view
}

/// Replaces the members of `view` by those of `fresh` (a new view from
/// membership), keeping the operator's parameters and the failover state
/// the runtime holds: each group's active member, found again by id.
pub fn replace_members(view: &mut View, mut fresh: View) {
    let groups = std::mem::take(&mut view.groups);
    for g in groups {
        let name = view.names.get(g.name).to_string();
        let active = g.active.and_then(|i| {
            let id = view.name(view.members.get(i as usize)?.id).to_string();
            fresh.member_by_id(&id).map(|(i, _)| i)
        });
        if g.active.is_some() && active.is_none() {
            continue; // The active member left the view: the group starts afresh.
        }
        let name = fresh.names.intern(&name);
        fresh.groups.push(meshgate_sdk::Group {
            name,
            active,
            since_ms: g.since_ms,
        });
    }
    fresh.params = std::mem::take(&mut view.params);
    fresh.now_ms = view.now_ms;
    *view = fresh;
}

/// A member's handle: the same for its id in every view.
fn handle_of(id: &str) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b)
}

/// The data-plane tables for validated decisions. Members are numbered
/// into data-plane slots by `slots` when given (a view from membership),
/// else as [`from_peers`] built them (member i + 1 is peer i).
pub fn tables(
    view: &View,
    decisions: &Decisions,
    slots: Option<&crate::tunnels::SharedSlots>,
) -> Tables {
    let mut slots = slots.and_then(|s| s.lock().ok());
    let slot_of: Vec<usize> = (0..view.members.len())
        .map(|i| match slots.as_mut() {
            Some(s) if i > 0 => s.slot(view.name(view.members[i].id)),
            _ => i.wrapping_sub(1),
        })
        .collect();
    drop(slots);
    let mut t = Tables {
        transit: (1..view.members.len())
            .filter(|&i| view.members[i].role == meshgate_sdk::Role::Hub)
            .map(|i| slot_of[i])
            .collect(),
        ..Tables::default()
    };
    for r in &decisions.routes {
        let Some(prefix) = Prefix::new(r.prefix.addr, r.prefix.len) else {
            continue;
        };
        let peers: Box<[usize]> = decisions
            .next_hops(r)
            .iter()
            .filter(|&&m| m > 0)
            .filter_map(|&m| slot_of.get(m as usize).copied())
            .collect();
        if peers.is_empty() {
            continue;
        }
        t.insert(
            prefix,
            NextHops {
                peers,
                ecmp: r.ecmp,
            },
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use meshgate_policies::FullMesh;
    use meshgate_sdk::testing::{peer_ids, route_table};
    use meshgate_sdk::Policy;

    use super::*;
    use crate::membership::liveness::LivenessSettings;
    use crate::membership::sim::{info, Sim};
    use crate::membership::Settings;

    #[test]
    fn the_view_follows_membership_and_the_policy_follows_the_view() {
        let mut sim = Sim::converged(
            5,
            Settings::default(),
            Some(LivenessSettings::default()),
            11,
        );
        for i in 0..5 {
            sim.advertise(i, info(i, 1, 1));
        }
        sim.run_until(Duration::from_secs(3));
        let view_of_0 = |sim: &mut Sim| {
            let now = sim.instant();
            let observed = sim.agent_mut(0).observe(now);
            from_observed(&info(0, 1, 1), &observed, &[], now, 1_000_000)
        };
        let v = view_of_0(&mut sim);
        assert_eq!(v.members.len(), 5);
        assert_eq!(v.name(v.local().id), "m0");
        assert_eq!(peer_ids(&v, &FullMesh::peers(&v)), ["m1", "m2", "m3", "m4"]);
        let m2 = v.member_by_id("m2").unwrap().1;
        assert!(
            m2.health.rtt_us >= 20_000 && m2.health.rtt_us <= 250_000,
            "{:?}",
            m2.health
        );
        let routes = route_table(&v, &FullMesh::routes(&v));
        assert_eq!(routes["10.3.0.0/24"], ["m3"]);

        // m3 dies: the view marks it dead, and the policy withdraws its routes.
        sim.kill(3);
        sim.run_until(sim.now + Duration::from_secs(2));
        let v = view_of_0(&mut sim);
        let (_, m3) = v.member_by_id("m3").unwrap();
        assert_eq!(m3.state, meshgate_sdk::State::Dead);
        assert!(
            m3.health.changed_ms > 1_000_000 - 2_000,
            "changed within the last 2 s"
        );
        let routes = route_table(&v, &FullMesh::routes(&v));
        assert!(!routes.contains_key("10.3.0.0/24"));
        assert_eq!(peer_ids(&v, &FullMesh::peers(&v)), ["m1", "m2", "m4"]);
    }
}
