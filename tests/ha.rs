//! High availability in the lab with zones: per region two appliances
//! (zones a and b, one redundancy group) behind the VPC's router, whose
//! route table the active one claims through the lab's cloud backend.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{check, metric, ping_ok, tag};
use meshgate::lab::Lab;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_meshgate"))
}

/// A started two-region lab with zones, the mesh formed and every route
/// table claimed.
fn zoned_lab() -> Lab {
    check();
    let mut lab = Lab::build_with(2, &tag(), 2).expect("building the lab");
    lab.write_mesh_configs().expect("writing configs");
    lab.start_gateways(binary()).expect("starting gateways");
    lab.wait_mesh(Duration::from_secs(30))
        .expect("the mesh forms");
    for r in 0..2 {
        let other = lab.regions[1 - r].prefixes()[0].clone();
        lab.wait_route(r, &other, Duration::from_secs(15))
            .expect("the active appliance claims its route table");
    }
    lab
}

/// The claimer of region `r`'s route to the other region's IPv4 and IPv6
/// prefixes (both must point at the same appliance).
fn claimer(lab: &Lab, r: usize) -> usize {
    let [v4, v6] = lab.regions[1 - r].prefixes();
    let a = lab.route_target(r, &v4).unwrap().expect("an IPv4 route");
    let b = lab.route_target(r, &v6).unwrap().expect("an IPv6 route");
    assert_eq!(a, b, "both families point at one appliance");
    a
}

/// One member of each pair claims; every member agrees who is active;
/// the standby's prefixes (its own VPC's) are not routed into the tunnel;
/// killed actives hand routes and traffic to their partners, and a
/// restarted appliance comes back as the standby without claiming.
#[test]
fn a_killed_active_appliance_hands_its_routes_and_traffic_to_its_partner() {
    let mut lab = zoned_lab();
    for r in 0..2 {
        let active = claimer(&lab, r);
        let id = lab.gateway_id(active);
        for g in 0..lab.gateway_count() {
            assert_eq!(
                metric(
                    &lab,
                    g,
                    "meshgate_group_active",
                    &format!("group=\"region-{}\",member=\"{id}\"", r + 1)
                ),
                1,
                "{} agrees that {id} is active",
                lab.gateway_id(g)
            );
        }
        for g in [2 * r, 2 * r + 1] {
            let claimed = metric(&lab, g, "meshgate_cloud_routes", "state=\"claimed\"");
            assert_eq!(
                claimed,
                if g == active { 2 } else { 0 },
                "{}",
                lab.gateway_id(g)
            );
        }
    }
    // `meshgate status` on region 1's standby: who is active in each group.
    let standby1 = 1 - claimer(&lab, 0);
    let out = lab
        .gateway_ns(standby1)
        .command(env!("CARGO_BIN_EXE_meshgate"))
        .args(["status"])
        .output()
        .expect("meshgate status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for r in 0..2 {
        let active = lab.gateway_id(claimer(&lab, r));
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("region-{}", r + 1)) && l.contains(&active)),
            "{text}"
        );
    }
    assert!(text.contains("cloud routes: no routes claimed"), "{text}");
    let out = lab
        .gateway_ns(claimer(&lab, 0))
        .command(env!("CARGO_BIN_EXE_meshgate"))
        .args(["status"])
        .output()
        .expect("meshgate status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2 routes claimed, 2 pointing here: converged"),
        "{text}"
    );
    for v6 in [false, true] {
        let dst = if v6 {
            lab.regions[1].host_ip6().into()
        } else {
            lab.regions[1].host_ip().into()
        };
        ping_ok(
            &lab.regions[0].host,
            dst,
            5,
            "host-1 to host-2 through the active appliances",
        );
    }

    let runs = lab.failover_runs(binary(), 2).expect("failover runs");
    for (i, run) in runs.iter().enumerate() {
        eprintln!("failover run {}: {run:?}", i + 1);
        assert!(run.restored, "run {}: the flow came back: {run:?}", i + 1);
        assert!(
            run.took_over.is_some() && run.took_over.as_deref() != Some(run.killed.as_str()),
            "run {}: the partner took over: {run:?}",
            i + 1
        );
    }
    assert_ne!(
        runs[0].killed, runs[1].killed,
        "the second kill hit the new active one"
    );
    // The appliance restarted by the last run stays the standby: it does
    // not claim after its start-up wait.
    std::thread::sleep(Duration::from_secs(3));
    let active = claimer(&lab, 1);
    assert_eq!(Some(lab.gateway_id(active)), runs[1].took_over);
    let standby = if active.is_multiple_of(2) {
        active + 1
    } else {
        active - 1
    };
    assert_eq!(
        metric(
            &lab,
            standby,
            "meshgate_cloud_route_claims_total",
            "change=\"claim\""
        ),
        0,
        "the restarted appliance claims nothing"
    );
    assert!(metric(&lab, 0, "meshgate_failovers_total", "group=\"region-2\"") >= 2);
}

