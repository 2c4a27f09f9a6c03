//! The operator's daily tools against running gateways, through the real
//! binary: `status` (text and JSON) in a mesh and with configured peers,
//! `members --json`, `keys show|rotate --json`, `policy check|test
//! --json`, and a reload that would withdraw every route.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{eventually, mesh_lab, ping_ok};
use meshgate::lab::Lab;

const BIN: &str = env!("CARGO_BIN_EXE_meshgate");

/// `meshgate ARGS` inside gateway `g`'s namespace.
fn at(lab: &Lab, g: usize, args: &[&str]) -> Output {
    lab.gateway_ns(g)
        .command(BIN)
        .args(args)
        .output()
        .expect("running meshgate")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Succeeded, and its stdout parsed as JSON.
fn json(out: &Output, what: &str) -> serde_json::Value {
    assert!(out.status.success(), "{what}: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", text(&out.stdout)))
}

/// The SPIs `meshgate_sa_info` lists for `peer` in `dir` at gateway `g`.
fn metric_spis(lab: &Lab, g: usize, peer: &str, dir: &str) -> Vec<String> {
    let metrics = lab.metrics(g).expect("reading metrics");
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("meshgate_sa_info{")
                && l.contains(&format!("peer=\"{peer}\""))
                && l.contains(&format!("direction=\"{dir}\""))
        })
        .filter_map(|l| Some(l.split("spi=\"").nth(1)?.split('"').next()?.to_string()))
        .collect()
}

