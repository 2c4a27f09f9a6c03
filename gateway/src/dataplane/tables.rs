//! The tables the packet threads route and filter by. The control plane
//! builds them whole from a policy's decisions and swaps them in
//! atomically (`ArcSwap`); a packet thread loads them once per batch and
//! never takes a lock.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::StaticPeer;
use crate::prefix::{Prefix, PrefixMap};

/// Next hops of one route, as peer indices (the config's order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHops {
    pub peers: Box<[usize]>,
    /// Spread flows over all of them rather than use the first.
    pub ecmp: bool,
}

impl NextHops {
    /// The peer a packet from `src` to `dst` goes to.
    pub fn pick(&self, src: IpAddr, dst: IpAddr) -> usize {
        if self.ecmp && self.peers.len() > 1 {
            // A flow keeps its path: hash the address pair.
            let h = fold(src).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ fold(dst);
            self.peers[(h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % self.peers.len()]
        } else {
            self.peers[0]
        }
    }
}

fn fold(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            (v as u64) ^ ((v >> 64) as u64)
        }
    }
}

/// Routes by inner destination.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    pub routes: PrefixMap<NextHops>,
    /// Every prefix in `routes`, for the kernel's routes into the TUN.
    pub prefixes: Vec<Prefix>,
    /// Peers in the hub role: transit carriers, which may send from any
    /// prefix the mesh routes, whatever the policy in force routes through
    /// them (so relayed traffic is accepted while a new policy rolls out
    /// gateway by gateway).
    pub transit: Vec<usize>,
}

impl Tables {
    /// The table a config implies without a policy: each peer's prefixes
    /// straight to it.
    pub fn from_peers(peers: &[StaticPeer]) -> Tables {
        let mut t = Tables::default();
        for (i, p) in peers.iter().enumerate() {
            for prefix in &p.prefixes {
                t.insert(
                    *prefix,
                    NextHops {
                        peers: Box::new([i]),
                        ecmp: false,
                    },
                );
            }
        }
        t
    }

    pub fn insert(&mut self, prefix: Prefix, hops: NextHops) {
        if self.routes.insert(prefix, hops).is_none() {
            self.prefixes.push(prefix);
        }
    }

    pub fn lookup(&self, dst: IpAddr) -> Option<&NextHops> {
        self.routes.lookup(dst)
    }

    /// Whether `peer` may send packets from `src`: the route back to `src`
    /// goes through it (feasible-path reverse-path check, so transit
    /// through a hub passes and a failover to the backup hop does too), or
    /// `peer` is a hub and `src` is a prefix the mesh routes.
    pub fn source_allowed(&self, src: IpAddr, peer: usize) -> bool {
        self.lookup(src)
            .is_some_and(|h| h.peers.contains(&peer) || self.transit.contains(&peer))
    }
}

/// The tables, shared between the control plane and the packet threads.
pub type SharedTables = Arc<ArcSwap<Tables>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_pass_through_their_next_hops_or_a_hub_only() {
        let mut t = Tables {
            transit: vec![0],
            ..Tables::default()
        };
        for (prefix, peer) in [("10.2.0.0/16", 1), ("10.3.0.0/16", 2)] {
            t.insert(
                prefix.parse().unwrap(),
                NextHops {
                    peers: Box::new([peer]),
                    ecmp: false,
                },
            );
        }
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(t.source_allowed(ip("10.2.0.9"), 1), "the route back");
        assert!(
            !t.source_allowed(ip("10.3.0.9"), 1),
            "another peer's prefix"
        );
        assert!(t.source_allowed(ip("10.3.0.9"), 0), "a hub carries transit");
        assert!(
            !t.source_allowed(ip("192.0.2.9"), 0),
            "but only from prefixes the mesh routes"
        );
    }
}
