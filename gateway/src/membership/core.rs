//! The membership state machine around foca.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::{Duration, Instant};

use bytes::Bytes;
use foca::{AccumulatingRuntime, Config, Foca, OwnedNotification, PostcardCodec, State, Timer};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::info::{Infos, MemberInfo};
use super::vouch::{Vouch, Waiting};
use super::MemberId;

/// SWIM settings, chosen for inter-region round trips (up to ~250 ms
/// between the farthest AWS regions). SWIM's suspicion is long: fast,
/// confirmed failure detection comes from the liveness detector between
/// watched members, and a short suspicion falsely declares members down
/// on lossy paths (BENCHMARKS.md); this one is the backstop.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How often each member probes another. It must leave room after
    /// `probe_rtt` for an indirect probe (two round trips): at 500 ms and
    /// 100 ms one way the indirect probes never finished, and every lost
    /// ping made a suspicion (BENCHMARKS.md, "Membership at scale").
    pub probe_period: Duration,
    /// How long a direct probe may take before indirect ones are sent: above
    /// the round trip between the farthest regions.
    pub probe_rtt: Duration,
    /// Members asked to probe indirectly.
    pub indirect_probes: usize,
    /// How long a suspected member has to refute before it is declared down.
    pub suspicion: Duration,
    /// How often each member gossips to a few others on top of probes, so
    /// news spreads in a few round trips.
    pub gossip_period: Duration,
    pub gossip_fanout: usize,
    /// Times each update is piggybacked.
    pub max_transmissions: u8,
    /// How often each member announces itself to one member it holds
    /// down. A member declared down while alive (the far side of a
    /// partition) answers that it thinks the sender down, the sender
    /// rejoins under its next generation, and the two sides merge again.
    pub announce_to_down: Duration,
    /// The most members (up and down) a member keeps: gossip naming a new
    /// member past it is refused.
    pub max_members: usize,
    /// How long a member declared down is remembered (so stale gossip
    /// cannot bring it back, and partitions heal), then forgotten.
    pub forget_down_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            probe_period: Duration::from_secs(1),
            probe_rtt: Duration::from_millis(300),
            indirect_probes: 3,
            suspicion: Duration::from_secs(30),
            gossip_period: Duration::from_millis(100),
            gossip_fanout: 3,
            max_transmissions: 12,
            announce_to_down: Duration::from_secs(5),
            max_members: 4096,
            forget_down_after: Duration::from_secs(3600),
        }
    }
}

impl Settings {
    fn config(&self) -> Config {
        let mut c = Config::simple();
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.num_indirect_probes =
            NonZeroUsize::new(self.indirect_probes.max(1)).unwrap_or(NonZeroUsize::MIN);
        c.suspect_to_down_after = self.suspicion;
        c.max_transmissions =
            NonZeroU8::new(self.max_transmissions.max(1)).unwrap_or(NonZeroU8::MIN);
        c.notify_down_members = true;
        c.remove_down_after = self.forget_down_after;
        // One QUIC datagram, with room for the tag and QUIC's own framing.
        c.max_packet_size = NonZeroUsize::new(1100).unwrap_or(NonZeroUsize::MIN);
        c.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.gossip_period,
            num_members: NonZeroUsize::new(self.gossip_fanout.max(1)).unwrap_or(NonZeroUsize::MIN),
        });
        c.periodic_announce = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(30),
            num_members: NonZeroUsize::MIN,
        });
        c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: self.announce_to_down,
            num_members: NonZeroUsize::MIN,
        });
        c
    }
}

/// A change the gateway acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    Up(MemberId),
    Down(MemberId),
    /// A member rejoined under a new generation.
    Renamed {
        old: MemberId,
        new: MemberId,
    },
    /// This member is known to the cluster.
    Active,
    /// Every other member is gone.
    Idle,
}

#[derive(Debug, thiserror::Error)]
#[error("membership: {reason}")]
pub struct MembershipError {
    kind: &'static str,
    reason: String,
}