/// A mesh member's status: this gateway, a row per peer with its SAs (the
/// SPIs the metrics name), traffic that grows with pings, as text and as
/// JSON; members as JSON; the epoch state before and after a rotation.
#[test]
fn status_shows_the_gateway_its_peers_and_their_sas_as_text_and_json() {
    let lab = mesh_lab(2, "full-mesh", "cipher = \"aes128gcm16\"");
    ping_ok(
        &lab.regions[0].host,
        lab.regions[1].host_ip().into(),
        5,
        "host-1 -> host-2",
    );
    let status = json(&at(&lab, 0, &["status", "--json"]), "status --json");
    let gw = &status["gateway"];
    assert_eq!(gw["id"], "region-1");
    assert_eq!(gw["mode"], "mesh");
    assert_eq!(gw["role"], "edge");
    assert_eq!(gw["key_epoch"], 1);
    assert_eq!(gw["policy"]["running"], "full-mesh");
    assert_eq!(gw["policy"]["differs"], false);
    assert_eq!(gw["endpoints"][0]["label"], "internet");
    assert!(gw["offloads"]["tso"].is_boolean(), "{status}");
    let peers = status["peers"].as_array().expect("peers");
    assert_eq!(peers.len(), 1, "{status}");
    let p = &peers[0];
    assert_eq!(p["id"], "region-2");
    assert_eq!(p["state"], "alive");
    assert_eq!(p["keyed"], true);
    assert_eq!(p["underlay"], "internet");
    assert_eq!(
        p["endpoint"],
        format!("{}:4500", lab.gateway_underlay_ip(1))
    );
    assert!(p["packets_out"].as_u64().unwrap() >= 5, "{p}");
    assert!(p["packets_in"].as_u64().unwrap() >= 5, "{p}");
    for dir in ["in", "out"] {
        let sa = p["sas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["direction"] == dir)
            .unwrap_or_else(|| panic!("an {dir} SA: {p}"));
        assert_eq!(
            vec![sa["spi"].as_str().unwrap().to_string()],
            metric_spis(&lab, 0, "region-2", dir),
            "the SPI status gives is the one installed"
        );
        assert_eq!(sa["cipher"], "aes128gcm16");
        assert!(sa["packets"].as_u64().unwrap() >= 5, "{sa}");
        // Negotiated SAs rekey within their soft lifetime (an hour).
        let rekey = sa["rekey_in_secs"].as_u64().expect("a rekey time");
        assert!(rekey > 0 && rekey <= 3600, "{sa}");
    }
    let drops = status["drops"].as_object().expect("drops by reason");
    assert!(
        !drops.is_empty() && drops.values().all(serde_json::Value::is_u64),
        "every reason counted: {status}"
    );

    let out = at(&lab, 0, &["status"]);
    let said = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for want in [
        "gateway region-1 (region region-1",
        "mesh member",
        "policy: full-mesh (hash ",
        "as configured",
        "key epoch: 1",
        "peer region-2: alive, keyed ",
        "SA in  0x",
        "SA out 0x",
        "rekey in ",
        "drops: ",
    ] {
        assert!(said.contains(want), "status lacks {want:?}:\n{said}");
    }
    assert!(!said.contains("Some(") && !said.contains("None"), "{said}");

    let members = json(&at(&lab, 0, &["members", "--json"]), "members --json");
    let m = &members.as_array().expect("an array")[0];
    assert_eq!(m["id"], "region-2");
    assert_eq!(m["state"], "alive");
    assert_eq!(m["prefixes"][0], "10.2.0.0/16");
    assert_eq!(m["endpoints"][0]["label"], "internet");
    // The path's round trip, once measured (null until then).
    eventually(Duration::from_secs(10), "a measured rtt", || {
        json(&at(&lab, 0, &["members", "--json"]), "members --json")[0]["rtt_ms"].is_f64()
    });

    readme_lists_every_metric_and_endpoint(&lab);

    // ping: echoes through the SAs the status named, each way.
    let control = lab.control_socket(0);
    let ping = json(
        &at(
            &lab,
            0,
            &[
                "ping",
                "region-2",
                "--count",
                "3",
                "--interval-ms",
                "20",
                "--json",
                "--control",
                control.to_str().unwrap(),
            ],
        ),
        "ping --json",
    );
    let t = &ping["tunnel"];
    assert_eq!(
        (t["sent"].as_u64(), t["answered"].as_u64()),
        (Some(3), Some(3)),
        "{ping}"
    );
    assert_eq!(
        vec![t["request_spi"].as_str().unwrap().to_string()],
        metric_spis(&lab, 0, "region-2", "out"),
        "requests go out on the SA to region-2"
    );
    assert_eq!(
        vec![t["reply_spi"].as_str().unwrap().to_string()],
        metric_spis(&lab, 0, "region-2", "in"),
        "replies come back on the SA from region-2"
    );
    let avg = t["avg_ms"].as_f64().unwrap();
    assert!(avg > 0.0 && avg < 200.0, "{ping}");
    assert_eq!(ping["underlay"], "internet");
    assert_eq!(ping["signalling"]["state"], "alive", "{ping}");
    let said = text(
        &at(
            &lab,
            0,
            &[
                "ping",
                "region-2",
                "-c",
                "2",
                "--control",
                control.to_str().unwrap(),
            ],
        )
        .stdout,
    );
    assert!(
        said.contains("tunnel path to region-2, over internet to ")
            && said.contains("2 sent, 2 answered, 0% lost; rtt min/avg/max")
            && said.contains("signalling path (QUIC"),
        "{said}"
    );
    // Straight at the control socket, bad parameters are refused by name.
    for (query, said) in [
        (
            "/ping?member=region-2&count=0",
            "count=0 is outside 1..=100",
        ),
        (
            "/ping?member=region-2&interval_ms=soon",
            "interval_ms=soon is outside 10..=10000",
        ),
        ("/ping?count=2", "give member=ID"),
    ] {
        let (status, body) = meshgate::control::request(&control, "GET", query, "").unwrap();
        assert!(
            status == 400 && body.contains(said),
            "{query}: {status} {body}"
        );
    }
    let out = at(
        &lab,
        0,
        &["ping", "nobody", "--control", control.to_str().unwrap()],
    );
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no peer or member nobody here (known: region-2)"),
        "{err}"
    );

    // The epoch state, then a rotation's result, as JSON.
    let control = lab.control_socket(0);
    let control = control.to_str().unwrap();
    let keys = json(
        &at(&lab, 0, &["keys", "show", "--json", "--control", control]),
        "keys show --json",
    );
    assert_eq!(keys["current"], 1);
    let ca_key = lab.ca_key_path();
    let rotated = json(
        &at(
            &lab,
            0,
            &[
                "keys",
                "rotate",
                "--json",
                "--ca-key",
                ca_key.to_str().unwrap(),
                "--control",
                control,
            ],
        ),
        "keys rotate --json",
    );
    assert_eq!(rotated["current"], 2, "{rotated}");
    assert_eq!(rotated["rekeying"], 1, "{rotated}");
    eventually(Duration::from_secs(10), "status shows epoch 2", || {
        json(&at(&lab, 1, &["status", "--json"]), "status --json")["gateway"]["key_epoch"] == 2
    });
}

