//! Negotiating the ESP SAs of a pair of appliances: three messages over the
//! signalling channel, which has already authenticated the peer (mutual
//! TLS with the mesh CA) and tells us who it is.
//!
//! 1. init, initiator -> responder: a fresh X25519 public key, a nonce, the
//!    epoch, and the SPI the initiator will receive on.
//! 2. response: the responder's public key, nonce, SPI and a MAC. Before
//!    sending it the responder installs its inbound SA.
//! 3. confirm: the initiator's MAC. Before sending it the initiator installs
//!    its inbound SA and switches its outbound to the new one; the responder
//!    switches its outbound when the confirm arrives. Each side thus receives
//!    on a new SA before the other sends on it (make-before-break); the old
//!    SAs are retired by the SA table after a grace period.
//!
//! Keys: HKDF-SHA256 with the epoch key as salt and the X25519 shared
//! secret as input, expanded over a hash of the whole exchange into one key
//! per direction and a confirmation key. Fresh ephemeral keys per exchange
//! give forward secrecy; the epoch key means only appliances that hold it
//! form SAs, and a MAC that does not verify (another epoch key) forms none.
//!
//! A plain state machine in the sans-IO style: messages and time in,
//! [`Event`]s out.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ring::agreement::{EphemeralPrivateKey, X25519};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use super::epoch::{Epoch, EpochKeyError, KeyProvider};
pub use super::error::ExchangeError;
use super::message::{Confirm, Init, Message, Response, MAC_LEN, NONCE_LEN, PUBLIC_LEN};
use super::schedule::{derive, mac, transcript, verify};
use super::spi::SpiPool;
use crate::esp::{CipherSuite, KeyMaterial};

/// What the gateway must do after the negotiator has seen a message or the
/// time.
#[derive(Debug)]
pub enum Event {
    /// Send `message` to `peer` over the signalling channel.
    Send { peer: String, message: Vec<u8> },
    /// Receive from `peer` on a new SA.
    InstallInbound {
        peer: String,
        spi: u32,
        key: KeyMaterial,
        epoch: Epoch,
    },
    /// Send to `peer` on a new SA from now on.
    InstallOutbound {
        peer: String,
        spi: u32,
        key: KeyMaterial,
        epoch: Epoch,
    },
    /// An inbound SA installed for an exchange that did not complete.
    RemoveInbound { peer: String, spi: u32 },
    /// An exchange this side started or answered ended without SAs.
    Failed { peer: String, error: ExchangeError },
}

struct Outgoing {
    exchange: u64,
    epoch: Epoch,
    secret: EphemeralPrivateKey,
    init: Vec<u8>,
    spi: u32,
    deadline: Instant,
}

struct Confirming {
    exchange: u64,
    epoch: Epoch,
    inbound_spi: u32,
    outbound_spi: u32,
    outbound_key: KeyMaterial,
    confirm_key: Zeroizing<[u8; 32]>,
    transcript: [u8; 32],
    deadline: Instant,
}

/// The pending exchange with `peer`, taken out if `belongs` says the message
/// is part of it (a stray or stale message leaves it in place).
fn take_matching<T>(
    pending: &mut HashMap<String, T>,
    peer: &str,
    belongs: impl Fn(&T) -> bool,
) -> Option<T> {
    if pending.get(peer).is_some_and(belongs) {
        pending.remove(peer)
    } else {
        None
    }
}

/// Exchange ids remembered per peer, to refuse replays.
const SEEN_PER_PEER: usize = 1024;

/// How long after a rotation an exchange under the epoch before is still
/// answered: while the rotation spreads by gossip, a member that has not
/// heard of it yet starts exchanges under the old epoch.
pub const EPOCH_GRACE: Duration = Duration::from_secs(60);

/// How long an init under an epoch just ahead of this one is kept: an
/// order spreads by gossip, so an initiator that took it first starts
/// exchanges under the new epoch before this member has it. The init is
/// answered as soon as this member moves to that epoch, rather than left
/// to time out and be retried seconds later.
pub const AHEAD_WAIT: Duration = Duration::from_secs(2);
/// How far ahead an init's epoch may be to be kept (a rotation moves by
/// one, a revocation of the current epoch by one more).
const MAX_AHEAD: Epoch = 2;

