//! What may be retried: the result classifier and the request cloner.

use std::time::Duration;

use crate::error::{BoxError, ErrorKind};

/// What to do with an attempt's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Decision {
    /// Return this result to the caller.
    Return,
    /// Try again after the backoff delay (or the error's retry-after hint, if it has one).
    Retry,
    /// Try again after this delay (for example a server's `Retry-After`), at most the
    /// layer's [`max_retry_after`](super::RetryLayerBuilder::max_retry_after).
    RetryAfter(Duration),
}

/// Decides whether an attempt's result is worth another attempt.
///
/// Implemented for any `Fn(&Result<Response, BoxError>) -> Decision`. The inner service's
/// error arrives boxed; downcast it to look at its type. Whatever the policy says, some
/// results are never retried: see [`RetryLayer`](super::RetryLayer).
///
/// ```
/// use tower_firebreak::error::BoxError;
/// use tower_firebreak::retry::Decision;
///
/// // Retry I/O errors only; a status code in the response is final.
/// let policy = |result: &Result<u16, BoxError>| match result {
///     Err(err) if err.is::<std::io::Error>() => Decision::Retry,
///     _ => Decision::Return,
/// };
/// # let _ = policy;
/// ```
pub trait RetryPolicy<Response> {
    /// The decision for one attempt's result.
    fn decide(&self, result: &Result<Response, BoxError>) -> Decision;
}

impl<F, Response> RetryPolicy<Response> for F
where
    F: Fn(&Result<Response, BoxError>) -> Decision,
{
    fn decide(&self, result: &Result<Response, BoxError>) -> Decision {
        self(result)
    }
}

/// The default policy: retry every error, return every response.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryErrors;

impl<Response> RetryPolicy<Response> for RetryErrors {
    #[inline]
    fn decide(&self, result: &Result<Response, BoxError>) -> Decision {
        match result {
            Ok(_) => Decision::Return,
            Err(_) => Decision::Retry,
        }
    }
}

/// Makes the copy of a request that a retry sends.
///
/// Implemented for any `Fn(&Request) -> Option<Request>`: return `None` for a request that
/// cannot be sent twice (a streaming body, a non-idempotent call), and it is simply not
/// retried.
///
/// ```
/// // Only retry requests that are reads.
/// let clone = |req: &(bool, String)| req.0.then(|| req.clone());
/// # let _ = clone;
/// ```
pub trait CloneRequest<Request> {
    /// A copy of `request` for another attempt, or `None` if it must not be retried.
    fn clone_request(&self, request: &Request) -> Option<Request>;
}

impl<F, Request> CloneRequest<Request> for F
where
    F: Fn(&Request) -> Option<Request>,
{
    fn clone_request(&self, request: &Request) -> Option<Request> {
        self(request)
    }
}

/// The default cloner: `Clone::clone`, for requests that implement it.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneRequests;

impl<Request: Clone> CloneRequest<Request> for CloneRequests {
    #[inline]
    fn clone_request(&self, request: &Request) -> Option<Request> {
        Some(request.clone())
    }
}

/// Errors that mean "back off", which no policy can make retryable: a retry would only add
/// load (an open breaker, an overloaded service, an inner retry layer out of budget) or
/// cannot succeed (the deadline passed).
pub(crate) fn must_not_retry(err: &BoxError) -> bool {
    matches!(
        ErrorKind::of(&**err),
        ErrorKind::DeadlineExceeded
            | ErrorKind::CircuitOpen
            | ErrorKind::Overloaded
            | ErrorKind::RetryBudgetExhausted
    )
}
