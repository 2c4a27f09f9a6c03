//! The health a member advertises of itself: the median round trip and
//! mean loss of its paths to the members it hears, re-advertised only when
//! they move enough to matter (records travel by gossip; a record for every
//! jitter would crowd out news).

use std::time::Duration;

use crate::membership::Observed;

/// How often the health of the paths to the members is reported to the
/// owner.
pub const OBSERVE_EVERY: Duration = Duration::from_secs(1);

/// How often a member looks whether the health of its paths moved enough
/// to advertise it anew.
pub const HEALTH_EVERY: Duration = Duration::from_secs(10);

/// The median smoothed round-trip time (µs) and the mean inbound loss
/// (ppm) of the paths to the alive members.
pub fn path_health(observed: &[Observed]) -> (u32, u32) {
    let alive: Vec<_> = observed
        .iter()
        .filter(|o| o.state == foca::State::Alive)
        .collect();
    let mut rtts: Vec<u32> = alive
        .iter()
        .filter_map(|o| o.rtt)
        .map(|r| u32::try_from(r.as_micros()).unwrap_or(u32::MAX))
        .collect();
    rtts.sort_unstable();
    let rtt = rtts.get(rtts.len() / 2).copied().unwrap_or(0);
    let loss = if alive.is_empty() {
        0.0
    } else {
        alive.iter().map(|o| o.loss.clamp(0.0, 1.0)).sum::<f64>() / alive.len() as f64
    };
    (rtt, (loss * 1e6) as u32)
}

/// Whether health moved enough to be worth a new record: the round trip
/// by a fifth, or the loss by a percentage point.
pub fn health_moved((rtt0, loss0): (u32, u32), (rtt1, loss1): (u32, u32)) -> bool {
    rtt0.abs_diff(rtt1) > rtt0.max(rtt1) / 5 || loss0.abs_diff(loss1) >= 10_000
}
