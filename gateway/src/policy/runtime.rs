//! The policy in force on a running gateway, and replacing it.
//!
//! A reload compiles the new module, evaluates it on the current view (a
//! dry run), validates its decisions and diffs them against the tables in
//! force; only then are new kernel routes added, the tables swapped
//! atomically (the packet threads see the old or the new, never a mix),
//! and withdrawn kernel routes removed. Any failure before the swap leaves
//! the running policy and its tables in force, and says why.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_sdk::View;

use super::{validate, view, Decisions, PolicyEngine, PolicyError, PolicyModule, PolicySource};
use crate::dataplane::SharedTables;
use crate::metrics::Metrics;
use crate::prefix::Prefix;

/// What a reload did, for the operator.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    pub name: String,
    pub hash: String,
    pub compile: Duration,
    /// Whether it was compiled, or found compiled in a cache.
    pub origin: super::host::Origin,
    pub evaluate: Duration,
    /// From validated decisions to tables in force (the swap itself).
    pub swap: Duration,
    pub added: Vec<Prefix>,
    pub withdrawn: Vec<Prefix>,
    /// Prefixes still routed, but over other next hops.
    pub changed: Vec<Prefix>,
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[Prefix]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        };
        writeln!(f, "policy {} ({}) in force", self.name, self.hash)?;
        let origin = match self.origin {
            super::host::Origin::Compiled => "compiled",
            super::host::Origin::Memory => "from the memory cache",
            super::host::Origin::Disk => "from the disk cache",
        };
        writeln!(
            f,
            "compile {:.1} ms ({origin}), evaluate {:.1} µs, swap {:.1} µs",
            self.compile.as_secs_f64() * 1e3,
            self.evaluate.as_secs_f64() * 1e6,
            self.swap.as_secs_f64() * 1e6
        )?;
        writeln!(f, "routes added: {}", list(&self.added))?;
        writeln!(f, "routes withdrawn: {}", list(&self.withdrawn))?;
        writeln!(f, "routes with new next hops: {}", list(&self.changed))
    }
}

/// A kernel route could not be added or removed.
pub type RouteError = Box<dyn std::error::Error + Send + Sync>;

/// The kernel's side of the routes the policy decides: prefixes routed
/// into the tunnel device, so the kernel hands their packets to the data
/// plane. The gateway gives its TUN; tests give a table in memory.
pub trait KernelRoutes: Send + Sync {
    /// The device's name, for messages.
    fn name(&self) -> &str;
    fn add_route(&self, prefix: &Prefix) -> Result<(), RouteError>;
    fn del_route(&self, prefix: &Prefix) -> Result<(), RouteError>;
}

/// Why a policy could not be put into force; the one in force stays.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The module could not be read.
    #[error("{0}")]
    Source(String),
    /// Refused on load, or trapped, ran out of time or memory, or answered
    /// what does not decode.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Answered decisions that do not hold on the view.
    #[error("policy {name} ({hash}) returned invalid decisions:\n  {}", problems.join("\n  "))]
    Invalid {
        name: String,
        hash: String,
        problems: Vec<String>,
    },
    /// A reload whose decisions would withdraw every route in force,
    /// without `force`.
    #[error("{name} ({hash}) would withdraw every route this gateway has ({}), and no traffic would reach its peers: if that is meant, reload with --force", routes.join(", "))]
    WithdrawsEverything {
        name: String,
        hash: String,
        routes: Vec<String>,
    },
    /// The kernel refused a route the decisions need.
    #[error("routing {prefix} into {tun}: {source}")]
    Route {
        prefix: Prefix,
        tun: String,
        source: RouteError,
    },
}

impl RuntimeError {
    /// The `kind` label of the traps counter, for a trap.
    fn trap_kind(&self) -> Option<&'static str> {
        match self {
            RuntimeError::Policy(PolicyError::Trapped { kind, .. }) => Some(kind.as_str()),
            _ => None,
        }
    }
}

/// What putting new decisions into force changed.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// The swap of the data plane's tables itself.
    pub swap: Duration,
    pub added: Vec<Prefix>,
    pub withdrawn: Vec<Prefix>,
    /// Prefixes still routed, but over other next hops.
    pub changed: Vec<Prefix>,
}

