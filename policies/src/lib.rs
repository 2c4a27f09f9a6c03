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
    feature = "test-invalid",
    feature = "test-malformed"
))]
pub mod misbehaving;

pub use full_mesh::FullMesh;
pub use hub_spoke::HubSpoke;
pub use mesh_with_leaves::MeshWithLeaves;

use meshgate_sdk::{Failover, Member, MemberIndex, NextHops, Peer, Route, View};

/// Members that count as present: alive, or suspected but not yet dead
/// (SWIM may refute a suspicion; tearing tunnels down early would flap).
pub(crate) fn present(m: &Member) -> bool {
    m.state != meshgate_sdk::State::Dead
}

/// A tunnel to `member` over its preferred endpoint: the one labelled as
/// the operator's `underlay` parameter while this gateway's probes do not
/// find that path down (and, once it heals, after `underlay_hold_down_secs`,
/// default 10), else `internet`, else the first it has.
pub(crate) fn peer(view: &View, index: MemberIndex) -> Option<Peer> {
    let m = &view.members[index as usize];
    let endpoints = view.endpoints_of(m);
    if endpoints.is_empty() {
        return None;
    }
    let hold_ms = view.param_u64("underlay_hold_down_secs", 10) * 1000;
    let endpoint = view
        .param("underlay")
        .and_then(|label| view.endpoint_labelled(m, label))
        .filter(|&i| {
            view.path_held_for(&endpoints[i as usize], hold_ms)
                .is_none()
        })
        .or_else(|| view.endpoint_labelled(m, "internet"))
        .unwrap_or(0);
    Some(Peer {
        member: index,
        endpoint,
    })
}

/// When to evaluate again: the next failover change, or the end of the
/// first underlay hold-down, whichever comes first.
pub(crate) fn next_timer(view: &View) -> Option<u32> {
    let hold_ms = view.param_u64("underlay_hold_down_secs", 10) * 1000;
    let held = view
        .param("underlay")
        .and_then(|label| view.next_path_release_ms(label, hold_ms));
    [failover::next_change_ms(view), held]
        .into_iter()
        .flatten()
        .min()
}

/// Routes `member`'s prefixes over `next_hops` (none if there are none):
/// metric 10 straight to the member, 20 through others.
pub(crate) fn route_prefixes(
    view: &View,
    index: MemberIndex,
    member: &Member,
    next_hops: Vec<MemberIndex>,
    out: &mut Vec<Route>,
) {
    if next_hops.is_empty() {
        return;
    }
    let metric = if next_hops == [index] { 10 } else { 20 };
    out.extend(view.prefixes_of(member).iter().map(|p| Route {
        prefix: *p,
        next_hops: NextHops::Ordered(next_hops.clone()),
        metric,
    }));
}

/// One route per prefix: routes to the same prefix (redundant members
/// announcing it) are merged, next hops in order of first appearance with
/// active members of redundancy groups first, the best metric kept. A
/// prefix this member announces itself is its own VPC (a partner in its
/// redundancy group announces the same): never routed into the tunnel.
pub(crate) fn merge_routes(
    view: &View,
    decisions: &[Failover],
    mut routes: Vec<Route>,
) -> Vec<Route> {
    let own = view.prefixes_of(view.local());
    routes.retain(|r| !own.contains(&r.prefix));
    // Sort positions by prefix (integer keys: cheap to compare) to find
    // routes to the same prefix; most views have none, and then nothing is
    // merged or moved.
    let key = |r: &Route| (r.prefix.addr.is_ipv6(), r.prefix.bits(), r.prefix.len);
    let mut order: Vec<usize> = (0..routes.len()).collect();
    order.sort_by_key(|&i| key(&routes[i]));
    let duplicated = order
        .windows(2)
        .any(|w| key(&routes[w[0]]) == key(&routes[w[1]]));
    if duplicated {
        let mut keep = vec![true; routes.len()];
        let mut k = 0;
        while k < order.len() {
            let first = order[k..]
                .iter()
                .take_while(|&&i| key(&routes[i]) == key(&routes[order[k]]))
                .count();
            // Merge into the earliest route of the run, keeping the policy's order.
            let mut run: Vec<usize> = order[k..k + first].to_vec();
            run.sort_unstable();
            let (head, rest) = (run[0], &run[1..]);
            for &i in rest {
                let (hops, metric) = (routes[i].next_hops.members().to_vec(), routes[i].metric);
                let mut merged = routes[head].next_hops.members().to_vec();
                for h in hops {
                    if !merged.contains(&h) {
                        merged.push(h);
                    }
                }
                routes[head].next_hops = NextHops::Ordered(merged);
                routes[head].metric = routes[head].metric.min(metric);
                keep[i] = false;
            }
            k += first;
        }
        let mut i = 0;
        routes.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }
    if decisions.iter().any(|d| d.active.is_some()) {
        let is_active = |i: &MemberIndex| decisions.iter().any(|d| d.active == Some(*i));
        for r in &mut routes {
            if let NextHops::Ordered(hops) = &mut r.next_hops {
                // Stable: keeps the policy's order among equals.
                hops.sort_by_key(|i| !is_active(i));
            }
        }
    }
    routes
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
