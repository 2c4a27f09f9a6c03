//! Session keys for configured peers. RFC 4106 forbids AES-GCM ESP with
//! statically configured keys: a counter nonce under a fixed key is safe
//! only while no sequence number is ever used twice, and a restored
//! snapshot, a second instance of one config or a crash between use and
//! persistence breaks that. So the configured keys are pre-shared secrets
//! here, and the SA keys of each session are derived from them and two
//! fresh nonces, one per gateway, drawn at every start:
//!
//! - Each side sends `hello(mine, echo)`: its nonce and the last nonce it
//!   heard from the peer, authenticated with a MAC under a key derived
//!   from the pre-shared key of the direction it sends in. They travel as
//!   UDP on the ESP port behind the non-ESP marker (four zero bytes, RFC
//!   3948 §2.2), as IKE would.
//! - A peer's nonce is taken only from a hello that echoes this side's
//!   current nonce (a challenge, so a recorded hello cannot be replayed
//!   into a session), and never twice: each (nonce, nonce) pair keys one
//!   session, whose sequence numbers start at 1 under keys never used.
//! - The keys of the SA from X to Y with SPI s are
//!   HKDF(psk(X→Y), salt = label, info = nonce X ‖ nonce Y ‖ s).
//!
//! A gateway restarted (killed, restored from a snapshot, or a second copy
//! of it) draws new nonces, so it keys new sessions: no (key, nonce) pair
//! repeats, and packets recorded before are refused by keys that no longer
//! exist. Sans-IO: datagrams and the time in, datagrams to send, SA keys
//! to install and the next deadline out.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::esp::{CipherSuite, KeyMaterial};

/// RFC 3948's non-ESP marker, then ours.
pub const MARKER: [u8; 4] = [0; 4];
const MAGIC: &[u8; 4] = b"MGS1";
pub const NONCE_LEN: usize = 32;
const MAC_LEN: usize = 32;
/// A hello: marker, magic, nonce, echo, MAC.
pub const HELLO_LEN: usize = 8 + 2 * NONCE_LEN + MAC_LEN;

/// Between hellos while the session is not up both ways.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);
/// At most one answer per this to hellos that do not advance the session
/// (a replayed or repeated hello costs one datagram per this at most).
const ANSWER_GAP: Duration = Duration::from_millis(100);
/// Peer nonces keyed during this side's nonce; past it, this side draws a
/// new nonce (the table stays bounded, freshness holds).
const MAX_SESSIONS: usize = 1024;

const KEY_LABEL: &[u8] = b"meshgate session key v1";
const MAC_LABEL: &[u8] = b"meshgate session hello v1";

pub type Nonce = [u8; NONCE_LEN];

/// What one configured peer's session is made of.
pub struct SessionConfig {
    pub peer: String,
    pub suite: CipherSuite,
    /// The configured keys, as pre-shared secrets: of the SA this side
    /// sends on (`spi_out`), and of the one it receives on (`spi_in`).
    pub psk_out: KeyMaterial,
    pub psk_in: KeyMaterial,
    pub spi_out: u32,
    pub spi_in: u32,
}

/// News for the shell.
#[derive(Debug)]
pub enum SessionEvent {
    /// A new session: send on `outbound` (SPI `spi_out`) and receive on
    /// `inbound` (SPI `spi_in`) from now on; the SAs they replace go.
    Keys {
        outbound: KeyMaterial,
        inbound: KeyMaterial,
    },
    /// A datagram refused: the counter's reason label, and why (counted
    /// and said by the shell).
    Refused(&'static str, &'static str),
}

/// The session with one configured peer.
pub struct Session {
    cfg: SessionConfig,
    rng: SystemRandom,
    mine: Nonce,
    /// The peer's nonce of the session in force.
    theirs: Option<Nonce>,
    /// Whether the peer has shown it holds `mine` (its hello echoed it).
    confirmed: bool,
    /// Peer nonces keyed under `mine`: none keys twice.
    keyed: HashSet<Nonce>,
    hello_mac: Zeroizing<[u8; 32]>,
    check_mac: Zeroizing<[u8; 32]>,
    next_hello: Instant,
    last_answer: Option<Instant>,
    out: VecDeque<Vec<u8>>,
    events: VecDeque<SessionEvent>,
}

