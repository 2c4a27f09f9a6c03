//! The SPIs this gateway receives on.

use std::collections::HashSet;

use ring::rand::{SecureRandom, SystemRandom};

use super::ExchangeError;

/// SPIs this gateway receives on: random, unique among those in use, never
/// in the range RFC 4303 reserves (0 to 255).
#[derive(Default)]
pub(super) struct SpiPool {
    used: HashSet<u32>,
}

impl SpiPool {
    pub fn allocate(&mut self, rng: &SystemRandom) -> Result<u32, ExchangeError> {
        loop {
            let mut b = [0u8; 4];
            rng.fill(&mut b).map_err(|_| ExchangeError::Crypto)?;
            let spi = u32::from_be_bytes(b);
            if spi > 255 && self.used.insert(spi) {
                return Ok(spi);
            }
        }
    }

    pub fn release(&mut self, spi: u32) {
        self.used.remove(&spi);
    }
}
