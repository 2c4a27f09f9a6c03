//! `meshgate policy test FILE --scenario SCENARIO`: replays membership and
//! health events against a policy and prints its decisions after each step
//! in a diffable form, failing when an expectation of the scenario does not
//! hold.
//!
//! ```toml
//! local = "spoke-1"                      # the member the policy runs on
//! params = { "failover.preempt" = "false" }
//!
//! [[members]]
//! id = "hub-a"
//! region = "eu-west-1"
//! role = "hub"                            # edge (default), leaf, hub
//! group = "hubs"
//! prefixes = ["10.100.0.0/16"]
//! endpoints = ["internet=192.0.2.10:4500"]
//!
//! [[steps]]
//! name = "hub-a dies"
//! at_ms = 5000                            # the view's clock at this step
//! events = [{ member = "hub-a", state = "dead" }]
//! expect = { peers = ["hub-b"], routes = { "10.2.0.0/16" = ["hub-b"] }, active = { hubs = "hub-b" } }
//! ```
//!
//! Between steps the active member of each group carries over from the
//! policy's previous failover decision, as a gateway would apply it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use meshgate_sdk::testing::{active_ids, peer_ids, route_table, ViewBuilder};
use meshgate_sdk::{Group, Role, State, View};
use serde::Deserialize;