impl MembershipError {
    /// Something that does not parse or does not fit.
    pub(crate) fn new(reason: &str) -> MembershipError {
        MembershipError {
            kind: "malformed",
            reason: reason.to_string(),
        }
    }

    /// Well formed, but the sender may not say it: in another member's
    /// name, or about a member it does not watch.
    pub(crate) fn unauthorized(reason: String) -> MembershipError {
        MembershipError {
            kind: "unauthorized",
            reason,
        }
    }

    /// The refusal counter's reason label.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

fn swim_error(e: impl std::fmt::Display) -> MembershipError {
    MembershipError::new(&e.to_string())
}

type Swim = Foca<MemberId, PostcardCodec, StdRng, Infos>;

/// foca's table and the records, as the screen asks about them.
struct Table<'a>(&'a Swim, &'a Infos, bool);

impl super::screen::Known for Table<'_> {
    fn is_me(&self, id: &MemberId) -> bool {
        self.0.identity() == id
    }
    fn holds(&self, id: &MemberId) -> bool {
        self.0.iter_membership_state().any(|m| m.id() == id)
    }
    fn vouch(&self, id: &MemberId) -> Vouch {
        if !self.2 {
            return Vouch::Yes; // Unsigned records (simulations): no word counts more.
        }
        super::vouch::vouch(self.1.get(&id.id).as_ref(), id)
    }
    fn knows(&self, id: &str) -> bool {
        self.0.iter_membership_state().any(|m| m.id().id == id)
    }
    fn count(&self) -> usize {
        self.0.iter_membership_state().len()
    }
    fn holds_down(&self, id: &str) -> bool {
        self.0
            .iter_membership_state()
            .any(|m| m.id().id == id && m.state() == foca::State::Down)
    }
}

pub struct Membership {
    swim: Swim,
    runtime: AccumulatingRuntime<MemberId>,
    events: std::collections::VecDeque<MembershipEvent>,
    infos: Infos,
    /// This member's own record, sent to each member that joins.
    own: Option<MemberInfo>,
    /// The most members the table holds (`Settings::max_members`).
    max_members: usize,
    /// Updates refused by the screen: (sender, why).
    refused: Vec<(String, String)>,
    /// Gossip no record vouched for in time: (sender, why).
    unvouched: Vec<(String, String)>,
    /// Gossip about identities no record vouches for yet, and the record
    /// count when it was last looked at.
    waiting: Waiting,
    settled_at: u64,
}

impl Membership {
    /// `seed` seeds the probe order (any value; tests fix it).
    pub fn new(me: MemberId, settings: Settings, seed: u64) -> Membership {
        Self::with_infos(me, settings, seed, Infos::default())
    }

    /// As [`new`](Self::new), keeping records in `infos` (which may check
    /// their signatures).
    pub fn with_infos(me: MemberId, settings: Settings, seed: u64, infos: Infos) -> Membership {
        Membership {
            swim: Foca::with_custom_broadcast(
                me,
                settings.config(),
                StdRng::seed_from_u64(seed),
                PostcardCodec,
                infos.clone(),
            ),
            runtime: AccumulatingRuntime::new(),
            events: Default::default(),
            infos,
            own: None,
            max_members: settings.max_members,
            refused: Vec::new(),
            unvouched: Vec::new(),
            waiting: Waiting::default(),
            settled_at: 0,
        }
    }

    pub fn me(&self) -> &MemberId {
        self.swim.identity()
    }

    /// Advertises this member's record (a newer version replaces the old
    /// one everywhere).
    pub fn advertise(&mut self, info: MemberInfo) -> Result<(), MembershipError> {
        let r = self
            .swim
            .add_broadcast(&self.infos.seal(&info))
            .map(|_| ())
            .map_err(swim_error);
        self.own = Some(info);
        r
    }

    /// The member records known, this member's own included.
    pub fn infos(&self) -> &Infos {
        &self.infos
    }