impl Session {
    /// A session that has just started: its first hello is due now.
    pub fn new(cfg: SessionConfig, now: Instant) -> Result<Session, crate::esp::KeyError> {
        let mut hello_mac = Zeroizing::new([0u8; 32]);
        cfg.psk_out.expand(MAC_LABEL, &[], &mut hello_mac[..])?;
        let mut check_mac = Zeroizing::new([0u8; 32]);
        cfg.psk_in.expand(MAC_LABEL, &[], &mut check_mac[..])?;
        let rng = SystemRandom::new();
        let mut s = Session {
            cfg,
            mine: [0; NONCE_LEN],
            rng,
            theirs: None,
            confirmed: false,
            keyed: HashSet::new(),
            hello_mac,
            check_mac,
            next_hello: now,
            last_answer: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
        };
        s.draw();
        s.handle_timeout(now);
        Ok(s)
    }

    pub fn peer(&self) -> &str {
        &self.cfg.peer
    }

    /// Whether both sides hold the session in force.
    pub fn is_up(&self) -> bool {
        self.theirs.is_some() && self.confirmed
    }

    /// A datagram from the peer's endpoint that carries the non-ESP marker.
    pub fn handle_datagram(&mut self, data: &[u8], now: Instant) {
        let Some((nonce, echo)) = self.open(data) else {
            return;
        };
        if echo != self.mine {
            // It does not hold our nonce yet (it or we restarted): answer
            // with it, paced.
            self.answer(nonce, now);
            return;
        }
        self.confirmed = true;
        if self.theirs == Some(nonce) {
            return; // The session in force, confirmed again.
        }
        if self.keyed.contains(&nonce) {
            // An earlier session of this nonce: a recording replayed.
            self.events.push_back(SessionEvent::Refused(
                "replayed",
                "a hello of a session that has ended",
            ));
            return;
        }
        match self.keys(&nonce) {
            Ok((outbound, inbound)) => {
                self.keyed.insert(nonce);
                self.theirs = Some(nonce);
                self.events
                    .push_back(SessionEvent::Keys { outbound, inbound });
                // It learns that we hold its nonce.
                self.send_hello();
                if self.keyed.len() >= MAX_SESSIONS {
                    // Bounded: a new nonce, and a new session after it.
                    self.draw();
                }
            }
            Err(_) => self.events.push_back(SessionEvent::Refused(
                "internal",
                "the session keys could not be derived",
            )),
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due: the next
    /// hello while the session is not up both ways.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.is_up()).then_some(self.next_hello)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if !self.is_up() && now >= self.next_hello {
            self.next_hello = now + RETRY_EVERY;
            self.send_hello();
        }
    }

    /// The next datagram to send to the peer's endpoint.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// A fresh nonce for this side: every session after it is new.
    fn draw(&mut self) {
        if self.rng.fill(&mut self.mine).is_err() {
            // Never seen on Linux (getrandom); without randomness no
            // session may start (fail closed): the nonce stays unusable.
            tracing::error!(
                "no randomness for a session nonce; {} stays unkeyed",
                self.cfg.peer
            );
        }
        self.keyed.clear();
        self.theirs = None;
        self.confirmed = false;
    }

    fn answer(&mut self, nonce: Nonce, now: Instant) {
        if self
            .last_answer
            .is_some_and(|t| now.saturating_duration_since(t) < ANSWER_GAP)
        {
            return;
        }
        self.last_answer = Some(now);
        self.out
            .push_back(hello(&self.hello_mac, &self.mine, &nonce));
    }

    fn send_hello(&mut self) {
        let echo = self.theirs.unwrap_or([0; NONCE_LEN]);
        self.out
            .push_back(hello(&self.hello_mac, &self.mine, &echo));
    }

    /// Whether `data` is a hello of this session's peer (its MAC holds):
    /// how the shell finds the session a datagram belongs to.
    pub fn accepts(&self, data: &[u8]) -> bool {
        data.len() == HELLO_LEN && data[..4] == MARKER && &data[4..8] == MAGIC && {
            let (body, tag) = data.split_at(HELLO_LEN - MAC_LEN);
            let key = hmac::Key::new(hmac::HMAC_SHA256, &self.check_mac[..]);
            hmac::verify(&key, body, tag).is_ok()
        }
    }

