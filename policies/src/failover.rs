//! Active/passive failover per redundancy group, with hold-down against
//! flapping and an optional preempt switch.
//!
//! Parameters: `failover.hold_down_ms` (default 30000): a member whose state
//! or health changed more recently is not made active while a steadier one
//! exists; `failover.preempt` (default false): whether a preferred member
//! that comes back takes over from the active one; `priority.<member-id>`
//! (default 100, lower is preferred), ties broken by the longest running
//! member (its gateway's start time, the same in every member's view),
//! then by member id. The policy keeps no state: who is active now comes
//! in the view. Without that history (a member that has just started, or
//! the active one gone) every member picks the same one: a restarted
//! member does not take over from the one that ran on without it.

use meshgate_sdk::{Failover, MemberIndex, NameIndex, State, View};

use crate::present;

pub const DEFAULT_HOLD_DOWN_MS: u64 = 30_000;

/// One decision per redundancy group that has members.
pub fn decide(view: &View) -> Vec<Failover> {
    let hold_down = view.param_u64("failover.hold_down_ms", DEFAULT_HOLD_DOWN_MS);
    let preempt = view.param_bool("failover.preempt", false);
    let mut groups: Vec<NameIndex> = view.members.iter().filter_map(|m| m.group).collect();
    groups.sort_unstable();
    groups.dedup();
    groups
        .into_iter()
        .map(|group| {
            let mut candidates: Vec<MemberIndex> = (0..view.members.len() as MemberIndex)
                .filter(|&i| {
                    view.members[i as usize].group == Some(group)
                        && present(&view.members[i as usize])
                })
                .collect();
            candidates.sort_by_key(|&i| {
                let m = &view.members[i as usize];
                (
                    priority(view, i),
                    // 0: unknown, after every known start.
                    m.up_since_ms.wrapping_sub(1),
                    view.name(m.id).to_string(),
                )
            });
            let m = |i: MemberIndex| &view.members[i as usize];
            let steady = |i: MemberIndex| {
                m(i).state == State::Alive
                    && view.now_ms.saturating_sub(m(i).health.changed_ms) >= hold_down
            };
            let best = candidates
                .iter()
                .copied()
                .find(|&i| steady(i))
                .or_else(|| {
                    candidates
                        .iter()
                        .copied()
                        .find(|&i| m(i).state == State::Alive)
                })
                .or_else(|| candidates.first().copied());
            let current = view
                .group(group)
                .and_then(|g| g.active)
                .filter(|c| candidates.contains(c));
            let active = match (current, best) {
                (Some(c), Some(b)) if preempt && b != c && steady(b) => Some(b),
                (Some(c), _) => Some(c),
                (None, b) => b,
            };
            Failover {
                group,
                active,
                claim_routes: active == Some(view.local),
            }
        })
        .collect()
}

/// Milliseconds until the earliest hold-down in a redundancy group runs
/// out, when that member becomes eligible and the decision may change; the
/// built-ins return it from `on_timer`, so the gateway evaluates again then
/// even if nothing else happens. `None` when no hold-down is running.
pub fn next_change_ms(view: &View) -> Option<u32> {
    let hold_down = view.param_u64("failover.hold_down_ms", DEFAULT_HOLD_DOWN_MS);
    view.members
        .iter()
        .filter(|m| m.group.is_some() && m.state == State::Alive)
        .filter_map(|m| {
            let steady_at = m.health.changed_ms.saturating_add(hold_down);
            (steady_at > view.now_ms).then(|| steady_at - view.now_ms)
        })
        .min()
        .map(|ms| u32::try_from(ms).unwrap_or(u32::MAX))
}

fn priority(view: &View, i: MemberIndex) -> u64 {
    let id = view.name(view.members[i as usize].id);
    view.param_u64(&format!("priority.{id}"), 100)
}

