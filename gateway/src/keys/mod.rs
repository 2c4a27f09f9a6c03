//! Negotiated ESP keys: the mesh's epoch keys and the per-pair key
//! exchange that derives SAs from them.

pub mod epoch;
mod error;
pub mod exchange;
pub mod kms;
pub mod message;
pub mod order;
pub mod rotation;
mod schedule;
pub mod session;
mod spi;
pub mod wrapped;

pub use epoch::{Epoch, EpochKey, EpochKeyError, KeyProvider, LocalKeys};
pub use exchange::{Event, ExchangeError, Negotiator};

#[cfg(test)]
mod tests;
