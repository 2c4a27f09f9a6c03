//! SA lifetimes (RFC 4301 §4.4.2.1): soft limits ask for a rekey, hard
//! limits end the SA. Counted in packets, inner-packet bytes and time since
//! the SA was installed; the sequence-number space is one more limit.

use std::time::{Duration, Instant};

/// One set of limits; `None` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LifetimeLimits {
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    pub time: Option<Duration>,
}

/// Soft limits trigger a rekey; hard limits make the SA refuse packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lifetime {
    pub soft: LifetimeLimits,
    pub hard: LifetimeLimits,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKind {
    Packets,
    Bytes,
    Time,
    /// The sequence-number space is (nearly) used up; it never wraps.
    SequenceSpace,
}

impl LimitKind {
    pub const ALL: [LimitKind; 4] = [
        LimitKind::Packets,
        LimitKind::Bytes,
        LimitKind::Time,
        LimitKind::SequenceSpace,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Packets => "packets",
            LimitKind::Bytes => "bytes",
            LimitKind::Time => "time",
            LimitKind::SequenceSpace => "sequence",
        }
    }
}

/// A limit an SA crossed. Each SA reports at most one soft and one hard
/// event; a hard event implies the soft one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifetimeEvent {
    Soft { spi: u32, kind: LimitKind },
    Hard { spi: u32, kind: LimitKind },
}

impl LifetimeEvent {
    /// Metric labels: (`"soft"`|`"hard"`, `"packets"`|`"bytes"`|`"time"`|`"sequence"`).
    pub fn label(&self) -> (&'static str, &'static str) {
        match self {
            LifetimeEvent::Soft { kind, .. } => ("soft", kind.as_str()),
            LifetimeEvent::Hard { kind, .. } => ("hard", kind.as_str()),
        }
    }

    pub fn spi(&self) -> u32 {
        match self {
            LifetimeEvent::Soft { spi, .. } | LifetimeEvent::Hard { spi, .. } => *spi,
        }
    }
}

impl Lifetime {
    /// A limit of zero, or a soft limit above its hard one, is a config slip
    /// that would expire the SA at once or never warn: name the first one.
    pub(crate) fn invalid_limit(&self) -> Option<(&'static str, LimitKind)> {
        let kinds = |l: &LifetimeLimits| {
            [
                (LimitKind::Packets, l.packets.map(u128::from)),
                (LimitKind::Bytes, l.bytes.map(u128::from)),
                (LimitKind::Time, l.time.map(|t| t.as_nanos())),
            ]
        };
        for ((kind, soft), (_, hard)) in kinds(&self.soft).into_iter().zip(kinds(&self.hard)) {
            if soft == Some(0) {
                return Some(("soft", kind));
            }
            if hard == Some(0) {
                return Some(("hard", kind));
            }
            if let (Some(s), Some(h)) = (soft, hard) {
                if s > h {
                    return Some(("soft", kind));
                }
            }
        }
        None
    }
}

/// What one SA has used, and which events are still to be reported.
#[derive(Debug)]
pub(crate) struct LifetimeTracker {
    spi: u32,
    limits: Lifetime,
    installed: Instant,
    packets: u64,
    bytes: u64,
    soft: Option<LimitKind>,
    hard: Option<LimitKind>,
    soft_reported: bool,
    hard_reported: bool,
}

impl LifetimeTracker {
    pub(crate) fn new(spi: u32, limits: Lifetime, now: Instant) -> Self {
        LifetimeTracker {
            spi,
            limits,
            installed: now,
            packets: 0,
            bytes: 0,
            soft: None,
            hard: None,
            soft_reported: false,
            hard_reported: false,
        }
    }

    pub(crate) fn is_expired(&self) -> bool {
        self.hard.is_some()
    }

    /// Counts one processed packet of `bytes` inner bytes. The packet that
    /// reaches a hard limit is still delivered; the next one is refused.
    #[inline]
    pub(crate) fn record(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes = self.bytes.saturating_add(bytes as u64);
        let (packets, bytes) = (self.packets, self.bytes);
        let reached = |l: &LifetimeLimits| {
            if l.packets.is_some_and(|max| packets >= max) {
                Some(LimitKind::Packets)
            } else if l.bytes.is_some_and(|max| bytes >= max) {
                Some(LimitKind::Bytes)
            } else {
                None
            }
        };
        if let Some(kind) = reached(&self.limits.hard) {
            self.cross_hard(kind);
        }
        if let Some(kind) = reached(&self.limits.soft) {
            self.cross_soft(kind);
        }
    }