/// A reload that would withdraw every route is refused (the reason on
/// stderr, nothing on stdout, traffic flowing); with --force it loads,
/// and status says the running policy differs from the configured one
/// until a reload without --module loads the configured one again.
#[test]
fn a_reload_that_withdraws_every_route_needs_force_and_status_tells() {
    let lab = mesh_lab(2, "full-mesh", "cipher = \"aes128gcm16\"");
    let control = lab.control_socket(0);
    let control = control.to_str().unwrap();
    let host2 = lab.regions[1].host_ip().into();
    let out = at(
        &lab,
        0,
        &[
            "policy",
            "reload",
            "--module",
            "hub-spoke",
            "--control",
            control,
        ],
    );
    let err = text(&out.stderr);
    assert!(!out.status.success(), "refused");
    assert!(
        out.stdout.is_empty(),
        "the reason is on stderr alone: {}",
        text(&out.stdout)
    );
    assert!(
        err.contains("would withdraw every route")
            && err.contains("10.2.0.0/16")
            && err.contains("--force"),
        "{err}"
    );
    ping_ok(&lab.regions[0].host, host2, 3, "after the refused reload");
    let status = json(&at(&lab, 0, &["status", "--json"]), "status --json");
    assert_eq!(status["gateway"]["policy"]["running"], "full-mesh");

    let out = at(
        &lab,
        0,
        &[
            "policy",
            "reload",
            "--module",
            "hub-spoke",
            "--force",
            "--control",
            control,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("routes withdrawn: 10.2.0.0/16"),
        "{}",
        text(&out.stdout)
    );
    let status = json(&at(&lab, 0, &["status", "--json"]), "status --json");
    let policy = &status["gateway"]["policy"];
    assert_eq!(policy["running"], "hub-spoke");
    assert_eq!(policy["configured"], "full-mesh");
    assert_eq!(policy["differs"], true);
    let said = text(&at(&lab, 0, &["status"]).stdout);
    assert!(
        said.contains("hub-spoke")
            && said.contains("the config names full-mesh, which a restart loads"),
        "{said}"
    );
    let out = at(
        &lab,
        0,
        &[
            "policy",
            "reload",
            "--module",
            "full-mesh",
            "--control",
            control,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = json(&at(&lab, 0, &["status", "--json"]), "status --json");
    assert_eq!(status["gateway"]["policy"]["differs"], false);
    ping_ok(
        &lab.regions[0].host,
        host2,
        3,
        "after the configured policy is back",
    );
}

/// Configured peers (no mesh): status lists them with their session's
/// SAs; `members` says it has none and points at status.
#[test]
fn status_shows_configured_peers_and_members_points_there() {
    let lab = common::lab(2);
    ping_ok(
        &lab.regions[0].host,
        lab.regions[1].host_ip().into(),
        3,
        "host-1 -> host-2",
    );
    let status = json(&at(&lab, 0, &["status", "--json"]), "status --json");
    assert_eq!(status["gateway"]["mode"], "configured");
    assert!(status["gateway"]["key_epoch"].is_null(), "{status}");
    let p = &status["peers"][0];
    assert_eq!(p["id"], "region-2");
    assert_eq!(p["state"], "up");
    assert_eq!(p["keyed"], true);
    assert_eq!(p["sas"].as_array().unwrap().len(), 2, "{p}");
    let said = text(&at(&lab, 0, &["status"]).stdout);
    assert!(
        said.contains("configured peers") && said.contains("peer region-2: up"),
        "{said}"
    );
    let out = at(&lab, 0, &["members", "--json"]);
    let err = text(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("not a mesh member")
            && err.contains("meshgate status"),
        "{err}"
    );
    assert!(!err.contains("{\"error\""), "said in words: {err}");
    // ping works with configured peers too (their sessions' SAs); there is
    // no signalling path.
    let control = lab.control_socket(0);
    let ping = json(
        &at(
            &lab,
            0,
            &[
                "ping",
                "region-2",
                "-c",
                "2",
                "--interval-ms",
                "20",
                "--json",
                "--control",
                control.to_str().unwrap(),
            ],
        ),
        "ping --json",
    );
    assert_eq!(ping["tunnel"]["answered"], 2, "{ping}");
    assert!(ping["signalling"].is_null(), "{ping}");
}

/// `policy check` and `policy test` as JSON: parsed, and a failing
/// expectation still fails the command with its document on stdout.
#[test]
fn policy_check_and_test_answer_json() {
    let out = std::process::Command::new(BIN)
        .args(["policy", "check", "--json", "full-mesh"])
        .output()
        .unwrap();
    let doc = json(&out, "policy check --json");
    assert_eq!(doc["policy"], "full-mesh");
    assert_eq!(doc["valid"], true);
    assert!(doc["hash"].as_str().is_some_and(|h| h.len() == 16), "{doc}");
    assert!(
        !doc["sample"]["peers"].as_array().unwrap().is_empty(),
        "{doc}"
    );
    let scenario =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/scenarios/hub-failover.toml");
    let out = std::process::Command::new(BIN)
        .args(["policy", "test", "hub-spoke", "--json", "--scenario"])
        .arg(&scenario)
        .output()
        .unwrap();
    let doc = json(&out, "policy test --json");
    assert_eq!(doc["passed"], true, "{doc}");
    let steps = doc["steps"].as_array().unwrap();
    assert!(steps.len() >= 2 && steps[0]["step"] == 1, "{doc}");
    assert!(steps[0]["active"].is_object(), "{doc}");
    // The same scenario against full-mesh: its hub expectations fail.
    let out = std::process::Command::new(BIN)
        .args(["policy", "test", "full-mesh", "--json", "--scenario"])
        .arg(&scenario)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(doc["passed"], false);
    assert!(!doc["failures"].as_array().unwrap().is_empty(), "{doc}");
    assert!(
        text(&out.stderr).contains("expectation(s) failed"),
        "{}",
        text(&out.stderr)
    );
}

/// A section of README.md, from its heading to the next of its level.
fn readme_section(heading: &str) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let level = heading.split(' ').next().unwrap().to_string() + " ";
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("{heading}"));
    let rest = &readme[start + heading.len() + 2..];
    let end = rest.find(&format!("\n{level}")).unwrap_or(rest.len());
    rest[..end].to_string()
}

/// README's metrics table against the names the gateway's source
/// registers (equal) and a scrape of gateway 0 (every family listed);
/// README's admin API table against what gateway 0 answers.
fn readme_lists_every_metric_and_endpoint(lab: &Lab) {
    let listed: BTreeSet<String> = readme_section("## Metrics")
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next().map(String::from))
        .collect();
    let mut registered = BTreeSet::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            if path.is_dir() {
                // The lab and the status view only read metrics.
                if name != "lab" && name != "status" {
                    dirs.push(path);
                }
            } else if name.ends_with(".rs") && name != "tests.rs" {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap();
                for piece in code.split('"').skip(1).step_by(2) {
                    if piece.starts_with("meshgate_")
                        && piece.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    {
                        registered.insert(piece.to_string());
                    }
                }
            }
        }
    }
    assert_eq!(
        listed, registered,
        "README's Metrics table and the metrics the gateway registers"
    );
    let scrape = lab.metrics(0).expect("a scrape");
    for family in scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
    {
        assert!(
            listed.contains(family),
            "{family} is served but not in README's Metrics"
        );
    }

    let table = readme_section("### The admin API");
    let rows: Vec<(String, String, String, String)> = table
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let endpoint = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            let (method, path) = endpoint.split_once(' ')?;
            Some((
                method.into(),
                path.into(),
                cells.get(2)?.to_string(),
                cells.get(3)?.to_string(),
            ))
        })
        .collect();
    assert!(rows.len() >= 9, "{table}");
    let admin = lab.admin_addr(0);
    for (method, path, where_, what) in rows {
        let path = path.split('[').next().unwrap().to_string();
        let (m, p) = (method.clone(), path.clone());
        let (status, body) = lab
            .gateway_ns(0)
            .run(move || meshgate::admin::request(admin, &m, &p))
            .expect("entering the namespace")
            .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
        // The admin listener serves the reads; what goes over the
        // control socket alone it refuses with 403.
        let expected: &[u16] = match (where_.as_str(), what.contains("409")) {
            ("both", false) => &[200],
            ("both", true) => &[200, 409],
            _ => &[403],
        };
        assert!(
            expected.contains(&status),
            "{method} {path}: HTTP {status}: {body}"
        );
    }
}