pub struct Negotiator {
    local: String,
    suite: CipherSuite,
    keys: Arc<dyn KeyProvider>,
    epoch: Epoch,
    /// The epoch before the last rotation, answered until the instant.
    previous: Option<(Epoch, Instant)>,
    /// Every epoch below is revoked; `revoked` holds those at or above.
    floor: Epoch,
    revoked: BTreeSet<Epoch>,
    /// Per peer, an init under an epoch ahead of this one (see
    /// [`AHEAD_WAIT`]): its bytes, epoch and until when it is kept.
    ahead: HashMap<String, (Vec<u8>, Epoch, Instant)>,
    timeout: Duration,
    spis: SpiPool,
    outgoing: HashMap<String, Outgoing>,
    confirming: HashMap<String, Confirming>,
    seen: HashMap<String, VecDeque<u64>>,
    events: VecDeque<Event>,
    rng: SystemRandom,
}

impl Negotiator {
    pub fn new(
        local: &str,
        suite: CipherSuite,
        keys: Arc<dyn KeyProvider>,
        epoch: Epoch,
    ) -> Negotiator {
        Negotiator {
            local: local.to_string(),
            suite,
            keys,
            epoch,
            previous: None,
            floor: 0,
            revoked: BTreeSet::new(),
            ahead: HashMap::new(),
            timeout: Duration::from_secs(5),
            spis: SpiPool::default(),
            outgoing: HashMap::new(),
            confirming: HashMap::new(),
            seen: HashMap::new(),
            events: VecDeque::new(),
            rng: SystemRandom::new(),
        }
    }

    /// The epoch new exchanges use.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Moves to `epoch` (a rotation) at `now`: exchanges from now on use
    /// it; the epoch before is answered for [`EPOCH_GRACE`] more.
    pub fn set_epoch(&mut self, epoch: Epoch, now: Instant) {
        if epoch != self.epoch {
            self.previous = Some((self.epoch, now + EPOCH_GRACE));
            self.epoch = epoch;
        }
        // Inits that arrived under this epoch before this member moved to it.
        let waiting: Vec<(String, Vec<u8>)> = self
            .ahead
            .iter()
            .filter(|(_, (_, e, until))| *e == epoch && now < *until)
            .map(|(p, (bytes, _, _))| (p.clone(), bytes.clone()))
            .collect();
        self.ahead
            .retain(|_, (_, e, until)| *e > epoch && now < *until);
        for (peer, bytes) in waiting {
            if let Err(error) = self.handle(&peer, &bytes, now) {
                self.events.push_back(Event::Failed { peer, error });
            }
        }
    }

    /// Whether an init under `epoch` is answered at `now`: the current
    /// epoch, or the one before during its grace. Never an epoch the
    /// initiator picks (an old one, or one the mesh has not moved to).
    fn answers(&self, epoch: Epoch, now: Instant) -> Result<(), ExchangeError> {
        let previous = self
            .previous
            .is_some_and(|(e, until)| e == epoch && now < until);
        if epoch == self.epoch || previous {
            Ok(())
        } else {
            Err(ExchangeError::Epoch {
                theirs: epoch,
                ours: self.epoch,
            })
        }
    }

    /// No SA is negotiated under `epoch` again; exchanges of it under way
    /// end now, without SAs.
    pub fn revoke(&mut self, epoch: Epoch) {
        if epoch >= self.floor {
            self.revoked.insert(epoch);
        }
        self.end_revoked();
    }

    /// No SA is negotiated under any epoch below `floor` again.
    pub fn revoke_below(&mut self, floor: Epoch) {
        if floor > self.floor {
            self.floor = floor;
            self.revoked.retain(|&e| e >= floor);
            self.end_revoked();
        }
    }

    /// How many revoked epochs are listed above the floor.
    #[cfg(test)]
    pub(crate) fn revoked_len(&self) -> usize {
        self.revoked.len()
    }

    fn is_revoked(&self, epoch: Epoch) -> bool {
        epoch < self.floor || self.revoked.contains(&epoch)
    }

    /// Ends the exchanges under way of a revoked epoch.
    fn end_revoked(&mut self) {
        let mut ended: Vec<(String, Epoch)> = self
            .outgoing
            .iter()
            .map(|(p, o)| (p.clone(), o.epoch))
            .chain(self.confirming.iter().map(|(p, c)| (p.clone(), c.epoch)))
            .filter(|(_, e)| self.is_revoked(*e))
            .collect();
        ended.sort();
        ended.dedup_by(|a, b| a.0 == b.0);
        for (peer, epoch) in ended {
            self.abort(&peer, ExchangeError::Revoked(epoch));
        }
    }

