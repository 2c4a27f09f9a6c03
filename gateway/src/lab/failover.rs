//! `meshgate lab --failover`: a flow of one echo request every 10 ms
//! from region 1's host to region 2's, while region 2's active appliance
//! is killed with SIGKILL, again and again. Each run reports the packets
//! lost times the interval (the outage), and the time from the kill to the
//! VPC route table pointing at the partner (read from the router, as the
//! cloud would show it). The killed gateway is restarted and the mesh
//! settles before the next run.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{check_interrupted, probe, Lab};

/// The flow's interval.
pub const FLOW_INTERVAL: Duration = Duration::from_millis(10);
/// Echo requests per run: 1 s before the kill, then room for an outage of
/// several seconds and 1 s of restored flow after it.
const FLOW_PACKETS: u32 = 600;
/// The kill comes this long after the flow starts.
const KILL_AFTER: Duration = Duration::from_secs(1);
/// A run whose last this many requests are not all answered did not
/// restore the flow.
const RESTORED_TAIL: usize = 50;

/// One kill and what it cost.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverRun {
    /// The appliance killed (the active member of its group).
    pub killed: String,
    /// The partner the route table points at afterwards.
    pub took_over: Option<String>,
    pub sent: u32,
    pub lost: u32,
    /// Packets lost times the flow's interval.
    pub outage_ms: f64,
    /// From the kill to the route table pointing at the partner.
    pub kill_to_claimed_ms: Option<f64>,
    /// Whether the flow ran again at the end of the run.
    pub restored: bool,
}

impl Lab {
    /// The gateway region `r`'s route table points at for `destination`
    /// (`None`: no route, or one to something else).
    pub fn route_target(&self, r: usize, destination: &str) -> Result<Option<usize>> {
        let region = &self.regions[r];
        let router = region
            .router
            .as_ref()
            .context("this lab has no VPC routers (zones)")?;
        let v6 = destination.contains(':');
        let out = router
            .command("ip")
            .args([
                if v6 { "-6" } else { "-4" },
                "route",
                "show",
                "exact",
                destination,
            ])
            .output()
            .context("running ip")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let via = text
            .split_whitespace()
            .skip_while(|w| *w != "via")
            .nth(1)
            .map(str::to_string);
        Ok(via.and_then(|via| {
            (0..self.regions.len() * self.zones)
                .filter(|&g| g / self.zones == r)
                .find(|&g| {
                    let (v4, v6) = self.gateway_lan_ips(g);
                    v4.to_string() == via || v6.to_string() == via
                })
        }))
    }

    /// Waits until region `r`'s route table points at one of its
    /// appliances for `destination`; returns which.
    pub fn wait_route(&self, r: usize, destination: &str, timeout: Duration) -> Result<usize> {
        let start = Instant::now();
        loop {
            if let Some(g) = self.route_target(r, destination)? {
                return Ok(g);
            }
            if start.elapsed() > timeout {
                bail!(
                    "region {}'s route table has no route to {destination} via an appliance after {timeout:?}",
                    r + 1
                );
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills region 2's active appliance `kills` times under a flow from
    /// region 1 and measures each failover (see the module comment).
    pub fn failover_runs(&mut self, binary: &Path, kills: u32) -> Result<Vec<FailoverRun>> {
        if self.zones < 2 {
            bail!("failover needs two appliances per region (zones)");
        }
        let (src, dst) = (0, 1);
        let back = self.regions[src].prefixes()[0].clone();
        let dst_ip = IpAddr::V4(self.regions[dst].host_ip());
        let mut runs = Vec::new();
        for _ in 0..kills {
            check_interrupted()?;
            let active = self.wait_route(dst, &back, Duration::from_secs(10))?;
            let flow = probe::Flow::start(
                self.regions[src].host.name(),
                dst_ip,
                FLOW_PACKETS,
                FLOW_INTERVAL,
            );
            std::thread::sleep(KILL_AFTER);
            self.kill_gateway(active);
            let killed_at = Instant::now();
            let mut claimed = None;
            let mut took_over = None;
            while killed_at.elapsed() < Duration::from_secs(10) {
                match self.route_target(dst, &back)? {
                    Some(g) if g != active => {
                        claimed = Some(killed_at.elapsed());
                        took_over = Some(g);
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            let stats = flow.finish()?;
            let lost = stats.sent - stats.received;
            let tail = stats.answered.len().saturating_sub(RESTORED_TAIL);
            runs.push(FailoverRun {
                killed: self.gateway_id(active),
                took_over: took_over.map(|g| self.gateway_id(g)),
                sent: stats.sent,
                lost,
                outage_ms: f64::from(lost) * FLOW_INTERVAL.as_millis() as f64,
                kill_to_claimed_ms: claimed.map(|d| d.as_secs_f64() * 1e3),
                restored: stats.answered[tail..].iter().all(|&a| a),
            });
            // The killed appliance comes back as the standby.
            self.start_gateway(binary, active)?;
            self.wait_ready(active, Duration::from_secs(10))?;
            self.wait_mesh(Duration::from_secs(30))?;
        }
        Ok(runs)
    }
}

/// The runs as a table, and the worst and mean outage.
pub fn print_runs(runs: &[FailoverRun]) {
    println!();
    println!(
        "{:<4} {:<12} {:<12} {:>6} {:>6} {:>11} {:>15} {:>9}",
        "run", "killed", "took over", "sent", "lost", "outage ms", "kill->claim ms", "restored"
    );
    for (i, r) in runs.iter().enumerate() {
        println!(
            "{:<4} {:<12} {:<12} {:>6} {:>6} {:>11.0} {:>15} {:>9}",
            i + 1,
            r.killed,
            r.took_over.as_deref().unwrap_or("-"),
            r.sent,
            r.lost,
            r.outage_ms,
            r.kill_to_claimed_ms
                .map_or("-".to_string(), |ms| format!("{ms:.0}")),
            if r.restored { "yes" } else { "NO" }
        );
    }
    if let Some(s) = summary(runs) {
        println!(
            "outage over {} kills: mean {:.0} ms, worst {:.0} ms; kill to routes claimed: mean {:.0} ms, worst {:.0} ms",
            runs.len(),
            s.outage_mean_ms,
            s.outage_worst_ms,
            s.claim_mean_ms,
            s.claim_worst_ms
        );
    }
}

/// Mean and worst of the runs.
#[derive(Clone, Debug, Serialize)]
pub struct FailoverSummary {
    pub kills: usize,
    pub outage_mean_ms: f64,
    pub outage_worst_ms: f64,
    pub claim_mean_ms: f64,
    pub claim_worst_ms: f64,
    pub all_restored: bool,
}

pub fn summary(runs: &[FailoverRun]) -> Option<FailoverSummary> {
    if runs.is_empty() {
        return None;
    }
    let n = runs.len() as f64;
    let claims: Vec<f64> = runs.iter().filter_map(|r| r.kill_to_claimed_ms).collect();
    Some(FailoverSummary {
        kills: runs.len(),
        outage_mean_ms: runs.iter().map(|r| r.outage_ms).sum::<f64>() / n,
        outage_worst_ms: runs.iter().map(|r| r.outage_ms).fold(0.0, f64::max),
        claim_mean_ms: claims.iter().sum::<f64>() / claims.len().max(1) as f64,
        claim_worst_ms: claims.iter().copied().fold(0.0, f64::max),
        all_restored: runs
            .iter()
            .all(|r| r.restored && r.kill_to_claimed_ms.is_some()),
    })
}
