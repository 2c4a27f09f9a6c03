//! `meshgate policy check FILE`: is this a policy we can run, and how does
//! it behave on a sample view?

use std::time::Instant;

use anyhow::{bail, Context, Result};
use meshgate_sdk::testing::ViewBuilder;
use meshgate_sdk::{Role, View};

use super::{builtin, validate, Limits, PolicyEngine};

/// A small view of the kinds of members every topology has.
pub(crate) fn sample_view() -> View {
    ViewBuilder::new()
        .member("edge-a", "eu-west-1", Role::Edge, &["10.1.0.0/16"])
        .group("edges-eu")
        .endpoint("internet", "192.0.2.1:4500")
        .member("edge-b", "eu-west-1", Role::Edge, &["10.1.0.0/16"])
        .group("edges-eu")
        .zone("eu-west-1b")
        .endpoint("internet", "192.0.2.2:4500")
        .member("edge-us", "us-east-1", Role::Edge, &["10.2.0.0/16"])
        .endpoint("internet", "192.0.2.3:4500")
        .endpoint("dx", "198.51.100.3:4500")
        .member("hub", "us-east-1", Role::Hub, &["10.100.0.0/16"])
        .endpoint("internet", "192.0.2.4:4500")
        .member("leaf-eu", "eu-west-1", Role::Leaf, &["10.11.0.0/16"])
        .endpoint("internet", "192.0.2.5:4500")
        .local("edge-a")
        .now_ms(1_700_000_000_000)
        .build()
}

/// A policy named on the command line: a built-in by name, else a
/// component file; a name that is neither lists the built-ins.
pub fn read_named(file: &str) -> Result<(String, Vec<u8>)> {
    if let Some(b) = builtin(file) {
        return Ok((format!("built-in {file}"), b.to_vec()));
    }
    let looks_like_name = !file.contains('/') && !file.ends_with(".wasm");
    match std::fs::read(file) {
        Ok(bytes) => Ok((file.to_string(), bytes)),
        Err(e) if looks_like_name && e.kind() == std::io::ErrorKind::NotFound => {
            let names: Vec<&str> = super::BUILTIN.iter().map(|(n, _)| *n).collect();
            bail!(
                "'{file}' is neither a built-in policy ({}) nor a file",
                names.join(", ")
            )
        }
        Err(e) => Err(e).with_context(|| format!("reading {file}")),
    }
}

pub fn run(file: &str, json: bool) -> Result<()> {
    let (name, bytes) = read_named(file)?;
    let limits = Limits::default();
    let engine = PolicyEngine::new(limits)?;
    let mut module = engine.load(&name, &bytes)?;
    let view = sample_view();
    let started = Instant::now();
    let d = module.evaluate(&view)?;
    let took = started.elapsed();
    let peers = meshgate_sdk::testing::peer_ids(&view, &d.peers);
    let routes = meshgate_sdk::testing::route_table(&view, &d.to_sdk().routes);
    let groups = meshgate_sdk::testing::active_ids(&view, &d.failover);
    let problems = validate::problems(&view, &d);
    if json {
        let doc = serde_json::json!({
            "policy": file,
            "builtin": crate::policy::builtin(file).is_some(),
            "contract": meshgate_sdk::CONTRACT,
            "hash": module.hash,
            "size_bytes": module.size,
            "compile_ms": module.compile_time.as_secs_f64() * 1e3,
            "limits": {
                "memory_bytes": limits.memory_bytes,
                "call_timeout_ms": limits.call_timeout.as_millis() as u64,
            },
            "sample": {
                "members": view.members.len(),
                "as": "edge-a",
                "first_evaluation_us": took.as_secs_f64() * 1e6,
                "peers": peers,
                "routes": routes,
                "active": groups,
            },
            "problems": problems,
            "valid": problems.is_empty(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!("{name}: a {} component", meshgate_sdk::CONTRACT);
        println!(
            "  hash {}  size {} bytes  compiled in {:.1} ms",
            module.hash,
            module.size,
            module.compile_time.as_secs_f64() * 1e3
        );
        println!(
            "  limits: {} MiB of memory, {} ms per call",
            limits.memory_bytes >> 20,
            limits.call_timeout.as_millis()
        );
        println!("  sample view of {} members (as edge-a): first evaluation, instantiation included, {:.1} µs", view.members.len(), took.as_secs_f64() * 1e6);
        println!("  peers: {}", peers.join(", "));
        for (prefix, hops) in &routes {
            println!("  route {prefix} -> {}", hops.join(", "));
        }
        for (group, active) in &groups {
            println!(
                "  group {group}: active {}",
                active.as_deref().unwrap_or("none")
            );
        }
    }
    if !problems.is_empty() {
        bail!(
            "{name} returned invalid decisions:\n  {}",
            problems.join("\n  ")
        );
    }
    if !json {
        println!("  decisions valid");
    }
    Ok(())
}
