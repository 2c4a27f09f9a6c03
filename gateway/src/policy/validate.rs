//! Decisions are checked before they are applied: a policy may be wrong,
//! and a wrong table must never reach the data plane.

use meshgate_sdk::View;

use super::host::Decisions;

/// Everything wrong with `d` for `view`, one line each; empty if valid.
pub fn problems(view: &View, d: &Decisions) -> Vec<String> {
    let mut out = Vec::new();
    let n = view.members.len() as u32;
    let member = |i: u32, what: &str, out: &mut Vec<String>| {
        if i >= n {
            out.push(format!("{what} names member {i}, but the view has {n}"));
            false
        } else if i == view.local {
            out.push(format!("{what} names this gateway itself"));
            false
        } else {
            true
        }
    };
    let mut seen = std::collections::BTreeSet::new();
    for (k, p) in d.peers.iter().enumerate() {
        if member(p.member, &format!("peers[{k}]"), &mut out) {
            let m = &view.members[p.member as usize];
            if p.endpoint as usize >= view.endpoints_of(m).len() {
                out.push(format!(
                    "peers[{k}]: member {} has {} endpoints, not {}",
                    view.name(m.id),
                    view.endpoints_of(m).len(),
                    // A module may name endpoint u32::MAX.
                    u64::from(p.endpoint) + 1
                ));
            }
        }
        if !seen.insert(p.member) {
            out.push(format!("peers[{k}]: member {} is listed twice", p.member));
        }
    }
    let mut prefixes = std::collections::BTreeSet::new();
    for (k, r) in d.routes.iter().enumerate() {
        let max = if r.prefix.addr.is_ipv4() { 32 } else { 128 };
        let width = max as u32;
        let host_bits_set =
            r.prefix.len < max && (r.prefix.bits() << (128 - width + u32::from(r.prefix.len))) != 0;
        if r.prefix.len > max {
            out.push(format!(
                "routes[{k}]: {} has a prefix length over {max}",
                r.prefix
            ));
        } else if host_bits_set {
            out.push(format!("routes[{k}]: {} has host bits set", r.prefix));
        }
        if !prefixes.insert(r.prefix) {
            out.push(format!("routes[{k}]: {} is routed twice", r.prefix));
        }
        if d.next_hops(r).is_empty() {
            out.push(format!("routes[{k}]: {} has no next hop", r.prefix));
        }
        for h in d.next_hops(r) {
            member(*h, &format!("routes[{k}] ({})", r.prefix), &mut out);
        }
    }
    for (k, f) in d.failover.iter().enumerate() {
        let in_group: Vec<u32> = (0..n)
            .filter(|&i| view.members[i as usize].group == Some(f.group))
            .collect();
        if in_group.is_empty() {
            out.push(format!("failover[{k}]: group {} has no members", f.group));
            continue;
        }
        let group = view.name(f.group);
        match f.active {
            Some(a) if !in_group.contains(&a) => {
                out.push(format!("failover[{k}]: member {a} is not in group {group}"))
            }
            Some(a) if view.members[a as usize].state == meshgate_sdk::State::Dead => out.push(
                format!("failover[{k}]: the active member of group {group} is dead"),
            ),
            None if in_group
                .iter()
                .any(|&i| view.members[i as usize].is_alive()) =>
            {
                out.push(format!(
                    "failover[{k}]: group {group} has alive members but no active one"
                ))
            }
            _ => {}
        }
    }
    out
}
