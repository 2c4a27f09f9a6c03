//! Write meshgate routing policies in Rust.
//!
//! A policy is a pure function of the gateway's view of the mesh: which
//! members exist, where, in what role, state and health. It decides which
//! tunnels to hold ([`Policy::peers`]), what to route where
//! ([`Policy::routes`]), and who is active in each redundancy group
//! ([`Policy::failover`]). The gateway calls it on events (membership,
//! health, configuration, timers), never per packet.
//!
//! The same code compiles natively, so a policy is unit-tested with plain
//! `cargo test` and the [`testing`] helpers, and for `wasm32-unknown-unknown`,
//! where [`export_policy!`] turns it into a WebAssembly component of the
//! contract in `wit/policy.wit` (`meshgate:policy@0.3.0`).
//!
//! ```
//! use meshgate_sdk::{export_policy, NextHops, Peer, Policy, Route, View};
//!
//! /// Every member reaches every other directly.
//! pub struct FullMesh;
//!
//! impl Policy for FullMesh {
//!     fn peers(view: &View) -> Vec<Peer> {
//!         view.others()
//!             .filter(|(_, m)| m.is_alive() && !view.endpoints_of(m).is_empty())
//!             .map(|(member, _)| Peer { member, endpoint: 0 })
//!             .collect()
//!     }
//!
//!     fn routes(view: &View) -> Vec<Route> {
//!         view.others()
//!             .filter(|(_, m)| m.is_alive())
//!             .flat_map(|(i, m)| view.prefixes_of(m).iter().map(move |p| Route {
//!                 prefix: *p,
//!                 next_hops: NextHops::Ordered(vec![i]),
//!                 metric: 10,
//!             }))
//!             .collect()
//!     }
//! }
//!
//! export_policy!(FullMesh);
//!
//! # use meshgate_sdk::{testing::ViewBuilder, Role};
//! let view = ViewBuilder::new()
//!     .member("eu-west-1", "eu-west-1", Role::Edge, &["10.1.0.0/16"]).endpoint("internet", "192.0.2.1:4500")
//!     .member("us-east-1", "us-east-1", Role::Edge, &["10.2.0.0/16"]).endpoint("internet", "192.0.2.2:4500")
//!     .local("eu-west-1")
//!     .build();
//! assert_eq!(meshgate_sdk::testing::peer_ids(&view, &FullMesh::peers(&view)), ["us-east-1"]);
//! ```

mod types;
pub mod wire;

pub mod testing;

pub use types::*;

/// The version of the contract this SDK implements.
pub const CONTRACT: &str = "meshgate:policy@0.3.0";

/// A routing policy. Every method is a pure function of the view.
pub trait Policy {
    /// Which tunnels to hold, and over which underlay endpoint.
    fn peers(view: &View) -> Vec<Peer>;

    /// The routes to install: prefix to ordered or ECMP next hops.
    fn routes(view: &View) -> Vec<Route>;

    /// Who is active in each redundancy group. None by default.
    fn failover(view: &View) -> Vec<Failover> {
        let _ = view;
        Vec::new()
    }

    /// All three decisions at once; what the gateway calls.
    fn decide(view: &View) -> Decisions {
        Decisions {
            peers: Self::peers(view),
            routes: Self::routes(view),
            failover: Self::failover(view),
        }
    }

    /// The policy's timer: asked after each evaluation, it returns the
    /// milliseconds until the gateway should evaluate again even if nothing
    /// changes (a hold-down running out, say; at least 100 ms), or `None`
    /// for no timer (the default).
    fn on_timer(view: &View) -> Option<u32> {
        let _ = view;
        None
    }
}

/// Logs through the gateway, which attributes the line to the policy.
/// Natively (in tests) it goes to standard error.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    __guest::bindings::log(__guest::wit_level(level), message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[policy {level:?}] {message}");
}

/// The gateway's clock, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    #[cfg(target_arch = "wasm32")]
    return __guest::bindings::now_ms();
    #[cfg(not(target_arch = "wasm32"))]
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Exports a [`Policy`] as the WebAssembly component's implementation of
/// the contract. Natively it expands to nothing, so the policy's crate
/// builds and tests as ordinary Rust.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct MeshgateGuest;
            impl $crate::__guest::Guest for MeshgateGuest {
                fn peers(view: $crate::__guest::WitView) -> ::std::vec::Vec<u8> {
                    $crate::__guest::peers::<$policy>(view)
                }
                fn routes(view: $crate::__guest::WitView) -> $crate::__guest::WitRouteTable {
                    $crate::__guest::routes::<$policy>(view)
                }
                fn failover(
                    view: $crate::__guest::WitView,
                ) -> ::std::vec::Vec<$crate::__guest::WitFailover> {
                    $crate::__guest::failover::<$policy>(view)
                }
                fn decide(view: $crate::__guest::WitView) -> $crate::__guest::WitDecisions {
                    $crate::__guest::decide::<$policy>(view)
                }
                fn on_timer(view: $crate::__guest::WitView) -> ::std::option::Option<u32> {
                    $crate::__guest::on_timer::<$policy>(view)
                }
            }
    $crate::__guest::export_raw!(MeshgateGuest with_types_in $crate::__guest::bindings);
        };
    };
}

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __guest;