    /// Ends any exchange with `peer` without SAs (the peer restarted, went
    /// down or was cut off): an inbound SA installed for it is removed, and
    /// what is kept per peer goes with it, so these tables hold the members
    /// of now, not every member ever met. (A restarted peer draws fresh
    /// exchange ids, and only it can send on its authenticated channel.)
    pub fn forget(&mut self, peer: &str) {
        self.ahead.remove(peer);
        self.seen.remove(peer);
        self.abort(peer, ExchangeError::Unexpected("exchange"));
    }

    /// Entries kept per peer, in both tables (for the tests of bounds).
    #[cfg(test)]
    pub(crate) fn peers_kept(&self) -> usize {
        self.seen.len() + self.ahead.len()
    }

    fn abort(&mut self, peer: &str, error: ExchangeError) {
        let mut ended = false;
        if let Some(o) = self.outgoing.remove(peer) {
            self.spis.release(o.spi);
            ended = true;
        }
        if let Some(c) = self.confirming.remove(peer) {
            self.spis.release(c.inbound_spi);
            self.events.push_back(Event::RemoveInbound {
                peer: peer.to_string(),
                spi: c.inbound_spi,
            });
            ended = true;
        }
        if ended && !matches!(error, ExchangeError::Unexpected(_)) {
            self.events.push_back(Event::Failed {
                peer: peer.to_string(),
                error,
            });
        }
    }

    /// An SA this gateway received on is gone: its SPI may be chosen again.
    pub fn release_spi(&mut self, spi: u32) {
        self.spis.release(spi);
    }

    fn epoch_key(&self, epoch: Epoch) -> Result<Zeroizing<[u8; 32]>, ExchangeError> {
        if self.is_revoked(epoch) {
            return Err(ExchangeError::Revoked(epoch));
        }
        let key = self.keys.epoch_key(epoch).map_err(|e| match e {
            EpochKeyError::Revoked(e) => ExchangeError::Revoked(e),
            e => ExchangeError::NoEpochKey {
                epoch,
                reason: e.to_string(),
            },
        })?;
        Ok(Zeroizing::new(*key.bytes()))
    }

    /// A fresh X25519 key pair for one exchange (forward secrecy).
    fn ephemeral(&self) -> Result<(EphemeralPrivateKey, [u8; PUBLIC_LEN]), ExchangeError> {
        let secret =
            EphemeralPrivateKey::generate(&X25519, &self.rng).map_err(|_| ExchangeError::Crypto)?;
        let mut public = [0u8; PUBLIC_LEN];
        public.copy_from_slice(
            secret
                .compute_public_key()
                .map_err(|_| ExchangeError::Crypto)?
                .as_ref(),
        );
        Ok((secret, public))
    }

    fn random<const N: usize>(&self) -> Result<[u8; N], ExchangeError> {
        let mut b = [0u8; N];
        self.rng.fill(&mut b).map_err(|_| ExchangeError::Crypto)?;
        Ok(b)
    }

    /// Starts an exchange with `peer` (first keys, or a rekey). Nothing
    /// happens if one is already under way. Fails closed: without the
    /// epoch key no exchange starts.
    pub fn initiate(&mut self, peer: &str, now: Instant) -> Result<(), ExchangeError> {
        // One at a time per peer: ours, or the peer's we are answering. An
        // exchange of an older epoch gives way to one of the current.
        match self.outgoing.get(peer) {
            Some(o) if o.epoch == self.epoch => return Ok(()),
            Some(_) => {
                if let Some(o) = self.outgoing.remove(peer) {
                    self.spis.release(o.spi);
                }
            }
            None => {}
        }
        if self
            .confirming
            .get(peer)
            .is_some_and(|c| c.epoch == self.epoch)
        {
            return Ok(());
        }
        self.epoch_key(self.epoch)?;
        let (secret, public) = self.ephemeral()?;
        let spi = self.spis.allocate(&self.rng)?;
        let init = Init {
            exchange: u64::from_be_bytes(self.random()?),
            epoch: self.epoch,
            suite: self.suite,
            initiator: self.local.clone(),
            responder: peer.to_string(),
            nonce: self.random::<NONCE_LEN>()?,
            public,
            spi,
        };
        let (exchange, epoch) = (init.exchange, init.epoch);
        let bytes = Message::Init(init).encode();
        self.outgoing.insert(
            peer.to_string(),
            Outgoing {
                exchange,
                epoch,
                secret,
                init: bytes.clone(),
                spi,
                deadline: now + self.timeout,
            },
        );
        self.events.push_back(Event::Send {
            peer: peer.to_string(),
            message: bytes,
        });
        Ok(())
    }