/// The control plane's policy state.
pub struct PolicyRuntime {
    engine: PolicyEngine,
    source: PolicySource,
    module: PolicyModule,
    view: View,
    decisions: Decisions,
    tables: SharedTables,
    tun: Arc<dyn KernelRoutes>,
    metrics: Arc<Metrics>,
    /// The data-plane slots of mesh members (`None`: configured peers).
    slots: Option<crate::tunnels::SharedSlots>,
    /// The ids of the peers the decisions in force connect, for the
    /// signalling member to key.
    peer_ids: Option<tokio::sync::watch::Sender<std::collections::HashSet<String>>>,
    /// Where the cloud claim of the decisions in force is published.
    claim: Option<tokio::sync::watch::Sender<Claim>>,
    /// Where the underlay chosen for each peer is published.
    underlays: Option<tokio::sync::watch::Sender<std::collections::HashMap<String, String>>>,
    /// Until then (ms since the epoch) the failover decisions are not
    /// kept as history: a member that has just started decides from a
    /// partial view (at first, itself alone), and would otherwise hold on
    /// to electing itself.
    history_after_ms: u64,
    /// While starting (until `settle_until_ms`), each change of the
    /// members or their states moves `history_after_ms` on by `settle_ms`:
    /// history starts from a view that has stopped filling in.
    settle_ms: u64,
    settle_until_ms: u64,
    /// The members and states of the last view held (ids, states).
    last_members: Vec<(String, meshgate_sdk::State)>,
    /// The active member of each group last decided, by name (metrics).
    active: std::collections::HashMap<String, String>,
}

/// What this gateway should claim on the cloud, by the decisions in force:
/// the redundancy groups it is the active member of (where the policy
/// asks for route claims), and the prefixes it routes into the tunnel,
/// which the group's VPC route tables then point at it. No groups: claim
/// nothing (the member elected instead overwrites the routes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    pub groups: Vec<String>,
    pub prefixes: Vec<crate::prefix::Prefix>,
}

/// How long after its start a gateway waits for its view to stop filling
/// in before it keeps failover history (see [`PolicyRuntime::settle_for`]).
const STARTUP_WINDOW_MS: u64 = 30_000;

/// Refuses decisions that do not hold on `view`.
fn validated(
    view: &View,
    module: &PolicyModule,
    decisions: Decisions,
) -> Result<Decisions, RuntimeError> {
    let problems = validate::problems(view, &decisions);
    if problems.is_empty() {
        Ok(decisions)
    } else {
        Err(RuntimeError::Invalid {
            name: module.name.clone(),
            hash: module.hash.clone(),
            problems,
        })
    }
}

/// Loads and evaluates a module on `view`, refusing invalid decisions.
fn prepare(
    engine: &PolicyEngine,
    name: &str,
    bytes: &[u8],
    view: &View,
) -> Result<(PolicyModule, Decisions, Duration), RuntimeError> {
    let mut module = engine.load(name, bytes)?;
    let started = Instant::now();
    let decisions = module.evaluate(view)?;
    let took = started.elapsed();
    let decisions = validated(view, &module, decisions)?;
    Ok((module, decisions, took))
}

/// What `meshgate check` asks of the policy `run` would start: it loads,
/// passes the contract check, and answers valid decisions on `view`.
/// Returns a line saying so.
pub fn preflight(source: &PolicySource, view: &View) -> Result<Preflight, String> {
    let engine = PolicyEngine::new(super::Limits::default()).map_err(|e| e.to_string())?;
    let (name, bytes) = source.read()?;
    let (module, decisions, took) =
        prepare(&engine, &name, &bytes, view).map_err(|e| e.to_string())?;
    let routes = view::tables(view, &decisions, None).prefixes;
    Ok(Preflight {
        summary: format!(
            "{name} (hash {}) loads, and its first decisions are valid ({}, {}, in {:.1} ms)",
            module.hash,
            counted(decisions.peers.len(), "peer"),
            counted(decisions.routes.len(), "route"),
            took.as_secs_f64() * 1e3
        ),
        routes,
    })
}

