//! `meshgate lab`, the command: build, start, probe every pair,
//! summarise (`report`), clean up.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use super::probe::{ping, tcp_transfer};
use super::report::{json_summary, path_of, print_summary, PairResult};
use super::{catch_signals, check_interrupted, default_tag, Lab};
use crate::netns::check_privileges;

/// What `meshgate lab` was asked to do.
#[derive(Clone, Debug)]
pub struct LabOptions {
    pub regions: usize,
    pub pings: u32,
    pub transfer: Duration,
    pub keep: bool,
    pub binary: PathBuf,
    /// The built-in policy every gateway runs.
    pub policy: String,
    /// The topology the members are placed for, if not `policy`'s.
    pub placement: Option<String>,
    /// Configured peers and keys rather than membership and negotiation.
    pub static_keys: bool,
    /// Appliances per region: 1, or 2 (an active/passive pair in zones a
    /// and b behind the VPC's router).
    pub zones: usize,
    /// Kills of an active appliance under a 10 ms flow (0: none).
    pub failover_kills: u32,
    /// Print the summary as one JSON document on stdout (progress goes
    /// to stderr).
    pub json: bool,
    /// Where the gateways claim routes: `lab` (the router namespaces
    /// directly) or `moto` (a local moto server as the lab's AWS, through
    /// the official SDK).
    pub cloud: String,
    /// Leaf VPCs per region, attached to the region's edges.
    pub leaves: usize,
    /// A second underlay, dx, which the policy prefers.
    pub dx: bool,
    /// Cuts of region 2's dx link under a 10 ms flow (0: none).
    pub dx_cuts: u32,
    /// Seeds from EC2 tags in the lab's AWS (needs `cloud` moto).
    pub discovery: bool,
    /// Epoch keys from KMS in the lab's AWS (needs `cloud` moto).
    pub kms: bool,
}

/// How long the lab's policy holds a healed dx back (`--dx`).
pub const DX_HOLD_DOWN: Duration = Duration::from_secs(3);

