//! Membership and failure detection: SWIM with suspicion (foca), as a
//! sans-IO value. Bytes and timer events go in, bytes to send, timers to
//! arm and membership changes come out; the async shell carries them over
//! the signalling channel and a timer queue, and the tests run whole
//! clusters on virtual time.

pub mod admission;
mod agent;
mod certs;
mod core;
pub mod health;
mod id;
pub mod info;
pub mod liveness;
mod screen;
pub mod vouch;
pub mod watch;

pub use self::core::{Membership, MembershipError, MembershipEvent, Settings};
pub use agent::{Agent, Observed};
pub use id::{valid_id, MemberId, MAX_ID_LEN};

#[cfg(test)]
mod scale;
#[cfg(test)]
pub(crate) mod sim;