/// Cuts the underlay between the two appliances of region 2 alone (each
/// still reaches everyone else), or mends it.
fn cut_pair(lab: &Lab, cut: bool) {
    let op = if cut { "-I" } else { "-D" };
    let a = lab.gateway_ns(2);
    let b_ip = lab.gateway_underlay_ip(3).to_string();
    for (chain, dir) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
        let ok = a
            .command("iptables")
            .args([op, chain, dir, &b_ip, "-j", "DROP"])
            .status()
            .expect("iptables must be installed")
            .success();
        assert!(ok, "iptables {op} {chain}");
    }
}

/// A partition between the two members of a pair, both alive: the others
/// still hear both, so neither is declared down, the election does not
/// move, nobody claims back and forth, and traffic is still delivered.
#[test]
fn a_partition_between_the_two_appliances_of_a_pair_moves_no_route() {
    let lab = zoned_lab();
    let active = claimer(&lab, 1);
    let claims: Vec<u64> = (0..lab.gateway_count())
        .map(|g| {
            metric(
                &lab,
                g,
                "meshgate_cloud_route_claims_total",
                "change=\"claim\"",
            )
        })
        .collect();
    cut_pair(&lab, true);
    let flow = common::echo_flow(&lab, 0, 1, 1600);
    let stats = flow.join().expect("the flow");
    cut_pair(&lab, false);
    assert_eq!(
        claimer(&lab, 1),
        active,
        "the route table still points at the active one"
    );
    let after: Vec<u64> = (0..lab.gateway_count())
        .map(|g| {
            metric(
                &lab,
                g,
                "meshgate_cloud_route_claims_total",
                "change=\"claim\"",
            )
        })
        .collect();
    assert_eq!(after, claims, "no claim was made during the partition");
    assert_eq!(
        stats.received, stats.sent,
        "8 s of traffic across the partitioned pair's region lost nothing"
    );
    for g in 0..lab.gateway_count() {
        assert_eq!(
            metric(&lab, g, "meshgate_members", "state=\"alive\""),
            3,
            "{} sees every other member alive",
            lab.gateway_id(g)
        );
    }
}

