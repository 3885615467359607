//! Turning this crate's errors into the HTTP responses a server should send.

use std::error::Error;
use std::time::Duration;

use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderValue, StatusCode};

use crate::error::ErrorKind;

/// The status a server should answer for `err`, found with [`ErrorKind::of`]:
///
/// | kind | status |
/// | --- | --- |
/// | [`CircuitOpen`](ErrorKind::CircuitOpen), [`Overloaded`](ErrorKind::Overloaded) | 503 Service Unavailable |
/// | [`TimedOut`](ErrorKind::TimedOut), [`DeadlineExceeded`](ErrorKind::DeadlineExceeded) | 504 Gateway Timeout |
/// | [`RetryBudgetExhausted`](ErrorKind::RetryBudgetExhausted) | 504 if the last attempt timed out, else 503: the budget refused more retries to spare a struggling dependency, so the caller should come back later too |
/// | anything else | 500 Internal Server Error |
///
/// ```
/// use http::StatusCode;
/// use tower_firebreak::error::BoxError;
/// use tower_firebreak::http::error_status;
///
/// let err: BoxError = std::io::Error::other("disk on fire").into();
/// assert_eq!(error_status(&*err), StatusCode::INTERNAL_SERVER_ERROR);
/// ```
pub fn error_status(err: &(dyn Error + 'static)) -> StatusCode {
    match ErrorKind::of(err) {
        ErrorKind::CircuitOpen | ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::TimedOut | ErrorKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::RetryBudgetExhausted => match last_attempt_error(err).map(ErrorKind::of) {
            Some(ErrorKind::TimedOut | ErrorKind::DeadlineExceeded) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        },
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The last attempt's error inside the [`BudgetExhausted`](crate::retry::BudgetExhausted) in
/// `err`'s source chain, found as [`ErrorKind::of`] finds it (through wrappers such as
/// `tower::buffer`'s).
fn last_attempt_error<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a (dyn Error + 'static)> {
    crate::error::find_in_chain::<crate::retry::BudgetExhausted>(err)?.source()
}

/// The `Retry-After` of a 503 whose error carries no hint (a half-open breaker whose probe
/// is in flight, an exhausted retry budget): without one, clients tend to come back at once.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The status and headers a server should answer for `err`: [`error_status`], and for a 503
/// a `Retry-After` from the error's hint ([`ErrorKind::retry_after`]) in whole seconds,
/// rounded up and at least 1 (a `Retry-After: 0` would invite every client back at once);
/// 1 s when the error has no hint, since a 503 without one invites an immediate retry. The
/// body is left empty: error text from inside a server is not for its clients.
///
/// `(StatusCode, HeaderMap)` is an axum response as it is, so this fits axum's
/// `HandleErrorLayer` directly:
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, error_handling::HandleErrorLayer, routing::get};
/// use tower::ServiceBuilder;
/// use tower_firebreak::ServiceBuilderExt;
/// use tower_firebreak::error::BoxError;
/// use tower_firebreak::http::error_response;
/// use tower_firebreak::load_shed::LoadShedLayer;
///
/// # fn main() -> Result<(), tower_firebreak::error::ConfigError> {
/// let app: Router = Router::new().route("/", get(|| async { "hello" })).layer(
///     ServiceBuilder::new()
///         .layer(HandleErrorLayer::new(|err: BoxError| async move { error_response(&*err) }))
///         .deadline(Duration::from_secs(2))?
///         .layer(LoadShedLayer::builder().max_concurrency(100).build()?),
/// );
/// # let _ = app;
/// # Ok(())
/// # }
/// ```
pub fn error_response(err: &(dyn Error + 'static)) -> (StatusCode, HeaderMap) {
    let status = error_status(err);
    let mut headers = HeaderMap::new();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        let hint = ErrorKind::retry_after(err).unwrap_or(DEFAULT_RETRY_AFTER);
        headers.insert(RETRY_AFTER, HeaderValue::from(whole_seconds_up(hint)));
    }
    (status, headers)
}

/// `hint` in whole seconds, rounded up, at least 1.
fn whole_seconds_up(hint: Duration) -> u64 {
    let seconds = hint.as_secs() + u64::from(hint.subsec_nanos() > 0);
    seconds.max(1)
}

#[cfg(feature = "axum")]
pub use self::axum_response::ErrorResponse;

#[cfg(feature = "axum")]
mod axum_response {
    use axum::response::{IntoResponse, Response};

    use crate::error::BoxError;

    /// A [`BoxError`] that axum can answer with: the response of
    /// [`error_response`](super::error_response). Only with the `axum` feature.
    ///
    /// ```
    /// use axum::response::IntoResponse;
    /// use http::StatusCode;
    /// use tower_firebreak::error::BoxError;
    /// use tower_firebreak::http::ErrorResponse;
    ///
    /// let err: BoxError = std::io::Error::other("disk on fire").into();
    /// let response = ErrorResponse::from(err).into_response();
    /// assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    /// ```
    ///
    /// In a `HandleErrorLayer`: `HandleErrorLayer::new(|err: BoxError| async { ErrorResponse::from(err) })`.
    #[derive(Debug)]
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub struct ErrorResponse(BoxError);

    impl ErrorResponse {
        /// The error, to log or inspect.
        pub fn error(&self) -> &BoxError {
            &self.0
        }

        /// Unwraps the error.
        pub fn into_error(self) -> BoxError {
            self.0
        }
    }

    impl From<BoxError> for ErrorResponse {
        fn from(err: BoxError) -> Self {
            ErrorResponse(err)
        }
    }

    impl IntoResponse for ErrorResponse {
        fn into_response(self) -> Response {
            super::error_response(&*self.0).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::BoxError;
    use crate::retry::BudgetExhausted;
    use crate::timeout::Elapsed;

    #[test]
    fn an_exhausted_budget_is_504_after_a_timeout_and_503_otherwise() {
        let timed_out = BudgetExhausted::new(Box::new(Elapsed::new(Duration::from_secs(1))));
        assert_eq!(error_status(&timed_out), StatusCode::GATEWAY_TIMEOUT);
        assert!(error_response(&timed_out).1.is_empty());

        let failed = BudgetExhausted::new(BoxError::from(std::io::Error::other("reset")));
        let (status, headers) = error_response(&failed);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        // No hint in the error: the default, never a 503 without `Retry-After`.
        assert_eq!(headers[RETRY_AFTER], "1");
    }

    #[test]
    fn retry_after_seconds_round_up_and_are_never_zero() {
        let cases = [
            (Duration::ZERO, 1),
            (Duration::from_millis(1), 1),
            (Duration::from_secs(1), 1),
            (Duration::from_millis(1001), 2),
            (Duration::from_secs(30), 30),
        ];
        for (hint, seconds) in cases {
            assert_eq!(whole_seconds_up(hint), seconds, "{hint:?}");
        }
    }
}