/// `members` with those active in their group first, then by id.
pub fn active_first(
    view: &View,
    decisions: &[Failover],
    mut members: Vec<MemberIndex>,
) -> Vec<MemberIndex> {
    let is_active = |i: &MemberIndex| decisions.iter().any(|d| d.active == Some(*i));
    members.sort_by_key(|i| {
        (
            !is_active(i),
            view.name(view.members[*i as usize].id).to_string(),
        )
    });
    members
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgate_sdk::testing::{active_ids, ViewBuilder};
    use meshgate_sdk::Role;

    const NOW: u64 = 1_000_000;

    fn pair(b_state: State, b_changed: u64) -> ViewBuilder {
        ViewBuilder::new()
            .member("hub-a", "eu-west-1", Role::Hub, &[])
            .group("hubs")
            .zone("eu-west-1a")
            .member("hub-b", "eu-west-1", Role::Hub, &[])
            .group("hubs")
            .zone("eu-west-1b")
            .state(b_state)
            .changed_ms(b_changed)
            .member("spoke", "us-east-1", Role::Leaf, &["10.1.0.0/16"])
            .now_ms(NOW)
    }

    fn active(v: &View) -> Option<String> {
        active_ids(v, &decide(v))["hubs"].clone()
    }

    #[test]
    fn picks_the_preferred_alive_member_and_claims_only_when_local() {
        let v = pair(State::Alive, 0).local("hub-a").build();
        assert_eq!(active(&v).as_deref(), Some("hub-a"));
        assert!(decide(&v)[0].claim_routes);
        let v = pair(State::Alive, 0).local("hub-b").build();
        assert!(
            !decide(&v)[0].claim_routes,
            "the passive member does not claim the routes"
        );
        let v = pair(State::Alive, 0).param("priority.hub-b", "10").build();
        assert_eq!(
            active(&v).as_deref(),
            Some("hub-b"),
            "priority wins over the id order"
        );
    }

    #[test]
    fn fails_over_when_the_active_member_dies() {
        let v = ViewBuilder::new()
            .member("hub-a", "eu-west-1", Role::Hub, &[])
            .group("hubs")
            .state(State::Dead)
            .changed_ms(NOW - 10)
            .member("hub-b", "eu-west-1", Role::Hub, &[])
            .group("hubs")
            .now_ms(NOW)
            .active("hubs", "hub-a", 0)
            .build();
        assert_eq!(active(&v).as_deref(), Some("hub-b"));
    }

    #[test]
    fn a_recovered_member_does_not_take_over_without_preempt() {
        // hub-b is active since hub-a failed; hub-a came back steady.
        let base = || pair(State::Alive, 0).active("hubs", "hub-b", NOW - 60_000);
        assert_eq!(
            active(&base().build()).as_deref(),
            Some("hub-b"),
            "no preempt: the active member stays"
        );
        let v = base().param("failover.preempt", "true").build();
        assert_eq!(
            active(&v).as_deref(),
            Some("hub-a"),
            "preempt: the preferred member takes over"
        );
    }

    #[test]
    fn hold_down_keeps_a_flapping_member_from_taking_over() {
        // hub-a (preferred) changed state 5 s ago: not steady for 30 s yet.
        let v = ViewBuilder::new()
            .member("hub-a", "eu-west-1", Role::Hub, &[])
            .group("hubs")
            .changed_ms(NOW - 5_000)
            .member("hub-b", "eu-west-1", Role::Hub, &[])
            .group("hubs")
            .now_ms(NOW)
            .active("hubs", "hub-b", NOW - 60_000)
            .param("failover.preempt", "true")
            .build();
        assert_eq!(active(&v).as_deref(), Some("hub-b"));
        // With no active member yet, the steady one is chosen over the flapping preferred one.
        let v = ViewBuilder::new()
            .member("hub-a", "eu-west-1", Role::Hub, &[])
            .group("hubs")
            .changed_ms(NOW - 5_000)
            .member("hub-b", "eu-west-1", Role::Hub, &[])
            .group("hubs")
            .now_ms(NOW)
            .build();
        assert_eq!(active(&v).as_deref(), Some("hub-b"));
        // If nobody is steady, someone alive is still chosen.
        let v = ViewBuilder::new()
            .member("hub-a", "eu-west-1", Role::Hub, &[])
            .group("hubs")
            .changed_ms(NOW - 5_000)
            .now_ms(NOW)
            .build();
        assert_eq!(active(&v).as_deref(), Some("hub-a"));
    }

    /// hub-a has just restarted: in its own view nobody has been steady
    /// for the hold-down and it has no history, as in every other view
    /// it is the newer one; all agree on hub-b, and hub-a claims nothing.
    #[test]
    fn a_member_that_just_started_defers_to_the_one_running_longer() {
        let fresh = |local: &str| {
            ViewBuilder::new()
                .member("hub-a", "eu-west-1", Role::Hub, &[])
                .group("hubs")
                .changed_ms(NOW - 1_000)
                .up_since(NOW - 1_000)
                .member("hub-b", "eu-west-1", Role::Hub, &[])
                .group("hubs")
                .changed_ms(NOW - 900)
                .up_since(NOW - 900_000)
                .member("spoke", "us-east-1", Role::Leaf, &["10.1.0.0/16"])
                .now_ms(NOW)
                .local(local)
                .build()
        };
        for local in ["hub-a", "hub-b", "spoke"] {
            assert_eq!(active(&fresh(local)).as_deref(), Some("hub-b"), "{local}");
        }
        assert!(!decide(&fresh("hub-a"))[0].claim_routes);
        assert!(decide(&fresh("hub-b"))[0].claim_routes);
        // Priority still comes first.
        let v = ViewBuilder::new()
            .member("hub-a", "eu-west-1", Role::Hub, &[])
            .group("hubs")
            .up_since(NOW - 1_000)
            .member("hub-b", "eu-west-1", Role::Hub, &[])
            .group("hubs")
            .up_since(NOW - 900_000)
            .param("priority.hub-a", "10")
            .now_ms(NOW)
            .build();
        assert_eq!(active(&v).as_deref(), Some("hub-a"));
    }

    #[test]
    fn a_group_with_no_present_member_has_no_active_one() {
        let v = pair(State::Dead, 0).build();
        let v = View {
            members: v
                .members
                .into_iter()
                .map(|mut m| {
                    if m.group.is_some() {
                        m.state = State::Dead;
                    }
                    m
                })
                .collect(),
            ..v
        };
        assert_eq!(active(&v), None);
    }

    #[test]
    fn the_timer_runs_to_the_earliest_hold_down_end() {
        // hub-b came back 10 s ago: eligible in 20 s.
        let v = pair(State::Alive, NOW - 10_000)
            .now_ms(NOW)
            .local("hub-a")
            .build();
        assert_eq!(next_change_ms(&v), Some(20_000));
        let v = pair(State::Alive, NOW - 40_000)
            .now_ms(NOW)
            .local("hub-a")
            .build();
        assert_eq!(next_change_ms(&v), None, "both steady: no timer");
        let v = pair(State::Dead, NOW - 10_000)
            .now_ms(NOW)
            .local("hub-a")
            .build();
        assert_eq!(next_change_ms(&v), None, "a dead member is not waited for");
    }
}
