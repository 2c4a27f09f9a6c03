//! Prometheus metrics of the gateway.
//!
//! The data plane holds pre-resolved counter handles (one atomic each), so
//! counting a packet is an atomic add with no label lookup and no lock.

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::esp::{Direction, DropReason, LifetimeEvent};

/// Every metric the gateway exports, registered in its own registry.
pub struct Metrics {
    registry: Registry,
    peer_packets: IntCounterVec,
    peer_bytes: IntCounterVec,
    sa_packets: IntCounterVec,
    sa_bytes: IntCounterVec,
    drops: IntCounterVec,
    lifetime_events: IntCounterVec,
    udp_control: IntCounterVec,
    echo_requests: IntCounterVec,
    sa_info: IntGaugeVec,
    pub peers: IntGauge,
    policy_evaluations: IntCounter,
    policy_latency: prometheus::Histogram,
    policy_reloads: IntCounterVec,
    policy_traps: IntCounterVec,
    policy_events: IntCounterVec,
    policy_event_evaluations: IntCounterVec,
    policy_info: IntGaugeVec,
    /// Membership, health and key negotiation.
    pub mesh: MeshMetrics,
    /// The sessions of configured peers.
    pub sessions: SessionMetrics,
    /// Route claims on the cloud (high availability).
    pub cloud: CloudMetrics,
    /// The SAs installed, with their age and rekey time (`meshgate status`).
    pub sas: crate::sa_book::SaBook,
}

/// Calls to the cloud and the routes claimed there.
pub struct CloudMetrics {
    /// By API and outcome (ok, throttled, server_error, timeout, stale,
    /// refused).
    pub calls: IntCounterVec,
    pub call_seconds: prometheus::HistogramVec,
    /// Routes claimed, and of those the ones the cloud confirmed.
    pub claimed: IntGauge,
    pub converged: IntGauge,
    /// Routes this appliance started or stopped claiming (claim, release).
    pub claim_changes: IntCounterVec,
    /// 1 for each redundancy group's active member, as this gateway's
    /// policy decided.
    pub group_active: IntGaugeVec,
    /// Changes of a group's active member from one member to another.
    pub failovers: IntCounterVec,
    /// With KMS epoch keys: the epochs' keys by state (ready, waiting,
    /// refused).
    pub kms_keys: IntGaugeVec,
    /// Instances tagged with the mesh that discovery skipped.
    pub discovery_skipped: prometheus::IntCounter,
    /// Each group's active member, as last decided (`meshgate status`).
    active: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

impl CloudMetrics {
    fn new(registry: &Registry) -> CloudMetrics {
        let call_seconds = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "meshgate_cloud_call_seconds",
                "Latency of calls to the cloud, by API.",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["api"],
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(call_seconds.clone()))
            .expect("metric names are unique");
        let routes = gauge_vec(
            registry,
            "meshgate_cloud_routes",
            "Cloud routes this appliance claims, by state (claimed; converged: the cloud confirmed them pointing here).",
            &["state"],
        );
        CloudMetrics {
            calls: counter_vec(
                registry,
                "meshgate_cloud_calls_total",
                "Calls to the cloud, by API and outcome.",
                &["api", "outcome"],
            ),
            call_seconds,
            claimed: routes.with_label_values(&["claimed"]),
            converged: routes.with_label_values(&["converged"]),
            claim_changes: counter_vec(
                registry,
                "meshgate_cloud_route_claims_total",
                "Routes this appliance started (claim) or stopped (release) claiming.",
                &["change"],
            ),
            discovery_skipped: {
                let c = prometheus::IntCounter::new(
                    "meshgate_discovery_skipped_total",
                    "Instances tagged with the mesh that discovery skipped: no valid meshgate:id, no private address, or a meshgate:signal-port that is not a port.",
                )
                .expect("static metric definition is valid");
                registry
                    .register(Box::new(c.clone()))
                    .expect("metric names are unique");
                c
            },
            kms_keys: gauge_vec(
                registry,
                "meshgate_kms_epoch_keys",
                "With KMS epoch keys: the epochs whose data key this appliance holds, by state (ready: decrypted; waiting: KMS not answered yet; refused: KMS refused it, so no new SA of that epoch forms).",
                &["state"],
            ),
            group_active: gauge_vec(
                registry,
                "meshgate_group_active",
                "1 for the active member of each redundancy group, as this gateway's policy decided.",
                &["group", "member"],
            ),
            failovers: counter_vec(
                registry,
                "meshgate_failovers_total",
                "Changes of a redundancy group's active member from one member to another.",
                &["group"],
            ),
            active: Default::default(),
        }
    }

