//! The host against real components built from the SDK: the built-ins
//! decide exactly as their native builds do, and bad modules are refused
//! or contained with the module and the reason named.

use meshgate_policies::{FullMesh, HubSpoke, MeshWithLeaves};
use meshgate_sdk::testing::ViewBuilder;
use meshgate_sdk::{Policy, Role, State, View};

use super::*;

fn views() -> Vec<View> {
    let base = || {
        ViewBuilder::new()
            .member("hub-a", "eu-west-1", Role::Hub, &["10.100.0.0/16"])
            .group("hubs")
            .endpoint("internet", "192.0.2.10:4500")
            .member("hub-b", "eu-west-1", Role::Hub, &["10.100.0.0/16"])
            .group("hubs")
            .endpoint("internet", "192.0.2.11:4500")
            .endpoint("dx", "[2001:db8::11]:4500")
            .member(
                "us-edge",
                "us-east-1",
                Role::Edge,
                &["10.1.0.0/16", "fd00:1::/48"],
            )
            .endpoint("internet", "192.0.2.1:4500")
            .member("ap-edge", "ap-south-1", Role::Edge, &["10.2.0.0/16"])
            .endpoint("internet", "192.0.2.2:4500")
            .state(State::Suspect)
            .member("us-leaf", "us-east-1", Role::Leaf, &["10.3.0.0/16"])
            .endpoint("internet", "192.0.2.3:4500")
            .now_ms(1_000_000)
            .param("underlay", "dx")
    };
    vec![
        base().local("us-edge").build(),
        base().local("hub-a").build(),
        base().local("us-leaf").build(),
    ]
}

fn engine() -> PolicyEngine {
    PolicyEngine::new(Limits {
        memory_bytes: 16 << 20,
        call_timeout: std::time::Duration::from_millis(200),
        ..Limits::default()
    })
    .unwrap()
}

fn native<P: Policy>(v: &View) -> meshgate_sdk::Decisions {
    meshgate_sdk::Decisions {
        peers: P::peers(v),
        routes: P::routes(v),
        failover: P::failover(v),
    }
}

#[test]
fn builtins_decide_in_wasm_exactly_as_natively() {
    let engine = engine();
    for (name, f) in [
        (
            "full-mesh",
            native::<FullMesh> as fn(&View) -> meshgate_sdk::Decisions,
        ),
        ("hub-spoke", native::<HubSpoke>),
        ("mesh-with-leaves", native::<MeshWithLeaves>),
    ] {
        let mut m = engine.load(name, builtin(name).unwrap()).unwrap();
        for v in views() {
            let d = m.evaluate(&v).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(d.to_sdk(), f(&v), "{name} for {}", v.name(v.local().id));
            assert!(
                validate::problems(&v, &d).is_empty(),
                "{name}: {:?}",
                validate::problems(&v, &d)
            );
        }
    }
}

#[test]
fn modules_that_are_not_our_contract_are_refused_by_name() {
    let engine = engine();
    let e = engine
        .load("junk.wasm", b"not wasm at all")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("junk.wasm") && e.contains("not a valid WebAssembly component"),
        "{e}"
    );
    // A core module without the contract's exports is wrapped, then refused.
    let e = engine
        .load("core.wasm", b"\0asm\x01\0\0\0")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("core.wasm") && e.contains("does not implement meshgate:policy@0.3.0"),
        "{e}"
    );
    // An empty component exports nothing of the contract.
    let e = engine
        .load("empty.wasm", b"\0asm\x0d\0\x01\0")
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("empty.wasm") && e.contains("does not implement meshgate:policy@0.3.0"),
        "{e}"
    );
}

