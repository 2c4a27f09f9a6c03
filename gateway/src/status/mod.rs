//! `meshgate status`: this gateway, its peers and its redundancy groups,
//! in one look, as text for a person or as JSON (`--json`, or the admin
//! API's `GET /status` with `Accept: application/json`).
//!
//! Assembled at each request from what the gateway keeps anyway: the
//! metrics registry (traffic, drops, underlays, epoch), the SA book
//! (SPIs, ages, rekeys), the member list, the policy in force and the
//! cloud reconciler's status. Nothing here is on the packet path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::SystemTime;

use serde::Serialize;

use crate::mesh::MemberRow;
use crate::metrics::Metrics;

/// What a gateway is, fixed at its start.
#[derive(Clone, Debug, Serialize)]
pub struct Identity {
    pub id: String,
    pub region: String,
    pub zone: Option<String>,
    pub role: String,
    /// `mesh` (a member: peers and keys negotiated over the signalling
    /// channel) or `configured` (the config's peers, pre-shared keys).
    pub mode: &'static str,
    pub tun: String,
    pub mtu: u16,
    /// The ESP-in-UDP socket.
    pub listen: SocketAddr,
    /// Where peers send ESP to it, by underlay label.
    pub endpoints: Vec<Endpoint>,
    pub offloads: crate::dataplane::Offloads,
    /// The config's peers (configured mode): id and endpoint.
    #[serde(skip)]
    pub configured_peers: Vec<(String, SocketAddr)>,
    #[serde(skip)]
    pub started: SystemTime,
}

#[derive(Clone, Debug, Serialize)]
pub struct Endpoint {
    pub label: String,
    pub address: SocketAddr,
}

/// The whole answer of `meshgate status`.
#[derive(Debug, Serialize)]
pub struct Status {
    pub gateway: GatewayStatus,
    pub peers: Vec<PeerStatus>,
    /// Packets the data plane dropped since start, by reason (this
    /// gateway's, whichever peer they came from or went to).
    pub drops: BTreeMap<String, u64>,
    /// Each redundancy group in this gateway's view and its active member
    /// as this gateway's policy decides (`null`: none present).
    pub groups: Vec<GroupStatus>,
    /// This gateway's route claims on the cloud (`null`: no `[cloud]`).
    pub cloud_routes: Option<crate::cloud::reconcile::Status>,
}