    /// Each redundancy group and its active member (`None`: no member is
    /// present), as this gateway's policy last decided.
    pub fn active_members(&self) -> Vec<(String, Option<String>)> {
        self.active
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(g, a)| (g.clone(), (!a.is_empty()).then(|| a.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Records the policy's choice of `active` for `group` (`before`: the
    /// previous choice); a change from one member to another is a failover.
    pub fn group_decided(&self, group: &str, before: Option<&str>, active: Option<&str>) {
        if let Ok(mut m) = self.active.lock() {
            m.insert(group.to_string(), active.unwrap_or_default().to_string());
        }
        if before == active {
            return;
        }
        if let Some(b) = before {
            let _ = self.group_active.remove_label_values(&[group, b]);
            if active.is_some() {
                self.failovers.with_label_values(&[group]).inc();
            }
        }
        if let Some(a) = active {
            self.group_active.with_label_values(&[group, a]).set(1);
        }
    }
}

/// The sessions of configured peers (`keys::session`).
pub struct SessionMetrics {
    pub up: IntGauge,
    pub waiting: IntGauge,
    /// Sessions keyed (each a fresh pair of SAs).
    pub keyed: IntCounter,
    /// Hellos refused, by reason.
    pub refused: IntCounterVec,
}

impl SessionMetrics {
    fn new(registry: &Registry) -> SessionMetrics {
        let sessions = gauge_vec(
            registry,
            "meshgate_sessions",
            "Configured peers by the state of their session: up (keyed both ways) or waiting.",
            &["state"],
        );
        let keyed = IntCounter::new(
            "meshgate_sessions_keyed_total",
            "Sessions keyed with configured peers, each with fresh SA keys.",
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(keyed.clone()))
            .expect("metric names are unique");
        SessionMetrics {
            up: sessions.with_label_values(&["up"]),
            waiting: sessions.with_label_values(&["waiting"]),
            keyed,
            refused: counter_vec(
                registry,
                "meshgate_session_refused_total",
                "Session hellos refused, by reason (unknown: no configured peer's MAC; replayed; malformed).",
                &["reason"],
            ),
        }
    }
}

/// The signalling layer's metrics: membership, measured health, key
/// negotiation and refusals.
pub struct MeshMetrics {
    /// Members by state (alive, suspect, dead), this gateway excluded.
    pub members: IntGaugeVec,
    /// The smoothed round-trip time to each member, sampled each second.
    pub rtt: prometheus::Histogram,
    /// The largest gap between heartbeats from each member over each
    /// second (a stall of either side shows here before any suspicion).
    pub beat_gap: prometheus::Histogram,
    pub suspicions: IntCounter,
    /// Suspicions that ended with the member alive after all.
    pub refutations: IntCounter,
    /// SA negotiations by kind (initial, rekey) and outcome (ok, or why not).
    pub negotiations: IntCounterVec,
    /// The key epoch new SAs are negotiated under.
    pub epoch: IntGauge,
    /// SAs in the data plane (both directions, retiring ones included) by
    /// the epoch their keys derive from.
    pub sa_epochs: IntGaugeVec,
    /// Connections and messages refused, by what and why.
    pub refused: IntCounterVec,
}

pub(crate) fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntGaugeVec {
    let v =
        IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition is valid");
    registry
        .register(Box::new(v.clone()))
        .expect("metric names are unique");
    v
}

impl MeshMetrics {
    fn new(registry: &Registry) -> MeshMetrics {
        let members = gauge_vec(
            registry,
            "meshgate_members",
            "Other members of the mesh, by state.",
            &["state"],
        );
        for s in ["alive", "suspect", "dead"] {
            members.with_label_values(&[s]);
        }
        let rtt = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "meshgate_member_rtt_seconds",
                "Smoothed round-trip time to each member, measured by the liveness probes and sampled each second.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0,
            ]),
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(rtt.clone()))
            .expect("metric names are unique");
        let beat_gap = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "meshgate_member_heartbeat_gap_seconds",
                "The largest gap between heartbeats received from each member over each second (heartbeats are sent every 100 ms; a member silent for 600 ms is reported).",
            )
            .buckets(vec![
                0.11, 0.12, 0.135, 0.15, 0.175, 0.2, 0.25, 0.3, 0.4, 0.6, 1.0, 2.0,
            ]),
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(beat_gap.clone()))
            .expect("metric names are unique");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        let suspicions = counter(
            "meshgate_member_suspicions_total",
            "Members that became suspect.",
        );
        let refutations = counter(
            "meshgate_member_refutations_total",
            "Suspect members that turned out alive (false suspicions refuted).",
        );
        let negotiations = counter_vec(
            registry,
            "meshgate_sa_negotiations_total",
            "SA negotiations, by kind (initial, rekey) and outcome (ok, or the reason they failed).",
            &["kind", "outcome"],
        );
        for k in ["initial", "rekey"] {
            negotiations.with_label_values(&[k, "ok"]);
        }
        let epoch = IntGauge::new(
            "meshgate_key_epoch",
            "The key epoch new SAs are negotiated under.",
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(epoch.clone()))
            .expect("metric names are unique");
        let sa_epochs = gauge_vec(
            registry,
            "meshgate_sas_by_epoch",
            "Negotiated SAs in the data plane (both directions, retiring ones included), by the key epoch they derive from.",
            &["epoch"],
        );
        let refused = counter_vec(
            registry,
            "meshgate_signal_refused_total",
            "Signalling connections and messages refused, by what (connection, message, membership, record, epochs, certificate, key_exchange) and reason.",
            &["what", "reason"],
        );
        MeshMetrics {
            members,
            rtt,
            beat_gap,
            suspicions,
            refutations,
            negotiations,
            epoch,
            sa_epochs,
            refused,
        }
    }
}