    /// The nonce and echo of an authentic hello.
    fn open(&mut self, data: &[u8]) -> Option<(Nonce, Nonce)> {
        if data.len() != HELLO_LEN || data[..4] != MARKER || &data[4..8] != MAGIC {
            self.events
                .push_back(SessionEvent::Refused("malformed", "not a session hello"));
            return None;
        }
        let (body, tag) = data.split_at(HELLO_LEN - MAC_LEN);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.check_mac[..]);
        if hmac::verify(&key, body, tag).is_err() {
            self.events.push_back(SessionEvent::Refused(
                "mac",
                "a hello whose MAC fails (another pre-shared key, or forged)",
            ));
            return None;
        }
        let mut nonce = [0; NONCE_LEN];
        let mut echo = [0; NONCE_LEN];
        nonce.copy_from_slice(&body[8..8 + NONCE_LEN]);
        echo.copy_from_slice(&body[8 + NONCE_LEN..]);
        Some((nonce, echo))
    }

    fn keys(&self, theirs: &Nonce) -> Result<(KeyMaterial, KeyMaterial), crate::esp::KeyError> {
        let c = &self.cfg;
        let outbound = session_key(&c.psk_out, &self.mine, theirs, c.spi_out)?;
        let inbound = session_key(&c.psk_in, theirs, &self.mine, c.spi_in)?;
        Ok((outbound, inbound))
    }
}

/// The key of the SA with `spi` from the side whose nonce is `sender` to
/// the one whose nonce is `receiver`, under the pre-shared `psk` of that
/// direction.
pub fn session_key(
    psk: &KeyMaterial,
    sender: &Nonce,
    receiver: &Nonce,
    spi: u32,
) -> Result<KeyMaterial, crate::esp::KeyError> {
    let suite = psk.suite();
    let mut bytes = Zeroizing::new([0u8; 64]);
    let out = &mut bytes[..suite.key_material_len()];
    psk.expand(KEY_LABEL, &[sender, receiver, &spi.to_be_bytes()], out)?;
    KeyMaterial::new(suite, out)
}

/// A hello's nonce and echo, as a capture shows them (nothing secret).
pub fn parse_hello(data: &[u8]) -> Option<(Nonce, Nonce)> {
    if data.len() != HELLO_LEN || data[..4] != MARKER || &data[4..8] != MAGIC {
        return None;
    }
    let mut nonce = [0; NONCE_LEN];
    let mut echo = [0; NONCE_LEN];
    nonce.copy_from_slice(&data[8..8 + NONCE_LEN]);
    echo.copy_from_slice(&data[8 + NONCE_LEN..8 + 2 * NONCE_LEN]);
    Some((nonce, echo))
}