/// The same failover with moto as the lab's AWS: the lab creates the VPCs,
/// route tables (tagged for the mesh and group) and interfaces in moto;
/// the gateways find their tables by tags and claim through the official
/// SDK; each VPC router follows its moto route table. A kill moves the
/// lab's traffic through the SDK.
#[cfg(feature = "aws")]
#[test]
fn through_the_aws_sdk_a_failover_moves_the_labs_traffic() {
    check();
    let mut lab = Lab::build_with(2, &tag(), 2).expect("building the lab");
    lab.start_moto()
        .expect("moto as the lab's AWS (tests/run.sh installs it)");
    lab.write_mesh_configs().expect("writing configs");
    let cfg = std::fs::read_to_string(lab.config_path(0)).unwrap();
    assert!(
        cfg.contains("backend = \"aws\"") && cfg.contains("mesh = \"lab-"),
        "{cfg}"
    );
    lab.start_gateways(binary()).expect("starting gateways");
    lab.wait_mesh(Duration::from_secs(30))
        .expect("the mesh forms");
    for r in 0..2 {
        let other = lab.regions[1 - r].prefixes()[0].clone();
        lab.wait_route(r, &other, Duration::from_secs(20))
            .expect("the active appliance claims its route table in moto");
    }
    let active = claimer(&lab, 1);
    let calls = |g: usize, api: &str| {
        metric(
            &lab,
            g,
            "meshgate_cloud_calls_total",
            &format!("api=\"{api}\",outcome=\"ok\""),
        )
    };
    assert!(
        calls(active, "CreateRoute") >= 2,
        "the first claim created the routes through the SDK"
    );
    // Region 2's name in the private zone follows its active appliance.
    let record_follows = |lab: &Lab| {
        let want = lab.gateway_underlay_ip(claimer(lab, 1)).to_string();
        common::eventually(
            Duration::from_secs(10),
            "region-2's record at its active appliance",
            || dns_record(lab, 1) == Some(vec![want.clone()]),
        )
    };
    record_follows(&lab);
    let runs = lab.failover_runs(binary(), 2).expect("failover runs");
    for run in &runs {
        eprintln!("failover through moto: {run:?}");
        assert!(run.restored && run.took_over.is_some(), "{run:?}");
    }
    let took = record_follows(&lab);
    eprintln!("region-2's DNS record at the new active appliance {took:?} after the routes moved");
    let new_active = claimer(&lab, 1);
    assert!(
        metric(
            &lab,
            new_active,
            "meshgate_cloud_calls_total",
            "api=\"ChangeResourceRecordSets\",outcome=\"ok\""
        ) >= 1,
        "the new active appliance wrote the record"
    );
}

/// Region `r`'s record (`region-N.<mesh>.internal`, A) in the lab's
/// private hosted zone, as Route 53 (moto) describes it.
fn dns_record(lab: &Lab, r: usize) -> Option<Vec<String>> {
    let moto = lab.moto.as_ref().expect("the lab's AWS");
    let (url, zone) = (moto.url.clone(), moto.dns_zone.clone());
    let name = format!(
        "{}.{}",
        lab.regions[r].gateway_id(),
        meshgate::lab::moto::dns_domain(lab)
    );
    lab.underlay
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let r53 = meshgate_aws::Route53::connect(&meshgate_aws::Settings {
                    region: "us-east-1".into(),
                    endpoint_url: Some(url),
                    call_timeout: Duration::from_secs(5),
                    static_credentials: Some(("testing", "testing")),
                    assume_role: None,
                })
                .await;
                r53.record(&zone, &name, false)
                    .await
                    .expect("reading the record")
            })
        })
        .unwrap()
}

