//! The mesh in the lab: gateways that find each other through seeds,
//! authenticate with the mesh CA, gossip membership and health, and
//! negotiate their own SAs. Real processes, real QUIC, real TUN devices.

mod common;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use common::{
    drops, echo_flow, eventually, mesh_lab, mesh_lab_unstarted, metric, ping_ok, wait_meshed,
};
use meshgate::lab::probe::ping;
use meshgate::lab::Lab;
use meshgate::netns::Netns;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_meshgate"))
}

fn members(lab: &Lab, g: usize, state: &str) -> u64 {
    metric(lab, g, "meshgate_members", &format!("state=\"{state}\""))
}

/// The routes into the tunnel in an appliance's namespace.
fn tunnel_routes(ns: &Netns) -> String {
    let out = ns
        .command("ip")
        .args(["route", "show", "dev", "mg0"])
        .output()
        .expect("running ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every host reaches every other, over IPv4 and IPv6.
fn all_pairs_reach(lab: &Lab, count: u32) {
    for a in &lab.regions {
        for b in lab.regions.iter().filter(|b| b.index != a.index) {
            for dst in [IpAddr::V4(b.host_ip()), IpAddr::V6(b.host_ip6())] {
                ping_ok(
                    &a.host,
                    dst,
                    count,
                    &format!("host-{} -> {dst}", a.number()),
                );
            }
        }
    }
}

#[test]
fn members_find_each_other_through_seeds_and_key_every_pair() {
    let lab = mesh_lab(3, "full-mesh", "cipher = \"aes128gcm16\"");
    for g in 0..3 {
        let cfg = std::fs::read_to_string(lab.config_path(g)).unwrap();
        assert!(
            !cfg.contains("[[peers]]") && !cfg.contains("key_file"),
            "no peer list or keys in the config:\n{cfg}"
        );
    }
    all_pairs_reach(&lab, 5);
    // Garbage at a signalling port (from a host that is no member: every
    // byte pattern QUIC could see first, and random lengths) changes nothing.
    let mut junk = Vec::new();
    for i in 0..3000u32 {
        let len = 1 + (i as usize * 7919) % 1400;
        junk.push((0..len).map(|k| (k as u32 * 31 + i) as u8).collect());
    }
    common::inject(
        &lab.regions[1].host,
        std::net::SocketAddr::new(
            lab.regions[0].underlay_ip().into(),
            meshgate::lab::SIGNAL_PORT,
        ),
        junk,
    );
    all_pairs_reach(&lab, 5);
    for g in 0..3 {
        assert_eq!(members(&lab, g, "alive"), 2);
        assert_eq!(members(&lab, g, "dead"), 0);
        assert_eq!(
            metric(
                &lab,
                g,
                "meshgate_sa_negotiations_total",
                "kind=\"initial\",outcome=\"ok\""
            ),
            2,
            "one negotiation per pair, seen from each side"
        );
        assert_eq!(metric(&lab, g, "meshgate_key_epoch", ""), 1);
        assert_eq!(metric(&lab, g, "meshgate_drops_total", ""), 0);
        let log = std::fs::read_to_string(lab.log_path(g)).unwrap();
        assert!(log.contains("SAs with region-"), "{log}");
    }
    // What an operator sees: each member, alive, with its measured round
    // trip and its record (prefixes, the policy it runs, its epoch).
    let (out, ok) = cli(&lab, 0, &["members"]);
    assert!(ok, "{out}");
    let hash = meshgate::policy::host::hash_of(meshgate::policy::builtin("full-mesh").unwrap());
    for r in 2..=3 {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("region-{r} ")))
            .unwrap_or_else(|| panic!("no line for region-{r}:\n{out}"));
        assert!(line.contains("alive") && line.contains(" ms "), "{line}");
        assert!(
            line.contains(&format!("10.{r}.0.0/16,fd00:{r}::/48")),
            "{line}"
        );
        assert!(
            line.contains(&hash[..8]),
            "policy version {}: {line}",
            &hash[..8]
        );
    }
    eprintln!("{out}");
    common::promtool_ok(&lab.metrics(0).unwrap());
}

