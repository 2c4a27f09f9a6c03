//! Routing policies: WebAssembly components of the `meshgate:policy`
//! contract (sdk/wit) that make every routing, peer-selection and failover
//! decision.

mod cache;
pub mod check;
mod convert;
pub mod decisions;
pub mod driver;
pub mod host;
pub mod runtime;
pub mod scenario;
pub mod schedule;
pub mod source;
pub mod validate;
pub mod view;

pub use host::{Decisions, Limits, PolicyEngine, PolicyError, PolicyModule, TrapKind};
pub use source::{PolicySource, DEFAULT_POLICY};

mod builtin {
    include!(concat!(env!("OUT_DIR"), "/builtin_policies.rs"));
}

pub use builtin::BUILTIN;

/// The component bytes of the built-in policy `name`.
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// A misbehaving test policy's component bytes (not built in).
#[cfg(test)]
pub(crate) fn test_module(name: &str) -> Vec<u8> {
    std::fs::read(concat!(env!("OUT_DIR"), "/").to_string() + name + ".wasm")
        .expect("built by build.rs")
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod embed_tests {
    #[test]
    fn the_builtin_policies_are_embedded_as_components() {
        for name in ["full-mesh", "hub-spoke", "mesh-with-leaves"] {
            let bytes = super::builtin(name).unwrap_or_else(|| panic!("{name} missing"));
            // A component's preamble: magic, then version 0x0d and layer 1.
            assert_eq!(
                &bytes[..8],
                b"\0asm\x0d\0\x01\0",
                "{name} is not a component"
            );
        }
    }
}