    /// The version of this member's own record, once advertised.
    pub fn own_version(&self) -> Option<u64> {
        self.own.as_ref().map(|i| i.version)
    }

    /// This member's record as sent to a member that just joined.
    pub fn own_record(&self) -> Option<Vec<u8>> {
        self.own.as_ref().map(|i| self.infos.seal(i))
    }

    /// A record sent straight to this member (by one that saw it join).
    pub fn learn(&mut self, from: &str, data: &[u8]) -> Result<(), MembershipError> {
        let sender = MemberId {
            id: from.to_string(),
            ..self.swim.identity().clone()
        };
        let taken = foca::BroadcastHandler::receive_item(&mut self.infos, data, Some(&sender))
            .map_err(swim_error)?;
        if taken.is_some() {
            // News here is news for others: spread it as gossip would
            // have. Members dial only members whose records they hold, so
            // a record learnt straight from its member must travel on.
            self.swim.add_broadcast(data).map_err(swim_error)?;
        }
        Ok(())
    }

    fn drain(&mut self) {
        let mut rejoined = false;
        while let Some(n) = self.runtime.to_notify() {
            self.events.push_back(match n {
                OwnedNotification::MemberUp(m) => MembershipEvent::Up(m),
                OwnedNotification::MemberDown(m) => MembershipEvent::Down(m),
                OwnedNotification::Rename(old, new) => MembershipEvent::Renamed { old, new },
                OwnedNotification::Active => MembershipEvent::Active,
                OwnedNotification::Idle => MembershipEvent::Idle,
                // Renew is on, so a member declared down rejoins under its
                // next generation.
                OwnedNotification::Rejoin(_) => {
                    rejoined = true;
                    continue;
                }
                _ => continue,
            });
        }
        if rejoined {
            // foca leaves a rejoined member disconnected (no probes, no
            // gossip) until a message addressed to its new identity comes,
            // and none will: the others only learn of it from what it
            // sends. Left so, it stays silent until the others declare it
            // down again. An empty update makes foca look at its members
            // and resume at once.
            if let Err(e) = self
                .swim
                .apply_many(std::iter::empty(), false, &mut self.runtime)
            {
                tracing::debug!("resuming after a rejoin: {e}");
            }
            self.drain();
        }
    }

    /// Whether `member` is still suspect at `incarnation`, as a verdict
    /// timer armed then expects. foca 0.19 tells the member it is down when
    /// any such timer runs out, stale or not (the member refuted long ago),
    /// and the member then rejoins under a new generation for nothing; the
    /// caller drops stale timers instead.
    pub fn suspect_at(&self, member: &MemberId, incarnation: foca::Incarnation) -> bool {
        self.swim.iter_membership_state().any(|m| {
            m.id() == member && m.state() == State::Suspect && m.incarnation() == incarnation
        })
    }

    /// Joins the cluster through `seed`.
    pub fn join(&mut self, seed: MemberId) -> Result<(), MembershipError> {
        self.swim
            .announce(seed, &mut self.runtime)
            .map_err(swim_error)?;
        self.drain();
        Ok(())
    }

    /// Takes `members` as known and alive without telling anyone: a member
    /// restoring what it knew, or a simulation starting converged.
    pub fn assume(
        &mut self,
        members: impl Iterator<Item = MemberId>,
    ) -> Result<(), MembershipError> {
        let r = self
            .swim
            .apply_many(
                members.map(|m| foca::Member::new(m, 0, State::Alive)),
                false,
                &mut self.runtime,
            )
            .map_err(swim_error);
        self.drain();
        r
    }

    /// Declares `id` down (enough members confirmed it) and lets the
    /// cluster know.
    pub fn declare_down(&mut self, id: &str) -> Result<(), MembershipError> {
        let Some((member, incarnation)) = self
            .swim
            .iter_membership_state()
            .find(|m| m.id().id == id)
            .map(|m| (m.id().clone(), m.incarnation()))
        else {
            return Ok(());
        };
        let r = self
            .swim
            .apply_many(
                std::iter::once(foca::Member::new(member, incarnation, State::Down)),
                true,
                &mut self.runtime,
            )
            .map_err(swim_error);
        self.drain();
        r
    }

