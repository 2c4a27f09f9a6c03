//! A gateway as a member of the mesh: what it advertises of itself, and
//! the task that turns what its signalling member ([`crate::signal::node`])
//! reports into metrics, log lines and policy events. (The member itself
//! puts negotiated SAs into the data plane, in order with its messages.)

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::config::{Config, Placement};
use crate::keys;
use crate::member::NodeEvent;
use crate::membership::info::MemberInfo;
use crate::membership::{MembershipEvent, Observed};
use crate::metrics::Metrics;
use crate::policy::driver::{EventSender, PolicyEvent};
use crate::policy::schedule::Trigger;

/// What this gateway advertises of itself, from its config.
pub fn local_info(config: &Config) -> MemberInfo {
    let Placement {
        region,
        zone,
        account,
        role,
        group,
    } = &config.placement;
    MemberInfo {
        id: config.id.clone(),
        // A restarted gateway's record must replace the one the mesh
        // remembers: versions start at the wall clock.
        version: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64),
        region: region.clone(),
        zone: zone.clone(),
        account: account.clone(),
        role: role.as_str().into(),
        group: group.clone(),
        prefixes: config
            .prefixes
            .iter()
            .map(|p| (p.addr(), p.prefix_len()))
            .collect(),
        endpoints: config.labelled_endpoints(),
        policy_version: 0,
        load_permille: 0,
        rtt_us: 0,
        loss_ppm: 0,
        epoch: config.signal.as_ref().map_or(1, |s| s.keys.epoch),
        order: None,
        // The member core fills in its SWIM identity.
        signal: None,
        generation: 0,
    }
}

/// The policy version a member advertises: the first 32 bits of its
/// module's content hash (so members running the same module agree, and a
/// rollout shows who has the new one).
pub fn policy_version(hash: &str) -> u32 {
    u32::from_str_radix(hash.get(..8).unwrap_or(hash), 16).unwrap_or(0)
}

/// Process CPU time (user and system) so far, for the load a member
/// advertises.
pub fn cpu_time() -> std::time::Duration {
    // SAFETY: getrusage fills the struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return std::time::Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec as u64)
            + std::time::Duration::from_micros(t.tv_usec as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// A digest of what in a record is membership (placement, prefixes,
/// endpoints, epochs), leaving out what moves with health and load.
fn stable_part(info: &MemberInfo) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &info.region,
        &info.zone,
        &info.account,
        &info.role,
        &info.group,
        &info.prefixes,
        &info.endpoints,
        info.policy_version,
        info.epoch,
        &info.order,
    )
        .hash(&mut h);
    h.finish()
}

fn state_name(s: foca::State) -> &'static str {
    match s {
        foca::State::Alive => "alive",
        foca::State::Suspect => "suspect",
        foca::State::Down => "dead",
    }
}

/// What the mesh task remembers between events.
#[derive(Default)]
struct Seen {
    /// Each member's last state and the stable part of its record.
    states: HashMap<String, (foca::State, u64)>,
    /// Members with an SA to send to (to tell first keys from rekeys).
    keyed: HashSet<String>,
    /// The members as the admin API shows them.
    list: MemberList,
    /// The underlay prober's side: the paths it measured (into the view)
    /// and the members it probes.
    underlay: Option<UnderlayLink>,
    /// Refusals logged, per what and kind: when last, and how many were
    /// counted but not logged since (a flood is counted, and logged
    /// once every [`SAY_EVERY`]).
    said: HashMap<(&'static str, &'static str), (Option<std::time::Instant>, u64)>,
}

/// How often a refusal of one kind is logged at most.
const SAY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The members as `GET /members` shows them, as of the last observation.
pub type MemberList = Arc<std::sync::Mutex<Vec<MemberRow>>>;

/// One member as this one sees it: what the operator asks first (is it
/// up, since when, how is the path from here: `rtt_ms` and `loss`), and
/// what it advertises (`median_rtt_ms`, the median round trip of its own
/// paths, its region, role, policy version, load, epoch, endpoints and
/// prefixes). The JSON form of `meshgate members --json`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemberRow {
    pub id: String,
    /// alive, suspect or dead.
    pub state: &'static str,
    /// Seconds in this state.
    pub for_secs: u64,
    pub rtt_ms: Option<f64>,
    /// Inbound loss, 0 to 1.
    pub loss: f64,
    pub median_rtt_ms: f64,
    pub region: String,
    pub role: String,
    pub policy_version: String,
    pub load_permille: u32,
    pub epoch: u32,
    /// Its underlays.
    pub endpoints: Vec<MemberEndpoint>,
    pub prefixes: Vec<String>,
}

/// Where a member takes ESP on one underlay.
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemberEndpoint {
    pub label: String,
    pub address: String,
}