#[test]
fn a_gateway_killed_with_sigkill_is_marked_dead_and_its_routes_are_withdrawn() {
    let mut lab = mesh_lab(3, "full-mesh", "cipher = \"aes128gcm16\"");
    assert!(tunnel_routes(&lab.regions[0].appliance).contains("10.3.0.0/16"));
    lab.kill_gateway(2);
    let took = eventually(
        Duration::from_secs(10),
        "the survivors did not both mark region-3 dead",
        || members(&lab, 0, "dead") == 1 && members(&lab, 1, "dead") == 1,
    );
    eprintln!("region-3 killed; both survivors marked it dead within {took:?} (metrics polled every 50 ms)");
    // The target, 1.5 s, asserted as it stands (measured 0.57-0.62 s).
    assert!(took <= Duration::from_millis(1500), "{took:?}");
    eventually(
        Duration::from_secs(2),
        "region-3's routes were not withdrawn",
        || !tunnel_routes(&lab.regions[0].appliance).contains("10.3.0.0/16"),
    );
    assert!(tunnel_routes(&lab.regions[0].appliance).contains("10.2.0.0/16"));
    let (a, b, c) = (&lab.regions[0], &lab.regions[1], &lab.regions[2]);
    ping_ok(
        &a.host,
        b.host_ip().into(),
        5,
        "the survivors still reach each other",
    );
    let p = ping(&a.host, c.host_ip().into(), 3, Duration::from_millis(10)).unwrap();
    assert_eq!(p.received, 0, "nothing reaches a dead region");

    // It comes back: the mesh takes it in again and keys it afresh.
    lab.start_gateway(binary(), 2).unwrap();
    wait_meshed(&lab, &[0, 1, 2], Duration::from_secs(20));
    all_pairs_reach(&lab, 3);
}

/// Cuts region `r`'s appliance off the underlay (both ways), or mends it.
fn partition(lab: &Lab, r: usize, cut: bool) {
    let op = if cut { "-I" } else { "-D" };
    let ns = &lab.regions[r].appliance;
    for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
        let ok = ns
            .command("iptables")
            .args([op, chain, dir, "198.18.0.0/24", "-j", "DROP"])
            .status()
            .expect("iptables must be installed")
            .success();
        assert!(ok, "iptables {op} {chain}");
    }
}

#[test]
fn a_partition_marks_the_far_side_dead_and_the_mesh_heals_when_it_ends() {
    let lab = mesh_lab(3, "full-mesh", "cipher = \"aes128gcm16\"");
    partition(&lab, 2, true);
    let took = eventually(
        Duration::from_secs(10),
        "the partition was not seen on both sides",
        || {
            members(&lab, 0, "dead") == 1
                && members(&lab, 1, "dead") == 1
                && members(&lab, 2, "dead") == 2
        },
    );
    eprintln!("partition seen on both sides after {took:?}");
    eventually(Duration::from_secs(2), "routes not withdrawn", || {
        !tunnel_routes(&lab.regions[0].appliance).contains("10.3.0.0/16")
            && !tunnel_routes(&lab.regions[2].appliance).contains("10.1.0.0/16")
    });
    ping_ok(
        &lab.regions[0].host,
        lab.regions[1].host_ip().into(),
        5,
        "the majority side still forwards",
    );

    partition(&lab, 2, false);
    let healed = std::time::Instant::now();
    wait_meshed(&lab, &[0, 1, 2], Duration::from_secs(30));
    eprintln!(
        "healed and keyed again {:?} after the partition ended",
        healed.elapsed()
    );
    all_pairs_reach(&lab, 3);
}

