//! The SAs the data plane holds, as the operator asks about them: which
//! peer, which SPI each way, since when, and when the rekey is due.
//!
//! The packet threads note an SA here when they install it and forget it
//! when it goes (never per packet); `meshgate status` reads a copy. The
//! counters of each SA stay in the metrics registry.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::esp::{Direction, DropReason};

/// Packets dropped on one SA, by reason: what can be laid at a peer's door
/// once its SA is known (a replay, a failed ICV, a spoofed source, an
/// expired SA, a send that failed). The packet thread adds; status reads.
#[derive(Default, Debug)]
pub struct SaDrops([AtomicU64; DropReason::ALL.len()]);

impl SaDrops {
    #[inline]
    pub fn count(&self, reason: DropReason) {
        self.0[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The reasons with drops, and how many.
    pub fn counted(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (r.as_str(), self.0[r.index()].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// One installed SA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaEntry {
    pub peer: String,
    pub spi: u32,
    /// `in` or `out`.
    pub direction: &'static str,
    pub cipher: &'static str,
    pub installed: SystemTime,
    /// Its soft time limit: when a rekey replaces it.
    pub rekey_after: Option<Duration>,
    pub drops: Arc<SaDrops>,
}

impl PartialEq for SaDrops {
    fn eq(&self, other: &SaDrops) -> bool {
        self.counted() == other.counted()
    }
}

impl Eq for SaDrops {}

/// The SAs installed now, by peer, direction and SPI.
#[derive(Default)]
pub struct SaBook(Mutex<BTreeMap<(String, &'static str, u32), SaEntry>>);

impl SaBook {
    pub fn installed(
        &self,
        peer: &str,
        spi: u32,
        dir: Direction,
        cipher: &'static str,
        rekey_after: Option<Duration>,
    ) -> Arc<SaDrops> {
        let drops = Arc::new(SaDrops::default());
        let entry = SaEntry {
            peer: peer.to_string(),
            spi,
            direction: dir.as_str(),
            cipher,
            installed: SystemTime::now(),
            rekey_after,
            drops: drops.clone(),
        };
        self.lock()
            .insert((peer.to_string(), dir.as_str(), spi), entry);
        drops
    }

    pub fn retired(&self, peer: &str, spi: u32, dir: Direction) {
        self.lock().remove(&(peer.to_string(), dir.as_str(), spi));
    }

    /// Every SA installed now, ordered by peer, direction, SPI.
    pub fn all(&self) -> Vec<SaEntry> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, &'static str, u32), SaEntry>> {
        // A panic elsewhere while holding it leaves a map still whole.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sa_is_listed_from_install_until_retired() {
        let book = SaBook::default();
        book.installed("b", 0x1000, Direction::Out, "aes128gcm16", None);
        let drops = book.installed(
            "a",
            0x2000,
            Direction::In,
            "aes128gcm16",
            Some(Duration::from_secs(60)),
        );
        drops.count(DropReason::Replay);
        drops.count(DropReason::Replay);
        let all = book.all();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].peer.as_str(), all[0].spi), ("a", 0x2000));
        assert_eq!(all[0].rekey_after, Some(Duration::from_secs(60)));
        assert_eq!(all[0].drops.counted(), [("replay", 2)]);
        book.retired("a", 0x2000, Direction::In);
        book.retired("a", 0x1000, Direction::Out);
        assert_eq!(book.all().len(), 1, "only the SA named goes");
    }
}
