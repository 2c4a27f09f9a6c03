//! A policy's decisions as the gateway holds them. Routes keep their next
//! hops as runs of one shared list, as the contract carries them, so taking
//! in a 1,000-route answer costs a handful of allocations rather than one
//! per route (which alone cost ~30 µs per evaluation at 1,000 members).

use meshgate_sdk as sdk;
use meshgate_sdk::wire::{self, RouteRecord, WireError};
use meshgate_sdk::{Failover, MemberIndex, Peer};

use super::host::bindings::meshgate::policy::types as wit;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decisions {
    pub peers: Vec<Peer>,
    pub routes: Vec<RouteRecord>,
    /// The next hops the routes' runs point into.
    pub hops: Vec<MemberIndex>,
    pub failover: Vec<Failover>,
}

impl Decisions {
    /// Decodes the contract's records; what does not decode is named.
    pub(super) fn from_wit(d: wit::Decisions) -> Result<Decisions, WireError> {
        Ok(Decisions {
            peers: wire::decode_peers(&d.peers)?,
            routes: wire::decode_route_records(&d.routes.routes, d.routes.hops.len())?,
            hops: d.routes.hops,
            failover: d
                .failover
                .into_iter()
                .map(|f| Failover {
                    group: f.group,
                    active: f.active,
                    claim_routes: f.claim_routes,
                })
                .collect(),
        })
    }

    /// The next hops of `route`, one of [`routes`](Self::routes).
    pub fn next_hops(&self, route: &RouteRecord) -> &[MemberIndex] {
        self.hops.get(route.hops.range()).unwrap_or(&[])
    }

    /// As the SDK's types, for tools and tests (one allocation per route).
    pub fn to_sdk(&self) -> sdk::Decisions {
        sdk::Decisions {
            peers: self.peers.clone(),
            routes: self.routes.iter().map(|r| r.to_route(&self.hops)).collect(),
            failover: self.failover.clone(),
        }
    }
}
