//! Security associations: one direction of an ESP tunnel each (RFC 4303 §3).
//!
//! Packet layout, all in the caller's buffer:
//! `SPI(4) | seq_lo(4) | IV(8) | ciphertext(inner | pad | pad len | next header) | ICV(16)`.

use std::ops::Range;
use std::time::Instant;

use super::aead::{Aead, AeadError, Backend, CipherSuite, NONCE_LEN};
use super::keys::{KeyError, KeyMaterial};
use super::lifetime::{Lifetime, LifetimeEvent, LifetimeTracker, LimitKind};
use super::replay::{ReplayWindow, MAX_REPLAY_WINDOW, MIN_REPLAY_WINDOW};
use super::{
    DropReason, ESP_HEADER_LEN, ICV_LEN, MAX_ESP_PACKET_LEN, MAX_INNER_LEN, MIN_ESP_PACKET_LEN,
};

/// Everything needed to install one SA.
#[derive(Clone, Debug)]
pub struct SaParams {
    pub spi: u32,
    pub suite: CipherSuite,
    pub key: KeyMaterial,
    /// 64-bit extended sequence numbers (RFC 4303 §2.2.1).
    pub esn: bool,
    pub backend: Backend,
    pub lifetime: Lifetime,
    /// Anti-replay window in bits (inbound only), rounded up to a multiple of 64.
    pub replay_window: usize,
}

/// Why an SA could not be installed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaError {
    #[error("SPI {0} is reserved (RFC 4303 §2.1: 0 is never sent and 1..=255 are reserved)")]
    ReservedSpi(u32),
    #[error("replay window of {got} bits is below the minimum of {MIN_REPLAY_WINDOW}")]
    ReplayWindowTooSmall { got: usize },
    #[error("replay window of {got} bits is above the maximum of {MAX_REPLAY_WINDOW}")]
    ReplayWindowTooLarge { got: usize },
    #[error("{which} lifetime limit on {kind} must be non-zero and not above the hard limit")]
    InvalidLifetime {
        which: &'static str,
        kind: &'static str,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Why [`OutboundSa::seal`] produced nothing. The sequence number is not
/// consumed on error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("SA has reached a hard lifetime limit")]
    Expired,
    #[error("sequence numbers beyond the persisted reservation")]
    NotReserved,
    #[error("buffer too small for the ESP header, trailer and ICV")]
    BufferTooSmall,
    #[error("inner packet longer than {MAX_INNER_LEN} bytes")]
    TooLong,
}

/// A sealed ESP packet at `buf[..len]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    pub len: usize,
    pub event: Option<LifetimeEvent>,
}

/// A verified inner packet at `packet[inner]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub inner: Range<usize>,
    /// 4 (IPv4), 41 (IPv6), or 59 for a dummy packet the caller discards.
    pub next_header: u8,
    /// The full (ESN-inferred) sequence number.
    pub seq: u64,
    pub event: Option<LifetimeEvent>,
}

/// The keyed ESP transform shared by both directions: builds the AAD and
/// nonce and runs the AEAD over a packet with an explicit IV.
pub(crate) struct Transform {
    spi: u32,
    esn: bool,
    salt: [u8; 4],
    aead: Aead,
}

impl Transform {
    pub(crate) fn new(params: &SaParams) -> Result<Self, KeyError> {
        Ok(Transform {
            spi: params.spi,
            esn: params.esn,
            salt: params.key.salt(),
            aead: Aead::new(params.suite, params.backend, &params.key)?,
        })
    }

    /// RFC 4106 §5: SPI || seq (8 bytes), or SPI || seq_hi || seq_lo with ESN
    /// (the high half is authenticated but never sent).
    pub(crate) fn aad(&self, seq: u64) -> ([u8; 12], usize) {
        let mut aad = [0u8; 12];
        aad[..4].copy_from_slice(&self.spi.to_be_bytes());
        if self.esn {
            aad[4..].copy_from_slice(&seq.to_be_bytes());
            (aad, 12)
        } else {
            aad[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
            (aad, 8)
        }
    }

    fn nonce(&self, iv: &[u8; 8]) -> [u8; NONCE_LEN] {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..4].copy_from_slice(&self.salt);
        nonce[4..].copy_from_slice(iv);
        nonce
    }

