//! Policies that misbehave on purpose, for the gateway's tests of how it
//! contains them (built only with a `test-*` feature, never embedded).

use meshgate_sdk::{NextHops, Peer, Policy, Prefix, Route, View};

/// Panics (a trap) in `routes`, unless the parameter `trap` is `no`: then
/// it decides as `full-mesh`, so a test can put it in force and make it
/// trap later with a configuration change.
pub struct Traps;
impl Policy for Traps {
    fn peers(view: &View) -> Vec<Peer> {
        crate::FullMesh::peers(view)
    }
    fn routes(view: &View) -> Vec<Route> {
        if view.param("trap") != Some("no") {
            panic!(
                "misbehaving policy: {} members is too many",
                view.members.len()
            )
        }
        crate::FullMesh::routes(view)
    }
}

/// Never returns from `routes`.
pub struct Loops;
impl Policy for Loops {
    fn peers(_: &View) -> Vec<Peer> {
        Vec::new()
    }
    #[allow(clippy::empty_loop)]
    fn routes(_: &View) -> Vec<Route> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

/// Allocates without bound in `routes`.
pub struct Hogs;
impl Policy for Hogs {
    fn peers(_: &View) -> Vec<Peer> {
        Vec::new()
    }
    fn routes(_: &View) -> Vec<Route> {
        // Reserves a mebibyte at a time and touches one byte of each: the
        // memory limit is reached in microseconds, not after writing 64 MiB
        // (which on a loaded machine can outlast the call's time limit and
        // trap as a timeout instead).
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut block = Vec::with_capacity(1 << 20);
            block.push(1u8);
            hoard.push(block);
            std::hint::black_box(&hoard);
        }
    }
}

/// Routes to a member that does not exist.
pub struct Lies;
impl Policy for Lies {
    fn peers(_: &View) -> Vec<Peer> {
        vec![Peer {
            member: 9999,
            endpoint: 0,
        }]
    }
    fn routes(_: &View) -> Vec<Route> {
        let prefix = Prefix::parse("10.9.0.0/16").expect("valid");
        vec![Route {
            prefix,
            next_hops: NextHops::Ordered(vec![9999]),
            metric: 1,
        }]
    }
}

/// Speaks the contract without the SDK's encoder and returns peer records
/// that do not decode (3 bytes, where records are 8).
#[cfg(all(feature = "test-malformed", target_arch = "wasm32"))]
mod malformed {
    use meshgate_sdk::__guest::bindings::meshgate::policy::types as wit;
    use meshgate_sdk::__guest::Guest;

    struct Malformed;

    impl Guest for Malformed {
        fn decide(_: wit::View) -> wit::Decisions {
            wit::Decisions {
                peers: vec![1, 2, 3],
                routes: Self::routes_empty(),
                failover: Vec::new(),
            }
        }
        fn peers(_: wit::View) -> Vec<u8> {
            vec![1, 2, 3]
        }
        fn routes(_: wit::View) -> wit::RouteTable {
            Self::routes_empty()
        }
        fn failover(_: wit::View) -> Vec<wit::Failover> {
            Vec::new()
        }
        fn on_timer(_: wit::View) -> Option<u32> {
            None
        }
    }

    impl Malformed {
        fn routes_empty() -> wit::RouteTable {
            wit::RouteTable {
                routes: Vec::new(),
                hops: Vec::new(),
            }
        }
    }

    meshgate_sdk::__guest::export_raw!(Malformed with_types_in meshgate_sdk::__guest::bindings);
}
