//! [`HttpRetryPolicy`]: which HTTP results to retry, and after how long.

use std::time::Duration;

use http::{Response, StatusCode};

use super::classify::StatusClassifier;
use super::retry_after::{MAX_RETRY_AFTER, WallClock, retry_after_with};
use crate::circuit_breaker::Outcome;
use crate::error::{BoxError, ConfigError};
use crate::retry::{Decision, RetryPolicy};

const POLICY: &str = "HttpRetryPolicy";

/// Retries the HTTP results a [`StatusClassifier`] calls failures, honouring the server's
/// `Retry-After`.
///
/// For each attempt's result:
///
/// | result | decision |
/// | --- | --- |
/// | `Err(_)`: connect refused, reset, a timeout below | [`Retry`](Decision::Retry) after the backoff (the retry layer still refuses this crate's "back off" errors) |
/// | success or ignored status (2xx, 3xx, most 4xx) | [`Return`](Decision::Return) |
/// | failure status with a valid `Retry-After` of at most [`max_wait`](HttpRetryPolicyBuilder::max_wait) | [`RetryAfter`](Decision::RetryAfter) that delay |
/// | failure status with a valid `Retry-After` longer than `max_wait` | [`Return`](Decision::Return): retrying sooner than asked only adds load |
/// | 429 or 503 without a valid `Retry-After` | [`Return`](Decision::Return): the server is overloaded and did not say when to come back |
/// | any other failure status (500, 502, 504, 408, ...) without one | [`Retry`](Decision::Retry) after the backoff |
///
/// The retry layer then applies its own rules: attempts, the request's deadline, the retry
/// budget, and whether the request may be sent again (see
/// [`IdempotentRequests`](super::IdempotentRequests)). The module docs explain the
/// [overload rule](super#retrying-an-overloaded-server).
///
/// ```
/// use std::time::Duration;
/// use http::{Response, header::RETRY_AFTER};
/// use tower_firebreak::error::BoxError;
/// use tower_firebreak::http::HttpRetryPolicy;
/// use tower_firebreak::retry::{Decision, RetryPolicy};
///
/// let policy = HttpRetryPolicy::default();
/// let status = |code: u16| Ok::<_, BoxError>(Response::builder().status(code).body(()).unwrap());
/// let with_retry_after = |code: u16, value: &str| Ok::<_, BoxError>(
///     Response::builder().status(code).header(RETRY_AFTER, value).body(()).unwrap(),
/// );
///
/// assert_eq!(policy.decide(&status(502)), Decision::Retry);
/// assert_eq!(policy.decide(&status(503)), Decision::Return);
/// assert_eq!(policy.decide(&with_retry_after(503, "2")), Decision::RetryAfter(Duration::from_secs(2)));
/// assert_eq!(policy.decide(&with_retry_after(429, "3600")), Decision::Return, "longer than 30 s");
/// assert_eq!(policy.decide(&status(404)), Decision::Return);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpRetryPolicy {
    classifier: StatusClassifier,
    max_wait: Duration,
    wall_clock: WallClock,
}

impl Default for HttpRetryPolicy {
    /// The default [`StatusClassifier`], a `max_wait` of 30 s, the system's wall clock.
    fn default() -> Self {
        HttpRetryPolicy {
            classifier: StatusClassifier::default(),
            max_wait: Duration::from_secs(30),
            wall_clock: WallClock::System,
        }
    }
}

impl HttpRetryPolicy {
    /// Starts from the [default](HttpRetryPolicy::default).
    pub fn builder() -> HttpRetryPolicyBuilder {
        HttpRetryPolicyBuilder {
            policy: HttpRetryPolicy::default(),
        }
    }

    /// The classifier that says which statuses are failures.
    pub fn classifier(&self) -> &StatusClassifier {
        &self.classifier
    }

    /// The decision for a response, without the `Result` around it.
    pub fn decide_response<B>(&self, response: &Response<B>) -> Decision {
        let status = response.status();
        if self.classifier.outcome(status) != Outcome::Failure {
            return Decision::Return;
        }
        match retry_after_with(response.headers(), || self.wall_clock.now()) {
            Some(wait) if wait <= self.max_wait => Decision::RetryAfter(wait),
            Some(_) => Decision::Return,
            None if is_overload(status) => Decision::Return,
            None => Decision::Retry,
        }
    }
}

/// The statuses with which a server asks for less load.
fn is_overload(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
}

impl<B> RetryPolicy<Response<B>> for HttpRetryPolicy {
    fn decide(&self, result: &Result<Response<B>, BoxError>) -> Decision {
        match result {
            Ok(response) => self.decide_response(response),
            Err(_) => Decision::Retry,
        }
    }
}

/// Builder of [`HttpRetryPolicy`], from [`HttpRetryPolicy::builder`].
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tower_firebreak::http::{HttpRetryPolicy, StatusClassifier, WallClock};
///
/// let policy = HttpRetryPolicy::builder()
///     .classifier(StatusClassifier::builder().ignored(501..=501).build()?)
///     .max_wait(Duration::from_secs(10))
///     .wall_clock(WallClock::anchored(SystemTime::UNIX_EPOCH)) // for a test
///     .build()?;
/// # let _ = policy;
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct HttpRetryPolicyBuilder {
    policy: HttpRetryPolicy,
}

impl HttpRetryPolicyBuilder {
    /// Which statuses are failures, and so retried; default [`StatusClassifier::default`].
    pub fn classifier(mut self, classifier: StatusClassifier) -> Self {
        self.policy.classifier = classifier;
        self
    }

    /// The longest `Retry-After` the policy waits for; a failure that asks for more is
    /// returned to the caller instead. Greater than zero and at most [`MAX_RETRY_AFTER`]
    /// (one day); default 30 s. Keep the retry layer's
    /// [`max_retry_after`](crate::retry::RetryLayerBuilder::max_retry_after) at least this
    /// long, or it shortens the wait.
    pub fn max_wait(mut self, max: Duration) -> Self {
        self.policy.max_wait = max;
        self
    }

    /// Where "now" comes from for `Retry-After` dates; default [`WallClock::System`].
    pub fn wall_clock(mut self, wall_clock: WallClock) -> Self {
        self.policy.wall_clock = wall_clock;
        self
    }

    /// Checks the settings and builds the policy.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroDuration`] or [`ConfigError::OutOfRange`] for a `max_wait` of zero
    /// or above one day.
    pub fn build(self) -> Result<HttpRetryPolicy, ConfigError> {
        ConfigError::check_duration(
            POLICY,
            "max_wait",
            self.policy.max_wait,
            MAX_RETRY_AFTER,
            "at most 24 hours",
        )?;
        Ok(self.policy)
    }
}
