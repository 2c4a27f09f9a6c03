//! The `meshgate` command's behaviour on bad input and missing privileges,
//! and the lab's clean-up on Ctrl-C, through the real binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_meshgate");

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("meshgate-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Two distinct keys: one per direction.
fn write_keys(dir: &std::path::Path) {
    std::fs::write(
        dir.join("k.hex"),
        "00112233445566778899aabbccddeeff01020304\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("k2.hex"),
        "ffeeddccbbaa99887766554433221100a1a2a3a4\n",
    )
    .unwrap();
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("running meshgate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const CONFIG: &str = "[gateway]\nid = \"a\"\nlisten = \"127.0.0.1:45000\"\n\n[tun]\nname = \"mgcli0\"\n\n[[peers]]\nid = \"b\"\nendpoint = \"127.0.0.2:4500\"\nprefixes = [\"10.2.0.0/16\"]\noutbound = { spi = 0x1001, key_file = \"k.hex\" }\ninbound = { spi = 0x2001, key_file = \"k2.hex\" }\n";

#[test]
fn a_bad_config_fails_at_start_naming_file_line_and_field() {
    let dir = scratch_dir("badcfg");
    write_keys(&dir);
    let good = dir.join("good.toml");
    std::fs::write(&good, CONFIG).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains(": ok") && said.contains("1 configured peer\n"),
        "a good config is accepted, in words: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A value of the wrong type, in words rather than serde's.
    let typed = dir.join("typed.toml");
    std::fs::write(
        &typed,
        CONFIG.replace("name = \"mgcli0\"", "name = \"mgcli0\"\nmtu = \"big\""),
    )
    .unwrap();
    let (ok, err) = run(&["check", "--config", typed.to_str().unwrap()]);
    assert!(
        !ok && err.contains("tun.mtu")
            && err.contains("found the string \"big\", expected a whole number")
            && !err.contains("invalid type"),
        "{err}"
    );

    // A jumbo MTU out of range is refused with the range, not a number it
    // then calls allowed.
    let jumbo = dir.join("jumbo.toml");
    std::fs::write(
        &jumbo,
        CONFIG.replace("name = \"mgcli0\"", "name = \"mgcli0\"\nmtu = 9000"),
    )
    .unwrap();
    let (ok, err) = run(&["check", "--config", jumbo.to_str().unwrap()]);
    assert!(
        !ok && err.contains("tun.mtu")
            && err.contains("9000 is outside 1280..=8900")
            && !err.contains("allows 9000"),
        "{err}"
    );

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, CONFIG.replace("10.2.0.0/16", "10.2.0.0/40")).unwrap();
    for cmd in ["check", "run"] {
        let (ok, err) = run(&[cmd, "--config", bad.to_str().unwrap()]);
        assert!(!ok, "`meshgate {cmd}` accepted a bad prefix");
        let want = format!("{}:11:", bad.display());
        assert!(
            err.contains(&want)
                && err.contains("peers[0].prefixes[0]")
                && err.contains("prefix length 40"),
            "`meshgate {cmd}`: {err}"
        );
    }

    std::fs::write(dir.join("k.hex"), "not hex at all").unwrap();
    let (ok, err) = run(&["check", "--config", good.to_str().unwrap()]);
    assert!(
        !ok && err.contains("peers[0].outbound.key_file") && err.contains(":12:"),
        "{err}"
    );
    let (ok, err) = run(&[
        "check",
        "--config",
        dir.join("missing.toml").to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("missing.toml") && err.contains("cannot read"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_privileges_are_named() {
    let dir = scratch_dir("noroot");
    write_keys(&dir);
    std::fs::write(dir.join("gw.toml"), CONFIG).unwrap();
    // World-readable so the unprivileged user can read what it is given.
    Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&dir)
        .status()
        .unwrap();
    let as_nobody = |args: &[&str]| {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                BIN,
            ])
            .args(args)
            .output()
            .expect("setpriv (util-linux) must be installed");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = as_nobody(&["lab"]);
    assert!(!ok && err.contains("needs root"), "lab as nobody: {err}");
    let (ok, err) = as_nobody(&["run", "--config", dir.join("gw.toml").to_str().unwrap()]);
    assert!(!ok && err.contains("CAP_NET_ADMIN"), "run as nobody: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_lab_removes_everything_on_ctrl_c() {
    let mut child = Command::new(BIN)
        .args([
            "lab",
            "--regions",
            "2",
            "--pings",
            "3",
            "--transfer-secs",
            "0.2",
            "--keep",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the lab");
    let stdout = child.stdout.take().unwrap();
    let mut tag = String::new();
    let mut kept = false;
    let mut dir = std::path::PathBuf::new();
    let start = Instant::now();
    // The reader stays alive until the lab exits, so its output has somewhere to go.
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("meshgate lab: 2 regions in network namespaces ") {
            tag = rest.trim_end_matches('*').to_string();
        }
        if let Some(d) = line.trim().strip_prefix("configs, keys and logs: ") {
            dir = std::path::PathBuf::from(d);
            kept = true;
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the lab did not come up"
        );
    }
    assert!(
        kept && !tag.is_empty(),
        "the lab did not reach --keep (tag {tag:?})"
    );
    let ours = || -> Vec<String> {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with(&tag))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        ours().len(),
        9,
        "4 appliances (zones a and b), 2 VPC routers, 2 hosts and the underlay exist while it runs"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let out = child.wait_with_output().unwrap();
    assert!(rest.iter().any(|l| l.contains("lab removed")), "{rest:?}");
    assert!(
        out.status.success(),
        "the lab exits cleanly on Ctrl-C: {}\n{}\n{}",
        out.status,
        rest.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ours().is_empty(), "namespaces left behind: {:?}", ours());
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn policy_check_accepts_the_builtins_and_names_what_it_refuses() {
    for name in ["full-mesh", "hub-spoke", "mesh-with-leaves"] {
        let out = Command::new(BIN)
            .args(["policy", "check", name])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("meshgate:policy@0.3.0 component") && text.contains("decisions valid"),
            "{text}"
        );
    }
    let dir = scratch_dir("policycheck");
    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x0d\0\x01\0 not really").unwrap();
    let (ok, err) = run(&["policy", "check", junk.to_str().unwrap()]);
    assert!(
        !ok && err.contains("junk.wasm") && err.contains("not a valid WebAssembly component"),
        "{err}"
    );
    // A name that is neither a built-in nor a file lists the built-ins.
    for args in [
        &["policy", "check", "fullmesh"][..],
        &[
            "policy",
            "test",
            "nope",
            "--scenario",
            "../examples/scenarios/hub-failover.toml",
        ],
    ] {
        let (ok, err) = run(args);
        assert!(
            !ok && err.contains(
                "neither a built-in policy (full-mesh, hub-spoke, mesh-with-leaves) nor a file"
            ),
            "{args:?}: {err}"
        );
    }
    let looping = concat!(env!("OUT_DIR"), "/test-loop.wasm");
    let (ok, err) = run(&["policy", "check", looping]);
    assert!(
        !ok && err.contains("test-loop.wasm") && err.contains("timeout in decide"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn policy_test_replays_a_scenario_and_fails_on_a_broken_expectation() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/scenarios/hub-failover.toml"
    );
    let out = Command::new(BIN)
        .args(["policy", "test", "hub-spoke", "--scenario", example])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("== step 2: hub-a dies")
            && text.contains("active hubs hub-b")
            && text.contains("all 3 steps as expected"),
        "{text}"
    );

    // With preempt on, hub-a takes over again in step 3, so the example's
    // expectation no longer holds, and the command says where.
    let dir = scratch_dir("scenario");
    let preempt = dir.join("preempt.toml");
    let text = std::fs::read_to_string(example)
        .unwrap()
        .replace(
            "\"failover.preempt\" = \"false\"",
            "\"failover.preempt\" = \"true\"",
        )
        .replace(
            "\"failover.hold_down_ms\" = \"30000\"",
            "\"failover.hold_down_ms\" = \"0\"",
        );
    std::fs::write(&preempt, text).unwrap();
    let (ok, err) = run(&[
        "policy",
        "test",
        "hub-spoke",
        "--scenario",
        preempt.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("step 3")
            && err.contains("active in hubs is hub-a, expected hub-b")
            && !err.contains("Some(")
            && !err.contains("None"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The monitoring the project ships (`deploy/`): the alerting rules pass
/// `promtool check rules` and their own unit tests (`promtool test
/// rules`), every query of the Grafana dashboard parses (each is checked
/// as a recording rule), and every meshgate metric they name is one the
/// gateway registers.
#[test]
fn the_alerting_rules_and_the_dashboard_pass_promtool() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let promtool = |args: &[&str], dir: &Path| {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("promtool must be installed (Debian package prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let rules_dir = deploy.join("prometheus");
    promtool(&["check", "rules", "meshgate-rules.yml"], &rules_dir);
    promtool(&["test", "rules", "meshgate-rules.test.yml"], &rules_dir);

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(deploy.join("grafana/meshgate.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            t["expr"]
                .as_str()
                .expect("each target has an expr")
                .to_string()
        })
        .collect();
    assert!(exprs.len() >= 10, "{} queries", exprs.len());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    let dir = scratch_dir("dashboard");
    std::fs::write(dir.join("queries.yml"), rules).unwrap();
    promtool(&["check", "rules", "queries.yml"], &dir);

    // Every meshgate_ name is registered by the gateway's source.
    let source: String = ["metrics.rs", "gateway.rs", "underlay/task.rs"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(f))
                .unwrap()
        })
        .collect();
    let named =
        std::fs::read_to_string(rules_dir.join("meshgate-rules.yml")).unwrap() + &exprs.join("\n");
    let mut names: Vec<&str> = named
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("meshgate_"))
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        let base = name.trim_end_matches("_bucket");
        assert!(
            source.contains(&format!("\"{base}\"")),
            "{name} is not a metric the gateway registers"
        );
    }
}

/// What an operator deploys: the Debian package built from this binary
/// by `deploy/debian/build.sh` installs the binary, the hardened systemd
/// unit (which `systemd-analyze verify` accepts once installed), the
/// commented example config (which `meshgate check` accepts), the alerting
/// rules and the dashboard; its script creates the `meshgate` system user;
/// purging it removes its files.
#[test]
fn the_debian_package_installs_a_verified_hardened_unit() {
    struct Purge;
    /// The files the example names, which the test puts in place.
    const NAMED: [&str; 4] = [
        "/etc/meshgate/ca.pem",
        "/etc/meshgate/appliance.pem",
        "/etc/meshgate/appliance.key",
        "/etc/meshgate/master.key",
    ];
    impl Drop for Purge {
        fn drop(&mut self) {
            for f in NAMED {
                let _ = std::fs::remove_file(f);
            }
            let _ = Command::new("dpkg").args(["--purge", "meshgate"]).output();
        }
    }
    let run = |program: &str, args: &[&str]| {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{program} {args:?}: {text}");
        text
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = scratch_dir("deb");
    let script = root.join("deploy/debian/build.sh");
    let deb = run(
        "bash",
        &[script.to_str().unwrap(), BIN, out.to_str().unwrap()],
    );
    let deb = deb.trim();
    let listing = run("dpkg-deb", &["-c", deb]);
    for path in [
        "./usr/bin/meshgate",
        "./lib/systemd/system/meshgate.service",
        "./etc/meshgate/meshgate.toml.example",
        "./usr/share/meshgate/prometheus/meshgate-rules.yml",
        "./usr/share/meshgate/grafana/meshgate.json",
        "./usr/share/bash-completion/completions/meshgate",
        "./usr/share/zsh/vendor-completions/_meshgate",
        "./usr/share/fish/vendor_completions.d/meshgate.fish",
        "./usr/share/man/man1/meshgate.1.gz",
        "./usr/share/man/man1/meshgate-status.1.gz",
        "./usr/share/man/man1/meshgate-policy-reload.1.gz",
    ] {
        assert!(listing.contains(path), "{path} missing:\n{listing}");
    }
    let _purge = Purge;
    run("dpkg", &["-i", deb]);
    assert!(run("/usr/bin/meshgate", &["--version"]).contains("meshgate"));
    // The installed bash completion completes commands and options.
    let complete = |line: &str| {
        let words: Vec<&str> = line.split(' ').collect();
        run(
            "bash",
            &[
                "-c",
                &format!(
                    "source /usr/share/bash-completion/completions/meshgate; COMP_WORDS=({}); COMP_CWORD={}; COMP_LINE='{line}'; COMP_POINT={}; _meshgate meshgate '{}' '{}'; echo \"${{COMPREPLY[@]}}\"",
                    words.join(" "),
                    words.len() - 1,
                    line.len(),
                    words[words.len() - 1],
                    words[words.len() - 2],
                ),
            ],
        )
    };
    let commands = complete("meshgate sta");
    assert!(
        commands.split_whitespace().any(|w| w == "status"),
        "{commands}"
    );
    let options = complete("meshgate status --");
    assert!(
        options.contains("--json") && options.contains("--admin"),
        "{options}"
    );
    // The man pages are roff, one per command.
    let page = run("zcat", &["/usr/share/man/man1/meshgate-status.1.gz"]);
    assert!(page.contains(".TH meshgate-status 1"), "{page}");
    assert!(page.contains(r"\-\-json"), "{page}");
    run("getent", &["passwd", "meshgate"]);
    let unit = std::fs::read_to_string("/lib/systemd/system/meshgate.service").unwrap();
    for line in [
        "User=meshgate",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "AmbientCapabilities=CAP_NET_ADMIN",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "StateDirectory=meshgate",
        "DeviceAllow=/dev/net/tun rw",
        "Restart=on-failure",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line} missing from the unit"
        );
    }
    let verify = run(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/meshgate.service"],
    );
    assert!(!verify.contains("meshgate.service:"), "{verify}");
    // The example names its CA, certificate, key and master key: `check`
    // refuses it, naming the field and its line, until they are there,
    // and then accepts it whole (as `run` would).
    let example = "/etc/meshgate/meshgate.toml.example";
    let refused = Command::new("/usr/bin/meshgate")
        .args(["check", "--config", example])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && err.contains("meshgate.toml.example:32:")
            && err.contains("signal.ca")
            && err.contains("/etc/meshgate/ca.pem"),
        "{err}"
    );
    let ca = out.join("ca");
    let mg = "/usr/bin/meshgate";
    run(mg, &["ca", "init", "--dir", ca.to_str().unwrap()]);
    let issued = [
        "cert",
        "issue",
        "--ca",
        ca.to_str().unwrap(),
        "--id",
        "eu-west-1a",
        "--region",
        "eu-west-1",
        "--role",
        "edge",
        "--prefix",
        "10.1.0.0/16",
        "--out",
        out.to_str().unwrap(),
    ];
    run(mg, &issued);
    for (from, to) in [
        (ca.join("ca.pem"), NAMED[0]),
        (out.join("eu-west-1a.pem"), NAMED[1]),
        (out.join("eu-west-1a.key"), NAMED[2]),
    ] {
        std::fs::copy(&from, to).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    }
    run(mg, &["keys", "init", "--file", NAMED[3]]);
    let checked = run(mg, &["check", "--config", example]);
    assert!(
        checked.contains(": ok")
            && checked.contains("its key matches")
            && checked.contains("full-mesh"),
        "{checked}"
    );
    run("dpkg", &["--purge", "meshgate"]);
    assert!(!Path::new("/usr/bin/meshgate").exists());
    assert!(!Path::new("/lib/systemd/system/meshgate.service").exists());
}

/// The gateway runs as the systemd unit runs it: an unprivileged user
/// whose only capability is CAP_NET_ADMIN (bounded and ambient, no new
/// privileges). In a namespace of its own it opens its TUN, routes its
/// peer's prefix into it, and answers its health check.
#[test]
fn the_gateway_runs_unprivileged_with_cap_net_admin_alone() {
    let dir = scratch_dir("capnetadmin");
    write_keys(&dir);
    let config = CONFIG.replace(
        "[tun]",
        &format!(
            "state_dir = \"{d}\"\ncontrol = \"{d}/control.sock\"\n\n[tun]",
            d = dir.display()
        ),
    );
    std::fs::write(dir.join("gw.toml"), config).unwrap();
    // Its state directory belongs to it, as StateDirectory= makes it.
    let chown = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(chown.success());
    // The device open to all, as udev makes it on Debian (some container
    // runtimes leave it 0600); put back as it was afterwards.
    use std::os::unix::fs::PermissionsExt;
    let tun_mode = std::fs::metadata("/dev/net/tun")
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    struct Restore(u32);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ =
                std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(self.0));
        }
    }
    let _restore = Restore(tun_mode);
    std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(0o666)).unwrap();
    let ns = format!("mgcap{}", std::process::id() % 100_000);
    let ip = |args: &[&str]| {
        let ok = Command::new("ip").args(args).status().unwrap();
        assert!(ok.success(), "ip {args:?}");
    };
    ip(&["netns", "add", &ns]);
    struct Cleanup(String, Option<std::process::Child>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(c) = self.1.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let mut cleanup = Cleanup(ns.clone(), None);
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    let child = Command::new("ip")
        .args(["netns", "exec", &ns, "setpriv"])
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all,+net_admin",
            "--ambient-caps=-all,+net_admin",
            "--bounding-set=-all,+net_admin",
            "--no-new-privs",
            BIN,
            "run",
            "--config",
        ])
        .arg(dir.join("gw.toml"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("gw.log")).unwrap())
        .spawn()
        .expect("setpriv (util-linux) must be installed");
    cleanup.1 = Some(child);
    let netns = meshgate::netns::Netns::attach(&ns);
    let start = Instant::now();
    let addr: std::net::SocketAddr = "127.0.0.1:9100".parse().unwrap();
    while meshgate::lab::probe::http_get(&netns, addr, "/healthz").is_err() {
        let log = std::fs::read_to_string(dir.join("gw.log")).unwrap_or_default();
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no health answer as an unprivileged user with CAP_NET_ADMIN:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let routes = Command::new("ip")
        .args(["-n", &ns, "route", "show", "dev", "mgcli0"])
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.contains("10.2.0.0/16"),
        "the peer's prefix routed into the TUN: {routes}"
    );
    // Its log, a file here, holds words, not terminal colour codes.
    let log = std::fs::read_to_string(dir.join("gw.log")).unwrap_or_default();
    assert!(
        log.contains("policy in force") && !log.contains('\x1b'),
        "{log}"
    );
    // `ip netns exec` and setpriv exec into the gateway: same process.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", cleanup.1.as_ref().unwrap().id()))
            .unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| {
                l[name.len()..]
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    assert!(field("Uid:").starts_with("65534 65534"), "{status}");
    // CAP_NET_ADMIN is capability 12: 0x1000, and nothing else.
    assert_eq!(field("CapEff:"), "0000000000001000", "{status}");
    assert_eq!(field("CapBnd:"), "0000000000001000", "{status}");
    drop(cleanup);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `meshgate check` refuses what `meshgate run` would, before anything
/// starts, naming file, line and field: a missing CA, a missing master
/// key, another member's certificate, a key that is not the
/// certificate's, a policy file that does not exist. `run` refuses the
/// same with the same words, and never says `gateway up` first.
#[test]
fn check_refuses_what_run_would_naming_file_line_and_field() {
    let dir = scratch_dir("checkall");
    let d = |p: &str| dir.join(p).to_str().unwrap().to_string();
    let ok = |args: &[&str]| {
        let (ok, err) = run(args);
        assert!(ok, "{args:?}: {err}");
    };
    ok(&["ca", "init", "--dir", &d("ca")]);
    for id in ["a", "b"] {
        ok(&[
            "cert",
            "issue",
            "--ca",
            &d("ca"),
            "--id",
            id,
            "--region",
            "r1",
            "--role",
            "edge",
            "--prefix",
            "10.1.0.0/16",
            "--out",
            &d(""),
        ]);
    }
    ok(&["keys", "init", "--file", &d("master.key")]);
    let config = "[gateway]\nid = \"a\"\nlisten = \"127.0.0.1:45100\"\nregion = \"r1\"\nrole = \"edge\"\nprefixes = [\"10.1.0.0/16\"]\n\n[tun]\nname = \"mgchk0\"\n\n[policy]\nmodule = \"full-mesh\"\n\n[signal]\nlisten = \"127.0.0.1:45101\"\nca = \"ca/ca.pem\"\ncert = \"a.pem\"\nkey = \"a.key\"\n\n[keys]\nprovider = \"local\"\nmaster_key = \"master.key\"\n";
    let file = dir.join("gw.toml");
    std::fs::write(&file, config).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && said.contains("certificate:")
            && said.contains("its key matches")
            && said.contains("epoch 1 obtainable"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let at = |line: usize| format!("{}:{line}:", file.display());
    let cases = [
        (
            config.replace("ca/ca.pem", "ca/none.pem"),
            at(16),
            "signal.ca",
            "none.pem",
        ),
        (
            config.replace("\"master.key\"", "\"gone.key\""),
            at(22),
            "keys.master_key",
            "gone.key",
        ),
        (
            config
                .replace("\"a.pem\"", "\"b.pem\"")
                .replace("\"a.key\"", "\"b.key\""),
            at(2),
            "gateway.id",
            "certifies b",
        ),
        (
            config.replace("\"a.key\"", "\"b.key\""),
            at(18),
            "signal.key",
            "is not the key of",
        ),
        (
            config.replace("\"full-mesh\"", "\"nope.wasm\""),
            at(12),
            "policy.module",
            "nope.wasm",
        ),
    ];
    for (text, line, field, what) in &cases {
        std::fs::write(&file, text).unwrap();
        let (ok, err) = run(&["check", "--config", file.to_str().unwrap()]);
        assert!(
            !ok && err.contains(line.as_str()) && err.contains(field) && err.contains(what),
            "check: wanted {line} {field} ... {what}, got: {err}"
        );
    }
    // `run` (as root) refuses the key of another certificate the same way,
    // before it says it is up.
    std::fs::write(&file, &cases[3].0).unwrap();
    let (ok, err) = run(&["run", "--config", file.to_str().unwrap()]);
    assert!(
        !ok && err.contains(&at(18)) && err.contains("signal.key") && !err.contains("gateway up"),
        "run: {err}"
    );
    // An admin address in use stops the start after the data plane is
    // built: still no `gateway up`, and the address named.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = held.local_addr().unwrap();
    let busy = config.replace(
        "role = \"edge\"\n",
        &format!(
            "role = \"edge\"\nadmin = \"{admin}\"\ncontrol = \"{}\"\nstate_dir = \"{}\"\n",
            d("control.sock"),
            d("state")
        ),
    );
    std::fs::write(&file, &busy).unwrap();
    let (ok, err) = run(&["run", "--config", file.to_str().unwrap()]);
    assert!(
        !ok && err.contains(&format!("binding the admin listener {admin}"))
            && !err.contains("gateway up"),
        "run with its admin address taken: {err}"
    );
    drop(held);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `check` compares the routes the policy's first decisions make with
/// the host's: a route another put there for one of them is named (run
/// would leave it, and the prefix would never reach the tunnel).
#[test]
fn check_names_a_route_the_host_already_has_elsewhere() {
    let dir = scratch_dir("hostroute");
    write_keys(&dir);
    let file = dir.join("gw.toml");
    std::fs::write(&file, CONFIG).unwrap();
    let ns = format!("mgchkr{}", std::process::id());
    let ip = |args: &[&str]| {
        let ok = Command::new("ip").args(args).status().unwrap().success();
        assert!(ok, "ip {args:?}");
    };
    ip(&["netns", "add", &ns]);
    let check = || {
        Command::new("ip")
            .args(["netns", "exec", &ns, BIN, "check", "--config"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = check();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let clean = out.status.success() && said.contains("routes: 1 into mgcli0, none taken");
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    ip(&["-n", &ns, "route", "add", "10.2.0.0/16", "dev", "lo"]);
    let out = check();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ip(&["netns", "del", &ns]);
    assert!(
        clean,
        "a host without the route: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success()
            && err.contains(&format!("{}:", file.display()))
            && err.contains("policy.module")
            && err.contains("10.2.0.0/16: the host's main table routes it elsewhere")
            && err.contains("dev lo"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Words for what a person gets wrong: a lab that would measure nothing,
/// an admin listener that is not there, and something other than
/// meshgate answering where it should be.
#[test]
fn the_tools_say_what_is_wrong_and_where_to_look() {
    for (args, want) in [
        (&["lab", "--pings", "0"][..], "--pings"),
        (
            &["lab", "--transfer-secs", "0"][..],
            "outside 0.1 to 600 seconds",
        ),
    ] {
        let (ok, err) = run(args);
        assert!(!ok && err.contains(want), "{args:?}: {err}");
    }

    // Nothing listens here.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (ok, err) = run(&["status", "--admin", &closed.to_string()]);
    assert!(
        !ok && err.contains("cannot reach the admin listener")
            && err.contains("inside the appliance's namespace"),
        "{err}"
    );

    // A web server that is not meshgate.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = other.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in other.incoming().take(2) {
            let Ok(mut c) = conn else { continue };
            // The whole request, then the answer, as a web server does.
            let (mut seen, mut buf) = (Vec::new(), [0u8; 1024]);
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = c.write_all(b"HTTP/1.0 404 Not Found\r\nServer: nginx\r\n\r\nnot found\n");
            let _ = c.shutdown(std::net::Shutdown::Write);
        }
    });
    for cmd in ["status", "members"] {
        let (ok, err) = run(&[cmd, "--admin", &addr.to_string()]);
        assert!(
            !ok && err.contains("something other than meshgate answers")
                && err.contains("HTTP 404"),
            "{cmd}: {err}"
        );
    }
}

/// Every option of every command says what it is for (`-h`).
#[test]
fn every_option_has_help_text() {
    let commands: &[&[&str]] = &[
        &["run"],
        &["check"],
        &["policy", "check"],
        &["policy", "test"],
        &["policy", "reload"],
        &["ca", "init"],
        &["cert", "issue"],
        &["cert", "revoke"],
        &["keys", "init"],
        &["keys", "rotate"],
        &["keys", "revoke"],
        &["keys", "show"],
        &["keys", "apply"],
        &["keygen"],
        &["cert", "show"],
        &["status"],
        &["members"],
        &["ping"],
        &["completions"],
        &["manpages"],
        &["plan"],
        &["up"],
        &["down"],
        &["bootstrap"],
        &["lab"],
    ];
    let mut bare = Vec::new();
    for cmd in commands {
        let out = Command::new(BIN).args(*cmd).arg("-h").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("Options:"),
            "{cmd:?}: {text}"
        );
        let options = text.split("Options:").nth(1).unwrap_or_default();
        for line in options.lines().filter(|l| l.trim_start().starts_with('-')) {
            // `--name <VALUE>`, two or more spaces, then its help.
            let help = line
                .trim()
                .split_once("  ")
                .map(|(_, h)| h)
                .unwrap_or_default()
                .trim();
            if help.is_empty() || help.starts_with('[') {
                bare.push(format!("{} {}", cmd.join(" "), line.trim()));
            }
        }
    }
    assert!(
        bare.is_empty(),
        "options without help:\n{}",
        bare.join("\n")
    );
}

/// A lab that fails keeps its configs and logs and says where; its
/// namespaces go as always.
#[test]
fn a_failed_lab_keeps_its_files_and_says_where() {
    let out = Command::new(BIN)
        .args(["lab", "--regions", "2", "--cloud", "moto"])
        .env("MESHGATE_MOTO_SERVER", "/nonexistent/moto_server")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/nonexistent/moto_server"),
        "{err}"
    );
    let kept = err
        .lines()
        .find_map(|l| {
            l.split_once("its configs and logs are kept in ")
                .map(|(_, d)| d.trim().to_string())
        })
        .unwrap_or_else(|| panic!("the lab did not say where its files are: {err}"));
    assert!(Path::new(&kept).is_dir(), "{kept} is not there");
    // meshgate-lab-<tag>-<suffix>; the namespaces are <tag>-*.
    let name = Path::new(&kept)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let tag = name
        .strip_prefix("meshgate-lab-")
        .and_then(|t| t.split('-').next())
        .map(|t| format!("{t}-"))
        .unwrap_or_else(|| panic!("{name} is not a lab's directory"));
    let namespaces = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    assert!(
        !namespaces.lines().any(|l| l.contains(&tag)),
        "namespaces of {tag} left behind:\n{namespaces}"
    );
    let _ = std::fs::remove_dir_all(&kept);
}

/// `cert show` says what a certificate grants, and `keygen --pair` gives
/// both sides of a configured pair keys and `[[peers]]` sections that
/// `check` accepts as they are.
#[test]
fn cert_show_and_keygen_pair_give_what_a_person_needs() {
    let dir = scratch_dir("certshow");
    let d = |p: &str| dir.join(p).to_str().unwrap().to_string();
    let stdout = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    stdout(&["ca", "init", "--dir", &d("ca")]);
    let issued = stdout(&[
        "cert",
        "issue",
        "--ca",
        &d("ca"),
        "--id",
        "edge-1",
        "--region",
        "eu-west-1",
        "--role",
        "edge",
        "--prefix",
        "10.1.0.0/16",
        "--prefix",
        "fd00:1::/48",
        "--out",
        &d(""),
        "--days",
        "30",
    ]);
    let id = issued
        .split("(id ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&stdout(&["cert", "show", "--json", &d("edge-1.pem")])).unwrap();
    assert_eq!(doc["kind"], "appliance");
    assert_eq!(doc["member"], "edge-1");
    assert_eq!(doc["region"], "eu-west-1");
    assert_eq!(doc["role"], "edge");
    assert_eq!(
        doc["prefixes"],
        serde_json::json!(["10.1.0.0/16", "fd00:1::/48"])
    );
    assert_eq!(doc["cert_id"], id, "the id cert revoke takes");
    let days = doc["expires_in_days"].as_i64().unwrap();
    assert!((29..=30).contains(&days), "{doc}");
    assert!(doc["issuer"].as_str().unwrap().contains("mesh CA"), "{doc}");
    let text = stdout(&["cert", "show", &d("edge-1.pem")]);
    assert!(
        text.contains("member:   edge-1 (region eu-west-1, role edge)")
            && text.contains("grants:   10.1.0.0/16, fd00:1::/48")
            && text.contains("expires in "),
        "{text}"
    );
    let ca = stdout(&["cert", "show", &d("ca/ca.pem")]);
    assert!(ca.contains("a CA certificate"), "{ca}");
    let (ok, err) = run(&["cert", "show", &d("edge-1.key")]);
    assert!(
        !ok && err.contains("edge-1.key: no certificate in it"),
        "{err}"
    );

    let sections = stdout(&[
        "keygen",
        "--pair",
        "a",
        "b",
        "--dir",
        &d("pair"),
        "--a-endpoint",
        "127.0.0.1:45300",
        "--a-prefix",
        "10.1.0.0/16",
        "--b-endpoint",
        "127.0.0.2:45300",
        "--b-prefix",
        "10.2.0.0/16",
    ]);
    let (for_a, for_b) = sections
        .split_once("# In b's config")
        .expect("two sections");
    let for_a = for_a.split_once("# In a's config").expect("a's section").1;
    let spis = |section: &str| -> (String, String) {
        let spi = |dir: &str| {
            section
                .lines()
                .find(|l| l.starts_with(dir))
                .unwrap()
                .split("spi = ")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .to_string()
        };
        (spi("outbound"), spi("inbound"))
    };
    let ((a_out, a_in), (b_out, b_in)) = (spis(for_a), spis(for_b));
    assert!(
        a_out == b_in && a_in == b_out && a_out != a_in,
        "{sections}"
    );
    for (id, listen, section) in [("a", "127.0.0.1", for_a), ("b", "127.0.0.2", for_b)] {
        let config = dir.join("pair").join(format!("{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "[gateway]\nid = \"{id}\"\nlisten = \"{listen}:45300\"\n\n[tun]\nname = \"mgpair0\"\n\n# {}",
                section.trim_start_matches(|c| c != '\n')
            ),
        )
        .unwrap();
        let out = stdout(&["check", "--config", config.to_str().unwrap()]);
        assert!(out.contains("1 configured peer\n"), "{id}: {out}");
    }
    use std::os::unix::fs::PermissionsExt;
    for f in ["a-to-b.hex", "b-to-a.hex"] {
        let mode = std::fs::metadata(dir.join("pair").join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let (ok, err) = run(&["keygen", "--pair", "a", "b", "--dir", &d("pair")]);
    assert!(!ok && err.contains("not overwriting a key"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The configs a person copies from: the README's configuration
/// reference (a mesh member, a configured pair) and the commented
/// production examples (`examples/configs/`: an edge, a hub, a leaf).
/// Each is given the files it names (a CA, its certificate for the id,
/// region, role and prefixes it states, a master key, key files and key
/// variables) and must pass `meshgate check` as it is written.
#[test]
fn the_readme_and_example_configs_pass_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut configs: Vec<(String, String)> = readme
        .split("```toml\n")
        .skip(1)
        .filter_map(|block| {
            let block = block.split("```").next()?;
            let name = block.lines().next()?.strip_prefix("# readme-example: ")?;
            Some((format!("README.md {name}"), block.to_string()))
        })
        .collect();
    let names: Vec<&str> = configs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["README.md mesh-member", "README.md configured-pair"],
        "the README's examples"
    );
    for f in ["edge", "hub", "leaf"] {
        let path = root.join(format!("examples/configs/{f}.toml"));
        configs.push((
            path.display().to_string(),
            std::fs::read_to_string(&path).unwrap(),
        ));
    }
    let ns = format!("mgex{}", std::process::id());
    assert!(Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap()
        .success());
    let mut failures = Vec::new();
    for (i, (name, text)) in configs.iter().enumerate() {
        let dir = scratch_dir(&format!("example{i}"));
        let config: toml::Value = toml::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let get = |path: &[&str]| -> Option<String> {
            let mut v = &config;
            for p in path {
                v = v.get(*p)?;
            }
            v.as_str().map(String::from)
        };
        let at = |rel: &str| {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            p
        };
        let make = |args: &[&str]| {
            let out = Command::new(BIN).args(args).output().unwrap();
            assert!(
                out.status.success(),
                "{name}: {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let mut env = Vec::new();
        if let Some(ca) = get(&["signal", "ca"]) {
            let gen = dir.join("ca-gen");
            make(&["ca", "init", "--dir", gen.to_str().unwrap()]);
            std::fs::copy(gen.join("ca.pem"), at(&ca)).unwrap();
            let mut args: Vec<String> = [
                "cert",
                "issue",
                "--ca",
                gen.to_str().unwrap(),
                "--out",
                gen.to_str().unwrap(),
            ]
            .map(String::from)
            .to_vec();
            let id = get(&["gateway", "id"]).unwrap();
            for (flag, value) in [
                ("--id", Some(id.clone())),
                ("--region", get(&["gateway", "region"])),
                ("--role", get(&["gateway", "role"]).or(Some("edge".into()))),
            ] {
                args.extend([flag.to_string(), value.unwrap()]);
            }
            for p in config["gateway"]["prefixes"].as_array().unwrap() {
                args.extend(["--prefix".to_string(), p.as_str().unwrap().to_string()]);
            }
            make(&args.iter().map(String::as_str).collect::<Vec<_>>());
            std::fs::rename(
                gen.join(format!("{id}.pem")),
                at(&get(&["signal", "cert"]).unwrap()),
            )
            .unwrap();
            std::fs::rename(
                gen.join(format!("{id}.key")),
                at(&get(&["signal", "key"]).unwrap()),
            )
            .unwrap();
        }
        if let Some(master) = get(&["keys", "master_key"]) {
            make(&["keys", "init", "--file", at(&master).to_str().unwrap()]);
        }
        for peer in config
            .get("peers")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
        {
            for dir_ in ["outbound", "inbound"] {
                let sa = &peer[dir_];
                let key = make(&["keygen"]);
                if let Some(file) = sa.get("key_file").and_then(|f| f.as_str()) {
                    std::fs::write(at(file), &key).unwrap();
                }
                if let Some(var) = sa.get("key_env").and_then(|f| f.as_str()) {
                    env.push((var.to_string(), key.trim().to_string()));
                }
            }
        }
        let file = dir.join("config.toml");
        std::fs::write(&file, text).unwrap();
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, BIN, "check", "--config"])
            .arg(&file)
            .envs(env)
            .output()
            .unwrap();
        if !out.status.success() {
            failures.push(format!("{name}: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
