//! What carries the reconciler's calls out: the AWS SDK in production,
//! the lab's router namespaces without a cloud. A backend only translates
//! a call into its API and the API's errors into [`CloudError`]; the
//! decisions (what to call, when to retry) are the reconciler's.

use std::future::Future;
use std::pin::Pin;

use super::{Call, CloudError, Reply};

/// A boxed future: backends are used as `dyn CloudBackend`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait CloudBackend: Send + Sync {
    /// Carries out `call`.
    fn call(&self, call: Call) -> BoxFuture<'_, Result<Reply, CloudError>>;

    /// Once at start: what the appliance's interface needs to forward
    /// (on AWS, its source/destination check off). Nothing by default.
    fn prepare(&self, _interface: &str) -> BoxFuture<'_, Result<(), CloudError>> {
        Box::pin(async { Ok(()) })
    }

    /// The route tables tagged `meshgate:mesh` = `mesh` and
    /// `meshgate:group` = `group`.
    fn find_route_tables(
        &self,
        _mesh: &str,
        _group: &str,
    ) -> BoxFuture<'_, Result<Vec<String>, CloudError>> {
        Box::pin(async {
            Err(CloudError::Refused(
                "this cloud backend finds no route tables by tags: list them in cloud.route_tables"
                    .into(),
            ))
        })
    }
}
