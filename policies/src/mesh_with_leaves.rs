//! `mesh-with-leaves`: the edges of all regions form a full mesh; a leaf
//! VPC attaches only to its own region's edges; leaf-to-leaf traffic across
//! regions goes leaf -> edge -> edge -> leaf. Edges of one region that share
//! a redundancy group are used active first.

use meshgate_sdk::{Failover, MemberIndex, Peer, Policy, Role, Route, View};

use crate::failover::{active_first, decide};
use crate::{peer, present};

pub struct MeshWithLeaves;

/// The present edges of `region`.
fn edges_of(view: &View, region: u32) -> Vec<MemberIndex> {
    view.others()
        .filter(|(_, m)| present(m) && m.role != Role::Leaf && m.region == region)
        .map(|(i, _)| i)
        .collect()
}

impl Policy for MeshWithLeaves {
    fn peers(view: &View) -> Vec<Peer> {
        let local = view.local();
        view.others()
            .filter(|(_, m)| present(m))
            .filter(|(_, m)| match local.role {
                // A leaf talks to its region's edges only.
                Role::Leaf => m.role != Role::Leaf && m.region == local.region,
                // An edge talks to every edge, and to its region's leaves.
                _ => m.role != Role::Leaf || m.region == local.region,
            })
            .filter_map(|(i, _)| peer(view, i))
            .collect()
    }

    fn routes(view: &View) -> Vec<Route> {
        let decisions = decide(view);
        let local = view.local();
        let mut routes = Vec::new();
        for (i, m) in view.others().filter(|(_, m)| present(m)) {
            let direct = match local.role {
                Role::Leaf => false,
                _ => m.role != Role::Leaf || m.region == local.region,
            };
            let next_hops = if direct {
                vec![i]
            } else if local.role == Role::Leaf {
                // Everything leaves a leaf through its own region's edges.
                active_first(view, &decisions, edges_of(view, local.region))
            } else {
                // Another region's leaf: through that region's edges.
                active_first(view, &decisions, edges_of(view, m.region))
            };
            crate::route_prefixes(view, i, m, next_hops, &mut routes);
        }
        crate::merge_routes(view, &decisions, routes)
    }

    fn failover(view: &View) -> Vec<Failover> {
        decide(view)
    }

    /// Evaluate again when a redundancy group's hold-down runs out.
    fn on_timer(view: &View) -> Option<u32> {
        crate::next_timer(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_sdk::testing::{peer_ids, route_table, ViewBuilder};
    use meshgate_sdk::State;

    fn view(local: &str) -> View {
        ViewBuilder::new()
            .member("eu-edge", "eu-west-1", Role::Edge, &["10.10.0.0/16"])
            .endpoint("internet", "192.0.2.1:4500")
            .member("us-edge-a", "us-east-1", Role::Edge, &["10.20.0.0/16"])
            .group("us-edges")
            .endpoint("internet", "192.0.2.2:4500")
            .member("us-edge-b", "us-east-1", Role::Edge, &["10.20.0.0/16"])
            .group("us-edges")
            .endpoint("internet", "192.0.2.3:4500")
            .member("eu-leaf", "eu-west-1", Role::Leaf, &["10.11.0.0/16"])
            .endpoint("internet", "192.0.2.4:4500")
            .member("us-leaf", "us-east-1", Role::Leaf, &["10.21.0.0/16"])
            .endpoint("internet", "192.0.2.5:4500")
            .now_ms(1_000_000)
            .local(local)
            .build()
    }

    #[test]
    fn leaves_attach_to_their_regions_edge_only() {
        let v = view("eu-leaf");
        assert_eq!(peer_ids(&v, &MeshWithLeaves::peers(&v)), ["eu-edge"]);
        let t = route_table(&v, &MeshWithLeaves::routes(&v));
        assert_eq!(
            t["10.21.0.0/16"],
            ["eu-edge"],
            "to the other region's leaf: via our edge"
        );
        assert_eq!(t["10.20.0.0/16"], ["eu-edge"]);
    }

    #[test]
    fn edges_mesh_and_reach_foreign_leaves_through_their_edges() {
        let v = view("eu-edge");
        assert_eq!(
            peer_ids(&v, &MeshWithLeaves::peers(&v)),
            ["eu-leaf", "us-edge-a", "us-edge-b"]
        );
        let t = route_table(&v, &MeshWithLeaves::routes(&v));
        assert_eq!(t["10.11.0.0/16"], ["eu-leaf"], "own region's leaf: direct");
        assert_eq!(
            t["10.21.0.0/16"],
            ["us-edge-a", "us-edge-b"],
            "foreign leaf: via its region's edges, active first"
        );
        assert_eq!(
            t["10.20.0.0/16"],
            ["us-edge-a", "us-edge-b"],
            "a prefix both edges announce is one route over both"
        );
        assert_eq!(
            MeshWithLeaves::routes(&v).len(),
            t.len(),
            "one route per prefix"
        );
    }

    #[test]
    fn a_dead_edge_is_routed_around() {
        let mut v = view("eu-edge");
        let (a, _) = v.member_by_id("us-edge-a").unwrap();
        v.members[a as usize].state = State::Dead;
        let t = route_table(&v, &MeshWithLeaves::routes(&v));
        assert_eq!(t["10.21.0.0/16"], ["us-edge-b"]);
        assert_eq!(t["10.20.0.0/16"], ["us-edge-b"]);
    }
}
