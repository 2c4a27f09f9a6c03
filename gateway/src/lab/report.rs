//! The summary `meshgate lab` prints: one line per pair, then the totals.

use std::time::Duration;

use super::probe::{PingStats, TransferStats};
use super::Lab;
use crate::metrics::sum_samples;

/// What the lab measured between one pair of hosts.
pub(super) struct PairResult {
    pub from: usize,
    pub to: usize,
    pub v6: bool,
    pub ping: PingStats,
    pub tcp: Result<TransferStats, String>,
}

pub(super) fn print_summary(lab: &Lab, results: &[PairResult]) {
    println!();
    println!(
        "{:<27} {:>6} {:>10} {:>10} {:>12}",
        "pair", "loss", "rtt avg", "rtt max", "tcp Gbit/s"
    );
    for r in results {
        let pair = format!(
            "host-{} -> host-{} {}",
            r.from + 1,
            r.to + 1,
            if r.v6 { "IPv6" } else { "IPv4" }
        );
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
            "{pair:<27} {:>5.1}% {:>10} {:>10} {:>12}",
            r.ping.loss_percent(),
            ms(r.ping.avg_rtt()),
            ms(r.ping.max_rtt()),
            tcp
        );
    }
    println!();
    println!(
        "{:<12} {:>12} {:>12} {:>10}",
        "gateway", "packets out", "packets in", "drops"
    );
    for (i, r) in lab.regions.iter().enumerate() {
        let text = lab.metrics(i).unwrap_or_default();
        let sum = |name: &str, filter: &str| sum_samples(&text, name, filter) as u64;
        println!(
            "{:<12} {:>12} {:>12} {:>10}",
            r.gateway_id(),
            sum("meshgate_peer_packets_total", "direction=\"out\""),
            sum("meshgate_peer_packets_total", "direction=\"in\""),
            sum("meshgate_drops_total", "")
        );
    }
}
