//! Latency-aware peer selection, as an example of a custom policy.
//!
//! - Tunnels go over a member's `dx` underlay (Direct Connect) while this
//!   gateway's probes find that path up with loss at or under
//!   `max_loss_percent` (parameter, default 2), and over `internet`
//!   otherwise. A `dx` path that comes back after a cut is used again only
//!   once it has stayed up for `dx_hold_down_secs` (default 10), so a
//!   flapping link does not move the traffic back and forth.
//! - A prefix announced by several members is routed over all of them,
//!   lowest round-trip time first.
//! - Dead members are left out; suspected ones are kept until SWIM decides.

use std::collections::BTreeMap;

use meshgate_sdk::{
    export_policy, Endpoint, MemberIndex, NextHops, PathState, Peer, Policy, Prefix, Route, State,
    View,
};

pub struct LatencyAware;

/// Whether the `dx` path `e` may carry the tunnel now; if it is only
/// held down after a cut, for how many more milliseconds.
fn dx_usable(view: &View, e: &Endpoint) -> Result<(), Option<u64>> {
    let max_loss_ppm = view.param_u64("max_loss_percent", 2) * 10_000;
    let hold_ms = view.param_u64("dx_hold_down_secs", 10) * 1000;
    if e.health.state == PathState::Up && u64::from(e.health.loss_ppm) > max_loss_ppm {
        return Err(None);
    }
    match view.path_held_for(e, hold_ms) {
        None => Ok(()),
        Some(u64::MAX) => Err(None),
        Some(ms) => Err(Some(ms)),
    }
}

impl Policy for LatencyAware {
    fn peers(view: &View) -> Vec<Peer> {
        // Without a dx address of its own, this gateway reaches no one's.
        let local_dx = view.endpoint_labelled(view.local(), "dx").is_some();
        view.others()
            .filter(|(_, m)| m.state != State::Dead && !view.endpoints_of(m).is_empty())
            .map(|(member, m)| {
                let dx = view.endpoint_labelled(m, "dx").filter(|&i| {
                    local_dx && dx_usable(view, &view.endpoints_of(m)[i as usize]).is_ok()
                });
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

    /// Wakes when the first held-down `dx` path may be used again.
    fn on_timer(view: &View) -> Option<u32> {
        view.next_path_release_ms("dx", view.param_u64("dx_hold_down_secs", 10) * 1000)
    }
}

export_policy!(LatencyAware);

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_sdk::testing::{route_table, ViewBuilder};
    use meshgate_sdk::Role;

    /// us-a's dx path as this gateway's probes found it.
    fn view_with_dx(state: PathState, loss_percent: u32, changed_ms: u64, now_ms: u64) -> View {
        let mut v = ViewBuilder::new()
            .member("eu", "eu-west-1", Role::Edge, &["10.1.0.0/16"])
            .endpoint("internet", "192.0.2.1:4500")
            .endpoint("dx", "198.51.100.1:4500")
            .member("us-a", "us-east-1", Role::Edge, &["10.2.0.0/16"])
            .endpoint("internet", "192.0.2.2:4500")
            .endpoint("dx", "198.51.100.2:4500")
            .path(state, loss_percent, changed_ms)
            .local("eu")
            .build();
        v.now_ms = now_ms;
        v
    }

    fn us_a_label(v: &View) -> String {
        let peers = LatencyAware::peers(v);
        let p = peers
            .iter()
            .find(|p| v.name(v.members[p.member as usize].id) == "us-a")
            .unwrap();
        endpoint_label(v, p)
    }

    #[test]
    fn a_cut_dx_moves_to_internet_and_back_only_after_the_hold_down() {
        let t = 1_000_000;
        assert_eq!(us_a_label(&view_with_dx(PathState::Up, 0, 0, t)), "dx");
        assert_eq!(
            us_a_label(&view_with_dx(PathState::Down, 100, t, t)),
            "internet"
        );
        // Healed 3 s ago: held down for 7 s more, and the timer says so.
        let v = view_with_dx(PathState::Up, 0, t - 3_000, t);
        assert_eq!(us_a_label(&v), "internet");
        assert_eq!(LatencyAware::on_timer(&v), Some(7_000));
        let v = view_with_dx(PathState::Up, 0, t - 10_000, t);
        assert_eq!(us_a_label(&v), "dx");
        assert_eq!(LatencyAware::on_timer(&v), None);
        // Up but losing more than allowed.
        assert_eq!(
            us_a_label(&view_with_dx(PathState::Up, 5, 0, t)),
            "internet"
        );
        // Never probed: trusted, as before.
        assert_eq!(us_a_label(&view_with_dx(PathState::Unknown, 0, 0, t)), "dx");
    }

    fn view(us_loss_percent: u32) -> View {
        ViewBuilder::new()
            .member("eu", "eu-west-1", Role::Edge, &["10.1.0.0/16"])
            .endpoint("internet", "192.0.2.1:4500")
            .endpoint("dx", "198.51.100.1:4500")
            .member("us-a", "us-east-1", Role::Edge, &["10.2.0.0/16"])
            .endpoint("internet", "192.0.2.2:4500")
            .endpoint("dx", "198.51.100.2:4500")
            .path(PathState::Up, us_loss_percent, 0)
            .rtt_ms(80)
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
        assert_eq!(us_a_label(&view(0)), "dx");
    }

    #[test]
    fn falls_back_to_internet_when_dx_loses_packets() {
        assert_eq!(us_a_label(&view(5)), "internet");
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
