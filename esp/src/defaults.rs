//! What every SA of a gateway uses unless told otherwise, and the
//! lifetime a negotiated SA gets when none is configured.

use std::time::Duration;

use crate::{Backend, CipherSuite, Lifetime};

/// The settings (the config's `[sa]` section) that every SA of this gateway uses, configured or
/// negotiated.
#[derive(Debug, Clone)]
pub struct SaDefaults {
    pub suite: CipherSuite,
    pub esn: bool,
    pub backend: Backend,
    pub replay_window: usize,
    pub lifetime: Lifetime,
}

/// When a negotiated SA is rekeyed and when it expires if `[sa.lifetime]`
/// sets no time: after an hour, like IKEv2 deployments, with 10% margin.
pub const NEGOTIATED_SOFT_SECONDS: u64 = 3600;
pub const NEGOTIATED_HARD_SECONDS: u64 = 3960;

impl SaDefaults {
    /// The lifetime of a negotiated SA: the configured one, with a time
    /// limit added where none is set (keys must not live forever).
    pub fn negotiated_lifetime(&self) -> Lifetime {
        let mut l = self.lifetime;
        match (l.soft.time, l.hard.time) {
            (None, None) => {
                l.soft.time = Some(Duration::from_secs(NEGOTIATED_SOFT_SECONDS));
                l.hard.time = Some(Duration::from_secs(NEGOTIATED_HARD_SECONDS));
            }
            (Some(soft), None) => l.hard.time = Some(soft * 11 / 10),
            (None, Some(hard)) => l.soft.time = Some(hard * 10 / 11),
            (Some(_), Some(_)) => {}
        }
        l
    }
}