#[derive(Debug, Serialize)]
pub struct GatewayStatus {
    #[serde(flatten)]
    pub identity: Identity,
    pub up_secs: u64,
    pub policy: PolicyStatus,
    /// The epoch new SAs are negotiated under (mesh members).
    pub key_epoch: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct PolicyStatus {
    /// The module in force: a built-in's name or the file's path.
    pub running: String,
    pub hash: String,
    /// What the config names: what a restart loads (a reload without
    /// --module reloads the running one's source).
    pub configured: String,
    /// The running policy is not the configured one (a reload loaded
    /// another).
    pub differs: bool,
}

#[derive(Debug, Serialize)]
pub struct PeerStatus {
    pub id: String,
    /// Mesh: alive, suspect or dead (as membership sees it). Configured:
    /// up (its session keyed), or waiting (for the peer's session hello).
    pub state: String,
    /// An SA each way is installed.
    pub keyed: bool,
    /// The underlay label the policy chose for it, and the address ESP
    /// goes to.
    pub underlay: Option<String>,
    pub endpoint: Option<String>,
    /// Seconds since its newest SA was installed (its last key exchange).
    pub last_keyed_secs: Option<u64>,
    pub packets_in: u64,
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Packets dropped on its SAs installed now, by reason (replay, icv,
    /// spoofed, expired, ...): the drops that can be laid at this peer's
    /// door. The gateway's `drops` count every drop.
    pub drops: BTreeMap<String, u64>,
    pub sas: Vec<SaStatus>,
}

#[derive(Debug, Serialize)]
pub struct SaStatus {
    /// `0x` and 8 hex digits, as in the metrics and in packet captures.
    pub spi: String,
    /// `in` or `out`.
    pub direction: &'static str,
    pub cipher: &'static str,
    pub age_secs: u64,
    /// Seconds until its soft lifetime asks for a rekey (`null`: no time
    /// limit; 0: due now).
    pub rekey_in_secs: Option<u64>,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct GroupStatus {
    pub group: String,
    pub active: Option<String>,
}

/// What the admin API holds besides the metrics to answer with.
pub struct Sources<'a> {
    pub identity: &'a Identity,
    pub metrics: &'a Metrics,
    pub members: Option<Vec<MemberRow>>,
    pub running: (String, String),
    pub configured: String,
    pub cloud: Option<crate::cloud::reconcile::Status>,
}

/// Samples of the registry: metric name -> [(labels, value)].
type Samples = BTreeMap<String, Vec<(BTreeMap<String, String>, f64)>>;

fn samples(metrics: &Metrics) -> Samples {
    let mut out = Samples::new();
    for family in metrics.registry().gather() {
        let rows = out.entry(family.name().to_string()).or_default();
        for m in family.get_metric() {
            let labels = m
                .get_label()
                .iter()
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            // Counters and gauges only; histograms are not read here.
            let value = m.get_counter().get_value() + m.get_gauge().get_value();
            rows.push((labels, value));
        }
    }
    out
}

/// The value of `name` whose labels include every pair of `with`.
fn value(s: &Samples, name: &str, with: &[(&str, &str)]) -> u64 {
    s.get(name)
        .into_iter()
        .flatten()
        .filter(|(labels, _)| {
            with.iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| *v)
        .sum::<f64>() as u64
}

/// The label `want` of every sample of `name` with value 1 and labels `with`.
fn labels_of(s: &Samples, name: &str, want: &str) -> Vec<(BTreeMap<String, String>, String)> {
    s.get(name)
        .into_iter()
        .flatten()
        .filter(|(_, v)| *v >= 1.0)
        .filter_map(|(labels, _)| Some((labels.clone(), labels.get(want)?.clone())))
        .collect()
}

/// Assembles the status now.
pub fn collect(src: Sources<'_>) -> Status {
    let now = SystemTime::now();
    let secs_since = |t: SystemTime| now.duration_since(t).map_or(0, |d| d.as_secs());
    let s = samples(src.metrics);
    let id = &src.identity;
    let members: BTreeMap<String, MemberRow> = src
        .members
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let underlays: BTreeMap<String, String> = labels_of(&s, "meshgate_peer_underlay", "underlay")
        .into_iter()
        .filter_map(|(labels, u)| Some((labels.get("peer")?.clone(), u)))
        .collect();
    let sas = src.metrics.sas.all();
    let mut ids: BTreeSet<String> = members.keys().cloned().collect();
    ids.extend(id.configured_peers.iter().map(|(p, _)| p.clone()));
    ids.extend(sas.iter().map(|e| e.peer.clone()));
    for (labels, _) in s.get("meshgate_peer_packets_total").into_iter().flatten() {
        ids.extend(labels.get("peer").cloned());
    }
    let peers = ids
        .into_iter()
        .map(|peer| {
            let mine: Vec<&crate::sa_book::SaEntry> =
                sas.iter().filter(|e| e.peer == peer).collect();
            let keyed = ["in", "out"]
                .iter()
                .all(|d| mine.iter().any(|e| e.direction == *d));
            let underlay = underlays.get(&peer).cloned();
            let member = members.get(&peer);
            let endpoint = match member {
                Some(m) => m
                    .endpoints
                    .iter()
                    .find(|e| Some(&e.label) == underlay.as_ref())
                    .or(m.endpoints.first())
                    .map(|e| e.address.clone()),
                None => id
                    .configured_peers
                    .iter()
                    .find(|(p, _)| *p == peer)
                    .map(|(_, a)| a.to_string()),
            };
            let state = match member {
                Some(m) => m.state.to_string(),
                None if keyed => "up".into(),
                None => "waiting".into(),
            };
            let traffic = |metric: &str, dir: &str| {
                value(&s, metric, &[("peer", peer.as_str()), ("direction", dir)])
            };
            PeerStatus {
                state,
                keyed,
                underlay: underlay.or_else(|| member.map(|_| "internet".into())),
                endpoint,
                last_keyed_secs: mine.iter().map(|e| secs_since(e.installed)).min(),
                packets_in: traffic("meshgate_peer_packets_total", "in"),
                packets_out: traffic("meshgate_peer_packets_total", "out"),
                bytes_in: traffic("meshgate_peer_bytes_total", "in"),
                bytes_out: traffic("meshgate_peer_bytes_total", "out"),
                drops: mine.iter().flat_map(|e| e.drops.counted()).fold(
                    BTreeMap::new(),
                    |mut all, (reason, n)| {
                        *all.entry(reason.to_string()).or_insert(0) += n;
                        all
                    },
                ),
                sas: mine
                    .iter()
                    .map(|e| {
                        let spi = format!("{:#010x}", e.spi);
                        let on_sa = |metric: &str| {
                            value(
                                &s,
                                metric,
                                &[
                                    ("peer", peer.as_str()),
                                    ("spi", spi.as_str()),
                                    ("direction", e.direction),
                                ],
                            )
                        };
                        let age = secs_since(e.installed);
                        SaStatus {
                            packets: on_sa("meshgate_sa_packets_total"),
                            bytes: on_sa("meshgate_sa_bytes_total"),
                            spi,
                            direction: e.direction,
                            cipher: e.cipher,
                            age_secs: age,
                            rekey_in_secs: e.rekey_after.map(|r| r.as_secs().saturating_sub(age)),
                        }
                    })
                    .collect(),
                id: peer,
            }
        })
        .collect();
    let drops = s
        .get("meshgate_drops_total")
        .into_iter()
        .flatten()
        .filter_map(|(labels, v)| Some((labels.get("reason")?.clone(), *v as u64)))
        .collect();
    let (running, hash) = src.running;
    Status {
        gateway: GatewayStatus {
            identity: (*id).clone(),
            up_secs: secs_since(id.started),
            policy: PolicyStatus {
                differs: running != src.configured,
                running,
                hash,
                configured: src.configured,
            },
            key_epoch: (id.mode == "mesh").then(|| value(&s, "meshgate_key_epoch", &[]) as u32),
        },
        peers,
        drops,
        groups: src
            .metrics
            .cloud
            .active_members()
            .into_iter()
            .map(|(group, active)| GroupStatus { group, active })
            .collect(),
        cloud_routes: src.cloud,
    }
}

mod text;
