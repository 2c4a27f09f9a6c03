//! The policy engine on a thread of its own: one thread owns the
//! [`PolicyRuntime`] and the [`Scheduler`], and everything else talks to it
//! through a channel ([`PolicyHandle`]). Events that change the view
//! (membership, health, configuration) are applied as they come and the
//! policy is evaluated when the scheduler says so, its own timer armed
//! after each evaluation; reloads (the file watch, the admin API) compile,
//! dry-run and swap here too. So a compile of a hundred milliseconds, or a
//! policy that runs to its time limit, never holds up the signalling
//! runtime, which only sends on a channel and never waits on a lock the
//! engine holds. The data plane never waits either: it reads whatever
//! tables were last put in force.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use meshgate_sdk::View;
use tokio::sync::oneshot;

use super::runtime::{PolicyRuntime, ReloadReport, RuntimeError};
use super::schedule::{Scheduler, Settings, Trigger};
use super::PolicySource;
use crate::metrics::Metrics;

/// A change to the view the policy decides from, and its kind.
pub struct PolicyEvent {
    pub trigger: Trigger,
    pub update: Box<dyn FnOnce(&mut View) + Send>,
}

impl PolicyEvent {
    pub fn new(trigger: Trigger, update: impl FnOnce(&mut View) + Send + 'static) -> PolicyEvent {
        PolicyEvent {
            trigger,
            update: Box::new(update),
        }
    }
}

enum Request {
    Event(PolicyEvent),
    /// Reload from the configured source, or from this one; the answer
    /// goes to `reply` if given (else only to the log).
    Reload {
        source: Option<PolicySource>,
        /// Load it even if it withdraws every route.
        force: bool,
        reply: Option<oneshot::Sender<Result<ReloadReport, RuntimeError>>>,
    },
}

/// The module in force, as the rest of the gateway may read it without
/// asking the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InForce {
    pub name: String,
    pub hash: String,
}

/// The engine stopped (its thread ended).
#[derive(Debug, thiserror::Error)]
#[error("the policy engine has stopped")]
pub struct Stopped;

/// How the gateway talks to the policy engine. Cheap to clone; sending
/// never blocks.
#[derive(Clone)]
pub struct PolicyHandle {
    tx: mpsc::Sender<Request>,
    in_force: Arc<ArcSwap<InForce>>,
}

/// Where event sources send their changes.
pub type EventSender = PolicyHandle;

impl PolicyHandle {
    /// A change to the view; evaluated after the scheduler's debounce.
    pub fn send(&self, event: PolicyEvent) -> Result<(), Stopped> {
        self.tx.send(Request::Event(event)).map_err(|_| Stopped)
    }

    /// Reloads the policy (from `source`, or the configured one) and
    /// answers with what changed, or why the new one was refused.
    pub async fn reload(
        &self,
        source: Option<PolicySource>,
        force: bool,
    ) -> Result<Result<ReloadReport, RuntimeError>, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Reload {
                source,
                force,
                reply: Some(reply),
            })
            .map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    /// Asks for a reload (from `source`, or the configured one); the
    /// outcome is logged.
    pub fn request_reload(&self, source: Option<PolicySource>) -> Result<(), Stopped> {
        self.tx
            .send(Request::Reload {
                source,
                force: false,
                reply: None,
            })
            .map_err(|_| Stopped)
    }

    /// The module in force now.
    pub fn in_force(&self) -> Arc<InForce> {
        self.in_force.load_full()
    }
}

/// Starts the engine's thread with `runtime`; it runs until every handle
/// is dropped.
pub fn spawn(
    runtime: PolicyRuntime,
    metrics: Arc<Metrics>,
    settings: Settings,
) -> std::io::Result<(PolicyHandle, std::thread::JoinHandle<()>)> {
    let triggers: Vec<&str> = Trigger::ALL.iter().map(|t| t.as_str()).collect();
    metrics.policy_triggers(&triggers);
    let (tx, rx) = mpsc::channel();
    let in_force = Arc::new(ArcSwap::from_pointee(InForce {
        name: runtime.name().to_string(),
        hash: runtime.hash().to_string(),
    }));
    let published = in_force.clone();
    let thread = std::thread::Builder::new()
        .name("policy".into())
        .spawn(move || Engine::new(runtime, metrics, settings, published).run(&rx))?;
    Ok((PolicyHandle { tx, in_force }, thread))
}

