//! What an EC2 call's failure means for whoever retries it.

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// How a failed call may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The API's rate limit (`RequestLimitExceeded`, `Throttling`, 429).
    Throttled,
    /// A 5xx from the service.
    Server(u16),
    /// No answer in time, or no connection.
    Timeout,
    /// The route to replace is missing, or the one to create exists.
    Stale,
    /// Not allowed, or a resource that does not exist: retrying soon will
    /// not help.
    Refused,
}

/// A failed call: the API, what it was called on, and EC2's word.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{api} ({what}): {message}")]
pub struct AwsError {
    pub kind: ErrorKind,
    pub api: &'static str,
    pub what: String,
    pub message: String,
    /// AWS's error code (`DependencyViolation`, `AccessDenied`, ...), for
    /// callers to match on rather than on the message's words.
    pub code: Option<String>,
}

/// Error codes EC2 and the AWS APIs use for their rate limits.
const THROTTLING: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "SlowDown",
];

/// Codes that mean the route table is not as described.
const STALE: &[&str] = &["InvalidRoute.NotFound", "RouteAlreadyExists"];

impl AwsError {
    /// An answer without a field the call promises: nothing a retry fixes.
    pub(crate) fn missing(api: &'static str, what: &str, field: &str) -> AwsError {
        AwsError::refused(api, what, format!("the answer has no {field}"))
    }

    /// A call refused (by the service, or before it was sent).
    pub fn refused(api: &'static str, what: &str, message: String) -> AwsError {
        AwsError {
            kind: ErrorKind::Refused,
            api,
            what: what.to_string(),
            message,
            code: None,
        }
    }

    pub(crate) fn from_sdk<E>(
        api: &'static str,
        what: &str,
        e: SdkError<E, HttpResponse>,
    ) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = match &e {
            SdkError::ServiceError(s) => Some(s.raw().status().as_u16()),
            SdkError::ResponseError(r) => Some(r.raw().status().as_u16()),
            _ => None,
        };
        let code = e.code().map(str::to_string);
        let kind = match (&e, code.as_deref(), status) {
            (SdkError::TimeoutError(_) | SdkError::DispatchFailure(_), _, _) => ErrorKind::Timeout,
            (_, Some(c), _) if THROTTLING.contains(&c) => ErrorKind::Throttled,
            (_, _, Some(429)) => ErrorKind::Throttled,
            (_, Some(c), _) if STALE.contains(&c) => ErrorKind::Stale,
            (_, _, Some(s)) if s >= 500 => ErrorKind::Server(s),
            (SdkError::ResponseError(_), _, _) => ErrorKind::Server(status.unwrap_or(0)),
            _ => ErrorKind::Refused,
        };
        let message = match (&e, code.as_deref(), e.message()) {
            (SdkError::TimeoutError(_), _, _) => "no answer within the call's timeout".to_string(),
            (_, Some(c), Some(m)) => format!("{c}: {m}"),
            (_, Some(c), None) => c.to_string(),
            _ => DisplayErrorContext(&e).to_string(),
        };
        AwsError {
            kind,
            api,
            what: what.to_string(),
            message,
            code,
        }
    }
}