/// The rows of `observed`, by member id.
fn rows(observed: &[Observed], now: Instant) -> Vec<MemberRow> {
    let mut rows: Vec<MemberRow> = observed
        .iter()
        .map(|o| {
            let i = &o.info;
            MemberRow {
                id: i.id.clone(),
                state: state_name(o.state),
                for_secs: now.saturating_duration_since(o.since).as_secs(),
                rtt_ms: o.rtt.map(|r| r.as_secs_f64() * 1e3),
                loss: o.loss,
                median_rtt_ms: f64::from(i.rtt_us) / 1e3,
                region: i.region.clone(),
                role: i.role.clone(),
                policy_version: format!("{:08x}", i.policy_version),
                load_permille: i.load_permille,
                epoch: i.epoch,
                endpoints: i
                    .endpoints
                    .iter()
                    .map(|(l, a)| MemberEndpoint {
                        label: l.clone(),
                        address: a.to_string(),
                    })
                    .collect(),
                prefixes: i.prefixes.iter().map(|(a, l)| format!("{a}/{l}")).collect(),
            }
        })
        .collect();
    rows.sort_by(|a, b| a.id.cmp(&b.id));
    rows
}

/// One line per member, under a header.
pub fn render(rows: &[MemberRow]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<20} {:<8} {:>8} {:>9} {:>6} {:>9} {:<16} {:<5} {:>8} {:>5} {:>5}  {:<22} prefixes\n",
        "member",
        "state",
        "for",
        "rtt",
        "loss",
        "med-rtt",
        "region",
        "role",
        "policy",
        "load",
        "epoch",
        "endpoint"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<20} {:<8} {:>7}s {:>9} {:>5.1}% {:>9} {:<16} {:<5} {:>8} {:>4}‰ {:>5}  {:<22} {}",
            r.id,
            r.state,
            r.for_secs,
            r.rtt_ms.map_or("-".to_string(), |r| format!("{r:.1} ms")),
            r.loss * 100.0,
            format!("{:.1} ms", r.median_rtt_ms),
            r.region,
            r.role,
            r.policy_version,
            r.load_permille,
            r.epoch,
            r.endpoints.first().map_or("-", |e| e.address.as_str()),
            r.prefixes.join(",")
        );
    }
    out
}

/// What membership hands the underlay prober, and takes from it.
pub struct UnderlayLink {
    pub paths: crate::underlay::task::SharedPaths,
    pub members: tokio::sync::watch::Sender<crate::underlay::task::Members>,
}

/// Runs until the member's event channel closes: logs and counts what the
/// member reports, and hands membership to the policy.
pub async fn run(
    mut local: MemberInfo,
    mut events: UnboundedReceiver<NodeEvent>,
    policy: EventSender,
    metrics: Arc<Metrics>,
    (list, underlay): (MemberList, Option<UnderlayLink>),
) {
    let mut seen = Seen {
        list,
        underlay,
        ..Seen::default()
    };
    while let Some(e) = events.recv().await {
        match e {
            // The policy's view of this member follows its record.
            NodeEvent::OwnRecord(info) => local = *info,
            e => on_node_event(e, &mut seen, &local, &policy, &metrics),
        }
    }
}