struct Engine {
    runtime: PolicyRuntime,
    scheduler: Scheduler,
    metrics: Arc<Metrics>,
    in_force: Arc<ArcSwap<InForce>>,
}

impl Engine {
    fn new(
        runtime: PolicyRuntime,
        metrics: Arc<Metrics>,
        settings: Settings,
        in_force: Arc<ArcSwap<InForce>>,
    ) -> Engine {
        let mut engine = Engine {
            runtime,
            scheduler: Scheduler::new(settings),
            metrics,
            in_force,
        };
        engine.arm();
        engine
    }

    /// Asks the policy for its timer and arms it.
    fn arm(&mut self) {
        let timer = self.runtime.timer();
        self.scheduler.set_timer(timer, Instant::now());
    }

    fn run(mut self, requests: &mpsc::Receiver<Request>) {
        loop {
            let request = match self.scheduler.deadline() {
                Some(d) => requests.recv_timeout(d.saturating_duration_since(Instant::now())),
                None => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match request {
                Ok(Request::Event(e)) => {
                    self.metrics.policy_event(e.trigger.as_str());
                    (e.update)(self.runtime.view_mut());
                    self.scheduler.event(e.trigger, Instant::now());
                }
                Ok(Request::Reload {
                    source,
                    force,
                    reply,
                }) => {
                    let result = self.runtime.reload_from(source, force);
                    if result.is_ok() {
                        // A new policy is in force: its timer, not the old one's.
                        self.in_force.store(Arc::new(InForce {
                            name: self.runtime.name().to_string(),
                            hash: self.runtime.hash().to_string(),
                        }));
                        self.scheduler.succeeded();
                        self.arm();
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.evaluate_if_due();
        }
    }

    fn evaluate_if_due(&mut self) {
        let now = Instant::now();
        let Some(batch) = self.scheduler.poll(now) else {
            return;
        };
        if batch.triggers().any(|t| t == Trigger::Timer) {
            // Channel events were counted as they came; the timer fires here.
            self.metrics.policy_event(Trigger::Timer.as_str());
        }
        let triggers: Vec<&str> = batch.triggers().map(Trigger::as_str).collect();
        match self.runtime.evaluate(crate::time::unix_ms()) {
            Ok(changes) => {
                self.scheduler.succeeded();
                let moved = changes.added.len() + changes.withdrawn.len() + changes.changed.len();
                if moved > 0 {
                    tracing::info!(
                        events = batch.events,
                        triggers = %triggers.join(","),
                        added = changes.added.len(),
                        withdrawn = changes.withdrawn.len(),
                        changed = changes.changed.len(),
                        "policy re-evaluated; routes changed"
                    );
                } else {
                    tracing::debug!(events = batch.events, triggers = %triggers.join(","), "policy re-evaluated; no route changed");
                }
            }
            Err(_) => {
                // Tried again on the next event (its timer included), after the backoff.
                self.scheduler.failed(now);
                return;
            }
        }
        self.arm();
    }
}

#[cfg(test)]
mod tests {
    //! The driver with the real parts: the built-in `hub-spoke` component
    //! and real time (short settings); the kernel's routes are a table in
    //! memory (the gateway's TUN implements the same trait), so no root.

    use std::sync::Mutex;
    use std::time::Duration;

    use meshgate_sdk::testing::ViewBuilder;
    use meshgate_sdk::{Role, State};

    use super::*;
    use crate::dataplane::SharedTables;
    use crate::policy::runtime::{KernelRoutes, RouteError};
    use crate::policy::{Limits, PolicyEngine};
    use crate::prefix::Prefix;

    fn now() -> u64 {
        crate::time::unix_ms()
    }

    /// The next hops (peer numbers) of `prefix` in force.
    fn hops(tables: &SharedTables, prefix: &str) -> Vec<usize> {
        let p: Prefix = prefix.parse().unwrap();
        tables
            .load()
            .routes
            .get(&p)
            .map(|n| n.peers.to_vec())
            .unwrap_or_default()
    }

    /// The kernel's routes into the tunnel, in memory.
    #[derive(Default)]
    struct Routes(Mutex<std::collections::BTreeSet<Prefix>>);

    impl KernelRoutes for Routes {
        fn name(&self) -> &str {
            "mgt0"
        }

        fn add_route(&self, prefix: &Prefix) -> Result<(), RouteError> {
            self.0.lock().unwrap().insert(*prefix);
            Ok(())
        }

        fn del_route(&self, prefix: &Prefix) -> Result<(), RouteError> {
            self.0.lock().unwrap().remove(prefix);
            Ok(())
        }
    }

    /// A runtime of the built-in full-mesh on `view`, routes in memory.
    fn full_mesh(view: View) -> PolicyRuntime {
        PolicyRuntime::start(
            PolicyEngine::new(Limits::default()).unwrap(),
            crate::policy::PolicySource::Builtin("full-mesh".into()),
            view,
            Arc::new(Metrics::new("test")),
            Arc::new(Routes::default()),
            None,
        )
        .unwrap()
        .0
    }

    async fn until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + within;
        while !cond() {
            assert!(Instant::now() < end, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The cloud claim follows the failover decisions: of a group's two
    /// members, the one elected active claims the prefixes it routes into
    /// the tunnel, the other claims nothing.
    #[test]
    fn only_the_elected_member_of_a_group_claims_and_it_claims_what_it_routes() {
        let claim_as = |local: &str| {
            let view = ViewBuilder::new()
                .member("edge-a", "eu-west-1", Role::Edge, &["10.1.0.0/16"])
                .group("pair")
                .endpoint("internet", "192.0.2.1:4500")
                .member("edge-b", "eu-west-1", Role::Edge, &["10.1.0.0/16"])
                .group("pair")
                .endpoint("internet", "192.0.2.2:4500")
                .member("us-edge", "us-east-1", Role::Edge, &["10.2.0.0/16"])
                .endpoint("internet", "192.0.2.3:4500")
                .local(local)
                .now_ms(now())
                .build();
            let claim = full_mesh(view).watch_claim().borrow().clone();
            claim
        };
        let (a, b) = (claim_as("edge-a"), claim_as("edge-b"));
        let (active, standby) = if a.groups.is_empty() { (b, a) } else { (a, b) };
        assert_eq!(active.groups, ["pair"]);
        assert!(
            active.prefixes.contains(&"10.2.0.0/16".parse().unwrap()),
            "{active:?}"
        );
        assert_eq!(standby, Default::default(), "the standby claims nothing");
    }

    /// The underlay the policy picks for each peer is published: the
    /// operator's `underlay` parameter where the peer has that endpoint,
    /// else its first.
    #[test]
    fn the_underlay_chosen_for_each_peer_is_published() {
        let view = ViewBuilder::new()
            .member("edge-a", "eu-west-1", Role::Edge, &["10.1.0.0/16"])
            .endpoint("internet", "192.0.2.1:4500")
            .endpoint("dx", "203.0.113.1:4500")
            .member("edge-b", "us-east-1", Role::Edge, &["10.2.0.0/16"])
            .endpoint("internet", "192.0.2.2:4500")
            .endpoint("dx", "203.0.113.2:4500")
            .member("edge-c", "ap-south-1", Role::Edge, &["10.3.0.0/16"])
            .endpoint("internet", "192.0.2.3:4500")
            .param("underlay", "dx")
            .local("edge-a")
            .now_ms(now())
            .build();
        let map = full_mesh(view).watch_underlays().borrow().clone();
        assert_eq!(map.get("edge-b").map(String::as_str), Some("dx"), "{map:?}");
        assert_eq!(
            map.get("edge-c").map(String::as_str),
            Some("internet"),
            "{map:?}"
        );
    }

    #[test]
    fn events_and_the_policy_timer_drive_failover_with_hold_down() {
        {
            let tun = Arc::new(Routes::default());
            // This gateway is spoke-1; peers 0..3 are hub-a, hub-b, spoke-2.
            let view = ViewBuilder::new()
                .member("spoke-1", "us-east-1", Role::Leaf, &["10.1.0.0/16"])
                .member("hub-a", "eu-west-1", Role::Hub, &["10.100.0.0/16"])
                .group("hubs")
                .endpoint("internet", "192.0.2.1:4500")
                .member("hub-b", "eu-west-1", Role::Hub, &[])
                .group("hubs")
                .endpoint("internet", "192.0.2.2:4500")
                .member("spoke-2", "us-west-2", Role::Leaf, &["10.2.0.0/16"])
                .endpoint("internet", "192.0.2.3:4500")
                .param("failover.hold_down_ms", "1000")
                .param("failover.preempt", "true")
                .local("spoke-1")
                .now_ms(now())
                .build();
            let metrics = Arc::new(Metrics::new("spoke-1"));
            let (mut runtime, initial) = PolicyRuntime::start(
                PolicyEngine::new(Limits::default()).unwrap(),
                crate::policy::PolicySource::Builtin("hub-spoke".into()),
                view,
                metrics.clone(),
                tun.clone(),
                None,
            )
            .unwrap();
            for p in &initial.prefixes {
                tun.add_route(p).unwrap();
            }
            let tables: SharedTables = Arc::new(arc_swap::ArcSwap::from_pointee(initial));
            runtime.attach(tables.clone());
            let settings = Settings {
                debounce: Duration::from_millis(20),
                ..Settings::default()
            };
            let kernel = tun.clone();
            let kernel_routes = move || {
                let routes = kernel.0.lock().unwrap();
                routes
                    .iter()
                    .map(|p| format!("{p} dev mgt0\n"))
                    .collect::<String>()
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (events, engine) = spawn(runtime, metrics.clone(), settings).unwrap();
                // Spoke-to-spoke goes through the active hub, the other the backup.
                assert_eq!(hops(&tables, "10.2.0.0/16"), [0, 1]);
                assert!(kernel_routes().contains("10.100.0.0/16"));

                // hub-a dies: hub-b takes over, hub-a's routes are withdrawn
                // from the tables and the kernel.
                let at = now();
                events
                    .send(PolicyEvent::new(Trigger::Membership, move |v| {
                        v.members[1].state = State::Dead;
                        v.members[1].health.changed_ms = at;
                    }))
                    .unwrap();
                until("hub-b never took over", Duration::from_secs(2), || {
                    hops(&tables, "10.2.0.0/16") == [1]
                })
                .await;
                assert!(hops(&tables, "10.100.0.0/16").is_empty());
                assert!(!kernel_routes().contains("10.100.0.0/16"));

                // hub-a comes back: held down, hub-b stays active...
                let back = now();
                events
                    .send(PolicyEvent::new(Trigger::Membership, move |v| {
                        v.members[1].state = State::Alive;
                        v.members[1].health.changed_ms = back;
                    }))
                    .unwrap();
                until(
                    "hub-a's return was not evaluated",
                    Duration::from_secs(2),
                    || hops(&tables, "10.2.0.0/16") == [1, 0],
                )
                .await;
                assert!(kernel_routes().contains("10.100.0.0/16"));
                // ...until its hold-down runs out: no event, the policy's
                // timer alone brings the evaluation that preempts.
                until("the timer never preempted", Duration::from_secs(3), || {
                    hops(&tables, "10.2.0.0/16") == [0, 1]
                })
                .await;
                assert!(
                    now() - back >= 1000,
                    "preempted after {} ms, within the hold-down",
                    now() - back
                );
                let text = metrics.render();
                let sum =
                    |f: &str| crate::metrics::sum_samples(&text, "meshgate_policy_events_total", f);
                assert_eq!(sum("trigger=\"membership\""), 2.0);
                assert!(sum("trigger=\"timer\"") >= 1.0);
                assert_eq!(
                    crate::metrics::sum_samples(
                        &text,
                        "meshgate_policy_event_evaluations_total",
                        "outcome=\"failed\""
                    ),
                    0.0
                );
                drop(events);
                engine.join().unwrap();
            });
        }
    }
}
