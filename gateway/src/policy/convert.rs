//! Between the SDK's types (the gateway's model of the view and decisions)
//! and the contract's, as wasmtime's bindings generate them. The packed
//! records go through the SDK's `wire` module, the one the guest uses.

use meshgate_sdk as sdk;
use meshgate_sdk::wire;

use super::host::bindings::meshgate::policy::types as wit;

/// Encodes `v` into `out`, reusing its buffers: a view is encoded on every
/// evaluation, and a 1,000-member one is ~100 KB.
pub(super) fn view_out(v: &sdk::View, out: &mut wit::View) {
    out.names.clear();
    out.names.push_str(&v.names.text);
    out.name_ends.clear();
    out.name_ends.extend_from_slice(&v.names.ends);
    out.local = v.local;
    wire::encode_members_into(&v.members, &mut out.members);
    wire::encode_prefixes_into(&v.prefixes, &mut out.prefixes);
    wire::encode_endpoints_into(&v.endpoints, &mut out.endpoints);
    out.now_ms = v.now_ms;
    out.params = v
        .params
        .iter()
        .map(|(k, val)| wit::Param {
            key: k.clone(),
            value: val.clone(),
        })
        .collect();
    out.groups = v
        .groups
        .iter()
        .map(|g| wit::Group {
            name: g.name,
            active: g.active,
            since_ms: g.since_ms,
        })
        .collect();
}

/// An empty view to encode into.
pub(super) fn empty_view() -> wit::View {
    wit::View {
        names: String::new(),
        name_ends: Vec::new(),
        local: 0,
        members: Vec::new(),
        prefixes: Vec::new(),
        endpoints: Vec::new(),
        params: Vec::new(),
        groups: Vec::new(),
        now_ms: 0,
    }
}
