//! Builds the built-in policies (../policies) into WebAssembly components,
//! so the binary embeds them and `policy = "full-mesh"` works out of the
//! box. Each policy is the policies crate built for wasm32-unknown-unknown
//! with its export feature, wrapped into a component with `wit-component`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// (name in configs, package, feature of the package, built in)
const POLICIES: [(&str, &str, &str, bool); 9] = [
    ("full-mesh", POLICIES_CRATE, "export-full-mesh", true),
    ("hub-spoke", POLICIES_CRATE, "export-hub-spoke", true),
    (
        "mesh-with-leaves",
        POLICIES_CRATE,
        "export-mesh-with-leaves",
        true,
    ),
    // Misbehaving policies for the tests of containment; not built in.
    ("test-trap", POLICIES_CRATE, "test-trap", false),
    ("test-loop", POLICIES_CRATE, "test-loop", false),
    ("test-oom", POLICIES_CRATE, "test-oom", false),
    ("test-invalid", POLICIES_CRATE, "test-invalid", false),
    ("test-malformed", POLICIES_CRATE, "test-malformed", false),
    // The example of a custom policy, for the lab's underlay tests.
    ("latency-policy", "latency-policy", "", false),
];
const POLICIES_CRATE: &str = "meshgate-policies";

fn main() {
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let root = manifest_dir
        .parent()
        .expect("gateway/ lies in the workspace")
        .to_path_buf();
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for dep in [
        "policies/src",
        "policies/Cargo.toml",
        "examples/latency-policy/src",
        "examples/latency-policy/Cargo.toml",
        "sdk/src",
        "sdk/wit",
        "sdk/Cargo.toml",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dep).display());
    }
    // A target directory of its own: the outer build holds the lock on ours.
    let target_dir = out.join("policy-target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut list = String::new();
    for (name, package, feature, builtin) in POLICIES {
        let mut build = Command::new(&cargo);
        build.current_dir(&root).args([
            "build",
            "--quiet",
            "--locked",
            "-p",
            package,
            "--lib",
            "--target",
            "wasm32-unknown-unknown",
            "--profile",
            "policy",
        ]);
        if !feature.is_empty() {
            build.args(["--features", feature]);
        }
        let status = build
            .arg("--target-dir")
            .arg(&target_dir)
            // The outer build's flags are for the host, not for wasm32.
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .status()
            .unwrap_or_else(|e| panic!("running cargo to build the {name} policy: {e}"));
        if !status.success() {
            panic!(
                "building the built-in policy {name} for wasm32-unknown-unknown failed (see above). \
                 If the target is missing, run `rustup toolchain install` in the repository \
                 (rust-toolchain.toml lists it) or `rustup target add wasm32-unknown-unknown`."
            );
        }
        let module_path = target_dir.join(format!(
            "wasm32-unknown-unknown/policy/{}.wasm",
            package.replace('-', "_")
        ));
        let module = std::fs::read(&module_path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", module_path.display()));
        let component = wit_component::ComponentEncoder::default()
            .module(&module)
            .and_then(|e| e.validate(true).encode())
            .unwrap_or_else(|e| panic!("making the {name} policy a component: {e:#}"));
        write(&out.join(format!("{name}.wasm")), &component);
        if !builtin {
            continue;
        }
        list.push_str(&format!(
            "    (\"{name}\", include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{name}.wasm\"))),\n"
        ));
    }
    write(&out.join("builtin_policies.rs"), format!("/// The built-in policies: (name, component bytes).\npub const BUILTIN: &[(&str, &[u8])] = &[\n{list}];\n").as_bytes());
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