    /// A message from `peer`, whom the channel authenticated. An error
    /// refuses the message and changes nothing else (the caller counts and
    /// logs it, naming the peer).
    pub fn handle(&mut self, peer: &str, bytes: &[u8], now: Instant) -> Result<(), ExchangeError> {
        match Message::decode(bytes)? {
            Message::Init(m) => self.on_init(peer, m, bytes, now),
            Message::Response(m) => self.on_response(peer, m),
            Message::Confirm(m) => self.on_confirm(peer, m),
            // The member takes wrapped keys before the negotiation sees
            // messages (`member::handle_message`).
            Message::Wrapped(_) => Err(ExchangeError::Unexpected("wrapped key")),
        }
    }

    fn on_init(
        &mut self,
        peer: &str,
        m: Init,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), ExchangeError> {
        if m.initiator != peer {
            return Err(ExchangeError::Impersonation {
                claimed: m.initiator,
                authenticated: peer.to_string(),
            });
        }
        if m.responder != self.local {
            return Err(ExchangeError::NotForUs(m.responder));
        }
        if m.spi <= 255 {
            return Err(ExchangeError::ReservedSpi(m.spi));
        }
        if m.suite != self.suite {
            return Err(ExchangeError::Suite {
                theirs: m.suite.name(),
                ours: self.suite.name(),
            });
        }
        let seen = self.seen.entry(peer.to_string()).or_default();
        if seen.contains(&m.exchange) {
            return Err(ExchangeError::Replay(m.exchange));
        }
        // Both sides started at once: the exchange of the lower id goes on.
        if self.outgoing.contains_key(peer) {
            if self.local.as_str() < peer {
                return Err(ExchangeError::Collision);
            }
            if let Some(o) = self.outgoing.remove(peer) {
                self.spis.release(o.spi);
            }
        }
        if m.epoch > self.epoch && m.epoch - self.epoch <= MAX_AHEAD && !self.is_revoked(m.epoch) {
            // Answered when this member moves to that epoch (or dropped).
            self.ahead.insert(
                peer.to_string(),
                (bytes.to_vec(), m.epoch, now + AHEAD_WAIT),
            );
            return Ok(());
        }
        self.answers(m.epoch, now)?;
        let epoch_key = self.epoch_key(m.epoch)?;
        let seen = self.seen.entry(peer.to_string()).or_default();
        seen.push_back(m.exchange);
        if seen.len() > SEEN_PER_PEER {
            seen.pop_front();
        }
        let (secret, public) = self.ephemeral()?;
        let spi = self.spis.allocate(&self.rng)?;
        let mut response = Response {
            exchange: m.exchange,
            nonce: self.random::<NONCE_LEN>()?,
            public,
            spi,
            mac: [0; MAC_LEN],
        };
        let th = transcript(bytes, &response);
        let keys = match derive(self.suite, &epoch_key, secret, &m.public, &th) {
            Ok(k) => k,
            Err(e) => {
                self.spis.release(spi);
                return Err(e);
            }
        };
        response.mac = mac(&keys.confirm, b"responder", &th);
        // An earlier exchange with this peer that was never confirmed.
        if let Some(old) = self.confirming.remove(peer) {
            self.spis.release(old.inbound_spi);
            self.events.push_back(Event::RemoveInbound {
                peer: peer.to_string(),
                spi: old.inbound_spi,
            });
        }
        self.events.push_back(Event::InstallInbound {
            peer: peer.to_string(),
            spi,
            key: keys.initiator_to_responder,
            epoch: m.epoch,
        });
        self.events.push_back(Event::Send {
            peer: peer.to_string(),
            message: Message::Response(response).encode(),
        });
        self.confirming.insert(
            peer.to_string(),
            Confirming {
                exchange: m.exchange,
                epoch: m.epoch,
                inbound_spi: spi,
                outbound_spi: m.spi,
                outbound_key: keys.responder_to_initiator,
                confirm_key: keys.confirm,
                transcript: th,
                deadline: now + self.timeout,
            },
        );
        Ok(())
    }

