//! The signalling channel between appliances: QUIC with mutual TLS, over
//! which they gossip membership and negotiate SA keys.

pub mod discovery;
pub mod messages;
pub mod node;
mod queue;
pub mod records;
pub mod transport;

#[cfg(test)]
mod tests;