/// `1 peer`, `2 peers`.
fn counted(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// What [`preflight`] found: a line for the operator, and the prefixes
/// the first decisions route into the TUN device.
pub struct Preflight {
    pub summary: String,
    pub routes: Vec<crate::prefix::Prefix>,
}

impl PolicyRuntime {
    /// The first policy: evaluated and validated before the data plane
    /// starts (fail closed). Returns the runtime and the initial tables.
    pub fn start(
        engine: PolicyEngine,
        source: PolicySource,
        view: View,
        metrics: Arc<Metrics>,
        tun: Arc<dyn KernelRoutes>,
        slots: Option<crate::tunnels::SharedSlots>,
    ) -> anyhow::Result<(PolicyRuntime, crate::dataplane::Tables)> {
        let (name, bytes) = source.read().map_err(anyhow::Error::msg)?;
        let (module, decisions, took) = prepare(&engine, &name, &bytes, &view)?;
        metrics.policy_evaluated(took);
        metrics.policy_in_force(&module.name, &module.hash);
        let tables = view::tables(&view, &decisions, slots.as_ref());
        let shared = Arc::new(arc_swap::ArcSwap::from_pointee(
            crate::dataplane::Tables::default(),
        ));
        let mut runtime = PolicyRuntime {
            engine,
            source,
            module,
            view,
            decisions: Decisions::default(),
            tables: shared,
            tun,
            metrics,
            slots,
            peer_ids: None,
            claim: None,
            underlays: None,
            history_after_ms: 0,
            settle_ms: 0,
            settle_until_ms: 0,
            last_members: Vec::new(),
            active: Default::default(),
        };
        runtime.hold(decisions);
        Ok((runtime, tables))
    }

    /// Keeps no failover history for `settle` from now, and, for the
    /// first 30 s, until the members and their states have stayed the
    /// same for `settle`: the elections of a member that has just started,
    /// from a view still filling in, are not held on to (see
    /// [`PolicyRuntime::history_after_ms`]).
    pub fn settle_for(&mut self, settle: Duration) {
        self.settle_ms = settle.as_millis() as u64;
        self.history_after_ms = self.view.now_ms + self.settle_ms;
        self.settle_until_ms = self.view.now_ms + STARTUP_WINDOW_MS;
        self.view.groups.clear();
    }

    /// Publishes the ids of the peers each decision in force connects.
    pub fn watch_peers(
        &mut self,
    ) -> tokio::sync::watch::Receiver<std::collections::HashSet<String>> {
        let (tx, rx) = tokio::sync::watch::channel(self.peer_set());
        self.peer_ids = Some(tx);
        rx
    }

    /// Publishes the underlay (endpoint label) each decision in force
    /// connects its peer over.
    pub fn watch_underlays(
        &mut self,
    ) -> tokio::sync::watch::Receiver<std::collections::HashMap<String, String>> {
        let (tx, rx) = tokio::sync::watch::channel(self.underlay_map());
        self.underlays = Some(tx);
        rx
    }

    fn underlay_map(&self) -> std::collections::HashMap<String, String> {
        self.decisions
            .peers
            .iter()
            .filter_map(|p| {
                let m = self.view.members.get(p.member as usize)?;
                let e = self.view.endpoints_of(m).get(p.endpoint as usize)?;
                Some((
                    self.view.name(m.id).to_string(),
                    self.view.name(e.label).to_string(),
                ))
            })
            .collect()
    }

    /// Publishes what this gateway should claim on the cloud.
    pub fn watch_claim(&mut self) -> tokio::sync::watch::Receiver<Claim> {
        let (tx, rx) = tokio::sync::watch::channel(self.claim_now());
        self.claim = Some(tx);
        rx
    }

    fn claim_now(&self) -> Claim {
        let local = self.view.local;
        let mut groups: Vec<String> = self
            .decisions
            .failover
            .iter()
            .filter(|f| f.claim_routes && f.active == Some(local))
            .map(|f| self.view.name(f.group).to_string())
            .collect();
        groups.sort();
        let mut prefixes: Vec<crate::prefix::Prefix> = if groups.is_empty() {
            Vec::new()
        } else {
            self.decisions
                .routes
                .iter()
                .filter_map(|r| crate::prefix::Prefix::new(r.prefix.addr, r.prefix.len))
                .collect()
        };
        prefixes.sort();
        prefixes.dedup();
        Claim { groups, prefixes }
    }

    fn peer_set(&self) -> std::collections::HashSet<String> {
        self.decisions
            .peers
            .iter()
            .filter_map(|p| self.view.members.get(p.member as usize))
            .map(|m| self.view.name(m.id).to_string())
            .collect()
    }

    /// Hands the runtime the tables the data plane was started with.
    pub fn attach(&mut self, tables: SharedTables) {
        self.tables = tables;
    }

    pub fn name(&self) -> &str {
        &self.module.name
    }

    pub fn hash(&self) -> &str {
        &self.module.hash
    }

    /// Reads the configured source again and replaces the policy in force
    /// if the new one compiles, runs and answers validly.
    pub fn reload(&mut self) -> Result<ReloadReport, RuntimeError> {
        self.reload_from(None, false)
    }

    /// As [`reload`](Self::reload), from `source` when given; once that
    /// module is in force, later reloads read it. A policy that would
    /// withdraw every route this gateway has is refused unless `force`
    /// (a reload of the wrong module must not stop all traffic quietly).
    pub fn reload_from(
        &mut self,
        source: Option<PolicySource>,
        force: bool,
    ) -> Result<ReloadReport, RuntimeError> {
        let previous = source.map(|s| std::mem::replace(&mut self.source, s));
        let result = self.try_reload(force);
        if let (Err(_), Some(p)) = (&result, previous) {
            self.source = p;
        }
        self.metrics
            .policy_reload(if result.is_ok() { "ok" } else { "refused" });
        if let Err(e) = &result {
            tracing::warn!(
                "policy reload refused, {} ({}) stays in force: {e}",
                self.module.name,
                self.module.hash
            );
        }
        result
    }

    fn try_reload(&mut self, force: bool) -> Result<ReloadReport, RuntimeError> {
        let (name, bytes) = self.source.read().map_err(RuntimeError::Source)?;
        let started = Instant::now();
        let (module, decisions, took) = prepare(&self.engine, &name, &bytes, &self.view)
            .inspect_err(|e| {
                if let Some(kind) = e.trap_kind() {
                    self.metrics.policy_trap(kind);
                }
            })?;
        let compile = started.elapsed().saturating_sub(took);
        self.metrics.policy_evaluated(took);
        let changes = self.apply(&decisions, (!force).then_some(&module))?;
        self.module = module;
        self.hold(decisions);
        self.metrics
            .policy_in_force(&self.module.name, &self.module.hash);
        let report = ReloadReport {
            name,
            hash: self.module.hash.clone(),
            compile,
            origin: self.module.origin,
            evaluate: took,
            swap: changes.swap,
            added: changes.added,
            withdrawn: changes.withdrawn,
            changed: changes.changed,
        };
        tracing::info!("{}", report.to_string().trim_end().replace('\n', "; "));
        Ok(report)
    }

    /// Puts validated decisions into force: new kernel routes first, so
    /// nothing the new tables route is dropped by the kernel; the atomic
    /// swap of the data plane's tables; then the withdrawals.
    /// With `guard` (the module a reload brings), decisions that withdraw
    /// every route in force are refused before anything changes.
    fn apply(
        &mut self,
        decisions: &Decisions,
        guard: Option<&PolicyModule>,
    ) -> Result<Changes, RuntimeError> {
        let new = view::tables(&self.view, decisions, self.slots.as_ref());
        let old = self.tables.load_full();
        if let Some(m) = guard.filter(|_| new.prefixes.is_empty() && !old.prefixes.is_empty()) {
            let mut routes: Vec<String> = old.prefixes.iter().map(ToString::to_string).collect();
            routes.sort();
            return Err(RuntimeError::WithdrawsEverything {
                name: m.name.clone(),
                hash: m.hash.clone(),
                routes,
            });
        }
        let (old_set, new_set): (BTreeSet<Prefix>, BTreeSet<Prefix>) = (
            old.prefixes.iter().copied().collect(),
            new.prefixes.iter().copied().collect(),
        );
        let added: Vec<Prefix> = new_set.difference(&old_set).copied().collect();
        let withdrawn: Vec<Prefix> = old_set.difference(&new_set).copied().collect();
        let changed: Vec<Prefix> = new_set
            .intersection(&old_set)
            .filter(|p| old.routes.get(p) != new.routes.get(p))
            .copied()
            .collect();
        for p in &added {
            self.tun
                .add_route(p)
                .map_err(|source| RuntimeError::Route {
                    prefix: *p,
                    tun: self.tun.name().to_string(),
                    source,
                })?;
        }
        let swap_started = Instant::now();
        self.tables.store(Arc::new(new));
        let swap = swap_started.elapsed();
        for p in &withdrawn {
            if let Err(e) = self.tun.del_route(p) {
                tracing::warn!("withdrawing {p}: {e}");
            }
        }
        Ok(Changes {
            swap,
            added,
            withdrawn,
            changed,
        })
    }

    /// Keeps `decisions` as those in force, and the failover decisions in
    /// the view (who is active in each group, since when), so the next
    /// evaluation can hold an active member rather than flap.
    fn hold(&mut self, decisions: Decisions) {
        let now = self.view.now_ms;
        let previous = std::mem::take(&mut self.view.groups);
        for f in &decisions.failover {
            let group = self.view.name(f.group).to_string();
            let active = f
                .active
                .and_then(|m| self.view.members.get(m as usize))
                .map(|m| self.view.name(m.id).to_string());
            let before = self.active.get(&group).cloned();
            self.metrics
                .cloud
                .group_decided(&group, before.as_deref(), active.as_deref());
            match active {
                Some(a) => self.active.insert(group, a),
                None => self.active.remove(&group),
            };
        }
        self.view.groups = decisions
            .failover
            .iter()
            .map(|f| {
                let since_ms = previous
                    .iter()
                    .find(|g| g.name == f.group && g.active == f.active)
                    .map_or(now, |g| g.since_ms);
                meshgate_sdk::Group {
                    name: f.group,
                    active: f.active,
                    since_ms,
                }
            })
            .collect();
        if now < self.settle_until_ms {
            let mut members: Vec<(String, meshgate_sdk::State)> = self
                .view
                .members
                .iter()
                .map(|m| (self.view.name(m.id).to_string(), m.state))
                .collect();
            members.sort_by(|a, b| a.0.cmp(&b.0));
            if members != self.last_members {
                self.last_members = members;
                self.history_after_ms = self.history_after_ms.max(now + self.settle_ms);
            }
        }
        if now < self.history_after_ms {
            self.view.groups.clear();
        }
        self.decisions = decisions;
        if let Some(tx) = &self.underlays {
            let map = self.underlay_map();
            tx.send_if_modified(|cur| {
                let changed = *cur != map;
                *cur = map;
                changed
            });
        }
        if let Some(tx) = &self.claim {
            let claim = self.claim_now();
            tx.send_if_modified(|cur| {
                let changed = *cur != claim;
                *cur = claim;
                changed
            });
        }
        if let Some(tx) = &self.peer_ids {
            let set = self.peer_set();
            tx.send_if_modified(|cur| {
                let changed = *cur != set;
                *cur = set;
                changed
            });
        }
    }

    /// The view the policy decides from; event sources change it, then
    /// ask for an evaluation.
    pub fn view_mut(&mut self) -> &mut View {
        &mut self.view
    }

    /// Evaluates the policy in force on the current view (something in it
    /// changed) and puts the answer into force. If the policy traps, runs
    /// out of time or memory, or answers invalidly, the last good tables
    /// stay in force and the error names the policy and its hash.
    pub fn evaluate(&mut self, now_ms: u64) -> Result<Changes, RuntimeError> {
        self.view.now_ms = now_ms;
        let started = Instant::now();
        let result = self.module.evaluate(&self.view);
        let took = started.elapsed();
        let outcome = result.map_err(RuntimeError::from).and_then(|d| {
            self.metrics.policy_evaluated(took);
            validated(&self.view, &self.module, d)
        });
        let decisions = outcome.inspect_err(|e| {
            if let Some(kind) = e.trap_kind() {
                self.metrics.policy_trap(kind);
            }
            self.metrics.policy_event_evaluation("failed");
            tracing::warn!("policy evaluation failed, the last good tables stay in force: {e}");
        })?;
        let changes = self.apply(&decisions, None)?;
        self.hold(decisions);
        self.metrics.policy_event_evaluation("ok");
        Ok(changes)
    }

    /// When the policy wants to be evaluated again (its timer), asked after
    /// each evaluation; `None` if it does not, or if asking failed (logged).
    pub fn timer(&mut self) -> Option<Duration> {
        match self.module.on_timer(&self.view) {
            Ok(ms) => ms.map(|ms| Duration::from_millis(u64::from(ms))),
            Err(e) => {
                if let PolicyError::Trapped { kind, .. } = &e {
                    self.metrics.policy_trap(kind.as_str());
                }
                tracing::warn!("policy timer: {e}");
                None
            }
        }
    }

    /// The decisions in force.
    pub fn decisions(&self) -> &Decisions {
        &self.decisions
    }
}