/// `mesh-with-leaves` with real leaf VPCs: a leaf's traffic to another
/// region's leaf crosses leaf, its region's active edge, the other
/// region's active edge, and the other leaf; a leaf reaches its own
/// region's VPC through its edge, which the VPC's route table points at.
#[test]
fn leaf_vpcs_reach_each_other_through_their_regions_edges() {
    check();
    let mut lab = Lab::build_with(2, &tag(), 2).expect("building the lab");
    lab.add_leaves(1).expect("adding leaves");
    lab.policy = "mesh-with-leaves".into();
    lab.write_mesh_configs().expect("writing configs");
    lab.start_gateways(binary()).expect("starting gateways");
    lab.wait_mesh(Duration::from_secs(30))
        .expect("the mesh forms");
    for r in 0..2 {
        let leaf_prefix = lab.leaves[1 - r].prefixes()[0].clone();
        lab.wait_route(r, &leaf_prefix, Duration::from_secs(15))
            .expect("the active edge claims the other region's leaf");
    }
    assert_eq!(lab.gateway_id(lab.gateway_count() - 2), "region-1-leaf1");
    let before = lab.packet_counts();
    ping_ok(
        &lab.leaves[0].host,
        lab.leaves[1].host_ip().into(),
        20,
        "leaf 1 to leaf 2",
    );
    let after = lab.packet_counts();
    let carried: Vec<String> = (0..lab.gateway_count())
        .filter(|&g| after[g].0 - before[g].0 >= 20 && after[g].1 - before[g].1 >= 20)
        .map(|g| lab.gateway_id(g))
        .collect();
    let (e1, e2) = (
        lab.gateway_id(claimer(&lab, 0)),
        lab.gateway_id(claimer(&lab, 1)),
    );
    let mut expected = vec![
        e1,
        e2,
        "region-1-leaf1".to_string(),
        "region-2-leaf1".to_string(),
    ];
    expected.sort();
    let mut carried_sorted = carried.clone();
    carried_sorted.sort();
    assert_eq!(
        carried_sorted, expected,
        "leaf, active edge, active edge, leaf: {carried:?}"
    );
    // A leaf and its own region's VPC host, through the edge.
    ping_ok(
        &lab.leaves[0].host,
        lab.regions[0].host_ip().into(),
        5,
        "leaf 1 to host-1",
    );
    ping_ok(
        &lab.regions[1].host,
        lab.leaves[0].host_ip6().into(),
        5,
        "host-2 to leaf 1 over IPv6",
    );
}

/// Two underlays: every appliance on `internet` and `dx`, running the
/// example latency policy (built from `examples/latency-policy` with the
/// SDK), which prefers dx. ESP really crosses dx; cutting region 2's dx
/// link under a 10 ms flow moves the tunnel to internet within the
/// failover bound (probes find the path down after 600 ms), and back to
/// dx once it has healed and held for the policy's hold-down, losing
/// nothing on the way back (the SAs stay; only the destination changes).
/// A probe that no SA of the receiver keys is refused and not answered.
#[test]
fn a_cut_dx_underlay_moves_the_tunnel_to_internet_and_back_after_the_hold_down() {
    check();
    let mut lab = Lab::build(2, &tag()).expect("building the lab");
    lab.add_dx_underlay().expect("the dx underlay");
    lab.policy = concat!(env!("OUT_DIR"), "/latency-policy.wasm").into();
    lab.policy_params = vec![("dx_hold_down_secs".into(), "2".into())];
    lab.write_mesh_configs().expect("writing configs");
    lab.start_gateways(binary()).expect("starting gateways");
    lab.wait_mesh(Duration::from_secs(30))
        .expect("the mesh forms");
    let (a, b) = (lab.gateway_id(0), lab.gateway_id(1));
    common::eventually(Duration::from_secs(10), "both send over dx", || {
        lab.peer_underlay(0, &b).unwrap().as_deref() == Some("dx")
            && lab.peer_underlay(1, &a).unwrap().as_deref() == Some("dx")
    });
    // The ESP of a flow leaves region 1's appliance on its dx interface.
    let before = lab.underlay_tx_packets(0).unwrap();
    ping_ok(
        &lab.regions[0].host,
        lab.regions[1].host_ip().into(),
        200,
        "over dx",
    );
    let after = lab.underlay_tx_packets(0).unwrap();
    let (ul, dx) = (after.0 - before.0, after.1 - before.1);
    assert!(
        dx >= 200,
        "200 echoes cross dx: {dx} packets on dx0, {ul} on ul0"
    );
    assert!(ul < 100, "only signalling and probes on ul0: {ul}");

    let runs = lab
        .underlay_cut_runs(1, Duration::from_secs(2))
        .expect("cutting dx");
    let r = &runs[0];
    eprintln!("dx cut: {r:?}");
    assert!(r.outage_ms <= 1000.0, "{r:?}");
    let moved = r.cut_to_internet_ms.expect("moved to internet");
    assert!(moved <= 1000.0, "{r:?}");
    let back = r.heal_to_dx_ms.expect("back on dx after healing");
    assert!(back >= 2000.0, "held down for 2 s first: {r:?}");
    assert_eq!(r.lost_after_heal, 0, "make-before-break: {r:?}");
    for g in 0..2 {
        let down = metric(
            &lab,
            g,
            "meshgate_underlay_changes_total",
            "state=\"down\",underlay=\"dx\"",
        );
        assert!(down >= 1, "{} saw dx go down", lab.gateway_id(g));
        assert_eq!(
            metric(&lab, g, "meshgate_underlay_up", "underlay=\"internet\""),
            1,
            "internet stayed up"
        );
    }

    // A probe on an SA the receiver does not hold, and one with a forged
    // tag on a real SPI-sized guess: refused, counted, never answered.
    let forged = |spi: u32| {
        let mut p = b"\0\0\0\0MGU1\x01\x02dx".to_vec();
        p.extend_from_slice(&spi.to_be_bytes());
        p.extend_from_slice(&7u64.to_be_bytes());
        p.extend_from_slice(&[0xa5; 16]);
        p
    };
    let target: std::net::SocketAddr = format!("{}:4500", lab.gateway_dx_ip(1)).parse().unwrap();
    let refused = |g| {
        metric(
            &lab,
            g,
            "meshgate_underlay_probes_received_total",
            "outcome=\"no such SA\"",
        )
    };
    let before = refused(1);
    common::inject(
        &lab.regions[0].appliance,
        target,
        vec![forged(0xdead_beef); 5],
    );
    common::eventually(Duration::from_secs(5), "forged probes counted", || {
        refused(1) >= before + 5
    });
    assert_eq!(
        lab.peer_underlay(0, &b).unwrap().as_deref(),
        Some("dx"),
        "nothing moved"
    );
}