/// The counters of one peer in one direction, resolved once.
#[derive(Clone)]
pub struct FlowCounters {
    pub peer_packets: IntCounter,
    pub peer_bytes: IntCounter,
    pub sa_packets: IntCounter,
    pub sa_bytes: IntCounter,
    /// Drops on this SA, by reason (`meshgate status`).
    pub drops: std::sync::Arc<crate::sa_book::SaDrops>,
}

impl FlowCounters {
    /// Counts one inner packet of `len` bytes.
    #[inline]
    pub fn count(&self, len: usize) {
        self.peer_packets.inc();
        self.peer_bytes.inc_by(len as u64);
        self.sa_packets.inc();
        self.sa_bytes.inc_by(len as u64);
    }
}

/// The drop counters, indexed by [`DropReason::index`].
#[derive(Clone)]
pub struct DropCounters([IntCounter; DropReason::ALL.len()]);

impl DropCounters {
    #[inline]
    pub fn count(&self, reason: DropReason) {
        self.0[reason.index()].inc();
    }
}

/// Datagrams on the ESP port that are not ESP (RFC 3948).
#[derive(Clone)]
pub struct UdpControlCounters {
    pub nat_keepalive: IntCounter,
    pub non_esp: IntCounter,
}

pub(crate) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("static metric definition is valid");
    registry
        .register(Box::new(v.clone()))
        .expect("metric names are unique");
    v
}