    /// A datagram from the signalling channel, whose header names its
    /// sender (checked before). Malformed ones are refused whole (and
    /// counted by the caller); updates about others that the sender may
    /// not give are cut out ([`screen`](super::screen)) and kept for
    /// [`take_refused`](Self::take_refused).
    pub fn handle_data(&mut self, data: &[u8], now: Instant) -> Result<(), MembershipError> {
        let known = Table(&self.swim, &self.infos, self.infos.signed());
        let screened = super::screen::screen(data, &known, self.max_members)?;
        for why in screened.refused {
            self.refused.push((screened.sender.clone(), why));
        }
        for update in screened.deferred {
            if let Err(why) = self.waiting.defer(update, &screened.sender, now) {
                self.refused.push((screened.sender.clone(), why));
            }
        }
        let r = self
            .swim
            .handle_data(screened.data.as_deref().unwrap_or(data), &mut self.runtime)
            .map_err(swim_error);
        self.drain();
        r
    }

    /// Applies the waiting gossip that records vouch for now (new records
    /// came, or a wait ran out), and refuses what waited too long.
    pub fn settle(&mut self, now: Instant) {
        let changes = self.infos.changes();
        let due = self.waiting.poll_timeout().is_some_and(|t| t <= now);
        if self.waiting.is_empty() || (changes == self.settled_at && !due) {
            return;
        }
        self.settled_at = changes;
        let infos = &self.infos;
        let (ready, refused) = self.waiting.settle(|id| infos.get(id), now);
        self.unvouched.extend(refused);
        // Still within the cap: a member whose record is signed is one the
        // mesh CA issued a certificate to, but the table stays bounded.
        let mut room = self
            .max_members
            .saturating_sub(self.swim.iter_membership_state().len());
        let ready: Vec<_> = ready
            .into_iter()
            .filter(|m| {
                let known = self
                    .swim
                    .iter_membership_state()
                    .any(|k| k.id().id == m.id().id);
                let fits = known || room > 0;
                room -= usize::from(!known && fits);
                fits
            })
            .collect();
        if ready.is_empty() {
            return;
        }
        if let Err(e) = self
            .swim
            .apply_many(ready.into_iter(), true, &mut self.runtime)
        {
            tracing::debug!("applying vouched gossip: {e}");
        }
        self.drain();
    }

    /// When gossip waiting for a record runs out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.waiting.poll_timeout()
    }

    /// Updates refused since the last call: who sent each, and why.
    pub fn take_refused(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.refused)
    }

    /// Gossip refused since the last call because no record vouched for
    /// it in time: who sent each, and what it said.
    pub fn take_unvouched(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.unvouched)
    }

    /// A timer armed through [`poll_timer`](Self::poll_timer) ran out.
    pub fn handle_timer(&mut self, timer: Timer<MemberId>) -> Result<(), MembershipError> {
        let r = self
            .swim
            .handle_timer(timer, &mut self.runtime)
            .map_err(swim_error);
        self.drain();
        r
    }

    /// A datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(MemberId, Bytes)> {
        self.runtime.to_send()
    }

    /// A timer to arm: hand `timer` back after `after`.
    pub fn poll_timer(&mut self) -> Option<(Duration, Timer<MemberId>)> {
        self.runtime.to_schedule()
    }

    pub fn poll_event(&mut self) -> Option<MembershipEvent> {
        self.events.pop_front()
    }

    /// Every member this one knows, with its state.
    pub fn members(&self) -> impl Iterator<Item = (&MemberId, State)> {
        self.swim
            .iter_membership_state()
            .map(|m| (m.id(), m.state()))
    }

    /// Active members (alive or suspect), this one excluded.
    pub fn active(&self) -> usize {
        self.swim.num_members()
    }
}
