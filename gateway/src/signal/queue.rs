//! Each peer's share of the member loop's input. Every connection's
//! readers feed one channel into the loop; a peer that sends faster than
//! the loop takes its input would otherwise grow that channel without
//! bound. A peer has at most [`PER_PEER`] inputs waiting: past that, what
//! it sends is dropped and counted, and the other peers' inputs still get
//! through.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The most inputs (datagrams, key-exchange messages) of one connection
/// waiting for the member loop.
pub const PER_PEER: usize = 256;

#[derive(Default)]
struct Shared {
    waiting: AtomicUsize,
    dropped: AtomicU64,
}

/// One connection's queue bound.
#[derive(Clone, Default)]
pub struct PeerQueue(Arc<Shared>);

/// A place in the queue, held by an input until the loop has taken it.
pub struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PeerQueue {
    /// A place for one more input, or `None` (the input is dropped, and
    /// counted) when [`PER_PEER`] are waiting.
    pub fn slot(&self) -> Option<Slot> {
        let taken = self
            .0
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < PER_PEER).then_some(n + 1)
            });
        match taken {
            Ok(_) => Some(Slot(self.0.clone())),
            Err(_) => {
                self.0.dropped.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Inputs dropped since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.0.dropped.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_holds_at_most_its_share_and_drops_are_counted() {
        let q = PeerQueue::default();
        let slots: Vec<Slot> = (0..PER_PEER).map(|_| q.slot().unwrap()).collect();
        assert!(q.slot().is_none());
        assert!(q.slot().is_none());
        assert_eq!(q.take_dropped(), 2);
        assert_eq!(q.take_dropped(), 0);
        drop(slots);
        assert!(q.slot().is_some(), "taken inputs free their places");
        // Another connection's queue is its own.
        assert!(PeerQueue::default().slot().is_some());
    }
}
