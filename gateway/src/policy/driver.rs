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