impl Metrics {
    pub fn new(gateway_id: &str) -> Metrics {
        let registry = Registry::new();
        let peer_packets = counter_vec(
            &registry,
            "meshgate_peer_packets_total",
            "Inner packets carried to (out) or from (in) a peer.",
            &["peer", "direction"],
        );
        let peer_bytes = counter_vec(
            &registry,
            "meshgate_peer_bytes_total",
            "Inner packet bytes carried to (out) or from (in) a peer.",
            &["peer", "direction"],
        );
        let sa_packets = counter_vec(
            &registry,
            "meshgate_sa_packets_total",
            "Packets sent (out) or delivered (in) through one SA.",
            &["peer", "spi", "direction"],
        );
        let sa_bytes = counter_vec(
            &registry,
            "meshgate_sa_bytes_total",
            "Inner bytes sent (out) or delivered (in) through one SA.",
            &["peer", "spi", "direction"],
        );
        let drops = counter_vec(
            &registry,
            "meshgate_drops_total",
            "Packets dropped by the data plane, by reason.",
            &["reason"],
        );
        let lifetime_events = counter_vec(
            &registry,
            "meshgate_sa_lifetime_events_total",
            "SA lifetime limits reached (soft: rekey due; hard: SA unusable).",
            &["peer", "spi", "direction", "stage", "limit"],
        );
        let udp_control = counter_vec(
            &registry,
            "meshgate_udp_control_total",
            "Non-ESP datagrams on the ESP-in-UDP port (RFC 3948).",
            &["kind"],
        );
        let echo_requests = counter_vec(
            &registry,
            "meshgate_echo_requests_total",
            "Tunnel echo requests from peers (meshgate ping), by outcome (answered; over_budget: beyond 100 a second, unanswered).",
            &["outcome"],
        );
        for o in ["answered", "over_budget"] {
            echo_requests.with_label_values(&[o]);
        }
        let sa_info = IntGaugeVec::new(
            Opts::new("meshgate_sa_info", "Installed SAs (value 1)."),
            &["peer", "spi", "direction", "cipher"],
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(sa_info.clone()))
            .expect("metric names are unique");
        let peers = IntGauge::new("meshgate_peers", "Configured peers.")
            .expect("static metric definition is valid");
        registry
            .register(Box::new(peers.clone()))
            .expect("metric names are unique");
        let info = IntGaugeVec::new(
            Opts::new(
                "meshgate_build_info",
                "Gateway version and identity (value 1).",
            ),
            &["version", "gateway"],
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(info.clone()))
            .expect("metric names are unique");
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), gateway_id])
            .set(1);
        // Zero-initialise every drop reason so dashboards see them all.
        for r in DropReason::ALL {
            drops.with_label_values(&[r.as_str()]);
        }
        let policy_evaluations = IntCounter::new(
            "meshgate_policy_evaluations_total",
            "Policy evaluations (each a call to the policy's decide export).",
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(policy_evaluations.clone()))
            .expect("metric names are unique");
        let policy_latency = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "meshgate_policy_evaluation_seconds",
                "Time of one policy evaluation, marshalling included.",
            )
            .buckets(vec![
                1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1,
            ]),
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(policy_latency.clone()))
            .expect("metric names are unique");
        let policy_reloads = counter_vec(
            &registry,
            "meshgate_policy_reloads_total",
            "Policy reloads, by outcome (ok: in force; refused: the old one stays).",
            &["outcome"],
        );
        let policy_traps = counter_vec(
            &registry,
            "meshgate_policy_traps_total",
            "Policy calls that trapped, by kind.",
            &["kind"],
        );
        for k in ["timeout", "out_of_memory", "trap"] {
            policy_traps.with_label_values(&[k]);
        }
        for o in ["ok", "refused"] {
            policy_reloads.with_label_values(&[o]);
        }
        let policy_events = counter_vec(
            &registry,
            "meshgate_policy_events_total",
            "Events that call for a policy evaluation, by trigger (several may be coalesced into one evaluation).",
            &["trigger"],
        );
        let policy_event_evaluations = counter_vec(
            &registry,
            "meshgate_policy_event_evaluations_total",
            "Evaluations on events, by outcome (failed: trap, timeout, out of memory or invalid decisions; the last good tables stay in force).",
            &["outcome"],
        );
        for o in ["ok", "failed"] {
            policy_event_evaluations.with_label_values(&[o]);
        }
        let policy_info = IntGaugeVec::new(
            Opts::new(
                "meshgate_policy_info",
                "The policy in force (value 1): its name and content hash.",
            ),
            &["name", "hash"],
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(policy_info.clone()))
            .expect("metric names are unique");
        let mesh = MeshMetrics::new(&registry);
        let sessions = SessionMetrics::new(&registry);
        let cloud = CloudMetrics::new(&registry);
        Metrics {
            sas: crate::sa_book::SaBook::default(),
            mesh,
            sessions,
            cloud,
            registry,
            policy_evaluations,
            policy_latency,
            policy_reloads,
            policy_events,
            policy_event_evaluations,
            policy_traps,
            policy_info,
            peer_packets,
            peer_bytes,
            sa_packets,
            sa_bytes,
            drops,
            lifetime_events,
            udp_control,
            echo_requests,
            sa_info,
            peers,
        }
    }

    /// Resolves the counters of `peer`'s SA `spi` in `dir` and marks the SA installed.
    /// Also notes the SA in [`Metrics::sas`] with when it was installed
    /// and when its rekey is due (`rekey_after`, its soft time limit).
    pub fn flow(
        &self,
        peer: &str,
        spi: u32,
        dir: Direction,
        cipher: &'static str,
        rekey_after: Option<std::time::Duration>,
    ) -> FlowCounters {
        let drops = self.sas.installed(peer, spi, dir, cipher, rekey_after);
        let spi = format!("{spi:#010x}");
        let d = dir.as_str();
        self.sa_info
            .with_label_values(&[peer, &spi, d, cipher])
            .set(1);
        FlowCounters {
            peer_packets: self.peer_packets.with_label_values(&[peer, d]),
            peer_bytes: self.peer_bytes.with_label_values(&[peer, d]),
            sa_packets: self.sa_packets.with_label_values(&[peer, &spi, d]),
            sa_bytes: self.sa_bytes.with_label_values(&[peer, &spi, d]),
            drops,
        }
    }

    /// Forgets the series of an SA that is gone (rekeyed away or torn
    /// down), so a gateway that rekeys all day keeps a bounded number of
    /// series. The peer's totals stay.
    pub fn sa_retired(&self, peer: &str, spi: u32, dir: Direction, cipher: &str) {
        self.sas.retired(peer, spi, dir);
        let spi = format!("{spi:#010x}");
        let d = dir.as_str();
        let _ = self.sa_info.remove_label_values(&[peer, &spi, d, cipher]);
        let _ = self.sa_packets.remove_label_values(&[peer, &spi, d]);
        let _ = self.sa_bytes.remove_label_values(&[peer, &spi, d]);
        for stage in ["soft", "hard"] {
            for limit in crate::esp::LimitKind::ALL {
                let _ = self.lifetime_events.remove_label_values(&[
                    peer,
                    &spi,
                    d,
                    stage,
                    limit.as_str(),
                ]);
            }
        }
    }

    pub fn drops(&self) -> DropCounters {
        DropCounters(DropReason::ALL.map(|r| self.drops.with_label_values(&[r.as_str()])))
    }

    /// Echo requests answered, and refused over the budget.
    pub fn echo_requests(&self) -> [IntCounter; 2] {
        ["answered", "over_budget"].map(|o| self.echo_requests.with_label_values(&[o]))
    }

    pub fn udp_control(&self) -> UdpControlCounters {
        UdpControlCounters {
            nat_keepalive: self.udp_control.with_label_values(&["nat_keepalive"]),
            non_esp: self.udp_control.with_label_values(&["non_esp"]),
        }
    }

    /// Counts an SA lifetime event (off the packet path: events are rare).
    pub fn lifetime_event(&self, peer: &str, dir: Direction, ev: &LifetimeEvent) {
        let (stage, limit) = ev.label();
        let spi = match ev {
            LifetimeEvent::Soft { spi, .. } | LifetimeEvent::Hard { spi, .. } => *spi,
        };
        self.lifetime_events
            .with_label_values(&[peer, &format!("{spi:#010x}"), dir.as_str(), stage, limit])
            .inc();
    }

    pub fn policy_evaluated(&self, took: std::time::Duration) {
        self.policy_evaluations.inc();
        self.policy_latency.observe(took.as_secs_f64());
    }

    pub fn policy_reload(&self, outcome: &str) {
        self.policy_reloads.with_label_values(&[outcome]).inc();
    }

    /// An event of kind `trigger` asked for an evaluation.
    pub fn policy_event(&self, trigger: &str) {
        self.policy_events.with_label_values(&[trigger]).inc();
    }

    /// The triggers there are, so each series exists (at 0) from the start.
    pub fn policy_triggers(&self, triggers: &[&str]) {
        for t in triggers {
            self.policy_events.with_label_values(&[t]);
        }
    }

    pub fn policy_event_evaluation(&self, outcome: &str) {
        self.policy_event_evaluations
            .with_label_values(&[outcome])
            .inc();
    }

    pub fn policy_trap(&self, kind: &str) {
        self.policy_traps.with_label_values(&[kind]).inc();
    }

    /// Marks `name` at `hash` as the one policy in force.
    pub fn policy_in_force(&self, name: &str, hash: &str) {
        self.policy_info.reset();
        self.policy_info.with_label_values(&[name, hash]).set(1);
    }

    /// The text exposition format.
    /// Where metrics of a part that starts later (the underlay prober)
    /// are registered.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Sums the samples of metric `name` in Prometheus text whose label set
/// contains `filter` (an empty filter takes every sample); used by the lab
/// summary and the tests, which read gateways the way Prometheus does.
pub fn sum_samples(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
