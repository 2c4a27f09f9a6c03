//! Latency-aware peer selection, as an example of a custom policy.
//!
//! - Tunnels go over a member's `dx` underlay (Direct Connect) while its
//!   measured loss stays at or under `max_loss_percent` (parameter, default
//!   2), and over `internet` otherwise.
//! - A prefix announced by several members is routed over all of them,
//!   lowest round-trip time first.
//! - Dead members are left out; suspected ones are kept until SWIM decides.

use std::collections::BTreeMap;

use meshgate_sdk::{
    export_policy, MemberIndex, NextHops, Peer, Policy, Prefix, Route, State, View,
};

pub struct LatencyAware;

impl Policy for LatencyAware {
    fn peers(view: &View) -> Vec<Peer> {
        let max_loss_ppm = view.param_u64("max_loss_percent", 2) * 10_000;
        view.others()
            .filter(|(_, m)| m.state != State::Dead && !view.endpoints_of(m).is_empty())
            .map(|(member, m)| {
                let dx = view
                    .endpoint_labelled(m, "dx")
                    .filter(|_| u64::from(m.health.loss_ppm) <= max_loss_ppm);
                let endpoint = dx
                    .or_else(|| view.endpoint_labelled(m, "internet"))
                    .unwrap_or(0);
                Peer { member, endpoint }
            })
            .collect()
    }

    fn routes(view: &View) -> Vec<Route> {
        let mut by_prefix: BTreeMap<Prefix, Vec<(u32, MemberIndex)>> = BTreeMap::new();
        for (i, m) in view.others().filter(|(_, m)| m.state != State::Dead) {
            for p in view.prefixes_of(m) {
                by_prefix.entry(*p).or_default().push((m.health.rtt_us, i));
            }
        }
        by_prefix
            .into_iter()
            .map(|(prefix, mut hops)| {
                hops.sort();
                let best_rtt_ms = hops[0].0 / 1000;
                Route {
                    prefix,
                    next_hops: NextHops::Ordered(hops.into_iter().map(|(_, i)| i).collect()),
                    metric: 10 + best_rtt_ms,
                }
            })
            .collect()
    }
}

export_policy!(LatencyAware);

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_sdk::testing::{route_table, ViewBuilder};
    use meshgate_sdk::Role;

    fn view(us_loss_percent: u32) -> View {
        ViewBuilder::new()
            .member("eu", "eu-west-1", Role::Edge, &["10.1.0.0/16"])
            .endpoint("internet", "192.0.2.1:4500")
            .member("us-a", "us-east-1", Role::Edge, &["10.2.0.0/16"])
            .endpoint("internet", "192.0.2.2:4500")
            .endpoint("dx", "198.51.100.2:4500")
            .rtt_ms(80)
            .loss_percent(us_loss_percent)
            .member("us-b", "us-east-1", Role::Edge, &["10.2.0.0/16"])
            .endpoint("internet", "192.0.2.3:4500")
            .rtt_ms(70)
            .member("ap", "ap-south-1", Role::Edge, &["10.3.0.0/16"])
            .endpoint("internet", "192.0.2.4:4500")
            .state(State::Dead)
            .local("eu")
            .build()
    }

    fn endpoint_label(v: &View, p: &Peer) -> String {
        let m = &v.members[p.member as usize];
        v.name(v.endpoints_of(m)[p.endpoint as usize].label)
            .to_string()
    }

    #[test]
    fn prefers_dx_while_it_is_healthy() {
        let v = view(0);
        let peers = LatencyAware::peers(&v);
        let us_a = peers
            .iter()
            .find(|p| v.name(v.members[p.member as usize].id) == "us-a")
            .unwrap();
        assert_eq!(endpoint_label(&v, us_a), "dx");
    }

    #[test]
    fn falls_back_to_internet_when_dx_loses_packets() {
        let v = view(5);
        let peers = LatencyAware::peers(&v);
        let us_a = peers
            .iter()
            .find(|p| v.name(v.members[p.member as usize].id) == "us-a")
            .unwrap();
        assert_eq!(endpoint_label(&v, us_a), "internet");
    }

    #[test]
    fn routes_go_lowest_latency_first_and_skip_the_dead() {
        let v = view(0);
        let t = route_table(&v, &LatencyAware::routes(&v));
        assert_eq!(t["10.2.0.0/16"], ["us-b", "us-a"], "70 ms before 80 ms");
        assert!(!t.contains_key("10.3.0.0/16"), "ap is dead");
        assert_eq!(LatencyAware::peers(&v).len(), 2);
    }
}
