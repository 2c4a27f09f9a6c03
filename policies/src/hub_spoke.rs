//! `hub-spoke` (transit): spokes hold tunnels only to the hubs, an
//! active/passive pair (one redundancy group); spoke-to-spoke traffic
//! crosses the active hub, with the passive one as the backup next hop.

use meshgate_sdk::{Failover, Peer, Policy, Role, Route, View};

use crate::failover::{active_first, decide};
use crate::{peer, present};

pub struct HubSpoke;

impl Policy for HubSpoke {
    fn peers(view: &View) -> Vec<Peer> {
        let local_is_hub = view.local().role == Role::Hub;
        view.others()
            .filter(|(_, m)| present(m) && (local_is_hub || m.role == Role::Hub))
            .filter_map(|(i, _)| peer(view, i))
            .collect()
    }

    fn routes(view: &View) -> Vec<Route> {
        let decisions = decide(view);
        let hubs: Vec<_> = view
            .others()
            .filter(|(_, m)| present(m) && m.role == Role::Hub)
            .map(|(i, _)| i)
            .collect();
        let via_hubs = active_first(view, &decisions, hubs);
        let local_is_hub = view.local().role == Role::Hub;
        let mut routes = Vec::new();
        for (i, m) in view.others().filter(|(_, m)| present(m)) {
            // A hub reaches everyone directly; a spoke reaches hubs directly
            // and other spokes through the hubs.
            let next_hops = if local_is_hub || m.role == Role::Hub {
                vec![i]
            } else {
                via_hubs.clone()
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

    fn view(local: &str, hub_a: State) -> View {
        ViewBuilder::new()
            .member("hub-a", "eu-west-1", Role::Hub, &["10.100.0.0/16"])
            .group("hubs")
            .endpoint("internet", "192.0.2.10:4500")
            .state(hub_a)
            .member("hub-b", "eu-west-1", Role::Hub, &["10.100.0.0/16"])
            .group("hubs")
            .endpoint("internet", "192.0.2.11:4500")
            .member("spoke-1", "us-east-1", Role::Leaf, &["10.1.0.0/16"])
            .endpoint("internet", "192.0.2.1:4500")
            .member("spoke-2", "ap-south-1", Role::Leaf, &["10.2.0.0/16"])
            .endpoint("internet", "192.0.2.2:4500")
            .now_ms(1_000_000)
            .local(local)
            .build()
    }

    #[test]
    fn spokes_reach_each_other_through_the_active_hub() {
        let v = view("spoke-1", State::Alive);
        assert_eq!(
            peer_ids(&v, &HubSpoke::peers(&v)),
            ["hub-a", "hub-b"],
            "spokes tunnel only to hubs"
        );
        let t = route_table(&v, &HubSpoke::routes(&v));
        assert_eq!(
            t["10.2.0.0/16"],
            ["hub-a", "hub-b"],
            "active hub first, passive as backup"
        );
        assert_eq!(
            t["10.100.0.0/16"],
            ["hub-a", "hub-b"],
            "the hubs' shared prefix: one route, active first"
        );
    }

    #[test]
    fn when_the_active_hub_dies_spokes_go_through_the_other() {
        let v = view("spoke-1", State::Dead);
        assert_eq!(peer_ids(&v, &HubSpoke::peers(&v)), ["hub-b"]);
        assert_eq!(
            route_table(&v, &HubSpoke::routes(&v))["10.2.0.0/16"],
            ["hub-b"]
        );
    }

    #[test]
    fn hubs_reach_every_spoke_directly() {
        let v = view("hub-a", State::Alive);
        assert_eq!(
            peer_ids(&v, &HubSpoke::peers(&v)),
            ["hub-b", "spoke-1", "spoke-2"]
        );
        let t = route_table(&v, &HubSpoke::routes(&v));
        assert_eq!(t["10.1.0.0/16"], ["spoke-1"]);
        assert_eq!(t["10.2.0.0/16"], ["spoke-2"]);
    }
}
