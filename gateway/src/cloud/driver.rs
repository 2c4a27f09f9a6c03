//! The reconciler's shell: claims from the gateway (when the policy's
//! failover decisions change, never per packet), the calls it asks for
//! carried out by a backend, several at once, each with a deadline; the
//! results and the time fed back; metrics and the status published.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::backend::CloudBackend;
use super::reconcile::{CallId, Reconciler, Settings, Status};
use super::{CloudError, Reply, RouteKey};
use crate::metrics::Metrics;

/// A call without an answer by then is a timeout (and retried).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Claims routes for `interface` through `backend` as `claims` says, until
/// the claims channel closes; `status` shows how they stand.
pub async fn run(
    backend: Arc<dyn CloudBackend>,
    interface: String,
    mut claims: watch::Receiver<Vec<RouteKey>>,
    status: watch::Sender<Status>,
    metrics: Arc<Metrics>,
    settings: Settings,
) {
    let seed = crate::time::unix_ms();
    let mut r = Reconciler::new(&interface, settings, seed);
    let mut held = claims.borrow_and_update().clone();
    count_changes(&metrics.cloud, &[], &held);
    r.set_claims(held.clone(), Instant::now());
    let mut calls: JoinSet<(&'static str, Duration, Result<Reply, CloudError>)> = JoinSet::new();
    // Which call each task carries (a task that fails still answers it).
    let mut tasks: std::collections::HashMap<tokio::task::Id, CallId> = Default::default();
    let m = &metrics.cloud;
    loop {
        while let Some((id, call)) = r.poll_call() {
            let b = backend.clone();
            let task = calls.spawn(async move {
                let api = call.api();
                let started = Instant::now();
                let reply = match tokio::time::timeout(CALL_TIMEOUT, b.call(call)).await {
                    Ok(reply) => reply,
                    Err(_) => Err(CloudError::Timeout(format!(
                        "no answer in {CALL_TIMEOUT:?}"
                    ))),
                };
                (api, started.elapsed(), reply)
            });
            tasks.insert(task.id(), id);
        }
        let s = r.status();
        m.claimed.set(s.claimed as i64);
        m.converged.set(s.converged as i64);
        status.send_if_modified(|old| {
            let changed = *old != s;
            if changed {
                for (route, why) in s.errors.iter().filter(|e| !old.errors.contains(e)) {
                    tracing::warn!(route = %route, "cloud: {why}; retrying");
                }
                if s.claimed > 0 && s.converged == s.claimed && old.converged != s.converged {
                    tracing::info!(
                        routes = s.claimed,
                        "cloud: every claimed route points at {interface}"
                    );
                }
                *old = s;
            }
            changed
        });
        let deadline = r.poll_timeout();
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = claims.changed() => {
                if changed.is_err() {
                    return;
                }
                let wanted = claims.borrow_and_update().clone();
                count_changes(m, &held, &wanted);
                held = wanted.clone();
                r.set_claims(wanted, Instant::now());
            }
            Some(done) = calls.join_next_with_id(), if !calls.is_empty() => {
                let (task, reply) = match done {
                    Ok((task, (api, took, reply))) => {
                        let outcome = reply.as_ref().map_or_else(CloudError::label, |_| "ok");
                        m.calls.with_label_values(&[api, outcome]).inc();
                        m.call_seconds.with_label_values(&[api]).observe(took.as_secs_f64());
                        (task, reply)
                    }
                    Err(e) => (e.id(), Err(CloudError::Timeout(format!("the call's task failed: {e}")))),
                };
                if let Some(id) = tasks.remove(&task) {
                    r.handle_reply(id, reply, Instant::now());
                }
            }
            () = sleep => r.handle_timeout(Instant::now()),
        }
    }
}

/// Counts the routes `wanted` claims that `held` did not, and the reverse.
fn count_changes(m: &crate::metrics::CloudMetrics, held: &[RouteKey], wanted: &[RouteKey]) {
    let new = wanted.iter().filter(|k| !held.contains(k)).count();
    let gone = held.iter().filter(|k| !wanted.contains(k)).count();
    m.claim_changes
        .with_label_values(&["claim"])
        .inc_by(new as u64);
    m.claim_changes
        .with_label_values(&["release"])
        .inc_by(gone as u64);
}
