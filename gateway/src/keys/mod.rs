//! Negotiated ESP keys: the mesh's epoch keys and the per-pair key
//! exchange that derives SAs from them.

pub mod epoch;
pub mod exchange;
pub mod message;
pub mod rotation;

pub use epoch::{Epoch, EpochKey, EpochKeyError, KeyProvider, LocalKeys};
pub use exchange::{Event, ExchangeError, Negotiator};

#[cfg(test)]
mod tests;
