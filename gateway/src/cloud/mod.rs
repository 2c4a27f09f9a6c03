//! The cloud's side of high availability: the route tables that point a
//! VPC's traffic at an appliance. When the policy elects this appliance
//! the active member of its redundancy group, the gateway claims the
//! group's routes (each route table and destination pointed at this
//! appliance's network interface); when it loses the election it stops
//! claiming, and the new active member overwrites them.
//!
//! [`reconcile`] decides which calls close the gap between the routes
//! claimed and the routes the cloud describes, with retries and backoff,
//! sans-IO; a backend (the AWS SDK, or the lab's VPC routers) carries the
//! calls out. Nothing here runs per packet.

#[cfg(feature = "aws")]
pub mod aws;
pub mod backend;
#[cfg(feature = "aws")]
pub mod discovery;
#[cfg(feature = "aws")]
pub mod dns;
pub mod driver;
#[cfg(feature = "aws")]
pub mod kms;
pub mod lab;
pub mod reconcile;
#[cfg(test)]
mod tests;

use crate::prefix::Prefix;

#[cfg(feature = "aws")]
pub use kms::new_data_key;

/// Without the AWS SDK there is no KMS.
#[cfg(not(feature = "aws"))]
pub fn new_data_key(_: &str, _: &str, _: &str, _: Option<&str>, _: u32) -> Result<Vec<u8>, String> {
    Err("this build has no AWS SDK (built without the aws feature)".into())
}

/// A route this appliance may claim: `destination` in route table `table`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub table: String,
    pub destination: Prefix,
}

impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} in {}", self.destination, self.table)
    }
}

/// Where a route points, as the cloud describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A network interface (an appliance's, ours or another's).
    Interface(String),
    /// Anything else: an internet or transit gateway, an instance, a
    /// peering, or a blackhole (the target is gone).
    Other(String),
}

/// One route table as described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteTable {
    pub id: String,
    pub routes: Vec<(Prefix, Target)>,
}

/// A call to the cloud.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// Describe these route tables (EC2 `DescribeRouteTables`).
    Describe { tables: Vec<String> },
    /// Point an existing route at `interface` (EC2 `ReplaceRoute`).
    Replace { route: RouteKey, interface: String },
    /// Add the route, pointed at `interface` (EC2 `CreateRoute`).
    Create { route: RouteKey, interface: String },
}

impl Call {
    /// The API's name, for metrics and messages.
    pub fn api(&self) -> &'static str {
        match self {
            Call::Describe { .. } => "DescribeRouteTables",
            Call::Replace { .. } => "ReplaceRoute",
            Call::Create { .. } => "CreateRoute",
        }
    }
}

/// A call's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Described(Vec<RouteTable>),
    Done,
}

/// Why a call failed, as far as retrying goes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// The API's rate limit (EC2 `RequestLimitExceeded`, HTTP 503 SlowDown).
    #[error("throttled: {0}")]
    Throttled(String),
    /// A 5xx from the service.
    #[error("server error {status}: {message}")]
    Server { status: u16, message: String },
    /// No answer in time, or the connection failed.
    #[error("timed out or unreachable: {0}")]
    Timeout(String),
    /// The route to replace is missing, or the one to create exists: the
    /// description was stale.
    #[error("the route table changed under us: {0}")]
    Stale(String),
    /// Not allowed (IAM), or a table or interface that does not exist:
    /// retrying soon will not help; said, and retried slowly.
    #[error("refused: {0}")]
    Refused(String),
}

impl CloudError {
    /// Worth retrying soon (with backoff).
    pub fn transient(&self) -> bool {
        !matches!(self, CloudError::Refused(_))
    }

    /// The metric's outcome label.
    pub fn label(&self) -> &'static str {
        match self {
            CloudError::Throttled(_) => "throttled",
            CloudError::Server { .. } => "server_error",
            CloudError::Timeout(_) => "timeout",
            CloudError::Stale(_) => "stale",
            CloudError::Refused(_) => "refused",
        }
    }
}
