//! When to evaluate the policy: only on events (membership, health,
//! configuration, the policy's own timer), debounced and coalesced so a
//! burst of changes costs one evaluation, and backed off after a failed
//! evaluation so a policy that traps on the current view is not hammered.
//!
//! A plain state machine over time, in the sans-IO style: the driver feeds
//! it events and the clock, asks when to wake, and reports outcomes. It
//! never sleeps, so its tests run on virtual time.

use std::time::{Duration, Instant};

/// What prompted an evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A member joined, left or changed state.
    Membership,
    /// A member's measured health changed.
    Health,
    /// The gateway's configuration changed (policy parameters).
    Config,
    /// The policy's own timer ran out.
    Timer,
}

impl Trigger {
    pub const ALL: [Trigger; 4] = [
        Trigger::Membership,
        Trigger::Health,
        Trigger::Config,
        Trigger::Timer,
    ];

    /// The `trigger` label of the events counter.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Membership => "membership",
            Trigger::Health => "health",
            Trigger::Config => "config",
            Trigger::Timer => "timer",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// How events are turned into evaluations.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Quiet time after the last event before evaluating: a burst of
    /// changes (a member dying takes its routes and health with it) is
    /// evaluated once.
    pub debounce: Duration,
    /// The longest an event waits, so continuous churn still gets evaluated.
    pub max_delay: Duration,
    /// Wait after the first failed evaluation; doubles with each further
    /// failure up to `backoff_max`, and resets on success.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The shortest timer a policy may ask for.
    pub timer_min: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            debounce: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            timer_min: Duration::from_millis(100),
        }
    }
}

/// The events one evaluation answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batch {
    /// How many events were coalesced into it.
    pub events: u32,
    triggers: u8,
}

impl Batch {
    /// The kinds of event in the batch.
    pub fn triggers(&self) -> impl Iterator<Item = Trigger> + '_ {
        Trigger::ALL
            .into_iter()
            .filter(|t| self.triggers & t.bit() != 0)
    }
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    first: Instant,
    last: Instant,
    batch: Batch,
    /// Due at once (the policy's timer fired), not after a quiet time.
    immediate: bool,
}

#[derive(Debug)]
pub struct Scheduler {
    settings: Settings,
    pending: Option<Pending>,
    timer: Option<Instant>,
    /// After a failure: no evaluation before this.
    not_before: Option<Instant>,
    /// The wait after the next failure.
    backoff: Duration,
}

impl Scheduler {
    pub fn new(settings: Settings) -> Scheduler {
        Scheduler {
            settings,
            pending: None,
            timer: None,
            not_before: None,
            backoff: settings.backoff_min,
        }
    }

    /// Something the policy decides from changed.
    pub fn event(&mut self, trigger: Trigger, now: Instant) {
        let p = self.pending.get_or_insert(Pending {
            first: now,
            last: now,
            batch: Batch {
                events: 0,
                triggers: 0,
            },
            immediate: false,
        });
        p.last = now;
        p.batch.events += 1;
        p.batch.triggers |= trigger.bit();
    }

    /// The policy asked to be evaluated again `after` from `now` (or not at
    /// all); replaces any earlier timer. Clamped to `timer_min`.
    pub fn set_timer(&mut self, after: Option<Duration>, now: Instant) {
        self.timer = after.map(|a| now + a.max(self.settings.timer_min));
    }

