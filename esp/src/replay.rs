//! Anti-replay window (RFC 4303 §3.4.3) as the RFC 6479 ring of 64-bit
//! blocks, plus ESN high-half inference (RFC 4303 Appendix A).
//!
//! Advancing the window clears whole blocks instead of shifting the bitmap,
//! so a jump ahead costs at most one pass over the ring and an in-window
//! packet costs one bit test.

/// Smallest window an SA accepts: a lossy, reordering WAN path with batched
/// I/O easily reorders past the RFC's 32/64-packet defaults.
pub const MIN_REPLAY_WINDOW: usize = 1024;
/// Largest window an SA accepts: 2^20 bits, a ring of up to 256 KiB.
pub const MAX_REPLAY_WINDOW: usize = 1 << 20;

const BLOCK_BITS: u64 = 64;

/// Which sequence numbers have been seen, within `size` of the highest.
///
/// Sequence numbers are full 64-bit values; 0 is never valid (RFC 4303
/// §3.3.3: the first packet is 1).
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Ring of bitmap blocks; one more block than the window needs so the
    /// block holding `top` never aliases the window's left edge. Its length
    /// is a power of two so the ring index is a mask.
    blocks: Box<[u64]>,
    /// Highest sequence number accepted so far (0 = none yet).
    top: u64,
    /// Window size in bits, a multiple of 64.
    size: u64,
}

impl ReplayWindow {
    /// A window of `bits`, rounded up to a multiple of 64 and clamped to
    /// 64..=[`MAX_REPLAY_WINDOW`] (SAs enforce [`MIN_REPLAY_WINDOW`]).
    pub fn new(bits: usize) -> Self {
        let bits = bits.clamp(BLOCK_BITS as usize, MAX_REPLAY_WINDOW);
        let size = bits.div_ceil(BLOCK_BITS as usize) * BLOCK_BITS as usize;
        let n_blocks = (size / BLOCK_BITS as usize + 1).next_power_of_two();
        ReplayWindow {
            blocks: vec![0; n_blocks].into_boxed_slice(),
            top: 0,
            size: size as u64,
        }
    }

    /// Window size in bits after rounding.
    pub fn size(&self) -> usize {
        self.size as usize
    }

    /// Highest sequence number accepted so far (0 if none).
    pub fn top(&self) -> u64 {
        self.top
    }

    /// Whether `seq` would be accepted. Does not change the window, so it
    /// can run before the ICV is verified.
    #[inline]
    pub fn check(&self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.top {
            return true;
        }
        if self.top - seq >= self.size {
            return false;
        }
        let (block, bit) = self.locate(seq);
        self.blocks[block] & bit == 0
    }

    /// Marks `seq` as seen, sliding the window if it is ahead. Call only
    /// after [`check`](Self::check) passed and the ICV verified.
    #[inline]
    pub fn update(&mut self, seq: u64) {
        if seq > self.top {
            let mask = self.blocks.len() as u64 - 1;
            let top_block = self.top / BLOCK_BITS;
            let new_block = seq / BLOCK_BITS;
            let stale = (new_block - top_block).min(self.blocks.len() as u64);
            for i in 1..=stale {
                self.blocks[((top_block + i) & mask) as usize] = 0;
            }
            self.top = seq;
        }
        let (block, bit) = self.locate(seq);
        self.blocks[block] |= bit;
    }

    /// Restarts the window at `top`, taking every sequence number up to it
    /// as seen: a receiver that restarts cannot know which of them arrived,
    /// so it must refuse them all (fail closed).
    pub fn resume_at(&mut self, top: u64) {
        if top == 0 {
            return;
        }
        self.blocks.fill(u64::MAX);
        let (block, _) = self.locate(top);
        let bit = top % BLOCK_BITS;
        // In top's own block only the bits up to top are seen; the ones
        // above are still to come, and `update` will not clear them.
        self.blocks[block] = if bit == BLOCK_BITS - 1 {
            u64::MAX
        } else {
            (1u64 << (bit + 1)) - 1
        };
        self.top = top;
    }