use super::{validate, Limits, PolicyEngine};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    local: String,
    #[serde(default)]
    params: BTreeMap<String, String>,
    members: Vec<MemberSpec>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberSpec {
    id: String,
    #[serde(default)]
    region: String,
    #[serde(default)]
    role: RoleSpec,
    group: Option<String>,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    endpoints: Vec<String>,
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RoleSpec {
    #[default]
    Edge,
    Leaf,
    Hub,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum StateSpec {
    Alive,
    Suspect,
    Dead,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    name: String,
    #[serde(default)]
    at_ms: u64,
    #[serde(default)]
    events: Vec<Event>,
    #[serde(default)]
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Event {
    member: String,
    state: Option<StateSpec>,
    rtt_ms: Option<u32>,
    loss_percent: Option<u32>,
    load_permille: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Expect {
    peers: Option<Vec<String>>,
    #[serde(default)]
    routes: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    active: BTreeMap<String, String>,
}

fn build(s: &Scenario) -> Result<View> {
    let mut b = ViewBuilder::new();
    for m in &s.members {
        for p in &m.prefixes {
            if meshgate_sdk::Prefix::parse(p).is_none() {
                bail!("member {}: '{p}' is not a prefix", m.id);
            }
        }
        let role = match m.role {
            RoleSpec::Edge => Role::Edge,
            RoleSpec::Leaf => Role::Leaf,
            RoleSpec::Hub => Role::Hub,
        };
        let prefixes: Vec<&str> = m.prefixes.iter().map(String::as_str).collect();
        b = b.member(&m.id, &m.region, role, &prefixes);
        if let Some(g) = &m.group {
            b = b.group(g);
        }
        for e in &m.endpoints {
            let (label, addr) = e.split_once('=').with_context(|| {
                format!("member {}: endpoint '{e}' is not label=address:port", m.id)
            })?;
            if addr.parse::<std::net::SocketAddr>().is_err() {
                bail!("member {}: endpoint '{e}' is not label=address:port", m.id);
            }
            b = b.endpoint(label, addr);
        }
    }
    if !s.members.iter().any(|m| m.id == s.local) {
        bail!("local member '{}' is not among the members", s.local);
    }
    for (k, v) in &s.params {
        b = b.param(k, v);
    }
    Ok(b.local(&s.local).build())
}

/// Runs `scenario` against the policy in `file` (or a built-in name).
/// A list as a person reads it: `a, b`, or `none`.
fn listed(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// With `json`, the steps' decisions and the failures are one JSON
/// document on stdout (failures still fail the command).
pub fn run(file: &str, scenario: &Path, json: bool) -> Result<()> {
    let text = std::fs::read_to_string(scenario)
        .with_context(|| format!("reading {}", scenario.display()))?;
    let s: Scenario =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", scenario.display()))?;
    let mut view = build(&s).with_context(|| format!("{}", scenario.display()))?;
    let (_, bytes) = super::check::read_named(file)?;
    let engine = PolicyEngine::new(Limits::default())?;
    let mut module = engine.load(file, &bytes)?;
    let mut failures = Vec::new();
    let mut steps = Vec::new();
    for (n, step) in s.steps.iter().enumerate() {
        view.now_ms = step.at_ms;
        for e in &step.events {
            let (i, _) = view
                .member_by_id(&e.member)
                .with_context(|| format!("step {}: no member {}", n + 1, e.member))?;
            let m = &mut view.members[i as usize];
            if let Some(st) = e.state {
                m.state = match st {
                    StateSpec::Alive => State::Alive,
                    StateSpec::Suspect => State::Suspect,
                    StateSpec::Dead => State::Dead,
                };
                m.health.changed_ms = step.at_ms;
            }
            if let Some(v) = e.rtt_ms {
                m.health.rtt_us = v * 1000;
            }
            if let Some(v) = e.loss_percent {
                m.health.loss_ppm = v * 10_000;
            }
            if let Some(v) = e.load_permille {
                m.health.load_permille = v;
            }
        }
        let d = module.evaluate(&view)?;
        let peers = peer_ids(&view, &d.peers);
        let routes = route_table(&view, &d.to_sdk().routes);
        let active = active_ids(&view, &d.failover);
        if json {
            steps.push(serde_json::json!({
                "step": n + 1,
                "name": step.name,
                "at_ms": step.at_ms,
                "peers": peers,
                "routes": routes,
                "active": active,
            }));
        } else {
            println!("== step {}: {} (t={} ms)", n + 1, step.name, step.at_ms);
            for p in &peers {
                println!("peer {p}");
            }
            for (prefix, hops) in &routes {
                println!("route {prefix} -> {}", hops.join(" "));
            }
            for (group, a) in &active {
                println!("active {group} {}", a.as_deref().unwrap_or("none"));
            }
        }
        for p in validate::problems(&view, &d) {
            failures.push(format!(
                "step {} ({}): invalid decision: {p}",
                n + 1,
                step.name
            ));
        }
        if let Some(want) = &step.expect.peers {
            let mut want = want.clone();
            want.sort();
            if want != peers {
                failures.push(format!(
                    "step {} ({}): peers are {}, expected {}",
                    n + 1,
                    step.name,
                    listed(&peers),
                    listed(&want)
                ));
            }
        }
        for (prefix, want) in &step.expect.routes {
            let got = routes.get(prefix);
            if got != Some(want) {
                failures.push(format!(
                    "step {} ({}): route {prefix} goes {}, expected {}",
                    n + 1,
                    step.name,
                    got.map_or("nowhere".to_string(), |g| format!("via {}", listed(g))),
                    format_args!("via {}", listed(want))
                ));
            }
        }
        for (group, want) in &step.expect.active {
            let got = active.get(group).cloned().flatten();
            if got.as_deref() != Some(want.as_str()) {
                failures.push(format!(
                    "step {} ({}): active in {group} is {}, expected {want}",
                    n + 1,
                    step.name,
                    got.as_deref().unwrap_or("none")
                ));
            }
        }
        // The gateway applies the failover decision before the next event.
        view.groups = d
            .failover
            .iter()
            .map(|f| Group {
                name: f.group,
                active: f.active,
                since_ms: step.at_ms,
            })
            .collect();
    }
    if json {
        let doc = serde_json::json!({
            "policy": file,
            "scenario": scenario.display().to_string(),
            "steps": steps,
            "failures": failures,
            "passed": failures.is_empty(),
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    if !failures.is_empty() {
        bail!(
            "{} expectation(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    if !json {
        println!("all {} steps as expected", s.steps.len());
    }
    Ok(())
}
