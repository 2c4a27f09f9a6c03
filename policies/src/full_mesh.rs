//! `full-mesh`: every member holds a tunnel to every other present member
//! and routes each one's prefixes straight to it.

use meshgate_sdk::{NextHops, Peer, Policy, Route, View};

use crate::{peer, present};

pub struct FullMesh;

impl Policy for FullMesh {
    fn peers(view: &View) -> Vec<Peer> {
        view.others()
            .filter(|(_, m)| present(m))
            .filter_map(|(i, _)| peer(view, i))
            .collect()
    }

    fn routes(view: &View) -> Vec<Route> {
        let routes = view
            .others()
            .filter(|(_, m)| present(m))
            .flat_map(|(i, m)| {
                view.prefixes_of(m).iter().map(move |p| Route {
                    prefix: *p,
                    next_hops: NextHops::Ordered(vec![i]),
                    metric: 10,
                })
            })
            .collect();
        crate::merge_routes(view, &crate::failover::decide(view), routes)
    }

    fn failover(view: &View) -> Vec<meshgate_sdk::Failover> {
        crate::failover::decide(view)
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
    use meshgate_sdk::{Role, State};

    fn view() -> View {
        ViewBuilder::new()
            .member("eu", "eu-west-1", Role::Edge, &["10.1.0.0/16"])
            .endpoint("internet", "192.0.2.1:4500")
            .member(
                "us",
                "us-east-1",
                Role::Edge,
                &["10.2.0.0/16", "fd00:2::/48"],
            )
            .endpoint("internet", "192.0.2.2:4500")
            .member("ap", "ap-south-1", Role::Edge, &["10.3.0.0/16"])
            .endpoint("internet", "192.0.2.3:4500")
            .state(State::Dead)
            .member("sa", "sa-east-1", Role::Edge, &["10.4.0.0/16"])
            .endpoint("internet", "192.0.2.4:4500")
            .state(State::Suspect)
            .local("eu")
            .build()
    }

    /// With `underlay = "dx"`, a peer's tunnel leaves dx while probes find
    /// it down, and comes back once it has been up for the hold-down.
    #[test]
    fn the_preferred_underlay_is_left_while_down_and_held_down_after() {
        use meshgate_sdk::PathState;
        let t = 1_000_000;
        let v = |state, changed_ms| {
            let mut v = ViewBuilder::new()
                .member("eu", "eu-west-1", Role::Edge, &["10.1.0.0/16"])
                .endpoint("internet", "192.0.2.1:4500")
                .endpoint("dx", "198.19.0.1:4500")
                .member("us", "us-east-1", Role::Edge, &["10.2.0.0/16"])
                .endpoint("internet", "192.0.2.2:4500")
                .endpoint("dx", "198.19.0.2:4500")
                .path(state, 0, changed_ms)
                .local("eu")
                .param("underlay", "dx")
                .param("underlay_hold_down_secs", "3")
                .build();
            v.now_ms = t;
            v
        };
        let label = |v: &View| {
            let p = FullMesh::peers(v);
            let m = &v.members[p[0].member as usize];
            v.name(v.endpoints_of(m)[p[0].endpoint as usize].label)
                .to_string()
        };
        assert_eq!(label(&v(PathState::Up, 0)), "dx");
        assert_eq!(label(&v(PathState::Unknown, 0)), "dx");
        assert_eq!(label(&v(PathState::Down, t - 500)), "internet");
        let healing = v(PathState::Up, t - 1_000);
        assert_eq!(label(&healing), "internet");
        assert_eq!(FullMesh::on_timer(&healing), Some(2_000));
        assert_eq!(label(&v(PathState::Up, t - 3_000)), "dx");
    }

    /// Both appliances of a pair announce their VPC's prefixes; neither
    /// routes them into the tunnel (to its partner): they are its own.
    #[test]
    fn a_partner_in_the_group_is_not_a_route_to_its_own_vpc() {
        let v = ViewBuilder::new()
            .member("eu-a", "eu-west-1", Role::Edge, &["10.1.0.0/16"])
            .group("eu")
            .endpoint("internet", "192.0.2.1:4500")
            .member("eu-b", "eu-west-1", Role::Edge, &["10.1.0.0/16"])
            .group("eu")
            .endpoint("internet", "192.0.2.2:4500")
            .member("us", "us-east-1", Role::Edge, &["10.2.0.0/16"])
            .endpoint("internet", "192.0.2.3:4500")
            .local("eu-b")
            .build();
        let table = route_table(&v, &FullMesh::routes(&v));
        assert_eq!(table.keys().collect::<Vec<_>>(), ["10.2.0.0/16"]);
        // The other region still reaches the pair, the active one first.
        let us = ViewBuilder::new()
            .member("eu-a", "eu-west-1", Role::Edge, &["10.1.0.0/16"])
            .group("eu")
            .endpoint("internet", "192.0.2.1:4500")
            .member("eu-b", "eu-west-1", Role::Edge, &["10.1.0.0/16"])
            .group("eu")
            .endpoint("internet", "192.0.2.2:4500")
            .member("us", "us-east-1", Role::Edge, &["10.2.0.0/16"])
            .endpoint("internet", "192.0.2.3:4500")
            .local("us")
            .build();
        assert_eq!(
            route_table(&us, &FullMesh::routes(&us))["10.1.0.0/16"],
            ["eu-a", "eu-b"]
        );
    }

    #[test]
    fn holds_tunnels_to_every_present_member() {
        let v = view();
        assert_eq!(
            peer_ids(&v, &FullMesh::peers(&v)),
            ["sa", "us"],
            "the dead one is dropped, the suspect one kept"
        );
    }

    #[test]
    fn routes_each_prefix_to_its_owner() {
        let v = view();
        let t = route_table(&v, &FullMesh::routes(&v));
        assert_eq!(t.len(), 3);
        assert_eq!(t["10.2.0.0/16"], ["us"]);
        assert_eq!(t["fd00:2::/48"], ["us"]);
        assert_eq!(t["10.4.0.0/16"], ["sa"]);
        assert!(!t.contains_key("10.1.0.0/16"), "no route to our own prefix");
    }
}