fn hello(mac_key: &[u8; 32], nonce: &Nonce, echo: &Nonce) -> Vec<u8> {
    let mut out = Vec::with_capacity(HELLO_LEN);
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(nonce);
    out.extend_from_slice(echo);
    let key = hmac::Key::new(hmac::HMAC_SHA256, mac_key);
    let tag = hmac::sign(&key, &out);
    out.extend_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> KeyMaterial {
        KeyMaterial::new(CipherSuite::Aes128Gcm, &[byte; 20]).unwrap()
    }

    /// Gateway a's and b's sessions with each other (keys 1: a→b, 2: b→a).
    fn pair(now: Instant) -> (Session, Session) {
        let a = SessionConfig {
            peer: "b".into(),
            suite: CipherSuite::Aes128Gcm,
            psk_out: key(1),
            psk_in: key(2),
            spi_out: 0x1000,
            spi_in: 0x2000,
        };
        (Session::new(a, now).unwrap(), side_b(now))
    }

    fn side_b(now: Instant) -> Session {
        let b = SessionConfig {
            peer: "a".into(),
            suite: CipherSuite::Aes128Gcm,
            psk_out: key(2),
            psk_in: key(1),
            spi_out: 0x2000,
            spi_in: 0x1000,
        };
        Session::new(b, now).unwrap()
    }

    /// The (outbound, inbound) keys one side installed, session by session.
    type Installed = Vec<(KeyMaterial, KeyMaterial)>;

    /// Moves datagrams both ways (each hop 1 ms), with each side's timers,
    /// until both are up and quiet; every datagram sent is also kept in
    /// `tape`. Returns the keys each side installed.
    fn run(
        a: &mut Session,
        b: &mut Session,
        now: &mut Instant,
        tape: &mut Vec<Vec<u8>>,
    ) -> (Installed, Installed) {
        let (mut ka, mut kb) = (Vec::new(), Vec::new());
        for _ in 0..5000 {
            *now += Duration::from_millis(1);
            a.handle_timeout(*now);
            b.handle_timeout(*now);
            let mut quiet = true;
            while let Some(d) = a.poll_transmit() {
                quiet = false;
                tape.push(d.clone());
                b.handle_datagram(&d, *now);
            }
            while let Some(d) = b.poll_transmit() {
                quiet = false;
                tape.push(d.clone());
                a.handle_datagram(&d, *now);
            }
            for (s, k) in [(&mut *a, &mut ka), (&mut *b, &mut kb)] {
                while let Some(e) = s.poll_event() {
                    if let SessionEvent::Keys { outbound, inbound } = e {
                        k.push((outbound, inbound));
                    }
                }
            }
            if quiet && a.is_up() && b.is_up() {
                break;
            }
        }
        (ka, kb)
    }

    #[test]
    fn two_gateways_key_a_session_both_ways_and_then_fall_quiet() {
        let mut now = Instant::now();
        let (mut a, mut b) = pair(now);
        let (ka, kb) = run(&mut a, &mut b, &mut now, &mut Vec::new());
        assert_eq!((ka.len(), kb.len()), (1, 1));
        assert!(ka[0].0.same_as(&kb[0].1), "a sends on what b receives on");
        assert!(kb[0].0.same_as(&ka[0].1));
        assert!(!ka[0].0.same_as(&key(1)), "never the configured key itself");
        assert!(a.is_up() && b.is_up());
        assert_eq!((a.poll_timeout(), b.poll_timeout()), (None, None));
    }

    /// A restart (or a restored snapshot) keys a new session: no key of
    /// the old one comes back, and hellos recorded from the old one,
    /// replayed, key nothing.
    #[test]
    fn a_restart_keys_anew_and_recorded_hellos_replayed_key_nothing() {
        let mut now = Instant::now();
        let (mut a, mut b) = pair(now);
        let mut tape = Vec::new();
        let (first, _) = run(&mut a, &mut b, &mut now, &mut tape);
        // b restarts: the same config, a new nonce.
        let mut b = side_b(now);
        let (second, kb) = run(&mut a, &mut b, &mut now, &mut Vec::new());
        assert_eq!((second.len(), kb.len()), (1, 1));
        assert!(!second[0].0.same_as(&first[0].0), "a's outbound key is new");
        assert!(
            !second[0].1.same_as(&first[0].1),
            "and so is its inbound key"
        );
        assert!(second[0].0.same_as(&kb[0].1));
        // The first session's hellos, replayed to a: nothing is keyed.
        for d in &tape {
            a.handle_datagram(d, now);
        }
        let keyed = std::iter::from_fn(|| a.poll_event())
            .filter(|e| matches!(e, SessionEvent::Keys { .. }))
            .count();
        assert_eq!(keyed, 0);
        assert!(a.is_up());
    }

    /// Two gateways run from one config: each keys sessions of its own,
    /// so no SA key is shared between them.
    #[test]
    fn two_instances_of_one_config_share_no_key() {
        let mut now = Instant::now();
        let (mut a, mut b1) = pair(now);
        let (k1, _) = run(&mut a, &mut b1, &mut now, &mut Vec::new());
        let mut b2 = side_b(now);
        let (k2, kb2) = run(&mut a, &mut b2, &mut now, &mut Vec::new());
        assert_eq!(kb2.len(), 1);
        assert!(
            !k1[0].1.same_as(&k2[0].1),
            "b1 and b2 send under other keys"
        );
    }

    #[test]
    fn hellos_under_another_key_or_malformed_are_refused_and_answers_are_paced() {
        let now = Instant::now();
        let (mut a, _) = pair(now);
        let mut stranger = side_b(now);
        while stranger.poll_transmit().is_some() {}
        stranger.hello_mac = Zeroizing::new([9; 32]);
        stranger.send_hello();
        let forged = stranger.poll_transmit().unwrap();
        a.handle_datagram(&forged, now);
        a.handle_datagram(&forged[..40], now);
        let refused: Vec<&str> = std::iter::from_fn(|| a.poll_event())
            .map(|e| match e {
                SessionEvent::Refused(_, why) => why,
                _ => "keys",
            })
            .collect();
        assert_eq!(refused.len(), 2);
        assert!(refused[0].contains("MAC fails"), "{refused:?}");
        assert_eq!(refused[1], "not a session hello");

        // A genuine hello repeated a hundred times within 100 ms: one answer.
        let (mut a, mut b) = pair(now);
        while a.poll_transmit().is_some() {}
        let hello = b.poll_transmit().unwrap();
        for k in 0..100 {
            a.handle_datagram(&hello, now + Duration::from_micros(k));
        }
        assert_eq!(std::iter::from_fn(|| a.poll_transmit()).count(), 1);
        assert_eq!(
            parse_hello(&hello).map(|(_, echo)| echo),
            Some([0; NONCE_LEN])
        );
    }
}