    /// The full 64-bit sequence number for a received low half, per RFC 4303
    /// Appendix A: the candidate closest to the window, preferring the
    /// current epoch unless the low half falls left of the window's edge.
    #[inline]
    pub fn infer_seq(&self, seq_lo: u32) -> u64 {
        let w = self.size as u32; // size <= MAX_REPLAY_WINDOW < 2^32
        let tl = self.top as u32;
        let th = (self.top >> 32) as u32;
        let left_edge = tl.wrapping_sub(w - 1);
        let seq_hi = if tl >= w - 1 {
            // Case A: the window lies within one epoch.
            if seq_lo >= left_edge {
                th
            } else {
                // Past the end of the 64-bit space nothing is valid: wrapping
                // to epoch 0 lands left of the window and reads as a replay.
                th.wrapping_add(1)
            }
        } else if seq_lo >= left_edge {
            // Case B: the window spans two epochs and seq_lo is in the older
            // one. Before epoch 0 there is none: the packet is then far ahead.
            th.saturating_sub(1)
        } else {
            th
        };
        (u64::from(seq_hi) << 32) | u64::from(seq_lo)
    }

    fn locate(&self, seq: u64) -> (usize, u64) {
        let mask = self.blocks.len() as u64 - 1;
        (
            ((seq / BLOCK_BITS) & mask) as usize,
            1 << (seq % BLOCK_BITS),
        )
    }
}

#[cfg(test)]
mod resume_tests {
    use super::*;