    /// Applies the time limits as of `now`.
    #[inline]
    pub(crate) fn check_time(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.installed);
        if self.limits.hard.time.is_some_and(|max| age >= max) {
            self.cross_hard(LimitKind::Time);
        }
        if self.limits.soft.time.is_some_and(|max| age >= max) {
            self.cross_soft(LimitKind::Time);
        }
    }

    /// Records a crossed soft limit; the first one wins.
    pub(crate) fn cross_soft(&mut self, kind: LimitKind) {
        self.soft.get_or_insert(kind);
    }

    /// Records a crossed hard limit; the first one wins.
    pub(crate) fn cross_hard(&mut self, kind: LimitKind) {
        self.hard.get_or_insert(kind);
    }

    /// The next unreported event, hard before soft.
    #[inline]
    pub(crate) fn take_event(&mut self) -> Option<LifetimeEvent> {
        let spi = self.spi;
        if let (Some(kind), false) = (self.hard, self.hard_reported) {
            self.hard_reported = true;
            self.soft_reported = true;
            return Some(LifetimeEvent::Hard { spi, kind });
        }
        if let (Some(kind), false) = (self.soft, self.soft_reported) {
            self.soft_reported = true;
            return Some(LifetimeEvent::Soft { spi, kind });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(soft: LifetimeLimits, hard: LifetimeLimits) -> (LifetimeTracker, Instant) {
        let t0 = Instant::now();
        (LifetimeTracker::new(7, Lifetime { soft, hard }, t0), t0)
    }

    #[test]
    fn packets_then_bytes() {
        let (mut t, _) = tracker(
            LifetimeLimits {
                packets: Some(2),
                ..Default::default()
            },
            LifetimeLimits {
                bytes: Some(300),
                ..Default::default()
            },
        );
        t.record(100);
        assert_eq!(t.take_event(), None);
        t.record(100);
        assert_eq!(
            t.take_event(),
            Some(LifetimeEvent::Soft {
                spi: 7,
                kind: LimitKind::Packets
            })
        );
        assert!(!t.is_expired());
        t.record(100);
        assert!(t.is_expired());
        assert_eq!(
            t.take_event(),
            Some(LifetimeEvent::Hard {
                spi: 7,
                kind: LimitKind::Bytes
            })
        );
        t.record(100);
        assert_eq!(t.take_event(), None, "each event once");
    }

    #[test]
    fn hard_implies_soft() {
        let (mut t, t0) = tracker(
            LifetimeLimits {
                time: Some(Duration::from_secs(10)),
                ..Default::default()
            },
            LifetimeLimits {
                time: Some(Duration::from_secs(20)),
                ..Default::default()
            },
        );
        t.check_time(t0 + Duration::from_secs(25));
        assert_eq!(
            t.take_event(),
            Some(LifetimeEvent::Hard {
                spi: 7,
                kind: LimitKind::Time
            })
        );
        assert_eq!(t.take_event(), None);
    }

    #[test]
    fn labels() {
        let e = LifetimeEvent::Soft {
            spi: 1,
            kind: LimitKind::SequenceSpace,
        };
        assert_eq!(e.label(), ("soft", "sequence"));
        let e = LifetimeEvent::Hard {
            spi: 1,
            kind: LimitKind::Bytes,
        };
        assert_eq!(e.label(), ("hard", "bytes"));
        assert_eq!(e.spi(), 1);
    }

    #[test]
    fn invalid_limits() {
        let some = |n| LifetimeLimits {
            packets: Some(n),
            ..Default::default()
        };
        let lt = |soft, hard| Lifetime { soft, hard };
        assert_eq!(lt(some(5), some(10)).invalid_limit(), None);
        assert_eq!(lt(some(10), some(10)).invalid_limit(), None);
        assert_eq!(
            lt(some(11), some(10)).invalid_limit(),
            Some(("soft", LimitKind::Packets))
        );
        assert_eq!(
            lt(some(0), some(10)).invalid_limit(),
            Some(("soft", LimitKind::Packets))
        );
        assert_eq!(
            lt(Default::default(), some(0)).invalid_limit(),
            Some(("hard", LimitKind::Packets))
        );
        let time = LifetimeLimits {
            time: Some(Duration::ZERO),
            ..Default::default()
        };
        assert_eq!(
            lt(Default::default(), time).invalid_limit(),
            Some(("hard", LimitKind::Time))
        );
    }
}
