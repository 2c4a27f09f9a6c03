//! Tunnel echo (`meshgate ping`): a request and its reply each cross the
//! tunnel through the SAs, so what is measured is the path packets take,
//! SPI, underlay and all.
//!
//! Both are ESP dummy packets (next header 59, RFC 4303 §2.6), which any
//! receiver discards unless it knows better: a peer that is not meshgate
//! never answers, and nothing but a dummy packet changes meaning. Their
//! payload is [`ECHO_LEN`] bytes: a magic, the kind, the SPI each side sent
//! on (each outbound thread writes its own) and the request's id. They are
//! read only after the SA opened them (authenticated, replay-checked), and
//! a receiver answers at most [`REPLIES_PER_SEC`] a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The payload's length.
pub const ECHO_LEN: usize = 32;
const MAGIC: [u8; 8] = *b"mgecho\x00\x01";

/// Replies a gateway sends in a second at most (a peer's flood of
/// requests is answered no faster).
pub const REPLIES_PER_SEC: u32 = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoKind {
    Request = 1,
    Reply = 2,
}

/// One echo datagram's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Echo {
    pub kind: EchoKind,
    /// The SPI the request was sealed on (its sender's outbound SA).
    pub request_spi: u32,
    /// The SPI the reply was sealed on (the answering side's outbound SA).
    pub reply_spi: u32,
    pub id: u64,
}

impl Echo {
    pub fn request(id: u64) -> Echo {
        Echo {
            kind: EchoKind::Request,
            request_spi: 0,
            reply_spi: 0,
            id,
        }
    }

    /// The reply to this request.
    pub fn reply(self) -> Echo {
        Echo {
            kind: EchoKind::Reply,
            ..self
        }
    }

    pub fn encode(&self) -> [u8; ECHO_LEN] {
        let mut b = [0u8; ECHO_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[8] = self.kind as u8;
        b[12..16].copy_from_slice(&self.request_spi.to_be_bytes());
        b[16..20].copy_from_slice(&self.reply_spi.to_be_bytes());
        b[24..32].copy_from_slice(&self.id.to_be_bytes());
        b
    }

    /// An echo, or `None` for any other dummy packet's payload.
    pub fn decode(b: &[u8]) -> Option<Echo> {
        if b.len() != ECHO_LEN || b[..8] != MAGIC {
            return None;
        }
        let word = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&b[24..32]);
        Some(Echo {
            kind: match b[8] {
                1 => EchoKind::Request,
                2 => EchoKind::Reply,
                _ => return None,
            },
            request_spi: word(12),
            reply_spi: word(16),
            id: u64::from_be_bytes(id),
        })
    }
}

/// A reply as the inbound thread received it.
#[derive(Clone, Debug)]
pub struct EchoReply {
    pub echo: Echo,
    /// The SA it arrived on.
    pub spi: u32,
    pub at: Instant,
}

/// Who waits for which request's reply.
pub type EchoWaiters = Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<EchoReply>>>>;

/// The answering side's budget of replies, renewed each second.
#[derive(Debug)]
pub struct ReplyBudget {
    second: Option<Instant>,
    left: u32,
    /// This second's refusals have been said.
    said: bool,
}

impl Default for ReplyBudget {
    fn default() -> ReplyBudget {
        ReplyBudget {
            second: None,
            left: REPLIES_PER_SEC,
            said: false,
        }
    }
}

impl ReplyBudget {
    /// Whether one more reply may go at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        if self
            .second
            .is_none_or(|s| now.duration_since(s) >= std::time::Duration::from_secs(1))
        {
            self.second = Some(now);
            self.left = REPLIES_PER_SEC;
            self.said = false;
        }
        if self.left == 0 {
            return false;
        }
        self.left -= 1;
        true
    }

    /// True for this second's first refusal (to be said), false after.
    pub fn first_refusal(&mut self) -> bool {
        !std::mem::replace(&mut self.said, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_round_trips_and_other_payloads_are_not_echoes() {
        let mut e = Echo::request(0x0102_0304_0506_0708);
        e.request_spi = 0x1000_0001;
        let r = Echo::decode(&e.encode()).unwrap();
        assert_eq!(r, e);
        let mut reply = r.reply();
        reply.reply_spi = 0x2000_0002;
        assert_eq!(Echo::decode(&reply.encode()), Some(reply));
        let mut bad = e.encode();
        bad[8] = 3;
        assert_eq!(Echo::decode(&bad), None, "an unknown kind");
        assert_eq!(Echo::decode(&e.encode()[..31]), None, "short");
        assert_eq!(Echo::decode(&[0u8; ECHO_LEN]), None, "no magic");
    }

    #[test]
    fn replies_are_bounded_per_second() {
        let mut b = ReplyBudget::default();
        let t = Instant::now();
        let sent = (0..REPLIES_PER_SEC + 50).filter(|_| b.take(t)).count();
        assert_eq!(sent as u32, REPLIES_PER_SEC);
        assert!(
            b.take(t + std::time::Duration::from_secs(1)),
            "renewed a second later"
        );
    }
}