/// Seeds from EC2 tags: every appliance is a tagged instance in the lab's
/// AWS (moto), region 2's in a second account reached through STS
/// AssumeRole; the configs list no seeds. The mesh forms, and an
/// appliance started last (region 2's zone b, in the second account) is
/// known alive to every member within 5 s of its start.
#[test]
fn gateways_find_each_other_by_ec2_tags_across_regions_and_accounts() {
    check();
    let mut lab = Lab::build_with(2, &tag(), 2).expect("building the lab");
    lab.start_moto()
        .expect("moto as the lab's AWS (tests/run.sh installs it)");
    lab.register_instances().expect("tagged instances in moto");
    lab.write_mesh_configs().expect("writing configs");
    let cfg = std::fs::read_to_string(lab.config_path(0)).unwrap();
    assert!(
        cfg.contains("seeds = []")
            && cfg.contains("[signal.discovery]")
            && cfg.contains("role/meshgate-discovery"),
        "{cfg}"
    );
    let n = lab.gateway_count();
    let first: Vec<usize> = (0..n - 1).collect();
    for &g in &first {
        lab.start_gateway(binary(), g).expect("starting a gateway");
    }
    common::wait_meshed(&lab, &first, Duration::from_secs(30));
    // Hostile tags: an instance whose meshgate:id is no member id (skipped
    // and counted), and one that claims region-1a's id at another address
    // (a claim, not a grant: dialing it finds no member there, and the
    // real region-1a is still reached).
    let (url, mesh) = (
        lab.moto.as_ref().unwrap().url.clone(),
        meshgate::lab::moto::mesh_name(&lab),
    );
    lab.underlay
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let ec2 = meshgate_aws::Ec2::connect(&meshgate_aws::Settings {
                    region: meshgate::lab::moto::aws_region(0),
                    endpoint_url: Some(url),
                    call_timeout: Duration::from_secs(5),
                    static_credentials: Some(("testing", "testing")),
                    assume_role: None,
                })
                .await;
                let tags = |id: &str| {
                    vec![
                        ("meshgate:mesh".to_string(), mesh.clone()),
                        ("meshgate:id".to_string(), id.to_string()),
                    ]
                };
                ec2.run_lab_instances(
                    "198.18.0.0/16",
                    "198.18.0.0/24",
                    &format!("{}a", meshgate::lab::moto::aws_region(0)),
                    &[
                        ("198.18.0.77".into(), tags("not a member!")),
                        ("198.18.0.78".into(), tags("region-1a")),
                    ],
                )
                .await
                .expect("hostile instances in moto")
            })
        })
        .unwrap();
    lab.start_gateway(binary(), n - 1)
        .expect("starting the newcomer");
    let took = common::eventually(Duration::from_secs(15), "the newcomer known to all", || {
        (0..n).all(|g| metric(&lab, g, "meshgate_members", "state=\"alive\"") == (n - 1) as u64)
    });
    eprintln!("a new appliance known alive to all {took:?} after its start");
    assert!(took <= Duration::from_secs(5), "{took:?}");
    let log = std::fs::read_to_string(lab.log_path(n - 1)).unwrap_or_default();
    assert!(!log.contains("discovery (ec2-tags) failed"), "{log}");
    assert!(
        log.contains("has no valid meshgate:id tag; skipped"),
        "{log}"
    );
    assert!(metric(&lab, n - 1, "meshgate_discovery_skipped_total", "") >= 1);
    assert!(
        metric(
            &lab,
            n - 1,
            "meshgate_cloud_calls_total",
            "api=\"DescribeInstances\",outcome=\"ok\""
        ) >= 4,
        "one call per region and account"
    );

    // What discovery itself finds, asked as region-1a: every other
    // appliance; without the role, only those of its own account.
    let config = meshgate::config::Config::load(&lab.config_path(0)).unwrap();
    let d = config.signal.unwrap().discovery.unwrap();
    let ask = |d: meshgate::config::TagDiscovery| {
        let me = lab.gateway_id(0);
        lab.underlay
            .run(move || {
                use meshgate::signal::discovery::Discovery;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
                std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
                let tags = meshgate::cloud::discovery::Ec2Tags::new(d, &me, Vec::new(), 4433);
                rt.block_on(tags.discover())
            })
            .unwrap()
            .unwrap()
    };
    let all: Vec<String> = ask(d.clone()).into_iter().map(|s| s.0).collect();
    let others: Vec<String> = (1..n).map(|g| lab.gateway_id(g)).collect();
    assert_eq!(all, others, "every other appliance, both accounts");
    let own_account = meshgate::config::TagDiscovery {
        roles: Vec::new(),
        ..d
    };
    let found: Vec<String> = ask(own_account).into_iter().map(|s| s.0).collect();
    assert_eq!(
        found,
        [lab.gateway_id(1)],
        "region 2 is in the second account"
    );
}