    #[test]
    fn a_resumed_window_refuses_everything_up_to_its_top() {
        for top in [1u64, 63, 64, 65, 127, 5000, (1 << 32) + 7] {
            let mut w = ReplayWindow::new(1024);
            w.resume_at(top);
            for seq in [1, top.saturating_sub(1000), top.saturating_sub(1), top] {
                if seq > 0 {
                    assert!(!w.check(seq), "top {top}: {seq} must count as seen");
                }
            }
            for seq in [top + 1, top + 2, top + 64, top + 1000] {
                assert!(w.check(seq), "top {top}: {seq} is new");
            }
            w.update(top + 2);
            assert!(
                w.check(top + 1),
                "top {top}: the gap left behind is still open"
            );
            assert!(!w.check(top + 2));
        }
        let mut w = ReplayWindow::new(1024);
        w.resume_at(0);
        assert!(w.check(1), "resuming at 0 is a fresh window");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn accept(w: &mut ReplayWindow, seq: u64) -> bool {
        let ok = w.check(seq);
        if ok {
            w.update(seq);
        }
        ok
    }

    #[test]
    fn size_rounds_up_to_blocks() {
        assert_eq!(ReplayWindow::new(1024).size(), 1024);
        assert_eq!(ReplayWindow::new(1025).size(), 1088);
        assert_eq!(ReplayWindow::new(4096).size(), 4096);
        assert_eq!(ReplayWindow::new(0).size(), 64);
        assert_eq!(ReplayWindow::new(usize::MAX).size(), MAX_REPLAY_WINDOW);
    }

    #[test]
    fn zero_is_never_valid() {
        let w = ReplayWindow::new(1024);
        assert!(!w.check(0));
        assert!(w.check(1));
    }

    #[test]
    fn edges() {
        for size in [1024u64, 4096] {
            let mut w = ReplayWindow::new(size as usize);
            assert!(accept(&mut w, 1));
            assert!(!accept(&mut w, 1), "duplicate");
            let top = 10 * size + 37;
            assert!(accept(&mut w, top));
            assert!(!w.check(top), "duplicate of top");
            assert!(w.check(top - size + 1), "left edge is inside");
            assert!(!w.check(top - size), "one past the left edge is outside");
            assert!(accept(&mut w, top - size + 1));
            assert!(!accept(&mut w, top - size + 1), "duplicate at left edge");
            assert!(accept(&mut w, top - 1));
            assert!(w.check(top + 1));
            assert_eq!(w.top(), top);
        }
    }

    /// Sliding within the ring must clear the blocks it wraps onto, both for
    /// a short hop and for a jump farther than the whole ring.
    #[test]
    fn jumps_clear_stale_blocks() {
        for size in [1024u64, 4096] {
            let ring_bits = ReplayWindow::new(size as usize).blocks.len() as u64 * BLOCK_BITS;
            for jump in [
                1,
                63,
                64,
                65,
                size - 1,
                size,
                size + 1,
                ring_bits,
                3 * ring_bits + 7,
            ] {
                let mut w = ReplayWindow::new(size as usize);
                let base = 5 * size;
                for seq in base - size + 1..=base {
                    assert!(accept(&mut w, seq));
                }
                let top = base + jump;
                assert!(accept(&mut w, top));
                for seq in top - size + 1..top {
                    assert_eq!(
                        w.check(seq),
                        seq > base,
                        "size {size} jump {jump} seq {seq}"
                    );
                }
            }
        }
    }

    /// The bitmap agrees with a set-based model on random traffic that
    /// mixes in-order, reordered, duplicate, stale and far-ahead numbers.
    #[test]
    fn matches_model() {
        let mut rng = StdRng::seed_from_u64(6479);
        for size in [1024u64, 1088, 4096] {
            let mut w = ReplayWindow::new(size as usize);
            let mut seen = BTreeSet::new();
            let mut top = 0u64;
            for _ in 0..50_000 {
                let seq = match rng.random_range(0..10) {
                    0 => top.saturating_sub(rng.random_range(0..2 * size)),
                    1 => top + rng.random_range(0..3 * size),
                    2 => rng.random_range(0..=top.max(1)),
                    _ => (top + 3).saturating_sub(rng.random_range(0..64)),
                };
                let expected = seq != 0 && !seen.contains(&seq) && (seq > top || top - seq < size);
                assert_eq!(
                    accept(&mut w, seq),
                    expected,
                    "size {size} seq {seq} top {top}"
                );
                if expected {
                    seen.insert(seq);
                    top = top.max(seq);
                }
            }
        }
    }

    fn window_at(top: u64) -> ReplayWindow {
        let mut w = ReplayWindow::new(1024);
        w.update(top);
        w
    }

    #[test]
    fn infer_case_a_same_epoch() {
        let w = window_at((5 << 32) | 0xffff_ff00);
        assert_eq!(
            w.infer_seq(0xffff_ff10),
            (5 << 32) | 0xffff_ff10,
            "ahead, same epoch"
        );
        assert_eq!(
            w.infer_seq(0xffff_fb01),
            (5 << 32) | 0xffff_fb01,
            "left edge"
        );
        assert_eq!(w.infer_seq(5), (6 << 32) | 5, "ahead, next epoch");
        assert_eq!(
            w.infer_seq(0xffff_fb00),
            (6 << 32) | 0xffff_fb00,
            "left of edge reads as next epoch"
        );
    }

    #[test]
    fn infer_case_b_window_spans_epochs() {
        let w = window_at((1 << 32) | 10);
        assert_eq!(w.infer_seq(20), (1 << 32) | 20);
        assert_eq!(w.infer_seq(0), 1 << 32);
        assert_eq!(
            w.infer_seq(0xffff_fff0),
            0xffff_fff0,
            "late packet from before rollover"
        );
        assert_eq!(
            w.infer_seq(0xffff_fc0b),
            0xffff_fc0b,
            "left edge in the old epoch"
        );
        assert_eq!(
            w.infer_seq(0xffff_fc0a),
            (1 << 32) | 0xffff_fc0a,
            "beyond the edge: ahead"
        );
    }

    #[test]
    fn infer_at_the_ends_of_the_space() {
        let fresh = ReplayWindow::new(1024);
        assert_eq!(fresh.infer_seq(1), 1);
        assert_eq!(
            fresh.infer_seq(0xffff_ffff),
            0xffff_ffff,
            "no epoch before 0"
        );
        assert!(!fresh.check(fresh.infer_seq(0)));

        let end = window_at(u64::MAX - 5);
        assert_eq!(end.infer_seq(0xffff_fffe), u64::MAX - 1);
        let wrapped = end.infer_seq(3);
        assert!(!end.check(wrapped), "nothing follows 2^64-1");
    }
}
