//! Provisioning a fleet from one file: `meshgate plan`, `up` and `down`.
//! The fleet file says what should exist ([`file`]); [`model`] turns it
//! into resources; [`plan`] compares them with what the cloud holds and
//! says what to call. Reading the cloud and making the calls is the
//! shell's (the AWS SDK); everything here is plain data, tested without a
//! cloud.

#[cfg(feature = "aws")]
pub mod aws;
pub mod cfn;
pub mod cli;
pub mod docs;
pub mod file;
pub mod model;
pub mod plan;
#[cfg(feature = "aws")]
pub mod run;
pub mod user_data;

pub use file::{Fleet, FleetRegion, FleetZone, Market};
pub use model::{desired, Facts, Kind, Resource, Scope};
pub use plan::{plan, teardown, Action, Change};

#[cfg(test)]
mod tests;
