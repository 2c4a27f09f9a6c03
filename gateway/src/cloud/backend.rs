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
}