#[test]
fn an_appliance_with_a_foreign_certificate_is_refused() {
    let mut lab = mesh_lab_unstarted(3, "full-mesh", "cipher = \"aes128gcm16\"");
    // Region 3 has a certificate of another mesh, for its own id.
    let foreign = lab.dir.join("foreign-ca");
    let ca = meshgate::identity::init_ca(&foreign, 30).unwrap();
    let (cert, key) = meshgate::identity::issue(
        &foreign,
        &meshgate::identity::Claims {
            id: "region-3".into(),
            region: "region-3".into(),
            role: "edge".into(),
            prefixes: vec![
                "10.3.0.0/16".parse().unwrap(),
                "fd00:3::/48".parse().unwrap(),
            ],
        },
        &lab.dir.join("foreign-certs"),
        30,
    )
    .unwrap();
    let cfg = lab.config_path(2);
    let text: String = std::fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .map(|l| match l.split(" = ").next() {
            Some("ca") => format!("ca = \"{}\"", ca.display()),
            Some("cert") => format!("cert = \"{}\"", cert.display()),
            Some("key") => format!("key = \"{}\"", key.display()),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&cfg, text).unwrap();
    lab.start_gateways(binary()).unwrap();
    wait_meshed(&lab, &[0, 1], Duration::from_secs(20));
    // It keeps trying through both seeds; give it a few rounds.
    eventually(
        Duration::from_secs(10),
        "no refused connection was counted",
        || {
            (0..2)
                .map(|g| {
                    metric(
                        &lab,
                        g,
                        "meshgate_signal_refused_total",
                        "what=\"connection\"",
                    )
                })
                .sum::<u64>()
                >= 2
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    for g in 0..2 {
        assert_eq!(members(&lab, g, "alive"), 1, "only the genuine member");
        assert_eq!(members(&lab, g, "suspect") + members(&lab, g, "dead"), 0);
        assert!(!tunnel_routes(&lab.regions[g].appliance).contains("10.3.0.0/16"));
    }
    let logs: String = (0..2)
        .map(|g| std::fs::read_to_string(lab.log_path(g)).unwrap())
        .collect();
    let line = logs
        .lines()
        .find(|l| l.contains("refused") && l.contains("198.18.0.3"))
        .unwrap_or_else(|| panic!("no log line names the refused peer:\n{logs}"));
    eprintln!("the log says: {line}");
    ping_ok(
        &lab.regions[0].host,
        lab.regions[1].host_ip().into(),
        5,
        "the genuine members forward",
    );
}

#[test]
fn a_hundred_rekeys_under_a_continuous_flow_lose_no_packet() {
    // Every 40 packets an SA is due for rekeying: a rekey every 80 ms
    // under a flow of 500 packets a second each way.
    let lab = mesh_lab(
        2,
        "full-mesh",
        "cipher = \"aes128gcm16\"\n\n[sa.lifetime.soft]\npackets = 40\n\n[sa.lifetime.hard]\npackets = 100000",
    );
    let (a, b) = (&lab.regions[0], &lab.regions[1]);
    let rekeys = |g| {
        metric(
            &lab,
            g,
            "meshgate_sa_negotiations_total",
            "kind=\"rekey\",outcome=\"ok\"",
        )
    };
    let before = rekeys(0);
    // Rounds of 1,000 echoes at 2 ms until 100 rekeys are done (about 12 s
    // on an idle machine; a loaded one takes more rounds, never a smaller
    // count), within a minute.
    let (mut pings, mut received) = (0, 0);
    let started = std::time::Instant::now();
    let mut done = 0;
    while done < 100 && started.elapsed() < Duration::from_secs(60) {
        let p = ping(&a.host, b.host_ip().into(), 1000, Duration::from_millis(2)).unwrap();
        (pings, received) = (pings + 1000, received + p.received);
        done = rekeys(0) - before;
    }
    eprintln!(
        "{received} of {pings} echoes came back across {done} rekeys in {:?}",
        started.elapsed()
    );
    assert!(done >= 100, "only {done} rekeys");
    assert_eq!(received, pings, "make-before-break loses nothing");
    for g in 0..2 {
        for reason in ["no_sa", "unknown_spi", "expired", "replay", "icv"] {
            assert_eq!(drops(&lab, g, reason), 0, "gateway {g}: {reason}");
        }
        // Rekeyed-away SAs leave the metrics (bounded series).
        let text = lab.metrics(g).unwrap();
        let series = text
            .lines()
            .filter(|l| l.starts_with("meshgate_sa_info{"))
            .count();
        assert!(series <= 2 + 2 * 110, "{series} SA series at gateway {g}");
    }
}

/// How long the impaired run lasts: `MESHGATE_IMPAIRED_SECS`, 30 s by
/// default (CI); the issue's long form is 300.
fn impaired_secs() -> u64 {
    std::env::var("MESHGATE_IMPAIRED_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

#[test]
fn ten_percent_loss_and_100_ms_delay_declare_no_member_dead_and_a_kill_is_still_seen() {
    let mut lab = mesh_lab_unstarted(4, "full-mesh", "cipher = \"aes128gcm16\"");
    let _impairment = lab
        .impair_signalling(Duration::from_millis(100), 0.10)
        .expect("impairing the underlay");
    lab.start_gateways(binary()).unwrap();
    let took = wait_meshed(&lab, &[0, 1, 2, 3], Duration::from_secs(30));
    eprintln!("at 10% loss and 100 ms one-way delay: 4 gateways up, all members alive and all 6 pairs keyed {took:?} after their health checks answered");
    let secs = impaired_secs();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        for g in 0..4 {
            assert_eq!(
                members(&lab, g, "dead"),
                0,
                "gateway {} declared a member dead after {:?}:\n{}",
                g + 1,
                start.elapsed(),
                lab.log_tail(g)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut suspicions = 0;
    for g in 0..4 {
        assert_eq!(members(&lab, g, "alive"), 3);
        suspicions += metric(&lab, g, "meshgate_member_suspicions_total", "");
        let log = std::fs::read_to_string(lab.log_path(g)).unwrap();
        assert!(!log.contains("member down"), "{log}");
    }
    let text = lab.metrics(0).unwrap();
    let rtt = meshgate::metrics::sum_samples(&text, "meshgate_member_rtt_seconds_sum", "")
        / meshgate::metrics::sum_samples(&text, "meshgate_member_rtt_seconds_count", "");
    eprintln!(
        "{secs} s at 10% loss and 100 ms one-way delay: no member declared dead; {suspicions} suspicions; mean smoothed RTT at gateway 1 {:.0} ms",
        rtt * 1e3
    );
    assert!(rtt > 0.18, "the relay delays both ways: RTT {rtt} s");
    all_pairs_reach(&lab, 3);

    // Every pair rekeyed over the same lossy, slow paths: `keys rotate`
    // moves the mesh to epoch 2, each gateway's 6 SAs are renegotiated
    // (exchanges lost on the way are retried) and the old ones retire.
    let (out, ok) = cli(&lab, 0, &["keys", "rotate"]);
    assert!(ok && out.contains("epoch 2 in force"), "{out}");
    let took = eventually(
        Duration::from_secs(60),
        "the mesh was not rekeyed onto epoch 2 under loss",
        || {
            (0..4).all(|g| {
                metric(&lab, g, "meshgate_key_epoch", "") == 2
                    && sas_of_epoch(&lab, g, 2) == 6
                    && sas_of_epoch(&lab, g, 1) == 0
            })
        },
    );
    eprintln!("at 10% loss and 100 ms delay, every pair rekeyed onto epoch 2 and the old SAs retired {took:?} after keys rotate");
    all_pairs_reach(&lab, 3);

    // A kill is still seen by every other member, over the same paths.
    lab.kill_gateway(3);
    let took = eventually(Duration::from_secs(10), "region-4's death not seen", || {
        (0..3).all(|g| members(&lab, g, "dead") == 1)
    });
    eprintln!("at 10% loss and 100 ms delay, a killed member was marked dead by all three others within {took:?} (polled every 50 ms)");
    // The target is 1.5 s; at 10% loss, with metrics polled every 50 ms
    // from a debug build on a loaded CI machine, asserted with 0.5 s of
    // margin (measured 0.71-1.14 s).
    assert!(took <= Duration::from_millis(2000), "{took:?}");
}

/// Runs `meshgate ARGS` in gateway `g`'s namespace; its output and success.
fn cli(lab: &Lab, g: usize, args: &[&str]) -> (String, bool) {
    let mut command = lab.regions[g]
        .appliance
        .command(&binary().to_string_lossy());
    command.args(args);
    // Changes go over the gateway's control socket; epoch orders are
    // signed with the mesh CA's key.
    if matches!(
        args,
        ["keys", ..] | ["cert", "revoke", ..] | ["policy", "reload", ..]
    ) {
        command.arg("--control").arg(lab.control_socket(g));
    }
    if matches!(
        args,
        ["keys", "rotate" | "revoke", ..] | ["cert", "revoke", ..]
    ) && !args.contains(&"--ca-key")
    {
        command.arg("--ca-key").arg(lab.ca_key_path());
    }
    let out = command.output().expect("running meshgate");
    (
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        out.status.success(),
    )
}

/// Waits until each of 3 gateways holds its two peers' SAs, both ways, of
/// epoch 1 (once any duplicate from a simultaneous start has retired, and
/// the metric has caught up).
fn four_sas_of_epoch_1_each(lab: &Lab) {
    eventually(
        Duration::from_secs(15),
        "not four SAs of epoch 1 each",
        || (0..3).all(|g| sas_of_epoch(lab, g, 1) == 4),
    );
}

fn sas_of_epoch(lab: &Lab, g: usize, epoch: u32) -> u64 {
    metric(
        lab,
        g,
        "meshgate_sas_by_epoch",
        &format!("epoch=\"{epoch}\""),
    )
}

#[test]
fn keys_rotate_and_revoke_reach_the_whole_mesh() {
    let lab = mesh_lab(3, "full-mesh", "cipher = \"aes128gcm16\"");
    four_sas_of_epoch_1_each(&lab);
    // A flow between regions 3 and 2 while region 1's operator rotates:
    // the rotation reaches them by gossip, and loses nothing on the way.
    let flow = echo_flow(&lab, 2, 1, 2000);
    std::thread::sleep(Duration::from_secs(1));
    let (out, ok) = cli(&lab, 0, &["keys", "rotate"]);
    assert!(ok && out.contains("epoch 2 in force"), "{out}");
    let took = eventually(
        Duration::from_secs(25),
        "the mesh did not move to epoch 2",
        || {
            (0..3).all(|g| {
                metric(&lab, g, "meshgate_key_epoch", "") == 2
                    && sas_of_epoch(&lab, g, 2) == 4
                    && sas_of_epoch(&lab, g, 1) == 0
            })
        },
    );
    eprintln!("rotated: every SA of the mesh on epoch 2, the old ones retired, after {took:?}");
    let p = flow.join().unwrap();
    assert_eq!(p.received, 2000, "a rotation is make-before-break");

    // Revoking the current epoch tears its SAs down at once everywhere and
    // moves the mesh on.
    let (out, ok) = cli(&lab, 1, &["keys", "revoke", "2"]);
    assert!(ok && out.contains("epoch 3 in force; revoked: 2"), "{out}");
    let took = eventually(
        Duration::from_secs(10),
        "the revocation did not reach the whole mesh",
        || {
            (0..3).all(|g| {
                // (Epoch-3 SAs replaced by a second exchange may still be
                // in their grace period: at least the four in use.)
                metric(&lab, g, "meshgate_key_epoch", "") == 3
                    && sas_of_epoch(&lab, g, 2) == 0
                    && sas_of_epoch(&lab, g, 3) >= 4
            })
        },
    );
    eprintln!(
        "revoked epoch 2: none of its SAs left anywhere, the mesh rekeyed on 3, after {took:?}"
    );
    all_pairs_reach(&lab, 3);

    let (out, ok) = cli(&lab, 2, &["keys", "revoke", "9"]);
    assert!(!ok && out.contains("not in use yet"), "{out}");

    // An order signed with any key but the CA's (here region 3's own
    // appliance key) is refused, and nothing moves.
    let appliance_key = lab
        .dir
        .join("certs")
        .join(format!("{}.key", lab.regions[2].gateway_id()));
    let key = appliance_key.display().to_string();
    let (out, ok) = cli(&lab, 2, &["keys", "rotate", "--ca-key", &key]);
    assert!(!ok && out.contains("not signed by the mesh CA"), "{out}");
    assert_eq!(metric(&lab, 2, "meshgate_key_epoch", ""), 3);

    // Signed away from the mesh: the state read on an appliance, the
    // order signed elsewhere from it, then applied on another appliance.
    let (state, ok) = cli(&lab, 0, &["keys", "show"]);
    assert!(
        ok && state.starts_with("serial 2 current 3 floor 1 revoked 2"),
        "{state}"
    );
    let (state_file, order_file) = (lab.dir.join("epochs.txt"), lab.dir.join("order.hex"));
    std::fs::write(&state_file, &state).unwrap();
    let out = std::process::Command::new(binary())
        .args(["keys", "rotate", "--ca-key"])
        .arg(lab.ca_key_path())
        .arg("--state")
        .arg(&state_file)
        .arg("--out")
        .arg(&order_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let order = order_file.display().to_string();
    let (out, ok) = cli(&lab, 1, &["keys", "apply", &order]);
    assert!(ok && out.contains("epoch 4 in force"), "{out}");
    eventually(
        Duration::from_secs(10),
        "the applied order did not spread",
        || (0..3).all(|g| metric(&lab, g, "meshgate_key_epoch", "") == 4),
    );
    // The same order again (a replay) changes nothing.
    let (out, ok) = cli(&lab, 2, &["keys", "apply", &order]);
    assert!(!ok && out.contains("is not newer"), "{out}");
}

/// `cert revoke`: region 3's certificate revoked through region 1's
/// control socket. Regions 1 and 2 cut region 3 off (its SAs go, its
/// connections are refused) while a flow between regions 1 and 2 loses
/// nothing; region 3's traffic no longer gets through.
#[test]
fn a_revoked_certificate_is_cut_off_in_the_lab() {
    let lab = mesh_lab(3, "full-mesh", "cipher = \"aes128gcm16\"");
    four_sas_of_epoch_1_each(&lab);
    let flow = echo_flow(&lab, 0, 1, 1000);
    std::thread::sleep(Duration::from_secs(1));
    let cert = lab
        .dir
        .join("certs")
        .join(format!("{}.pem", lab.regions[2].gateway_id()))
        .display()
        .to_string();
    let (out, ok) = cli(&lab, 0, &["cert", "revoke", &cert]);
    assert!(ok && out.contains("in force"), "{out}");
    let took = eventually(
        Duration::from_secs(10),
        "regions 1 and 2 did not cut region 3 off",
        || {
            (0..2).all(|g| {
                sas_of_epoch(&lab, g, 1) == 2
                    && metric(
                        &lab,
                        g,
                        "meshgate_signal_refused_total",
                        "reason=\"revoked\",what=\"certificate\"",
                    ) >= 1
            })
        },
    );
    eprintln!("a revoked certificate: cut off by both other gateways {took:?} after cert revoke");
    let p = flow.join().unwrap();
    assert_eq!(p.received, 1000, "the flow between regions 1 and 2");
    let cut = ping(
        &lab.regions[2].host,
        lab.regions[0].host_ip().into(),
        5,
        Duration::from_millis(100),
    )
    .unwrap();
    assert_eq!(cut.received, 0, "region 3 still reaches region 1");
    // Still cut off a few seconds on (its redials are refused).
    std::thread::sleep(Duration::from_secs(3));
    assert!((0..2).all(|g| sas_of_epoch(&lab, g, 1) == 2));
    let log = std::fs::read_to_string(lab.log_path(0)).unwrap_or_default();
    assert!(
        log.contains(&lab.regions[2].gateway_id()) && log.contains("is revoked by the mesh CA")
    );
}

#[test]
fn an_appliance_without_the_mesh_key_forms_no_sa() {
    let mut lab = mesh_lab_unstarted(3, "full-mesh", "cipher = \"aes128gcm16\"");
    let other = lab.dir.join("other-master.key");
    meshgate::keys::LocalKeys::generate(&other).unwrap();
    let cfg = lab.config_path(2);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &lab.master_key_path().display().to_string(),
        &other.display().to_string(),
    );
    std::fs::write(&cfg, text).unwrap();
    lab.start_gateways(binary()).unwrap();
    // Region 3 is a member (its certificate is good) but shares no key:
    // all three see each other, and only regions 1 and 2 form SAs.
    let out_sas = |g| metric(&lab, g, "meshgate_sa_info", "direction=\"out\"");
    eventually(Duration::from_secs(20), "members or SAs missing", || {
        (0..3).all(|g| members(&lab, g, "alive") == 2) && out_sas(0) == 1 && out_sas(1) == 1
    });
    eventually(
        Duration::from_secs(10),
        "no exchange with region-3 was refused",
        || {
            metric(
                &lab,
                0,
                "meshgate_signal_refused_total",
                "reason=\"authentication\"",
            ) >= 1
        },
    );
    // Its routes are in place (it is a member), so what is sent to it
    // reaches the data plane, which must drop it.
    eventually(Duration::from_secs(5), "no route to region-3", || {
        tunnel_routes(&lab.regions[0].appliance).contains("10.3.0.0/16")
    });
    assert_eq!(out_sas(0), 1, "an SA with region-2 only");
    assert_eq!(out_sas(2), 0, "region-3 forms none");
    let p = ping(
        &lab.regions[0].host,
        lab.regions[2].host_ip().into(),
        3,
        Duration::from_millis(10),
    )
    .unwrap();
    assert_eq!(p.received, 0);
    assert!(
        drops(&lab, 0, "no_sa") >= 3,
        "fail closed: dropped, not sent in the clear"
    );
    ping_ok(
        &lab.regions[0].host,
        lab.regions[1].host_ip().into(),
        3,
        "the keyed pair forwards",
    );
}

#[test]
fn the_policy_decides_which_pairs_are_keyed() {
    // Hub and spoke: region 1 is the hub; the spokes reach each other
    // through it, and no SA joins them directly.
    let lab = mesh_lab_unstarted(3, "hub-spoke", "cipher = \"aes128gcm16\"");
    let mut lab = lab;
    lab.start_gateways(binary()).unwrap();
    let out_sas = |lab: &Lab, g| metric(lab, g, "meshgate_sa_info", "direction=\"out\"");
    eventually(
        Duration::from_secs(20),
        "the hub is not keyed with both spokes",
        || (0..3).all(|g| members(&lab, g, "alive") == 2) && out_sas(&lab, 0) == 2,
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(out_sas(&lab, 1), 1, "spoke 2 is keyed with the hub only");
    assert_eq!(out_sas(&lab, 2), 1, "spoke 3 is keyed with the hub only");
    let (s2, s3) = (&lab.regions[1], &lab.regions[2]);
    ping_ok(
        &s2.host,
        s3.host_ip().into(),
        5,
        "spoke to spoke, through the hub",
    );
    let hub_out = metric(&lab, 0, "meshgate_peer_packets_total", "direction=\"out\"");
    assert!(hub_out >= 10, "the hub relayed both ways: {hub_out}");
}

/// `bytes` with a custom section appended: the same policy, another
/// content hash, so the gateway compiles it afresh (its cache is by hash).
fn with_custom_section(bytes: &[u8], payload: &str) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"meshgate-test";
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(payload.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb128(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// Samples of the heartbeat-gap histogram of gateway `g`: (upper bound,
/// cumulative count) per bucket.
fn beat_gaps(lab: &Lab, g: usize) -> Vec<(f64, u64)> {
    let text = lab.metrics(g).expect("scraping metrics");
    text.lines()
        .filter_map(|l| l.strip_prefix("meshgate_member_heartbeat_gap_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect()
}

/// The policy engine runs on its own thread: reloads of modules compiled
/// afresh each time (a new hash, so not from the cache), one gateway after
/// another while the mesh runs, leave the heartbeats between the members
/// flowing. Reports the largest gap between heartbeats received during
/// them (the bucket of `meshgate_member_heartbeat_gap_seconds` it fell in);
/// target: under 200 ms, no suspicion, no member declared down. Each
/// gateway runs its policy from a file of its own (a reload loads only the
/// configured file); each new module is written there and reloaded through
/// the control socket, and the file watch reloads it too: whichever comes
/// first compiles it, the other finds it cached.
#[test]
fn policy_reloads_compiled_afresh_do_not_stall_the_heartbeats() {
    let base = meshgate::policy::builtin("full-mesh").unwrap();
    let mut lab = mesh_lab_unstarted(3, "full-mesh", "cipher = \"aes128gcm16\"");
    let policy_file = |lab: &Lab, g: usize| lab.dir.join(format!("policy-{}.wasm", g + 1));
    for g in 0..3 {
        std::fs::write(policy_file(&lab, g), base).unwrap();
        let cfg = lab.config_path(g);
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "module = \"full-mesh\"",
            &format!("module = \"{}\"", policy_file(&lab, g).display()),
        );
        std::fs::write(&cfg, text).unwrap();
    }
    lab.start_gateways(binary()).unwrap();
    wait_meshed(&lab, &[0, 1, 2], Duration::from_secs(20));
    let compiled_in_log = |g: usize| -> Vec<f64> {
        // "... compile 93.1 ms (compiled), evaluate ..."
        std::fs::read_to_string(lab.log_path(g))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" ms (compiled)"))
            .filter_map(|l| {
                l.split("compile ")
                    .nth(1)?
                    .split(" ms")
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    };
    let compiled_before: Vec<usize> = (0..3).map(|g| compiled_in_log(g).len()).collect();
    // A second of heartbeats first, so each gateway has samples.
    std::thread::sleep(Duration::from_secs(2));
    let before: Vec<Vec<(f64, u64)>> = (0..3).map(|g| beat_gaps(&lab, g)).collect();
    let suspicions = |g| metric(&lab, g, "meshgate_member_suspicions_total", "");
    let suspected_before: Vec<u64> = (0..3).map(suspicions).collect();
    let mut compiles = Vec::new();
    for round in 0..4 {
        for g in 0..3 {
            let path = policy_file(&lab, g);
            let fresh = path.with_extension("new");
            std::fs::write(&fresh, with_custom_section(base, &format!("{round}.{g}"))).unwrap();
            std::fs::rename(&fresh, &path).unwrap();
            let report =
                meshgate::lab::probe::control(&lab.control_socket(g), "/policy/reload", "")
                    .unwrap_or_else(|e| panic!("reload {round} at gateway {g}: {e}"));
            assert!(report.contains("in force"), "{report}");
        }
    }
    for g in 0..3 {
        let times = compiled_in_log(g);
        assert_eq!(
            times.len() - compiled_before[g],
            4,
            "gateway {g}: not each module compiled once: {times:?}"
        );
        compiles.extend_from_slice(&times[compiled_before[g]..]);
    }
    // The samples of the last second land at the next observation.
    std::thread::sleep(Duration::from_millis(1500));
    let mut largest = 0.0f64;
    for g in 0..3 {
        let after = beat_gaps(&lab, g);
        let count =
            |h: &[(f64, u64)], le: f64| h.iter().find(|(b, _)| *b == le).map_or(0, |(_, c)| *c);
        let total = count(&after, f64::INFINITY) - count(&before[g], f64::INFINITY);
        assert!(
            total >= 10,
            "gateway {g}: only {total} heartbeat-gap samples"
        );
        // The smallest bucket that holds every sample of the window.
        let bound = after
            .iter()
            .find(|(le, c)| c - count(&before[g], *le) == total)
            .map_or(f64::INFINITY, |(le, _)| *le);
        eprintln!("gateway {g}: {total} samples, largest heartbeat gap <= {bound} s");
        largest = largest.max(bound);
        assert_eq!(
            suspicions(g),
            suspected_before[g],
            "gateway {g} suspected a member"
        );
        assert_eq!(
            members(&lab, g, "dead"),
            0,
            "gateway {g} declared a member down"
        );
    }
    compiles.sort_by(f64::total_cmp);
    eprintln!(
        "{} reloads compiled afresh ({:.0}-{:.0} ms each, median {:.0} ms); largest heartbeat gap during them <= {largest} s",
        compiles.len(),
        compiles[0],
        compiles[compiles.len() - 1],
        compiles[compiles.len() / 2],
    );
    assert!(
        largest <= 0.2,
        "a heartbeat gap over 200 ms: <= {largest} s"
    );
}
