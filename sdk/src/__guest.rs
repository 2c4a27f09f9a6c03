//! The component side (wasm32 only): bindings generated from
//! `wit/policy.wit`, and the conversions between them and the SDK's types.

/// Generated; its lowering functions take one argument per flat field.
#[allow(clippy::too_many_arguments)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "policy",
        path: "wit",
        default_bindings_module: "meshgate_sdk::__guest::bindings",
        pub_export_macro: true,
        export_macro_name: "export_raw",
    });
}

pub use bindings::{export_raw, Guest};

use crate::wire;
use crate::{Failover, Group, Names, Policy, Route, View};
use bindings::meshgate::policy::types as wit;

pub use wit::{
    Decisions as WitDecisions, Failover as WitFailover, RouteTable as WitRouteTable,
    View as WitView,
};

/// The gateway encodes the view with the same `wire` module, so a record
/// that does not decode is a broken host: stop the call loudly.
fn decoded<T>(r: Result<T, wire::WireError>) -> T {
    r.unwrap_or_else(|e| panic!("the gateway sent a malformed view: {e}"))
}

fn view_in(v: wit::View) -> View {
    View {
        names: Names {
            text: v.names,
            ends: v.name_ends,
        },
        local: v.local,
        members: decoded(wire::decode_members(&v.members)),
        prefixes: decoded(wire::decode_prefixes(&v.prefixes)),
        endpoints: decoded(wire::decode_endpoints(&v.endpoints)),
        params: v.params.into_iter().map(|p| (p.key, p.value)).collect(),
        groups: v
            .groups
            .into_iter()
            .map(|g| Group {
                name: g.name,
                active: g.active,
                since_ms: g.since_ms,
            })
            .collect(),
        now_ms: v.now_ms,
    }
}

fn routes_out(routes: &[Route]) -> wit::RouteTable {
    let (routes, hops) = wire::encode_routes(routes);
    wit::RouteTable { routes, hops }
}

fn failover_out(f: Failover) -> wit::Failover {
    wit::Failover {
        group: f.group,
        active: f.active,
        claim_routes: f.claim_routes,
    }
}

pub fn decide<P: Policy>(v: wit::View) -> wit::Decisions {
    let d = P::decide(&view_in(v));
    wit::Decisions {
        peers: wire::encode_peers(&d.peers),
        routes: routes_out(&d.routes),
        failover: d.failover.into_iter().map(failover_out).collect(),
    }
}

pub fn peers<P: Policy>(v: wit::View) -> Vec<u8> {
    wire::encode_peers(&P::peers(&view_in(v)))
}

pub fn routes<P: Policy>(v: wit::View) -> wit::RouteTable {
    routes_out(&P::routes(&view_in(v)))
}

pub fn failover<P: Policy>(v: wit::View) -> Vec<wit::Failover> {
    P::failover(&view_in(v))
        .into_iter()
        .map(failover_out)
        .collect()
}

pub fn on_timer<P: Policy>(v: wit::View) -> Option<u32> {
    P::on_timer(&view_in(v))
}

/// The contract's log level for the SDK's.
pub fn wit_level(level: crate::Level) -> wit::Level {
    match level {
        crate::Level::Debug => wit::Level::Debug,
        crate::Level::Info => wit::Level::Info,
        crate::Level::Warn => wit::Level::Warn,
        crate::Level::Error => wit::Level::Error,
    }
}