#[test]
fn traps_loops_and_memory_hogs_are_contained_and_named() {
    let engine = engine();
    let v = &views()[0];
    for (name, kind) in [
        ("test-trap", TrapKind::Trap),
        ("test-loop", TrapKind::Timeout),
        ("test-oom", TrapKind::OutOfMemory),
    ] {
        let bytes = test_module(name);
        let mut m = engine.load(name, &bytes).unwrap();
        let started = std::time::Instant::now();
        match m.evaluate(v) {
            Err(PolicyError::Trapped {
                kind: k,
                call,
                name: n,
                hash,
                ..
            }) => {
                assert_eq!(k, kind, "{name}");
                assert_eq!(call, "decide");
                assert_eq!(n, name);
                assert_eq!(hash, host::hash_of(&bytes));
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{name} was not stopped in time"
        );
        // The next evaluation starts from a fresh instance and fails the same way.
        assert!(m.evaluate(v).is_err());
    }
}

/// The limits no policy built with the SDK reaches, each tried by a
/// component written for it: a table over 100,000 elements, a table grown
/// past that at run time, more than 4 memories, more than 32 instances.
/// Within the limits the same shapes run.
#[test]
fn tables_their_growth_memories_and_instances_are_bounded() {
    let engine = engine();
    let limits = Limits::default();
    let table = |n: usize| {
        format!("(component (core module $m (table {n} funcref)) (core instance (instantiate $m)))")
    };
    let instances = |n: usize, body: &str| {
        let mut c = format!("(component (core module $m {body})");
        for _ in 0..n {
            c.push_str(" (core instance (instantiate $m))");
        }
        c + ")"
    };
    let grows = |by: usize, times: usize| {
        format!(
            r#"(component
                 (core module $m
                   (table 1 funcref)
                   (func (export "grow")
                     (local $i i32)
                     (loop $l
                       (drop (table.grow 0 (ref.null func) (i32.const {by})))
                       (local.set $i (i32.add (local.get $i) (i32.const 1)))
                       (br_if $l (i32.lt_u (local.get $i) (i32.const {times}))))))
                 (core instance $i (instantiate $m))
                 (func (export "grow") (canon lift (core func $i "grow"))))"#
        )
    };
    let max_elements = limits.table_elements;
    let within = [
        table(max_elements),
        instances(limits.instances, ""),
        instances(limits.memories, "(memory 1)"),
    ];
    for wat in &within {
        engine
            .run_component(wat, None)
            .unwrap_or_else(|e| panic!("{wat}: {e}"));
    }
    engine
        .run_component(&grows(1000, (max_elements - 1) / 1000), Some("grow"))
        .expect("growth within the limit");
    let over = [
        (table(max_elements + 1), "table"),
        (instances(limits.instances + 1, ""), "instance"),
        (instances(limits.memories + 1, "(memory 1)"), "memor"),
    ];
    for (wat, what) in &over {
        let e = engine.run_component(wat, None).unwrap_err();
        eprintln!("{what}: {e}");
        assert!(e.contains(what), "{what}: {e}");
    }
    let e = engine
        .run_component(&grows(10_000, 1_000), Some("grow"))
        .unwrap_err();
    eprintln!("growth: {e}");
    assert!(e.contains("forcing trap when growing table"), "{e}");
}

#[test]
fn decisions_that_do_not_decode_are_refused_by_name() {
    let bytes = test_module("test-malformed");
    let mut m = engine().load("test-malformed", &bytes).unwrap();
    let e = m.evaluate(&views()[0]).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "policy test-malformed ({}): malformed decisions: \
             peers: 3 bytes is not a whole number of 8-byte records",
            host::hash_of(&bytes)
        )
    );
}

#[test]
fn invalid_decisions_are_caught_before_use() {
    let engine = engine();
    let mut m = engine
        .load("test-invalid", &test_module("test-invalid"))
        .unwrap();
    let v = &views()[0];
    let d = m.evaluate(v).unwrap();
    let problems = validate::problems(v, &d);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("peers[0] names member 9999")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("routes[0] (10.9.0.0/16) names member 9999")),
        "{problems:?}"
    );
}

#[test]
fn compiled_policies_are_cached_on_disk_across_engines() {
    let dir = std::env::temp_dir().join(format!("meshgate-policy-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let first = engine().with_cache_dir(dir.clone());
    let m = first
        .load("full-mesh", builtin("full-mesh").unwrap())
        .unwrap();
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .collect();
    assert_eq!(files.len(), 1, "one artifact written");
    assert!(files[0].file_name().to_string_lossy().starts_with(&m.hash));
    // A new engine (a restarted gateway) loads it instead of compiling.
    let second = engine().with_cache_dir(dir.clone());
    let mut again = second
        .load("full-mesh", builtin("full-mesh").unwrap())
        .unwrap();
    // Whether it was compiled is a fact the engine reports, not a timing
    // (a loaded machine makes any timing ratio flaky).
    assert_eq!(m.origin, super::host::Origin::Compiled);
    assert_eq!(
        again.origin,
        super::host::Origin::Disk,
        "loading {:?} vs compiling {:?}",
        again.compile_time,
        m.compile_time
    );
    assert_eq!(
        again.evaluate(&views()[0]).unwrap().to_sdk(),
        native::<FullMesh>(&views()[0])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A module over the size cap is refused before it is compiled, and one
/// whose compiling outlasts the compile timeout is given up on.
#[test]
fn modules_over_the_size_cap_or_the_compile_time_cap_are_refused() {
    let module = builtin("full-mesh").unwrap();
    let small = PolicyEngine::new(Limits {
        module_bytes: module.len() - 1,
        ..Limits::default()
    })
    .unwrap();
    let e = small
        .load("full-mesh", module)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        e.contains("over the") && e.contains("a policy module may have"),
        "{e}"
    );
    let hasty = PolicyEngine::new(Limits {
        compile_timeout: std::time::Duration::from_micros(1),
        ..Limits::default()
    })
    .unwrap();
    let e = hasty
        .load("full-mesh", module)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("compiling took longer than"), "{e}");
    // The default limits take it.
    assert!(PolicyEngine::new(Limits::default())
        .unwrap()
        .load("full-mesh", module)
        .is_ok());
}
