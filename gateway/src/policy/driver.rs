//! The async shell around the [`Scheduler`]: receives the events that
//! change the view (membership, health, configuration), applies them, and
//! evaluates the policy when the scheduler says so, arming the policy's
//! own timer after each evaluation. The data plane never waits for it: it
//! reads whatever tables were last put in force.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use meshgate_sdk::View;
use tokio::sync::mpsc;

use super::runtime::PolicyRuntime;
use super::schedule::{Scheduler, Settings, Trigger};
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

/// Where event sources send their changes.
pub type EventSender = mpsc::UnboundedSender<PolicyEvent>;

pub fn channel() -> (EventSender, mpsc::UnboundedReceiver<PolicyEvent>) {
    mpsc::unbounded_channel()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Asks the policy for its timer and arms it.
fn arm(runtime: &Mutex<PolicyRuntime>, scheduler: &mut Scheduler) {
    if let Ok(mut r) = runtime.lock() {
        let timer = r.timer();
        scheduler.set_timer(timer, Instant::now());
    }
}

/// Runs until the task is dropped.
pub async fn drive(
    runtime: Arc<Mutex<PolicyRuntime>>,
    mut events: mpsc::UnboundedReceiver<PolicyEvent>,
    metrics: Arc<Metrics>,
    settings: Settings,
) {
    let mut scheduler = Scheduler::new(settings);
    let reloaded = match runtime.lock() {
        Ok(r) => r.reloaded(),
        Err(_) => return,
    };
    arm(&runtime, &mut scheduler);
    let mut open = true;
    loop {
        let deadline = scheduler.deadline();
        let wake = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = events.recv(), if open => match event {
                Some(e) => {
                    metrics.policy_event(e.trigger);
                    if let Ok(mut r) = runtime.lock() {
                        (e.update)(r.view_mut());
                    }
                    scheduler.event(e.trigger, Instant::now());
                }
                None => open = false,
            },
            _ = reloaded.notified() => {
                // A new policy is in force: its timer, not the old one's.
                scheduler.succeeded();
                arm(&runtime, &mut scheduler);
            }
            _ = wake => {}
        }
        let now = Instant::now();
        let Some(batch) = scheduler.poll(now) else {
            continue;
        };
        if batch.triggers().any(|t| t == Trigger::Timer) {
            // Channel events were counted as they came; the timer fires here.
            metrics.policy_event(Trigger::Timer);
        }
        let Ok(mut r) = runtime.lock() else {
            return;
        };
        let triggers: Vec<&str> = batch.triggers().map(Trigger::as_str).collect();
        match r.evaluate(now_ms()) {
            Ok(changes) => {
                scheduler.succeeded();
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
                scheduler.failed(now);
                continue;
            }
        }
        let timer = r.timer();
        scheduler.set_timer(timer, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    //! The driver with the real parts: the built-in `hub-spoke` component,
    //! a TUN device and its kernel routes in a namespace of the test's own,
    //! and real time (short settings).

    use std::time::Duration;

    use meshgate_sdk::testing::ViewBuilder;
    use meshgate_sdk::{Role, State};

    use super::*;
    use crate::dataplane::SharedTables;
    use crate::netns::Netns;
    use crate::policy::{Limits, PolicyEngine};
    use crate::prefix::Prefix;
    use crate::tun::Tun;

    fn now() -> u64 {
        now_ms()
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

    async fn until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + within;
        while !cond() {
            assert!(Instant::now() < end, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn events_and_the_policy_timer_drive_failover_with_hold_down() {
        crate::netns::check_privileges().expect("this test needs root and /dev/net/tun");
        let ns = Netns::create(&format!("t{}pdrv", std::process::id() % 1000)).unwrap();
        let routes = ns.name().to_string();
        ns.run(move || {
            let tun = Arc::new(Tun::create("mgt0").unwrap());
            tun.configure(1400, &["10.1.0.1/32".parse().unwrap()])
                .unwrap();
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
                .param("failover.hold_down_ms", "400")
                .param("failover.preempt", "true")
                .local("spoke-1")
                .now_ms(now())
                .build();
            let metrics = Arc::new(Metrics::new("spoke-1"));
            let (mut runtime, initial) = PolicyRuntime::start(
                PolicyEngine::new(Limits::default()).unwrap(),
                crate::config::PolicySource::Builtin("hub-spoke".into()),
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
            let runtime = Arc::new(Mutex::new(runtime));
            let (events, rx) = channel();
            let settings = Settings {
                debounce: Duration::from_millis(20),
                ..Settings::default()
            };
            let kernel_routes = move || {
                let out = std::process::Command::new("ip")
                    .args(["-n", &routes, "route", "show", "dev", "mgt0"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).to_string()
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let driver = tokio::spawn(drive(runtime.clone(), rx, metrics.clone(), settings));
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
                    now() - back >= 400,
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
                driver.abort();
            });
        })
        .unwrap();
    }
}
