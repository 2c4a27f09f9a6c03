//! Closes the gap between the routes this appliance claims and the routes
//! the cloud describes, with as few calls as that takes. Sans-IO: claims,
//! call results and the time in; calls, and the next deadline, out.
//!
//! - A change of claims, or a resync every [`Settings::resync_every`]
//!   while claiming (someone else may have pointed a route elsewhere), is
//!   one `Describe` of the claimed tables; repeated claims of routes
//!   already in place make no other call.
//! - Each claimed route that does not point at this appliance's interface
//!   gets one `Replace` (or `Create` where the route is missing), one call
//!   per route at a time.
//! - A call that fails is retried on its own: transient failures
//!   (throttling, 5xx, timeouts, a stale description) after an exponential
//!   backoff with jitter, refusals (permissions, a table that does not
//!   exist) after the longest backoff, and said in [`Status`] until the
//!   route converges. One route's failure leaves the others claimed.
//! - Releasing (claiming nothing) makes no call: the member elected next
//!   overwrites the routes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use super::{Call, CloudError, Reply, RouteKey, Target};

#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// While claiming, how often the tables are described again.
    pub resync_every: Duration,
    /// The first retry's delay; each next one doubles, up to `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            // One DescribeRouteTables a minute per active appliance: EC2's
            // describe bucket refills at 20 a second per account and
            // region, so a fleet of hundreds stays far below it.
            resync_every: Duration::from_secs(60),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(10),
        }
    }
}

/// A call under way.
pub type CallId = u64;

/// How the claims stand.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// Routes claimed.
    pub claimed: usize,
    /// Of those, the ones the cloud confirmed pointing at this appliance.
    pub converged: usize,
    /// The last failure of each route (or of describing) not converged.
    pub errors: Vec<(String, String)>,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.claimed == 0 {
            return writeln!(f, "no routes claimed (not the active member of its group)");
        }
        let state = if self.converged == self.claimed {
            "converged"
        } else {
            "converging"
        };
        writeln!(
            f,
            "{} routes claimed, {} pointing here: {state}",
            self.claimed, self.converged
        )?;
        for (route, why) in &self.errors {
            writeln!(f, "  {route}: {why} (retrying)")?;
        }
        Ok(())
    }
}

/// A retry waiting: when, and how many attempts failed so far.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    at: Instant,
    failures: u32,
}

pub struct Reconciler {
    interface: String,
    settings: Settings,
    claims: BTreeSet<RouteKey>,
    /// Where each claimed route points, as last described or set; absent:
    /// not described yet; `None`: the route does not exist.
    actual: BTreeMap<RouteKey, Option<Target>>,
    describe_due: bool,
    describing: Option<CallId>,
    describe_backoff: Option<Backoff>,
    writing: BTreeMap<RouteKey, CallId>,
    write_backoff: BTreeMap<RouteKey, Backoff>,
    in_flight: BTreeMap<CallId, Call>,
    errors: BTreeMap<String, String>,
    next_resync: Option<Instant>,
    next_id: CallId,
    /// xorshift state for the backoff's jitter (seeded; tests fix it).
    jitter: u64,
    out: VecDeque<(CallId, Call)>,
}

impl Reconciler {
    /// Claims for the network interface `interface`.
    pub fn new(interface: &str, settings: Settings, seed: u64) -> Reconciler {
        Reconciler {
            interface: interface.to_string(),
            settings,
            claims: BTreeSet::new(),
            actual: BTreeMap::new(),
            describe_due: false,
            describing: None,
            describe_backoff: None,
            writing: BTreeMap::new(),
            write_backoff: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            errors: BTreeMap::new(),
            next_resync: None,
            next_id: 0,
            jitter: seed | 1,
            out: VecDeque::new(),
        }
    }

    /// The routes to claim from now on (none: release).
    pub fn set_claims(&mut self, claims: impl IntoIterator<Item = RouteKey>, now: Instant) {
        let claims: BTreeSet<RouteKey> = claims.into_iter().collect();
        if claims == self.claims {
            return;
        }
        self.actual.retain(|k, _| claims.contains(k));
        self.write_backoff.retain(|k, _| claims.contains(k));
        self.errors
            .retain(|k, _| claims.iter().any(|c| c.to_string() == *k));
        self.claims = claims;
        if self.claims.is_empty() {
            self.describe_due = false;
            self.next_resync = None;
            self.describe_backoff = None;
            self.errors.clear();
        } else {
            // What the cloud says first: claims already in place cost no
            // write.
            self.describe_due = true;
            self.describe_backoff = None;
        }
        self.drive(now);
    }