/// How many series Prometheus answers `q` with (0 if it cannot answer).
fn prometheus_count(lab: &Lab, q: &str) -> usize {
    let encoded: String = q
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = lab
        .prometheus_get(&format!("/api/v1/query?query={encoded}"))
        .unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()["data"]["result"]
        .as_array()
        .map_or(0, |r| r.len())
}

/// Prometheus as users run it: the Debian package's server on the lab's
/// management network scrapes every gateway each second with the
/// project's alerting rules loaded; through its HTTP API every target is
/// up, the key series are there for every gateway, the rules loaded
/// healthy, and a killed gateway's target goes down.
#[test]
fn a_real_prometheus_scrapes_every_gateway_and_loads_the_rules() {
    check();
    let mut lab = Lab::build_with(2, &tag(), 2).expect("building the lab");
    lab.add_monitoring().expect("the management network");
    lab.write_mesh_configs().expect("writing configs");
    lab.start_gateways(binary()).expect("starting gateways");
    lab.wait_mesh(Duration::from_secs(30))
        .expect("the mesh forms");
    let rules =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/meshgate-rules.yml");
    lab.start_prometheus(&rules).expect("starting prometheus");
    let n = lab.gateway_count();
    common::eventually(
        Duration::from_secs(30),
        "every target up in Prometheus",
        || prometheus_count(&lab, "up{job=\"meshgate\"} == 1") == n,
    );
    for series in [
        "meshgate_build_info",
        "meshgate_members{state=\"alive\"}",
        "meshgate_sa_info",
        "meshgate_peer_packets_total",
        "meshgate_group_active",
        "meshgate_underlay_up",
        "meshgate_peer_underlay",
    ] {
        let per_gateway = format!("count by (instance) ({series})");
        common::eventually(
            Duration::from_secs(10),
            &format!("{series} from every gateway"),
            || prometheus_count(&lab, &per_gateway) == n,
        );
    }
    let claimed = prometheus_count(&lab, "meshgate_cloud_routes{state=\"claimed\"} > 0");
    assert_eq!(claimed, 2, "one active appliance per region claims");
    let rules: serde_json::Value =
        serde_json::from_str(&lab.prometheus_get("/api/v1/rules").unwrap()).unwrap();
    let group = &rules["data"]["groups"][0];
    assert_eq!(group["name"], "meshgate", "{rules}");
    let loaded = group["rules"].as_array().unwrap();
    assert_eq!(loaded.len(), 9);
    assert!(loaded.iter().all(|r| r["health"] == "ok"), "{rules}");

    lab.kill_gateway(n - 1);
    common::eventually(
        Duration::from_secs(15),
        "the killed gateway's target down",
        || prometheus_count(&lab, "up{job=\"meshgate\"} == 0") == 1,
    );
}

