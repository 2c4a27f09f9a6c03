//! `meshgate lab --cut-dx N`: a flow of one echo request every 10 ms from
//! region 1's host to region 2's while region 2's appliance loses its `dx`
//! link (its port on the dx bridge goes down) and gets it back. Each run
//! reports the packets lost while the tunnel moved to `internet` (the
//! outage), the time from the cut to region 1's appliance sending region
//! 2's ESP over `internet`, the time from the heal to the move back to
//! `dx` (the policy's hold-down and the probes), and the packets lost on
//! the way back (make-before-break: none expected).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;

use super::failover::FLOW_INTERVAL;
use super::{check_interrupted, probe, Lab};

/// The cut comes this long after the flow starts (dx carries it by then).
const CUT_AFTER: Duration = Duration::from_secs(1);
/// How long dx stays cut.
const CUT_FOR: Duration = Duration::from_secs(3);
/// Flow after the move back, to see it restored.
const TAIL: Duration = Duration::from_secs(1);

/// One cut and heal, and what they cost.
#[derive(Clone, Debug, Serialize)]
pub struct CutRun {
    pub sent: u32,
    /// Echoes lost from the cut to the heal, times the interval.
    pub outage_ms: f64,
    /// From the cut to the policy sending the peer over `internet`.
    pub cut_to_internet_ms: Option<f64>,
    /// From the heal to the policy sending it over `dx` again.
    pub heal_to_dx_ms: Option<f64>,
    /// Echoes lost from the heal to the end of the flow.
    pub lost_after_heal: u32,
}

impl Lab {
    /// The underlay gateway `g`'s policy sends `peer`'s ESP over, from
    /// its metrics.
    pub fn peer_underlay(&self, g: usize, peer: &str) -> Result<Option<String>> {
        let text = self.metrics(g)?;
        let prefix = format!("meshgate_peer_underlay{{peer=\"{peer}\",underlay=\"");
        Ok(text
            .lines()
            .filter(|l| l.ends_with(" 1"))
            .find_map(|l| l.strip_prefix(&prefix)?.split('"').next().map(String::from)))
    }

    /// Waits until gateway `g` sends `peer`'s ESP over `label`; how long
    /// that took, or `None` past `within`.
    fn wait_underlay(
        &self,
        g: usize,
        peer: &str,
        label: &str,
        within: Duration,
    ) -> Result<Option<Duration>> {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.peer_underlay(g, peer)?.as_deref() == Some(label) {
                return Ok(Some(start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(None)
    }

    /// Cuts and heals region 2's `dx` link `cuts` times under a flow from
    /// region 1, with the policy holding a healed path back for
    /// `hold_down` (see the module comment).
    pub fn underlay_cut_runs(&self, cuts: u32, hold_down: Duration) -> Result<Vec<CutRun>> {
        if !self.dx {
            bail!("cutting dx needs the dx underlay (--dx)");
        }
        let (src, dst) = (0, 1);
        // The appliances the flow crosses: with zones, the active ones.
        let appliance = |r: usize, to: usize| -> Result<usize> {
            if self.zones == 1 {
                return Ok(r);
            }
            let to = self.regions[to].prefixes()[0].clone();
            self.wait_route(r, &to, Duration::from_secs(10))
        };
        let (a, b) = (appliance(src, dst)?, appliance(dst, src)?);
        let peer = self.gateway_id(b);
        let dst_ip = IpAddr::V4(self.regions[dst].host_ip());
        let packets = ((CUT_AFTER + CUT_FOR + hold_down + Duration::from_secs(1) + TAIL)
            .as_millis()
            / FLOW_INTERVAL.as_millis()) as u32;
        let mut runs = Vec::new();
        for _ in 0..cuts {
            check_interrupted()?;
            if self
                .wait_underlay(a, &peer, "dx", Duration::from_secs(30))?
                .is_none()
            {
                bail!(
                    "{} does not send {peer}'s ESP over dx (is the policy choosing dx?)",
                    self.gateway_id(a)
                );
            }
            let flow = probe::Flow::start(
                self.regions[src].host.name(),
                dst_ip,
                packets,
                FLOW_INTERVAL,
            );
            let started = flow.started;
            std::thread::sleep(CUT_AFTER);
            self.set_dx(b, false)?;
            let cut_at = Instant::now();
            let to_internet = self.wait_underlay(a, &peer, "internet", CUT_FOR)?;
            std::thread::sleep(CUT_FOR.saturating_sub(cut_at.elapsed()));
            self.set_dx(b, true)?;
            let healed_at = Instant::now();
            let to_dx = self.wait_underlay(a, &peer, "dx", hold_down + Duration::from_secs(5))?;
            let stats = flow.finish()?;
            // Echo i left at i intervals after the flow started.
            let heal_index = (healed_at.duration_since(started).as_millis()
                / FLOW_INTERVAL.as_millis()) as usize;
            let lost = |r: std::ops::Range<usize>| {
                stats
                    .answered
                    .get(r)
                    .map_or(0, |a| a.iter().filter(|x| !**x).count() as u32)
            };
            let end = stats.answered.len();
            runs.push(CutRun {
                sent: stats.sent,
                outage_ms: f64::from(lost(0..heal_index.min(end)))
                    * FLOW_INTERVAL.as_millis() as f64,
                cut_to_internet_ms: to_internet.map(|d| d.as_secs_f64() * 1e3),
                heal_to_dx_ms: to_dx.map(|d| d.as_secs_f64() * 1e3),
                lost_after_heal: lost(heal_index.min(end)..end),
            });
        }
        Ok(runs)
    }
}

/// The runs as a table.
pub fn print_runs(runs: &[CutRun]) {
    println!();
    println!(
        "{:<4} {:>6} {:>10} {:>17} {:>13} {:>16}",
        "run", "sent", "outage ms", "cut->internet ms", "heal->dx ms", "lost after heal"
    );
    let ms = |v: Option<f64>| v.map_or("never".to_string(), |v| format!("{v:.0}"));
    for (i, r) in runs.iter().enumerate() {
        println!(
            "{:<4} {:>6} {:>10.0} {:>17} {:>13} {:>16}",
            i + 1,
            r.sent,
            r.outage_ms,
            ms(r.cut_to_internet_ms),
            ms(r.heal_to_dx_ms),
            r.lost_after_heal
        );
    }
    if let Some(worst) = runs.iter().map(|r| r.outage_ms).reduce(f64::max) {
        let mean = runs.iter().map(|r| r.outage_ms).sum::<f64>() / runs.len() as f64;
        println!("dx cut: outage mean {mean:.0} ms, worst {worst:.0} ms (target: at most 1000 ms)");
    }
}