    /// The answer to call `id`.
    pub fn handle_reply(&mut self, id: CallId, reply: Result<Reply, CloudError>, now: Instant) {
        let Some(call) = self.in_flight.remove(&id) else {
            return; // Cancelled, or not ours.
        };
        match (call, reply) {
            (Call::Describe { tables: asked }, Ok(Reply::Described(tables))) => {
                self.describing = None;
                self.describe_backoff = None;
                self.errors.remove("describe");
                // Claims made since the call was issued wait for the next.
                for key in self.claims.iter().filter(|k| asked.contains(&k.table)) {
                    let table = tables.iter().find(|t| t.id == key.table);
                    let target = table.and_then(|t| {
                        t.routes
                            .iter()
                            .find(|(d, _)| *d == key.destination)
                            .map(|(_, target)| target.clone())
                    });
                    if table.is_none() {
                        self.errors.insert(
                            key.to_string(),
                            format!(
                                "route table {} was not described (it may not exist)",
                                key.table
                            ),
                        );
                    }
                    // A write under way knows better than this description.
                    if !self.writing.contains_key(key) {
                        self.actual.insert(key.clone(), target);
                    }
                }
                self.next_resync = Some(now + self.settings.resync_every);
            }
            (Call::Describe { .. }, Ok(Reply::Done)) => {
                self.describing = None;
                self.describe_due = true;
            }
            (Call::Describe { .. }, Err(e)) => {
                self.describing = None;
                self.describe_due = true;
                let failures = self.describe_backoff.map_or(0, |b| b.failures) + 1;
                let at = now + self.delay(failures, &e);
                self.describe_backoff = Some(Backoff { at, failures });
                self.errors
                    .insert("describe".into(), format!("DescribeRouteTables: {e}"));
            }
            (Call::Replace { route, .. } | Call::Create { route, .. }, Ok(_)) => {
                self.writing.remove(&route);
                self.write_backoff.remove(&route);
                self.errors.remove(&route.to_string());
                self.actual
                    .insert(route, Some(Target::Interface(self.interface.clone())));
            }
            (call @ (Call::Replace { .. } | Call::Create { .. }), Err(e)) => {
                let api = call.api();
                let (Call::Replace { route, .. } | Call::Create { route, .. }) = call else {
                    return;
                };
                self.writing.remove(&route);
                if matches!(e, CloudError::Stale(_)) {
                    // The table changed: describe it again before writing.
                    self.actual.remove(&route);
                    self.describe_due = true;
                }
                let failures = self.write_backoff.get(&route).map_or(0, |b| b.failures) + 1;
                let at = now + self.delay(failures, &e);
                self.errors
                    .insert(route.to_string(), format!("{api} of {route}: {e}"));
                self.write_backoff.insert(route, Backoff { at, failures });
            }
        }
        self.drive(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let describe = self.describe_backoff.map(|b| b.at);
        let writes = self.write_backoff.values().map(|b| b.at).min();
        [describe, writes, self.next_resync]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_resync.is_some_and(|t| t <= now) {
            self.next_resync = None;
            self.describe_due = true;
        }
        self.drive(now);
    }

    /// The next call to make, and its id for [`handle_reply`](Self::handle_reply).
    pub fn poll_call(&mut self) -> Option<(CallId, Call)> {
        self.out.pop_front()
    }

    pub fn status(&self) -> Status {
        let mine = Some(Target::Interface(self.interface.clone()));
        Status {
            claimed: self.claims.len(),
            converged: self
                .claims
                .iter()
                .filter(|k| self.actual.get(*k) == Some(&mine))
                .count(),
            errors: self
                .errors
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Whether every claimed route points at this appliance.
    pub fn converged(&self) -> bool {
        let s = self.status();
        s.converged == s.claimed
    }

    /// Issues what is due: a description first, then the writes it shows
    /// are needed.
    fn drive(&mut self, now: Instant) {
        let describe_ready = self.describe_backoff.is_none_or(|b| b.at <= now);
        if self.describe_due
            && self.describing.is_none()
            && describe_ready
            && !self.claims.is_empty()
        {
            self.describe_due = false;
            let tables: BTreeSet<String> = self.claims.iter().map(|k| k.table.clone()).collect();
            let id = self.issue(Call::Describe {
                tables: tables.into_iter().collect(),
            });
            self.describing = Some(id);
        }
        let mine = Some(Target::Interface(self.interface.clone()));
        let due: Vec<(RouteKey, bool)> = self
            .claims
            .iter()
            .filter(|k| !self.writing.contains_key(*k))
            .filter(|k| self.write_backoff.get(*k).is_none_or(|b| b.at <= now))
            .filter_map(|k| match self.actual.get(k) {
                None => None, // Not described yet.
                Some(t) if *t == mine => None,
                Some(t) => Some((k.clone(), t.is_some())),
            })
            .collect();
        for (route, exists) in due {
            let interface = self.interface.clone();
            let call = if exists {
                Call::Replace {
                    route: route.clone(),
                    interface,
                }
            } else {
                Call::Create {
                    route: route.clone(),
                    interface,
                }
            };
            let id = self.issue(call);
            self.writing.insert(route, id);
        }
    }

    fn issue(&mut self, call: Call) -> CallId {
        self.next_id += 1;
        self.in_flight.insert(self.next_id, call.clone());
        self.out.push_back((self.next_id, call));
        self.next_id
    }

    /// The delay before retry number `failures`: exponential from the base,
    /// capped, with jitter in its upper half; refusals wait the cap.
    fn delay(&mut self, failures: u32, e: &CloudError) -> Duration {
        let cap = self.settings.backoff_cap;
        let full = if e.transient() {
            self.settings
                .backoff_base
                .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
                .min(cap)
        } else {
            cap
        };
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let half = full / 2;
        half + half.mul_f64((self.jitter % 1000) as f64 / 1000.0)
    }
}