    /// Writes the header and encrypts `buf[ESP_HEADER_LEN..][..payload_len]`
    /// (inner packet and trailer, already in place), appending the ICV.
    /// Returns the packet length.
    pub(crate) fn seal_payload(
        &self,
        seq: u64,
        iv: [u8; 8],
        buf: &mut [u8],
        payload_len: usize,
    ) -> Result<usize, SealError> {
        let len = ESP_HEADER_LEN + payload_len + ICV_LEN;
        let packet = buf.get_mut(..len).ok_or(SealError::BufferTooSmall)?;
        let (header, rest) = packet
            .split_first_chunk_mut::<ESP_HEADER_LEN>()
            .ok_or(SealError::BufferTooSmall)?;
        let (payload, icv) = rest
            .split_last_chunk_mut::<ICV_LEN>()
            .ok_or(SealError::BufferTooSmall)?;
        header[..4].copy_from_slice(&self.spi.to_be_bytes());
        header[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        header[8..].copy_from_slice(&iv);
        let (aad, aad_len) = self.aad(seq);
        self.aead
            .seal_in_place(&self.nonce(&iv), &aad[..aad_len], payload, icv)
            .map_err(|AeadError| SealError::TooLong)?;
        Ok(len)
    }

    /// Verifies and decrypts the payload of a whole ESP packet in place,
    /// for the full sequence number `seq`. The SA's own SPI goes into the
    /// AAD, so a packet steered to the wrong SA fails here.
    pub(crate) fn open_payload(&self, seq: u64, packet: &mut [u8]) -> Result<(), AeadError> {
        let (header, rest) = packet
            .split_first_chunk_mut::<ESP_HEADER_LEN>()
            .ok_or(AeadError)?;
        let (payload, icv) = rest.split_last_chunk_mut::<ICV_LEN>().ok_or(AeadError)?;
        let mut iv = [0u8; 8];
        iv.copy_from_slice(&header[8..]);
        let (aad, aad_len) = self.aad(seq);
        self.aead
            .open_in_place(&self.nonce(&iv), &aad[..aad_len], payload, icv)
    }
}

fn validate(params: &SaParams) -> Result<(), SaError> {
    if params.spi <= 255 {
        return Err(SaError::ReservedSpi(params.spi));
    }
    if let Some((which, kind)) = params.lifetime.invalid_limit() {
        return Err(SaError::InvalidLifetime {
            which,
            kind: kind.as_str(),
        });
    }
    Ok(())
}

/// The sending half of an SA: owns the sequence counter.
pub struct OutboundSa {
    transform: Transform,
    next_seq: u64,
    /// The highest sequence number that may be used before more are
    /// reserved (persisted) by the caller; `u64::MAX` when not tracked.
    seq_limit: u64,
    life: LifetimeTracker,
}

impl OutboundSa {
    pub fn new(params: SaParams, now: Instant) -> Result<Self, SaError> {
        validate(&params)?;
        Ok(OutboundSa {
            transform: Transform::new(&params)?,
            next_seq: 1,
            seq_limit: u64::MAX,
            life: LifetimeTracker::new(params.spi, params.lifetime, now),
        })
    }

    pub fn spi(&self) -> u32 {
        self.transform.spi
    }

    /// Last sequence number this SA may send: it never wraps (RFC 4303 §3.3.3).
    fn last_seq(&self) -> u64 {
        if self.transform.esn {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        }
    }

    /// Where a rekey is requested: half the sequence space used.
    fn soft_seq(&self) -> u64 {
        self.last_seq() / 2 + 1
    }

    /// Encapsulates in place. `buf[ESP_HEADER_LEN..][..inner_len]` holds the
    /// inner IP packet; `buf` needs room for the trailer and ICV (at most
    /// [`MAX_TRAILER_LEN`](super::MAX_TRAILER_LEN) bytes). The IV is the
    /// 64-bit sequence number, unique per key, so packets do not depend on
    /// the backend. Writes the ESP packet to `buf[..len]`.
    pub fn seal(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        inner_len: usize,
        next_header: u8,
    ) -> Result<Sealed, SealError> {
        self.life.check_time(now);
        if self.life.is_expired() {
            return Err(SealError::Expired);
        }
        let seq = self.next_seq;
        if seq > self.last_seq() {
            self.life.cross_hard(LimitKind::SequenceSpace);
            return Err(SealError::Expired);
        }
        if seq > self.seq_limit {
            return Err(SealError::NotReserved);
        }
        if inner_len > MAX_INNER_LEN {
            return Err(SealError::TooLong);
        }
        // RFC 4303 §2.4: the ciphertext (inner, padding, pad length, next
        // header) ends 4-byte aligned; padding bytes are 1, 2, 3, ...
        let payload_len = (inner_len + 2).next_multiple_of(4);
        let pad_len = payload_len - inner_len - 2;
        if buf.len() < ESP_HEADER_LEN + payload_len + ICV_LEN {
            return Err(SealError::BufferTooSmall);
        }
        let trailer = &mut buf[ESP_HEADER_LEN + inner_len..ESP_HEADER_LEN + payload_len];
        for (i, b) in trailer.iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        trailer[pad_len] = pad_len as u8;
        trailer[pad_len + 1] = next_header;

        let len = self
            .transform
            .seal_payload(seq, seq.to_be_bytes(), buf, payload_len)?;
        self.next_seq = seq.saturating_add(1);
        if seq >= self.last_seq() {
            self.life.cross_hard(LimitKind::SequenceSpace);
        } else if seq >= self.soft_seq() {
            self.life.cross_soft(LimitKind::SequenceSpace);
        }
        self.life.record(inner_len);
        Ok(Sealed {
            len,
            event: self.life.take_event(),
        })
    }

    /// Applies time limits; returns each soft and hard event once, including
    /// ones that arose in `seal` without being returned there.
    pub fn poll_lifetime(&mut self, now: Instant) -> Option<LifetimeEvent> {
        self.life.check_time(now);
        self.life.take_event()
    }

