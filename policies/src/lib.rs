//! meshgate's built-in policies. Natively they are a library the gateway's
//! tests and tools can call; for `wasm32-unknown-unknown` one of them is
//! exported per build (feature `export-<name>`), and that module becomes
//! the component the gateway embeds.

pub mod failover;
pub mod full_mesh;
pub mod hub_spoke;
pub mod mesh_with_leaves;
#[cfg(any(
    feature = "test-trap",
    feature = "test-loop",
    feature = "test-oom",
    feature = "test-invalid"
))]
pub mod misbehaving;

pub use full_mesh::FullMesh;
pub use hub_spoke::HubSpoke;
pub use mesh_with_leaves::MeshWithLeaves;

use meshgate_sdk::{Failover, Member, MemberIndex, NextHops, Peer, Prefix, Route, View};

/// Members that count as present: alive, or suspected but not yet dead
/// (SWIM may refute a suspicion; tearing tunnels down early would flap).
pub(crate) fn present(m: &Member) -> bool {
    m.state != meshgate_sdk::State::Dead
}

/// A tunnel to `member` over its preferred endpoint: the first whose label
/// is the operator's `underlay` parameter, else the first it has.
pub(crate) fn peer(view: &View, index: MemberIndex) -> Option<Peer> {
    let m = &view.members[index as usize];
    if view.endpoints_of(m).is_empty() {
        return None;
    }
    let endpoint = view
        .param("underlay")
        .and_then(|label| view.endpoint_labelled(m, label))
        .unwrap_or(0);
    Some(Peer {
        member: index,
        endpoint,
    })
}

/// One route per prefix: routes to the same prefix (redundant members
/// announcing it) are merged, next hops in order of first appearance with
/// active members of redundancy groups first, the best metric kept.
pub(crate) fn merge_routes(decisions: &[Failover], routes: Vec<Route>) -> Vec<Route> {
    let mut merged: Vec<Route> = Vec::with_capacity(routes.len());
    let mut slot: std::collections::BTreeMap<Prefix, usize> = std::collections::BTreeMap::new();
    for r in routes {
        match slot.get(&r.prefix) {
            Some(&k) => {
                let m = &mut merged[k];
                let mut hops = m.next_hops.members().to_vec();
                for h in r.next_hops.members() {
                    if !hops.contains(h) {
                        hops.push(*h);
                    }
                }
                m.next_hops = NextHops::Ordered(hops);
                m.metric = m.metric.min(r.metric);
            }
            None => {
                slot.insert(r.prefix, merged.len());
                merged.push(r);
            }
        }
    }
    if decisions.iter().any(|d| d.active.is_some()) {
        let is_active = |i: &MemberIndex| decisions.iter().any(|d| d.active == Some(*i));
        for m in &mut merged {
            if let NextHops::Ordered(hops) = &mut m.next_hops {
                // Stable: keeps the policy's order among equals.
                hops.sort_by_key(|i| !is_active(i));
            }
        }
    }
    merged
}

#[cfg(feature = "export-full-mesh")]
meshgate_sdk::export_policy!(FullMesh);
#[cfg(feature = "export-hub-spoke")]
meshgate_sdk::export_policy!(HubSpoke);
#[cfg(feature = "export-mesh-with-leaves")]
meshgate_sdk::export_policy!(MeshWithLeaves);
#[cfg(feature = "test-trap")]
meshgate_sdk::export_policy!(misbehaving::Traps);
#[cfg(feature = "test-loop")]
meshgate_sdk::export_policy!(misbehaving::Loops);
#[cfg(feature = "test-oom")]
meshgate_sdk::export_policy!(misbehaving::Hogs);
#[cfg(feature = "test-invalid")]
meshgate_sdk::export_policy!(misbehaving::Lies);
