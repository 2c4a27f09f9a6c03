//! The shell around the [`Prober`]: probes out on the ESP socket, probes
//! and answers in from the inbound thread (non-ESP datagrams with the
//! probe magic), the members' endpoints from membership, the probe keys
//! from the tunnels; path changes to the log, the metrics and (through the
//! gateway) the policy, whose view carries each endpoint's path health.

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshgate_sdk::{PathHealth, PathState, View};
use prometheus::{IntCounterVec, IntGaugeVec};
use tokio::sync::{mpsc, watch};

use super::prober::{PathReport, Prober, Received};
use super::SharedProbeKeys;
use crate::metrics::Metrics;

/// Probe datagrams waiting for the task at most (more are dropped, and
/// count as lost probes: the prober is behind).
pub const QUEUED_PROBES: usize = 1024;
/// How often the view and the metrics take the paths' round trips and
/// loss when no path changed.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Each member that is up, with its endpoints by label.
pub type Members = Vec<(String, Vec<(String, SocketAddr)>)>;

/// The paths as last reported, for the view membership rebuilds.
pub type SharedPaths = Arc<Mutex<Vec<PathReport>>>;

/// What the rest of the gateway hands the task.
pub struct Link {
    pub socket: UdpSocket,
    pub datagrams: mpsc::Receiver<Vec<u8>>,
    pub members: watch::Receiver<Members>,
    pub keys: SharedProbeKeys,
    pub paths: SharedPaths,
    /// Called with every path when one went up or down (the gateway hands
    /// them to the policy, [`apply`] writing them into its view).
    pub on_change: Box<dyn Fn(Vec<PathReport>) + Send>,
}

struct UnderlayMetrics {
    up: IntGaugeVec,
    rtt: prometheus::GaugeVec,
    changes: IntCounterVec,
    received: IntCounterVec,
}

impl UnderlayMetrics {
    fn new(metrics: &Metrics) -> UnderlayMetrics {
        let registry = metrics.registry();
        let rtt = prometheus::GaugeVec::new(
            prometheus::Opts::new(
                "meshgate_underlay_rtt_seconds",
                "Smoothed round trip of the probes to each peer over each underlay.",
            ),
            &["peer", "underlay"],
        )
        .expect("static metric definition is valid");
        // A second registration (a restarted member task) keeps the first.
        let _ = registry.register(Box::new(rtt.clone()));
        UnderlayMetrics {
            up: crate::metrics::gauge_vec(
                registry,
                "meshgate_underlay_up",
                "1 while probes to the peer over the underlay come back, 0 once none has for 600 ms.",
                &["peer", "underlay"],
            ),
            rtt,
            changes: crate::metrics::counter_vec(
                registry,
                "meshgate_underlay_changes_total",
                "Paths that went down or came back up, by underlay.",
                &["underlay", "state"],
            ),
            received: crate::metrics::counter_vec(
                registry,
                "meshgate_underlay_probes_received_total",
                "Probe datagrams received, by what they were (probe, answer, stale, or why refused).",
                &["outcome"],
            ),
        }
    }
}

/// Runs until the datagram channel or the members' watch closes.
pub async fn run(mut link: Link, labels: Vec<String>, metrics: Arc<Metrics>) {
    let m = UnderlayMetrics::new(&metrics);
    let mut prober = Prober::new(labels);
    let mut reported = Instant::now();
    loop {
        let wake = prober
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + REPORT_EVERY)
            .min(reported + REPORT_EVERY);
        tokio::select! {
            d = link.datagrams.recv() => {
                let Some(d) = d else { return };
                let r = match link.keys.lock() {
                    Ok(keys) => prober.handle_datagram(Instant::now(), &d, &keys),
                    Err(_) => return,
                };
                let outcome = match r {
                    Received::Probe => "probe",
                    Received::Answer => "answer",
                    Received::Stale => "stale",
                    Received::Refused(why) => why,
                };
                m.received.with_label_values(&[outcome]).inc();
            }
            c = link.members.changed() => {
                if c.is_err() {
                    return;
                }
                let members = link.members.borrow_and_update().clone();
                prober.set_members(members, Instant::now());
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                match link.keys.lock() {
                    Ok(keys) => prober.handle_timeout(Instant::now(), &keys),
                    Err(_) => return,
                }
            }
        }
        while let Some(t) = prober.poll_transmit() {
            // A cut underlay may refuse at once (no route, link down): the
            // probe is lost, as it would be further on.
            if let Err(e) = link.socket.send_to(&t.payload, t.to) {
                tracing::debug!(to = %t.to, "underlay probe not sent: {e}");
            }
        }
        let mut changed = false;
        while let Some(c) = prober.poll_change() {
            changed = true;
            let state = match c.state {
                PathState::Up => "up",
                PathState::Down => "down",
                PathState::Unknown => "unknown",
            };
            m.changes.with_label_values(&[&c.label, state]).inc();
            match c.state {
                PathState::Down => {
                    tracing::warn!(peer = %c.peer, underlay = %c.label, "underlay {} to {} is down: no probe answered for {} ms", c.label, c.peer, super::prober::DOWN_AFTER.as_millis())
                }
                _ => {
                    tracing::info!(peer = %c.peer, underlay = %c.label, "underlay {} to {} is up", c.label, c.peer)
                }
            }
        }
        let now = Instant::now();
        if !changed && now < reported + REPORT_EVERY {
            continue;
        }
        reported = now;
        let paths = prober.report();
        m.up.reset();
        m.rtt.reset();
        for p in &paths {
            let labels = [p.peer.as_str(), p.label.as_str()];
            match p.state {
                PathState::Up => m.up.with_label_values(&labels).set(1),
                PathState::Down => m.up.with_label_values(&labels).set(0),
                PathState::Unknown => {}
            }
            if let Some(rtt) = p.rtt {
                m.rtt.with_label_values(&labels).set(rtt.as_secs_f64());
            }
        }
        if let Ok(mut shared) = link.paths.lock() {
            shared.clone_from(&paths);
        }
        if changed {
            (link.on_change)(paths);
        }
    }
}

/// Writes each path's health into its endpoint of the view. `now` and
/// `now_ms` are the same moment on the monotonic and the wall clock.
pub fn apply(view: &mut View, paths: &[PathReport], now: Instant, now_ms: u64) {
    for p in paths {
        let Some((_, member)) = view.member_by_id(&p.peer) else {
            continue;
        };
        let Some(label) = view.name_index(&p.label) else {
            continue;
        };
        let range = member.endpoints.range();
        let health = PathHealth {
            state: p.state,
            rtt_us: p
                .rtt
                .map_or(0, |r| u32::try_from(r.as_micros()).unwrap_or(u32::MAX)),
            loss_ppm: p.loss_ppm,
            changed_ms: p.changed.map_or(0, |c| {
                now_ms.saturating_sub(now.saturating_duration_since(c).as_millis() as u64)
            }),
        };
        if let Some(endpoints) = view.endpoints.get_mut(range) {
            for e in endpoints.iter_mut().filter(|e| e.label == label) {
                e.health = health;
            }
        }
    }
}