    /// When the driver should next call [`poll`](Self::poll); `None`: only
    /// after the next event.
    pub fn deadline(&self) -> Option<Instant> {
        let due = self.pending.map(|p| {
            if p.immediate {
                p.first
            } else {
                (p.last + self.settings.debounce).min(p.first + self.settings.max_delay)
            }
        });
        let next = match (due, self.timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        next.map(|n| self.not_before.map_or(n, |nb| n.max(nb)))
    }

    /// Whether to evaluate now: the batch of events it answers, taken out
    /// of the pending set.
    pub fn poll(&mut self, now: Instant) -> Option<Batch> {
        if self.timer.is_some_and(|t| t <= now) {
            self.timer = None;
            self.event(Trigger::Timer, now);
            if let Some(p) = &mut self.pending {
                p.immediate = true;
            }
        }
        if self.deadline().is_none_or(|d| d > now) {
            return None;
        }
        self.pending.take().map(|p| p.batch)
    }

    /// The evaluation succeeded: no more backoff.
    pub fn succeeded(&mut self) {
        self.not_before = None;
        self.backoff = self.settings.backoff_min;
    }

    /// The evaluation failed (trap, timeout, invalid decisions): the next
    /// event is evaluated no sooner than the backoff, which doubles.
    pub fn failed(&mut self, now: Instant) {
        self.not_before = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(self.settings.backoff_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn sched() -> (Scheduler, Instant) {
        (Scheduler::new(Settings::default()), Instant::now())
    }

    #[test]
    fn no_event_no_evaluation() {
        let (mut s, t0) = sched();
        assert_eq!(s.deadline(), None);
        assert_eq!(s.poll(t0 + Duration::from_secs(3600)), None);
    }

    #[test]
    fn a_burst_is_coalesced_into_one_evaluation_after_the_quiet_time() {
        let (mut s, t0) = sched();
        for i in 0..10 {
            s.event(Trigger::Membership, t0 + i * 10 * MS);
        }
        s.event(Trigger::Health, t0 + 95 * MS);
        assert_eq!(s.deadline(), Some(t0 + 145 * MS));
        assert_eq!(s.poll(t0 + 144 * MS), None);
        let b = s.poll(t0 + 145 * MS).expect("due");
        assert_eq!(b.events, 11);
        assert_eq!(
            b.triggers().collect::<Vec<_>>(),
            [Trigger::Membership, Trigger::Health]
        );
        assert_eq!(s.poll(t0 + 146 * MS), None, "taken");
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn continuous_churn_is_still_evaluated_by_the_longest_delay() {
        let (mut s, t0) = sched();
        let mut evaluations = 0;
        for i in 0..200 {
            let now = t0 + i * 20 * MS;
            s.event(Trigger::Health, now);
            if s.poll(now).is_some() {
                evaluations += 1;
                s.succeeded();
            }
        }
        // 4 s of events every 20 ms (never 50 ms quiet): one evaluation
        // each 500 ms.
        assert_eq!(evaluations, 7);
    }

    #[test]
    fn failures_back_off_doubling_and_retry_only_on_an_event() {
        let (mut s, t0) = sched();
        s.event(Trigger::Config, t0);
        let t1 = t0 + 50 * MS;
        assert!(s.poll(t1).is_some());
        s.failed(t1);
        // Nothing pending: no retry by itself.
        assert_eq!(s.deadline(), None);
        s.event(Trigger::Membership, t1 + 10 * MS);
        assert_eq!(s.deadline(), Some(t1 + Duration::from_secs(1)));
        assert_eq!(s.poll(t1 + 999 * MS), None);
        let t2 = t1 + Duration::from_secs(1);
        assert!(s.poll(t2).is_some());
        s.failed(t2);
        s.event(Trigger::Membership, t2);
        assert_eq!(s.deadline(), Some(t2 + Duration::from_secs(2)));
        let t3 = t2 + Duration::from_secs(2);
        assert!(s.poll(t3).is_some());
        s.succeeded();
        s.event(Trigger::Membership, t3);
        assert_eq!(s.deadline(), Some(t3 + 50 * MS), "backoff reset");
    }

    #[test]
    fn the_backoff_is_capped() {
        let (mut s, t0) = sched();
        for _ in 0..20 {
            s.failed(t0);
        }
        s.event(Trigger::Health, t0);
        assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn the_policy_timer_fires_on_time_and_is_clamped() {
        let (mut s, t0) = sched();
        s.set_timer(Some(Duration::from_secs(5)), t0);
        assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(s.poll(t0 + 4999 * MS), None);
        let b = s.poll(t0 + Duration::from_secs(5)).expect("timer due");
        assert_eq!(b.triggers().collect::<Vec<_>>(), [Trigger::Timer]);
        assert_eq!(s.deadline(), None, "a timer fires once");
        s.set_timer(Some(Duration::ZERO), t0);
        assert_eq!(s.deadline(), Some(t0 + 100 * MS), "clamped to timer_min");
        s.set_timer(None, t0);
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn a_timer_during_a_burst_joins_it() {
        let (mut s, t0) = sched();
        s.set_timer(Some(200 * MS), t0);
        s.event(Trigger::Membership, t0 + 190 * MS);
        let b = s.poll(t0 + 200 * MS).expect("timer due");
        assert_eq!(b.events, 2);
        assert_eq!(
            b.triggers().collect::<Vec<_>>(),
            [Trigger::Membership, Trigger::Timer]
        );
    }
}
