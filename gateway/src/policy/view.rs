//! The gateway's side of the contract: the view it gives a policy, and the
//! data-plane tables it makes of the answer.
//!
//! Until the membership protocol lands, the members are this gateway
//! (member 0) and the peers of its config (member i + 1 is peer i), all
//! alive, each with its configured endpoint labelled `internet`.

use meshgate_sdk::{Endpoint, Health, Member, Names, Span, State, View};

use crate::config::{Config, Placement};
use crate::dataplane::tables::{NextHops, Tables};
use crate::prefix::Prefix;

use super::Decisions;

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
    }
}

/// The view of the mesh this gateway's config describes.
pub fn from_config(config: &Config, now_ms: u64) -> View {
    let mut view = View {
        now_ms,
        params: config.policy.params.clone(),
        ..View::default()
    };
    let mut names = Names::default();
    let local = member(
        &mut names,
        &mut view,
        1,
        &config.id,
        &config.placement,
        &[],
        None,
    );
    view.members.push(local);
    for (i, p) in config.peers.iter().enumerate() {
        let m = member(
            &mut names,
            &mut view,
            i as u64 + 2,
            &p.id,
            &p.placement,
            &p.prefixes,
            Some(p.endpoint),
        );
        view.members.push(m);
    }
    view.names = names;
    view
}

/// The data-plane tables for validated decisions on a view built by
/// [`from_config`] (member i + 1 is peer i).
pub fn tables(view: &View, decisions: &Decisions) -> Tables {
    let mut t = Tables {
        transit: (1..view.members.len())
            .filter(|&i| view.members[i].role == meshgate_sdk::Role::Hub)
            .map(|i| i - 1)
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
            .map(|&m| m as usize - 1)
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
