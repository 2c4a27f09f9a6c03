//! `meshgate lab`, the command: build, start, probe every pair,
//! summarise (`report`), clean up.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use super::probe::{ping, tcp_transfer};
use super::report::{print_summary, PairResult};
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
}

/// Runs the lab; fails if any host cannot reach any other.
pub fn run_lab(opts: &LabOptions) -> Result<()> {
    check_privileges()?;
    catch_signals();
    let tag = default_tag();
    println!(
        "meshgate lab: {} regions in network namespaces {tag}-*",
        opts.regions
    );
    let mut lab = Lab::build(opts.regions, &tag)?;
    lab.policy = opts.policy.clone();
    lab.placement = opts.placement.clone();
    if opts.static_keys {
        lab.write_configs()?;
    } else {
        lab.write_mesh_configs()?;
    }
    check_interrupted()?;
    lab.start_gateways(&opts.binary)?;
    println!(
        "gateways up: {}",
        lab.regions
            .iter()
            .map(|r| format!("{} ({})", r.gateway_id(), r.underlay_ip()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !opts.static_keys {
        let took = lab.wait_mesh(Duration::from_secs(30))?;
        println!(
            "mesh formed: every member alive everywhere and the SAs negotiated, {:.2} s after the gateways answered",
            took.as_secs_f64()
        );
    }

    let mut results = Vec::new();
    for from in 0..lab.regions.len() {
        for to in 0..lab.regions.len() {
            if from == to {
                continue;
            }
            check_interrupted()?;
            let (src, dst) = (&lab.regions[from], &lab.regions[to]);
            for dst_ip in [IpAddr::V4(dst.host_ip()), IpAddr::V6(dst.host_ip6())] {
                // One unmeasured echo first: neighbour discovery on both
                // LANs is not the tunnel's latency.
                ping(&src.host, dst_ip, 1, Duration::from_millis(20))?;
                let ping = ping(&src.host, dst_ip, opts.pings, Duration::from_millis(20))?;
                let tcp = tcp_transfer(&src.host, &dst.host, dst_ip, 5001, opts.transfer)
                    .map_err(|e| format!("{e:#}"));
                results.push(PairResult {
                    from,
                    to,
                    v6: dst_ip.is_ipv6(),
                    ping,
                    tcp,
                });
            }
        }
    }
    print_summary(&lab, &results);

    let failed: Vec<String> = results
        .iter()
        .filter(|r| r.ping.received == 0 || r.tcp.is_err())
        .map(|r| {
            format!(
                "host-{} -> host-{} ({})",
                r.from + 1,
                r.to + 1,
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
        println!(
            "  ip netns exec {} curl -s http://{}/metrics | grep meshgate_",
            lab.regions[0].appliance.name(),
            super::ADMIN
        );
        let me = std::env::args().next().unwrap_or_else(|| "meshgate".into());
        println!(
            "  {me} policy reload --module hub-spoke --control {}",
            lab.control_socket(0).display()
        );
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
    drop(lab);
    println!("lab removed");
    if !failed.is_empty() {
        bail!("no connectivity for: {}", failed.join(", "));
    }
    Ok(())
}