/// Runs the lab; fails if any host cannot reach any other.
pub fn run_lab(opts: &LabOptions) -> Result<()> {
    check_privileges()?;
    if opts.static_keys && opts.zones > 1 {
        bail!("--static-keys makes a lab of one appliance per region: add --zones 1 (active/passive pairs need the mesh)");
    }
    if opts.discovery && opts.cloud != "moto" {
        bail!("--discovery finds the appliances by EC2 tags in the lab's AWS: add --cloud moto");
    }
    if opts.kms && (opts.cloud != "moto" || opts.static_keys) {
        bail!("--kms makes the mesh's epoch keys in the lab's AWS: add --cloud moto (and drop --static-keys)");
    }
    if opts.failover_kills > 0 && opts.zones < 2 {
        bail!("--failover kills the active appliance of a pair: it needs --zones 2");
    }
    catch_signals();
    let tag = default_tag();
    // With --json, stdout carries the document alone.
    let say = |line: String| {
        if opts.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    say(format!(
        "meshgate lab: {} regions in network namespaces {tag}-*",
        opts.regions
    ));
    if opts.zones > 1 {
        say("each region: appliances in zones a and b (one redundancy group), the VPC's router and a host".into());
    }
    if opts.cloud != "lab" && opts.zones < 2 {
        bail!(
            "--cloud {} serves route tables to pairs of appliances: it needs --zones 2",
            opts.cloud
        );
    }
    let mut lab = Lab::build_with(opts.regions, &tag, opts.zones)?;
    lab.keep_on_failure = true;
    if opts.leaves > 0 {
        lab.add_leaves(opts.leaves)?;
        say(format!(
            "leaves: {} leaf VPC(s) per region, each an appliance (role leaf) and a host, attached to the region's edges",
            opts.leaves
        ));
    }
    match opts.cloud.as_str() {
        "lab" => {}
        #[cfg(feature = "aws")]
        "moto" => {
            lab.start_moto()?;
            say(format!(
                "the lab's AWS: moto at {}, a VPC, route table and two interfaces per region",
                super::moto::MOTO_IP
            ));
            if opts.discovery {
                lab.register_instances()?;
                say(format!(
                    "discovery: every appliance a tagged instance (even regions in account {}); the gateways list no seeds and find each other by tags",
                    super::discovery::SECOND_ACCOUNT
                ));
            }
            if opts.kms {
                lab.use_kms()?;
                say("epoch keys: KMS data keys under a KMS key in the lab's AWS; each gateway decrypts them with its own credentials".to_string());
            }
        }
        other => bail!(
            "--cloud {other}: this build knows lab{}",
            if cfg!(feature = "aws") {
                " and moto"
            } else {
                ""
            }
        ),
    }
    lab.policy = opts.policy.clone();
    lab.placement = opts.placement.clone();
    if opts.dx {
        if opts.static_keys {
            bail!("--dx needs the mesh (probes of each underlay ride the negotiated SAs): drop --static-keys");
        }
        lab.add_dx_underlay()?;
        let hold = DX_HOLD_DOWN.as_secs().to_string();
        lab.policy_params = vec![
            ("underlay".into(), "dx".into()),
            ("underlay_hold_down_secs".into(), hold.clone()),
            ("dx_hold_down_secs".into(), hold),
        ];
        say("underlays: internet 198.18.0.0/24 and dx 198.19.0.0/24; the policy prefers dx".into());
    }
    if opts.static_keys {
        lab.write_configs()?;
    } else {
        lab.write_mesh_configs()?;
    }
    say(format!(
        "address plan:\n{}",
        super::plan::render(&lab.plan()).trim_end()
    ));
    check_interrupted()?;
    // With discovery by tags, the last appliance starts after the others
    // have found each other, and is timed until all know it.
    let discovery = match opts.discovery {
        #[cfg(feature = "aws")]
        true => {
            let run = lab.discovery_run(&opts.binary, Duration::from_secs(60))?;
            say(format!(
                "discovery: {} (started last) known alive to every member {:.0} ms after its start; requests to the lab's AWS a minute in steady state: {}",
                lab.gateway_id(lab.gateway_count() - 1),
                run.newcomer_known_ms,
                run.calls_per_minute
                    .iter()
                    .map(|(id, n)| format!("{id} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            serde_json::to_value(&run)?
        }
        _ => {
            lab.start_gateways(&opts.binary)?;
            serde_json::Value::Null
        }
    };
    say(format!(
        "gateways up: {}",
        (0..lab.gateway_count())
            .map(|g| format!("{} ({})", lab.gateway_id(g), lab.gateway_underlay_ip(g)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut formed = None;
    if !opts.static_keys {
        let took = lab.wait_mesh(Duration::from_secs(30))?;
        formed = Some(took);
        say(format!(
            "mesh formed: every member alive everywhere and the SAs negotiated, {:.2} s after the gateways answered",
            took.as_secs_f64()
        ));
    }
    if lab.zones > 1 {
        // Each region's route table points at its active appliance once
        // that has claimed (a starting gateway waits before it claims).
        for r in 0..lab.regions.len() {
            let other = lab.regions[(r + 1) % lab.regions.len()].prefixes()[0].clone();
            let g = lab.wait_route(r, &other, Duration::from_secs(15))?;
            say(format!(
                "region-{}: route table {} points at {}",
                r + 1,
                lab.regions[r].route_table(),
                lab.gateway_id(g)
            ));
        }
    }

    let mut results = Vec::new();
    let sites = lab.sites();
    for (from, src) in sites.iter().enumerate() {
        for (to, dst) in sites.iter().enumerate() {
            if from == to {
                continue;
            }
            check_interrupted()?;
            for dst_ip in [IpAddr::V4(dst.ip), IpAddr::V6(dst.ip6)] {
                // One unmeasured echo first: neighbour discovery on both
                // LANs is not the tunnel's latency.
                ping(src.host, dst_ip, 1, Duration::from_millis(20))?;
                let before = lab.packet_counts();
                let ping = ping(src.host, dst_ip, opts.pings, Duration::from_millis(20))?;
                let path = path_of(&lab, src, dst, &before, ping.received);
                let tcp = tcp_transfer(src.host, dst.host, dst_ip, 5001, opts.transfer)
                    .map_err(|e| format!("{e:#}"));
                results.push(PairResult {
                    from: src.name.clone(),
                    to: dst.name.clone(),
                    v6: dst_ip.is_ipv6(),
                    ping,
                    tcp,
                    path,
                });
            }
        }
    }
    let runs = if opts.failover_kills > 0 {
        say(format!(
            "failover: a flow every 10 ms from host-1 to host-2; region-2's active appliance killed {} times",
            opts.failover_kills
        ));
        lab.failover_runs(&opts.binary, opts.failover_kills)?
    } else {
        Vec::new()
    };
    let cuts = if opts.dx_cuts > 0 {
        say(format!(
            "underlay failover: a flow every 10 ms from host-1 to host-2; region-2's dx link cut for 3 s {} times",
            opts.dx_cuts
        ));
        lab.underlay_cut_runs(opts.dx_cuts, DX_HOLD_DOWN)?
    } else {
        Vec::new()
    };
    if opts.json {
        let mut summary = json_summary(&lab, formed, &results, &runs, &cuts);
        summary["discovery"] = discovery;
        println!("{summary}");
    } else {
        print_summary(&lab, &results);
        if !runs.is_empty() {
            super::failover::print_runs(&runs);
        }
        if !cuts.is_empty() {
            super::underlay_cut::print_runs(&cuts);
        }
    }

    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.ping.received == 0 || r.tcp.is_err())
        .map(|r| {
            format!(
                "{} -> {} ({})",
                r.from,
                r.to,
                if r.v6 { "IPv6" } else { "IPv4" }
            )
        })
        .collect();
    if opts.keep {
        println!("\nThe lab keeps running; press Ctrl-C to remove it. Try for example:");
        println!(
            "  ip netns exec {} ping {}",
            lab.regions[0].host.name(),
            lab.regions[1].host_ip()
        );
        let me = std::env::args().next().unwrap_or_else(|| "meshgate".into());
        println!(
            "  ip netns exec {} {me} status",
            lab.regions[0].appliance.name(),
        );
        println!(
            "  {me} ping {} --control {}",
            lab.gateway_id(lab.zones),
            lab.control_socket(0).display()
        );
        if lab.placed_as() == "hub-spoke" && lab.policy != "hub-spoke" {
            println!(
                "  {me} policy reload --module hub-spoke --control {}",
                lab.control_socket(0).display()
            );
        }
        if !opts.static_keys {
            println!(
                "  {me} keys rotate --ca-key {} --control {}",
                lab.ca_key_path().display(),
                lab.control_socket(0).display()
            );
        }
        println!("  configs, keys and logs: {}", lab.dir.display());
        while check_interrupted().is_ok() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let failure = if !failed.is_empty() {
        Some(format!("no connectivity for: {}", failed.join(", ")))
    } else if super::failover::summary(&runs).is_some_and(|s| !s.all_restored) {
        Some(
            "a failover did not restore the flow or claim the routes (see the runs above)"
                .to_string(),
        )
    } else {
        None
    };
    lab.finished = failure.is_none();
    drop(lab);
    match failure {
        Some(why) => bail!(why),
        None => {
            say("lab removed".into());
            Ok(())
        }
    }
}