/// Waits for `cond`; panics with the gateways' logs if not `within`.
fn eventually_or_logs(
    lab: &Lab,
    within: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let start = std::time::Instant::now();
    while !cond() {
        if start.elapsed() > within {
            for g in 0..lab.gateway_count() {
                let log = std::fs::read_to_string(lab.log_path(g)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!(
                    "--- gateway {g} ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            panic!("{what} (waited {within:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// SAs of `epoch` at gateway `g`.
fn sas(lab: &Lab, g: usize, epoch: u32) -> u64 {
    metric(
        lab,
        g,
        "meshgate_sas_by_epoch",
        &format!("epoch=\"{epoch}\""),
    )
}

/// Each region's host pings the other's.
fn hosts_reach(lab: &Lab, what: &str) {
    for r in 0..2 {
        let to = lab.regions[1 - r].host_ip();
        ping_ok(&lab.regions[r].host, to.into(), 3, what);
    }
}

/// The mesh's epoch keys as KMS data keys in the lab's AWS, found by tags
/// as on AWS: the gateways decrypt epoch 1's at start and key every pair;
/// `keys rotate --kms-key` makes epoch 2's data key, whose ciphertext
/// alone reaches every member with the order, and the mesh moves to it.
/// When KMS refuses (the key disabled; moto does not enforce key state,
/// so a proxy in front of it answers as KMS would), the next epoch forms
/// no SA and says why, the traffic stays on the SAs already keyed, and
/// the epoch keys itself once KMS decrypts again. A gateway whose KMS
/// refuses at start does not start, naming the key and KMS's reason.
#[test]
fn the_mesh_keys_itself_from_kms_and_fails_closed_when_kms_refuses() {
    use common::faults::{Fault, FaultProxy};
    check();
    let mut lab = Lab::build_with(2, &tag(), 2).expect("building the lab");
    lab.start_moto()
        .expect("moto as the lab's AWS (tests/run.sh installs it)");
    lab.register_instances().expect("tagged instances in moto");
    lab.use_kms()
        .expect("a KMS key and epoch 1's data key in moto");
    // The gateways reach KMS through a proxy beside moto.
    let moto_addr =
        std::net::SocketAddr::from((meshgate::lab::moto::MOTO_IP, meshgate::lab::moto::MOTO_PORT));
    let bind = format!(
        "{}:{}",
        meshgate::lab::moto::MOTO_IP,
        meshgate::lab::moto::MOTO_PORT + 1
    );
    let proxy = lab
        .underlay
        .run(move || FaultProxy::start_at(&bind, moto_addr))
        .unwrap();
    if let Some(k) = lab.kms.as_mut() {
        k.url = proxy.url.clone();
    }
    lab.write_mesh_configs().expect("writing configs");
    let cfg = std::fs::read_to_string(lab.config_path(0)).unwrap();
    assert!(
        cfg.contains("provider = \"kms\"") && !cfg.contains("master_key"),
        "{cfg}"
    );
    let wrapped = std::fs::read_to_string(lab.dir.join("epoch-1.kms")).unwrap();
    assert!(wrapped.trim().len() >= 64, "a ciphertext, hex: {wrapped}");
    let n = lab.gateway_count();
    let all: Vec<usize> = (0..n).collect();
    for g in 0..n {
        lab.start_gateway(binary(), g).expect("starting a gateway");
    }
    common::wait_meshed(&lab, &all, Duration::from_secs(30));
    for r in 0..2 {
        let other = lab.regions[1 - r].prefixes()[0].clone();
        lab.wait_route(r, &other, Duration::from_secs(20))
            .expect("the active appliance claims its route table in moto");
    }
    hosts_reach(&lab, "keyed from KMS");

    let rotate = |lab: &Lab| {
        let out = lab
            .gateway_ns(0)
            .command(&binary().to_string_lossy())
            .args(["keys", "rotate", "--ca-key"])
            .arg(lab.ca_key_path())
            .arg("--control")
            .arg(lab.control_socket(0))
            .args(lab.kms_args())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .output()
            .expect("running meshgate");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        text
    };
    let out = rotate(&lab);
    assert!(out.contains("the KMS data key of epoch 2 taken"), "{out}");
    let took = eventually_or_logs(
        &lab,
        Duration::from_secs(30),
        "every member keyed on epoch 2",
        || all.iter().all(|&g| sas(&lab, g, 2) >= 2 * (n as u64 - 1)),
    );
    eprintln!(
        "rotated to epoch 2 (a KMS data key): every pair keyed on it {took:?} after keys rotate"
    );
    hosts_reach(&lab, "on epoch 2");

    // KMS refuses from now on: epoch 3 forms no SA, and says why.
    proxy.always("Decrypt", Some(Fault::Code(400, "DisabledException")));
    let out = rotate(&lab);
    assert!(out.contains("epoch 3"), "{out}");
    eventually_or_logs(
        &lab,
        Duration::from_secs(20),
        "every member refusing epoch 3's key",
        || {
            all.iter()
                .all(|&g| metric(&lab, g, "meshgate_kms_epoch_keys", "state=\"refused\"") >= 1)
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    for &g in &all {
        assert_eq!(
            sas(&lab, g, 3),
            0,
            "gateway {g} formed an SA of epoch 3 without its key"
        );
        let log = std::fs::read_to_string(lab.log_path(g)).unwrap_or_default();
        assert!(log.contains("DisabledException"), "gateway {g}: {log}");
    }
    hosts_reach(&lab, "on the SAs already keyed while KMS refuses");

    // A gateway started while KMS refuses does not start, and says why.
    lab.stop_gateway(n - 1);
    lab.start_gateway(binary(), n - 1).expect("spawning");
    let e = lab
        .wait_ready(n - 1, Duration::from_secs(15))
        .expect_err("no start without its epoch key");
    let e = format!("{e:#}");
    assert!(
        e.contains("kms_key") && e.contains("DisabledException"),
        "{e}"
    );

    // KMS decrypts again: epoch 3 keys itself, the restarted gateway too.
    proxy.always("Decrypt", None);
    lab.start_gateway(binary(), n - 1).expect("restarting");
    let took = eventually_or_logs(
        &lab,
        Duration::from_secs(40),
        "every member keyed on epoch 3",
        || all.iter().all(|&g| sas(&lab, g, 3) >= 2 * (n as u64 - 1)),
    );
    eprintln!("KMS decrypting again: every pair keyed on epoch 3 {took:?} later");
    hosts_reach(&lab, "on epoch 3");
}