fn on_node_event(
    e: NodeEvent,
    seen: &mut Seen,
    local: &MemberInfo,
    policy: &EventSender,
    metrics: &Metrics,
) {
    let m = &metrics.mesh;
    match e {
        NodeEvent::Membership(MembershipEvent::Up(who)) => {
            tracing::info!(member = %who.id, addr = %who.addr, "member up");
        }
        NodeEvent::Membership(MembershipEvent::Down(who)) => {
            seen.keyed.remove(&who.id);
            tracing::warn!(member = %who.id, "member down; its SAs are removed");
        }
        NodeEvent::Membership(MembershipEvent::Renamed { new, .. }) => {
            seen.keyed.remove(&new.id);
            tracing::info!(member = %new.id, "member restarted; its old SAs are removed");
        }
        NodeEvent::Membership(_) => {}
        NodeEvent::Installed {
            peer,
            spi,
            epoch,
            outbound: true,
        } => {
            let rekey = !seen.keyed.insert(peer.clone());
            let kind = if rekey { "rekey" } else { "initial" };
            m.negotiations.with_label_values(&[kind, "ok"]).inc();
            if rekey {
                tracing::debug!(
                    peer,
                    epoch,
                    spi = format_args!("{spi:#010x}"),
                    "SAs with {peer} rekeyed"
                );
            } else {
                tracing::info!(
                    peer,
                    epoch,
                    spi = format_args!("{spi:#010x}"),
                    "SAs with {peer} negotiated"
                );
            }
        }
        NodeEvent::Installed { .. } => {}
        NodeEvent::Keys(keys::Event::Failed { peer, error }) => {
            let kind = if seen.keyed.contains(&peer) {
                "rekey"
            } else {
                "initial"
            };
            m.negotiations
                .with_label_values(&[kind, error.kind()])
                .inc();
            tracing::warn!(peer, "SA negotiation with {peer} failed: {error}");
        }
        NodeEvent::Keys(_) => {}
        NodeEvent::Refused(r) => {
            m.refused.with_label_values(&[r.what, r.kind]).inc();
            // Two members starting at once, or a message of an exchange
            // that already ended, is ordinary; the rest is worth a look,
            // once every SAY_EVERY per kind (all are counted).
            if matches!(r.kind, "collision" | "unexpected") {
                tracing::debug!(peer = %r.peer, what = r.what, "refused: {}", r.reason);
                return;
            }
            let now = std::time::Instant::now();
            let said = seen.said.entry((r.what, r.kind)).or_insert((None, 0));
            if said.0.is_some_and(|t| now.duration_since(t) < SAY_EVERY) {
                said.1 += 1;
                return;
            }
            let unsaid = std::mem::take(&mut said.1);
            said.0 = Some(now);
            if unsaid > 0 {
                tracing::warn!(peer = %r.peer, what = r.what, "refused: {} ({unsaid} more of this kind since the last said, counted in meshgate_signal_refused_total)", r.reason);
            } else {
                tracing::warn!(peer = %r.peer, what = r.what, "refused: {}", r.reason);
            }
        }
        NodeEvent::Observed(observed) => on_observed(observed, seen, local, policy, metrics),
        NodeEvent::OwnRecord(_) => {}
        NodeEvent::Epochs {
            current,
            floor,
            revoked,
        } => {
            m.epoch.set(i64::from(current));
            tracing::info!(current, floor, ?revoked, "new SAs use key epoch {current}");
        }
        NodeEvent::SaEpochs(counts) => {
            m.sa_epochs.reset();
            for (epoch, n) in counts {
                m.sa_epochs
                    .with_label_values(&[&epoch.to_string()])
                    .set(n as i64);
            }
        }
    }
}

/// A fresh look at the members: their records to the tunnels, counts and
/// health to the metrics, and the whole to the policy.
fn on_observed(
    observed: Vec<Observed>,
    seen: &mut Seen,
    local: &MemberInfo,
    policy: &EventSender,
    metrics: &Metrics,
) {
    let m = &metrics.mesh;
    let mut counts = HashMap::from([("alive", 0), ("suspect", 0), ("dead", 0)]);
    let mut membership_changed = false;
    for o in &observed {
        *counts.entry(state_name(o.state)).or_default() += 1;
        let before = seen
            .states
            .insert(o.info.id.clone(), (o.state, stable_part(&o.info)));
        match (before.map(|b| b.0), o.state) {
            (Some(foca::State::Suspect), foca::State::Alive) => m.refutations.inc(),
            (Some(b), foca::State::Suspect) if b != foca::State::Suspect => m.suspicions.inc(),
            _ => {}
        }
        // A new state or a changed placement, prefixes or endpoints is a
        // membership change; health and load moving are not.
        membership_changed |= before != Some((o.state, stable_part(&o.info)));
        if let Some(rtt) = o.rtt {
            m.rtt.observe(rtt.as_secs_f64());
        }
        if let Some(gap) = o.beat_gap {
            m.beat_gap.observe(gap.as_secs_f64());
        }
    }
    for (state, n) in counts {
        m.members.with_label_values(&[state]).set(n);
    }
    let trigger = if membership_changed {
        Trigger::Membership
    } else {
        Trigger::Health
    };
    let now = Instant::now();
    if let Ok(mut l) = seen.list.lock() {
        *l = rows(&observed, now);
    }
    // The prober probes the members that are up, at the endpoints their
    // records give; what it measured goes into the view below.
    let mut paths = Vec::new();
    if let Some(u) = &seen.underlay {
        let up: crate::underlay::task::Members = observed
            .iter()
            .filter(|o| o.state != foca::State::Down)
            .map(|o| (o.info.id.clone(), o.info.endpoints.clone()))
            .collect();
        u.members.send_if_modified(|cur| {
            let moved = *cur != up;
            if moved {
                *cur = up;
            }
            moved
        });
        if let Ok(p) = u.paths.lock() {
            paths.clone_from(&p);
        }
    }
    let local = local.clone();
    let _ = policy.send(PolicyEvent::new(trigger, move |view| {
        let fresh = crate::policy::view::from_observed(
            &local,
            &observed,
            &view.params,
            now,
            crate::time::unix_ms(),
        );
        crate::policy::view::replace_members(view, fresh);
        crate::underlay::task::apply(view, &paths, now, crate::time::unix_ms());
    }));
}