    /// Continues from `next_seq` (never backwards): after a restart with
    /// the same key, from above every number an earlier run may have used,
    /// so no (key, nonce) pair repeats.
    pub fn resume_at(&mut self, next_seq: u64) {
        self.next_seq = self.next_seq.max(next_seq);
    }

    /// Caps the sequence numbers `seal` may use at `limit` (fail closed:
    /// beyond it `seal` refuses) until the caller has persisted more.
    pub fn set_seq_limit(&mut self, limit: u64) {
        self.seq_limit = limit;
    }

    pub fn seq_limit(&self) -> u64 {
        self.seq_limit
    }

    /// The sequence number the next `seal` will use.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn is_expired(&self) -> bool {
        self.life.is_expired()
    }

    /// Jumps the counter, so tests can reach ESN rollover and exhaustion
    /// without sealing billions of packets. Never use outside tests: it can
    /// reuse a nonce.
    #[doc(hidden)]
    pub fn set_next_seq_for_test(&mut self, seq: u64) {
        self.next_seq = seq.max(1);
    }
}

/// The receiving half of an SA: owns the anti-replay window.
pub struct InboundSa {
    transform: Transform,
    window: ReplayWindow,
    life: LifetimeTracker,
}

impl InboundSa {
    pub fn new(params: SaParams, now: Instant) -> Result<Self, SaError> {
        validate(&params)?;
        if params.replay_window < MIN_REPLAY_WINDOW {
            return Err(SaError::ReplayWindowTooSmall {
                got: params.replay_window,
            });
        }
        if params.replay_window > MAX_REPLAY_WINDOW {
            return Err(SaError::ReplayWindowTooLarge {
                got: params.replay_window,
            });
        }
        Ok(InboundSa {
            transform: Transform::new(&params)?,
            window: ReplayWindow::new(params.replay_window),
            life: LifetimeTracker::new(params.spi, params.lifetime, now),
        })
    }

    pub fn spi(&self) -> u32 {
        self.transform.spi
    }

    /// Decapsulates `packet` (a whole ESP packet from the SPI on) in place.
    ///
    /// The replay check runs before the AEAD so replays cost no crypto, and
    /// the window moves only after the ICV verifies so forgeries cannot
    /// move it. On error the buffer's contents are unspecified.
    pub fn open(&mut self, now: Instant, packet: &mut [u8]) -> Result<Opened, DropReason> {
        let len = packet.len();
        // RFC 4303 §2.4: the ciphertext must end 4-byte aligned.
        if !(MIN_ESP_PACKET_LEN..=MAX_ESP_PACKET_LEN).contains(&len)
            || !(len - ESP_HEADER_LEN - ICV_LEN).is_multiple_of(4)
        {
            return Err(DropReason::Malformed);
        }
        self.life.check_time(now);
        if self.life.is_expired() {
            return Err(DropReason::Expired);
        }
        let seq_lo = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let seq = if self.transform.esn {
            self.window.infer_seq(seq_lo)
        } else {
            u64::from(seq_lo)
        };
        if !self.window.check(seq) {
            return Err(DropReason::Replay);
        }
        self.transform
            .open_payload(seq, packet)
            .map_err(|AeadError| DropReason::Icv)?;
        self.window.update(seq);

        let trailer_end = len - ICV_LEN;
        let next_header = packet[trailer_end - 1];
        let pad_len = usize::from(packet[trailer_end - 2]);
        let pad_start = trailer_end - 2;
        let inner_end = pad_start
            .checked_sub(pad_len)
            .filter(|&end| end >= ESP_HEADER_LEN)
            .ok_or(DropReason::Malformed)?;
        let padding_ok = packet[inner_end..pad_start]
            .iter()
            .enumerate()
            .all(|(i, &b)| usize::from(b) == i + 1);
        if !padding_ok {
            return Err(DropReason::Malformed);
        }
        self.life.record(inner_end - ESP_HEADER_LEN);
        Ok(Opened {
            inner: ESP_HEADER_LEN..inner_end,
            next_header,
            seq,
            event: self.life.take_event(),
        })
    }

    /// Applies time limits; returns each soft and hard event once.
    pub fn poll_lifetime(&mut self, now: Instant) -> Option<LifetimeEvent> {
        self.life.check_time(now);
        self.life.take_event()
    }

    pub fn is_expired(&self) -> bool {
        self.life.is_expired()
    }

    /// Refuses every sequence number up to `top`: after a restart, the
    /// highest one an earlier run had accepted.
    pub fn resume_after(&mut self, top: u64) {
        self.window.resume_at(top);
    }

    /// The highest sequence number accepted so far.
    pub fn window_top(&self) -> u64 {
        self.window.top()
    }

    /// Marks `seq` as received, so tests can start the window in a far ESN
    /// epoch (a real receiver only gets there one epoch at a time).
    #[cfg(test)]
    pub(crate) fn mark_received_for_test(&mut self, seq: u64) {
        self.window.update(seq);
    }
}