/// The lab says what it builds before it starts it: its address plan
/// (region, zone, role, group, prefixes and underlay address of each
/// appliance), on stderr with --json, and the same in the JSON summary.
#[test]
fn the_lab_prints_its_address_plan_and_its_json_summary_carries_it() {
    common::check();
    let out = std::process::Command::new(BIN)
        .args([
            "lab",
            "--regions",
            "2",
            "--pings",
            "2",
            "--transfer-secs",
            "0.2",
            "--json",
        ])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    let doc = json(&out, "lab --json");
    let plan = err
        .split("address plan:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no address plan: {err}"));
    let rows: Vec<&str> = plan.lines().skip(1).take(4).collect();
    for (row, (id, zone, prefix)) in rows.iter().zip([
        ("region-1a", "region-1a", "10.1.0.0/16"),
        ("region-1b", "region-1b", "10.1.0.0/16"),
        ("region-2a", "region-2a", "10.2.0.0/16"),
        ("region-2b", "region-2b", "10.2.0.0/16"),
    ]) {
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[0], id, "{plan}");
        assert_eq!(cells[2], zone, "{plan}");
        assert_eq!(cells[3], "edge", "{plan}");
        assert!(row.contains(prefix), "{plan}");
    }
    let gateways = doc["gateways"].as_array().expect("gateways");
    assert_eq!(gateways.len(), 4, "{doc}");
    let g = &gateways[2];
    assert_eq!(g["id"], "region-2a");
    assert_eq!(g["region"], "region-2");
    assert_eq!(g["zone"], "region-2a");
    assert_eq!(g["role"], "edge");
    assert_eq!(g["group"], "region-2");
    assert_eq!(g["prefixes"][0], "10.2.0.0/16");
    assert!(
        doc["pairs"].as_array().is_some_and(|p| !p.is_empty()),
        "{doc}"
    );
}
