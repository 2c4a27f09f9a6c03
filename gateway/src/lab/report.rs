//! The summary `meshgate lab` prints: one line per pair with the
//! appliances its packets crossed, then the totals per gateway; or all of
//! it, failovers included, as one JSON document.

use std::time::Duration;

use serde_json::json;

use super::failover::{summary, FailoverRun};
use super::leaves::Site;
use super::probe::{PingStats, TransferStats};
use super::Lab;
use crate::metrics::sum_samples;

/// What the lab measured between one pair of hosts.
pub(super) struct PairResult {
    /// The hosts' names (`host-N`, `lhost-N-K`).
    pub from: String,
    pub to: String,
    pub v6: bool,
    pub ping: PingStats,
    pub tcp: Result<TransferStats, String>,
    /// The gateways the echo requests and replies crossed, from the
    /// source's region to the destination's.
    pub path: Vec<String>,
}

impl Lab {
    /// Every gateway's ESP packets out and in (0 for one that does not
    /// answer).
    pub fn packet_counts(&self) -> Vec<(u64, u64)> {
        (0..self.gateway_count())
            .map(|g| {
                let text = self.metrics(g).unwrap_or_default();
                let sum = |dir: &str| {
                    sum_samples(
                        &text,
                        "meshgate_peer_packets_total",
                        &format!("direction=\"{dir}\""),
                    ) as u64
                };
                (sum("out"), sum("in"))
            })
            .collect()
    }
}

/// The gateways whose tunnel counters moved by at least `packets` since
/// `before` in both directions (each carried the requests one way and the
/// replies the other), in the order packets cross them: the source's
/// region (its leaf, then its edges), transit, then the destination's
/// region (its edges, then its leaf).
pub(super) fn path_of(
    lab: &Lab,
    from: &Site<'_>,
    to: &Site<'_>,
    before: &[(u64, u64)],
    packets: u32,
) -> Vec<String> {
    let after = lab.packet_counts();
    let p = u64::from(packets.max(1));
    let mut on: Vec<usize> = (0..lab.gateway_count())
        .filter(|&g| {
            let (o, i) = before.get(g).copied().unwrap_or_default();
            let (o2, i2) = after[g];
            o2.saturating_sub(o) >= p && i2.saturating_sub(i) >= p
        })
        .collect();
    let rank = |g: &usize| {
        let r = lab.region_of(*g).index;
        let leaf = lab.leaf_of(*g).is_some();
        let from_leaf = from.name.starts_with("lhost");
        if r == from.region && r == to.region {
            // Within one region: the source's own appliance first.
            (0, u8::from(leaf != from_leaf), *g)
        } else if r == from.region {
            (0, u8::from(!leaf), *g)
        } else if r == to.region {
            (2, u8::from(leaf), *g)
        } else {
            (1, 0, *g)
        }
    };
    on.sort_by_key(rank);
    on.into_iter().map(|g| lab.gateway_id(g)).collect()
}

fn pair_name(r: &PairResult) -> String {
    format!(
        "{} -> {} {}",
        r.from,
        r.to,
        if r.v6 { "IPv6" } else { "IPv4" }
    )
}

pub(super) fn print_summary(lab: &Lab, results: &[PairResult]) {
    println!();
    println!(
        "{:<31} {:>6} {:>10} {:>10} {:>12}  path",
        "pair", "loss", "rtt avg", "rtt max", "tcp Gbit/s"
    );
    for r in results {
        let ms = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| {
                format!("{:.3} ms", d.as_secs_f64() * 1e3)
            })
        };
        let tcp = match &r.tcp {
            Ok(t) => format!("{:.3}", t.gbit_per_s()),
            Err(e) => format!("FAILED: {e}"),
        };
        println!(
            "{:<31} {:>5.1}% {:>10} {:>10} {:>12}  {}",
            pair_name(r),
            r.ping.loss_percent(),
            ms(r.ping.avg_rtt()),
            ms(r.ping.max_rtt()),
            tcp,
            if r.path.is_empty() {
                "-".to_string()
            } else {
                r.path.join(" > ")
            }
        );
    }
    println!();
    println!(
        "{:<12} {:>12} {:>12} {:>10}",
        "gateway", "packets out", "packets in", "drops"
    );
    for g in 0..lab.gateway_count() {
        let text = lab.metrics(g).unwrap_or_default();
        let sum = |name: &str, filter: &str| sum_samples(&text, name, filter) as u64;
        println!(
            "{:<12} {:>12} {:>12} {:>10}",
            lab.gateway_id(g),
            sum("meshgate_peer_packets_total", "direction=\"out\""),
            sum("meshgate_peer_packets_total", "direction=\"in\""),
            sum("meshgate_drops_total", "")
        );
    }
}

/// The whole summary as one JSON document (`meshgate lab --json`).
pub(super) fn json_summary(
    lab: &Lab,
    formed: Option<Duration>,
    results: &[PairResult],
    runs: &[FailoverRun],
    cuts: &[super::underlay_cut::CutRun],
) -> serde_json::Value {
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    let pairs: Vec<_> = results
        .iter()
        .map(|r| {
            json!({
                "from": r.from,
                "to": r.to,
                "family": if r.v6 { "ipv6" } else { "ipv4" },
                "pings": { "sent": r.ping.sent, "received": r.ping.received,
                           "loss_percent": r.ping.loss_percent(),
                           "rtt_avg_ms": ms(r.ping.avg_rtt()), "rtt_max_ms": ms(r.ping.max_rtt()) },
                "tcp_gbit_per_s": r.tcp.as_ref().ok().map(|t| t.gbit_per_s()),
                "tcp_error": r.tcp.as_ref().err(),
                "path": r.path,
            })
        })
        .collect();
    let plan = lab.plan();
    let gateways: Vec<_> = (0..lab.gateway_count())
        .map(|g| {
            let text = lab.metrics(g).unwrap_or_default();
            let sum = |name: &str, filter: &str| sum_samples(&text, name, filter) as u64;
            let a = &plan[g];
            json!({
                "id": a.id,
                "region": a.region,
                "zone": a.zone,
                "role": a.role,
                "group": a.group,
                "prefixes": a.prefixes,
                "underlay": a.underlay,
                "dx": a.dx,
                "packets_out": sum("meshgate_peer_packets_total", "direction=\"out\""),
                "packets_in": sum("meshgate_peer_packets_total", "direction=\"in\""),
                "drops": sum("meshgate_drops_total", ""),
            })
        })
        .collect();
    json!({
        "regions": lab.regions.len(),
        "zones": lab.zones,
        "policy": lab.policy,
        "mesh_formed_s": formed.map(|d| d.as_secs_f64()),
        "gateways": gateways,
        "pairs": pairs,
        "failover": {
            "runs": runs,
            "summary": summary(runs),
        },
        "underlays": if lab.dx { vec!["internet", "dx"] } else { vec!["internet"] },
        "dx_cuts": { "runs": cuts },
    })
}
