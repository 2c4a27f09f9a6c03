//! The probe keys: one per SA this gateway holds with a member, derived
//! from the SA's key (HKDF-SHA256, a label of its own), so a probe that
//! verifies came from the peer of that SA, and the probe keys come and go
//! with the SAs. The tunnels write them; the prober reads them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use crate::esp::KeyMaterial;

const LABEL: &[u8] = b"meshgate underlay probe v1";

/// A probe key. Zeroized on drop, never printed.
pub struct ProbeKey(Zeroizing<[u8; 32]>);

impl ProbeKey {
    /// The probe key of the SA keyed by `sa`.
    pub fn derive(sa: &KeyMaterial) -> Option<ProbeKey> {
        let mut k = Zeroizing::new([0u8; 32]);
        sa.expand(&[], &[LABEL], &mut k[..]).ok()?;
        Some(ProbeKey(k))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for ProbeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeKey(<redacted>)")
    }
}

struct Entry {
    peer: String,
    outbound: bool,
    key: ProbeKey,
}

/// The probe keys of the SAs in place, by SPI.
#[derive(Default)]
pub struct ProbeKeys {
    by_spi: HashMap<u32, Entry>,
    /// Each peer's outbound SA (what probes to it are sent on).
    outbound: HashMap<String, u32>,
}

pub type SharedProbeKeys = Arc<Mutex<ProbeKeys>>;

impl ProbeKeys {
    pub fn insert(&mut self, peer: &str, spi: u32, outbound: bool, key: ProbeKey) {
        if outbound {
            if let Some(old) = self.outbound.insert(peer.to_string(), spi) {
                if old != spi {
                    self.by_spi.remove(&old);
                }
            }
        }
        self.by_spi.insert(
            spi,
            Entry {
                peer: peer.to_string(),
                outbound,
                key,
            },
        );
    }

    /// Keeps only the SAs `keep` says are still in place.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, u32, bool) -> bool) {
        self.by_spi.retain(|spi, e| keep(&e.peer, *spi, e.outbound));
        let by_spi = &self.by_spi;
        self.outbound.retain(|_, spi| by_spi.contains_key(spi));
    }

    /// What a probe to `peer` is sent on: the SPI and the key.
    pub fn outbound(&self, peer: &str) -> Option<(u32, &ProbeKey)> {
        let spi = *self.outbound.get(peer)?;
        Some((spi, &self.by_spi.get(&spi)?.key))
    }

    /// The peer and key of the SA `spi`, if it is one this gateway
    /// receives on (`outbound` false) or sends on (true).
    pub fn lookup(&self, spi: u32, outbound: bool) -> Option<(&str, &ProbeKey)> {
        let e = self.by_spi.get(&spi).filter(|e| e.outbound == outbound)?;
        Some((&e.peer, &e.key))
    }

    pub fn len(&self) -> usize {
        self.by_spi.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_spi.is_empty()
    }
}
