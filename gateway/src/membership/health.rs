//! What the heartbeats measure of each watched path: round-trip time, from
//! heartbeats that echo the last one received and how long it was held
//! (as NTP and BFD echo do, without synchronised clocks), and inbound loss,
//! from gaps in the sender's sequence numbers. Both are smoothed (EWMA), and
//! they are the health the policy view carries.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A heartbeat's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beat {
    pub seq: u32,
    /// The last sequence number received from the peer (0: none yet).
    pub echo_seq: u32,
    /// Microseconds between receiving `echo_seq` and sending this beat.
    pub echo_hold_us: u32,
}

pub const BEAT_LEN: usize = 12;

impl Beat {
    pub fn encode(&self) -> [u8; BEAT_LEN] {
        let mut b = [0u8; BEAT_LEN];
        b[..4].copy_from_slice(&self.seq.to_be_bytes());
        b[4..8].copy_from_slice(&self.echo_seq.to_be_bytes());
        b[8..].copy_from_slice(&self.echo_hold_us.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Beat> {
        let b: &[u8; BEAT_LEN] = b.try_into().ok()?;
        let u = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(Beat {
            seq: u(0),
            echo_seq: u(4),
            echo_hold_us: u(8),
        })
    }
}

/// Beats remembered for matching echoes (6.4 s at 100 ms).
const SENT_KEPT: usize = 64;
/// Smoothing: RTT as TCP's SRTT (1/8), loss over about 64 beats.
const RTT_GAIN: f64 = 1.0 / 8.0;
const LOSS_GAIN: f64 = 1.0 / 64.0;

#[derive(Debug, Default)]
pub struct PathHealth {
    next_seq: u32,
    sent: VecDeque<(u32, Instant)>,
    last_rx: Option<(u32, Instant)>,
    rtt: Option<Duration>,
    loss: f64,
}

impl PathHealth {
    /// The next heartbeat to send.
    pub fn beat(&mut self, now: Instant) -> Beat {
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        self.sent.push_back((self.next_seq, now));
        if self.sent.len() > SENT_KEPT {
            self.sent.pop_front();
        }
        let (echo_seq, echo_hold_us) = match self.last_rx {
            Some((s, at)) => (
                s,
                u32::try_from(now.saturating_duration_since(at).as_micros()).unwrap_or(u32::MAX),
            ),
            None => (0, 0),
        };
        Beat {
            seq: self.next_seq,
            echo_seq,
            echo_hold_us,
        }
    }

    /// A heartbeat from the peer.
    pub fn on_beat(&mut self, b: Beat, now: Instant) {
        if let Some(&(_, sent_at)) = self.sent.iter().find(|(s, _)| *s == b.echo_seq) {
            let sample = now
                .saturating_duration_since(sent_at)
                .saturating_sub(Duration::from_micros(u64::from(b.echo_hold_us)));
            self.rtt = Some(match self.rtt {
                None => sample,
                Some(r) => r.mul_f64(1.0 - RTT_GAIN) + sample.mul_f64(RTT_GAIN),
            });
        }
        match self.last_rx {
            // Late or duplicated: neither a loss nor news.
            Some((last, _)) if b.seq <= last => return,
            Some((last, _)) => {
                let missed = (b.seq - last - 1).min(1000);
                for _ in 0..missed {
                    self.loss += (1.0 - self.loss) * LOSS_GAIN;
                }
                self.loss -= self.loss * LOSS_GAIN;
            }
            None => {}
        }
        self.last_rx = Some((b.seq, now));
    }

    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Inbound loss, 0 to 1.
    pub fn loss(&self) -> f64 {
        self.loss
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_are_measured_without_shared_clocks() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let (mut a, mut b) = (PathHealth::default(), PathHealth::default());
        // a -> b takes 30 ms, b -> a 50 ms; b sends 20 ms after receiving.
        let mut t = t0;
        for _ in 0..50 {
            let from_a = a.beat(t);
            b.on_beat(from_a, t + ms(30));
            let from_b = b.beat(t + ms(50));
            a.on_beat(from_b, t + ms(100));
            t += ms(100);
        }
        let rtt = a.rtt().unwrap();
        assert!(rtt >= ms(79) && rtt <= ms(81), "{rtt:?}");
        assert_eq!(a.loss(), 0.0);
    }

    #[test]
    fn gaps_in_sequence_numbers_count_as_loss_and_reordering_does_not() {
        let t0 = Instant::now();
        let (mut tx, mut rx) = (PathHealth::default(), PathHealth::default());
        let beats: Vec<Beat> = (0..2000).map(|_| tx.beat(t0)).collect();
        // Every tenth lost.
        for b in beats.iter().filter(|b| b.seq % 10 != 0) {
            rx.on_beat(*b, t0);
        }
        assert!((rx.loss() - 0.1).abs() < 0.04, "{}", rx.loss());
        let before = rx.loss();
        rx.on_beat(beats[5], t0);
        assert_eq!(rx.loss(), before, "a late beat is not news");
        assert_eq!(Beat::decode(&beats[7].encode()), Some(beats[7]));
        assert_eq!(Beat::decode(&[0; 11]), None);
    }
}