    fn on_response(&mut self, peer: &str, m: Response) -> Result<(), ExchangeError> {
        let Some(o) = take_matching(&mut self.outgoing, peer, |o| o.exchange == m.exchange) else {
            return Err(ExchangeError::Unexpected("response"));
        };
        let result = (|| {
            if m.spi <= 255 {
                return Err(ExchangeError::ReservedSpi(m.spi));
            }
            let epoch_key = self.epoch_key(o.epoch)?;
            let th = transcript(&o.init, &m);
            let keys = derive(self.suite, &epoch_key, o.secret, &m.public, &th)?;
            if !verify(&keys.confirm, b"responder", &th, &m.mac) {
                return Err(ExchangeError::Authentication);
            }
            Ok((keys, th))
        })();
        let (keys, th) = match result {
            Ok(k) => k,
            Err(e) => {
                // Our exchange is over: say so, so the pair is tried again.
                self.spis.release(o.spi);
                self.events.push_back(Event::Failed {
                    peer: peer.to_string(),
                    error: e.clone(),
                });
                return Err(e);
            }
        };
        self.events.push_back(Event::InstallInbound {
            peer: peer.to_string(),
            spi: o.spi,
            key: keys.responder_to_initiator,
            epoch: o.epoch,
        });
        self.events.push_back(Event::InstallOutbound {
            peer: peer.to_string(),
            spi: m.spi,
            key: keys.initiator_to_responder,
            epoch: o.epoch,
        });
        self.events.push_back(Event::Send {
            peer: peer.to_string(),
            message: Message::Confirm(Confirm {
                exchange: m.exchange,
                mac: mac(&keys.confirm, b"initiator", &th),
            })
            .encode(),
        });
        Ok(())
    }

    fn on_confirm(&mut self, peer: &str, m: Confirm) -> Result<(), ExchangeError> {
        let Some(c) = take_matching(&mut self.confirming, peer, |c| c.exchange == m.exchange)
        else {
            return Err(ExchangeError::Unexpected("confirm"));
        };
        if self.is_revoked(c.epoch) {
            self.spis.release(c.inbound_spi);
            self.events.push_back(Event::RemoveInbound {
                peer: peer.to_string(),
                spi: c.inbound_spi,
            });
            return Err(ExchangeError::Revoked(c.epoch));
        }
        if !verify(&c.confirm_key, b"initiator", &c.transcript, &m.mac) {
            self.spis.release(c.inbound_spi);
            self.events.push_back(Event::RemoveInbound {
                peer: peer.to_string(),
                spi: c.inbound_spi,
            });
            return Err(ExchangeError::Authentication);
        }
        self.events.push_back(Event::InstallOutbound {
            peer: peer.to_string(),
            spi: c.outbound_spi,
            key: c.outbound_key,
            epoch: c.epoch,
        });
        Ok(())
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.outgoing
            .values()
            .map(|o| o.deadline)
            .chain(self.confirming.values().map(|c| c.deadline))
            .min()
    }

    /// Ends the exchanges whose time is up, without SAs.
    pub fn handle_timeout(&mut self, now: Instant) {
        let late: Vec<String> = self
            .outgoing
            .iter()
            .filter(|(_, o)| o.deadline <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for peer in late {
            if let Some(o) = self.outgoing.remove(&peer) {
                self.spis.release(o.spi);
                self.events.push_back(Event::Failed {
                    peer,
                    error: ExchangeError::Timeout,
                });
            }
        }
        let late: Vec<String> = self
            .confirming
            .iter()
            .filter(|(_, c)| c.deadline <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for peer in late {
            if let Some(c) = self.confirming.remove(&peer) {
                self.spis.release(c.inbound_spi);
                self.events.push_back(Event::RemoveInbound {
                    peer: peer.clone(),
                    spi: c.inbound_spi,
                });
                self.events.push_back(Event::Failed {
                    peer,
                    error: ExchangeError::Timeout,
                });
            }
        }
    }

    /// The next thing to do, in order.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}
