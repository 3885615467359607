//! [`StatusClassifier`]: what an HTTP response's status says about the server's health.

use std::fmt;
use std::ops::RangeInclusive;
use std::time::{Duration, SystemTime};

use http::{Response, StatusCode};

use super::retry_after::retry_after_with;
use crate::circuit_breaker::{Classify, Outcome};
use crate::error::ConfigError;

const CLASSIFIER: &str = "StatusClassifier";

/// The statuses a classifier can be configured for; any other valid status (600 to 999, which
/// no standard defines) is always a failure.
const CONFIGURABLE: RangeInclusive<u16> = 100..=599;
const WORDS: usize = 8; // 8 * 64 = 512 bits cover the 500 configurable codes.

/// A set of status codes from 100 to 599, one bit each; `Copy`, so that a classifier costs no
/// allocation or reference count to clone.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
struct StatusSet([u64; WORDS]);

impl StatusSet {
    fn insert_range(&mut self, codes: RangeInclusive<u16>) {
        for code in codes {
            let bit = usize::from(code - CONFIGURABLE.start());
            self.0[bit / 64] |= 1 << (bit % 64);
        }
    }

    fn remove_range(&mut self, codes: RangeInclusive<u16>) {
        for code in codes {
            let bit = usize::from(code - CONFIGURABLE.start());
            self.0[bit / 64] &= !(1 << (bit % 64));
        }
    }

    #[inline]
    fn contains(&self, code: u16) -> bool {
        if !CONFIGURABLE.contains(&code) {
            return false;
        }
        let bit = usize::from(code - CONFIGURABLE.start());
        self.0[bit / 64] & (1 << (bit % 64)) != 0
    }
}

/// Classifies HTTP responses by status for the circuit breaker, and is the base of
/// [`HttpRetryPolicy`](super::HttpRetryPolicy).
///
/// The default, following what each status says about the server:
///
/// | result | outcome | why |
/// | --- | --- | --- |
/// | `Err(_)` (connect, reset, timeout) | [`Failure`](Outcome::Failure) | the request did not get through |
/// | 5xx | [`Failure`](Outcome::Failure) | the server failed |
/// | 408 Request Timeout, 429 Too Many Requests | [`Failure`](Outcome::Failure) | the server is slow or overloaded |
/// | any other 4xx | [`Ignored`](Outcome::Ignored) | the caller's fault, not the server's health |
/// | 1xx, 2xx, 3xx | [`Success`](Outcome::Success) | |
/// | 600 to 999 | [`Failure`](Outcome::Failure) | not a status any standard defines |
///
/// ```
/// use http::{Response, StatusCode};
/// use tower_firebreak::circuit_breaker::{Classify, CircuitBreakerLayer, Outcome};
/// use tower_firebreak::http::StatusClassifier;
///
/// let classifier = StatusClassifier::default();
/// let response = |code: u16| Ok::<_, std::io::Error>(
///     Response::builder().status(code).body(()).unwrap(),
/// );
/// assert_eq!(classifier.classify(&response(503)), Outcome::Failure);
/// assert_eq!(classifier.classify(&response(429)), Outcome::Failure);
/// assert_eq!(classifier.classify(&response(404)), Outcome::Ignored);
/// assert_eq!(classifier.classify(&response(200)), Outcome::Success);
///
/// let breaker = CircuitBreakerLayer::builder().classifier(classifier).build()?;
/// # let _ = breaker;
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
///
/// [`builder`](Self::builder) changes the table, for example for an API that answers 409
/// when it is overloaded, or one whose 501 only means "not implemented for this input".
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct StatusClassifier {
    failures: StatusSet,
    ignored: StatusSet,
}

impl Default for StatusClassifier {
    fn default() -> Self {
        let mut failures = StatusSet::default();
        failures.insert_range(500..=599);
        failures.insert_range(408..=408);
        failures.insert_range(429..=429);
        let mut ignored = StatusSet::default();
        ignored.insert_range(400..=499);
        ignored.remove_range(408..=408);
        ignored.remove_range(429..=429);
        StatusClassifier { failures, ignored }
    }
}

impl fmt::Debug for StatusClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |set: &StatusSet| -> Vec<u16> {
            CONFIGURABLE.filter(|code| set.contains(*code)).collect()
        };
        f.debug_struct("StatusClassifier")
            .field("failures", &list(&self.failures))
            .field("ignored", &list(&self.ignored))
            .finish()
    }
}

impl StatusClassifier {
    /// Starts from the default table (see the [type docs](Self)); each call of the builder
    /// overrides it for the codes it names, later calls winning over earlier ones.
    pub fn builder() -> StatusClassifierBuilder {
        StatusClassifierBuilder {
            table: StatusClassifier::default(),
            error: None,
        }
    }

    /// What `status` says about the server.
    #[inline]
    pub fn outcome(&self, status: StatusCode) -> Outcome {
        let code = status.as_u16();
        if !CONFIGURABLE.contains(&code) || self.failures.contains(code) {
            Outcome::Failure
        } else if self.ignored.contains(code) {
            Outcome::Ignored
        } else {
            Outcome::Success
        }
    }
}

impl<B, E> Classify<Response<B>, E> for StatusClassifier {
    #[inline]
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(response) => self.outcome(response.status()),
            Err(_) => Outcome::Failure,
        }
    }

    /// A failed response's `Retry-After` (read as [`retry_after`](super::retry_after) does,
    /// against the system's wall clock for a date): the breaker then stays open at least that
    /// long once it trips, up to its `max_retry_after`. A server that says "come back in
    /// 30 s" is not probed after 5.
    fn retry_after(&self, result: &Result<Response<B>, E>) -> Option<Duration> {
        match result {
            Ok(response) => retry_after_with(response.headers(), SystemTime::now),
            Err(_) => None,
        }
    }
}

/// Builder of [`StatusClassifier`], from [`StatusClassifier::builder`].
///
/// ```
/// use http::StatusCode;
/// use tower_firebreak::circuit_breaker::Outcome;
/// use tower_firebreak::http::StatusClassifier;
///
/// let classifier = StatusClassifier::builder()
///     .failures(409..=409)   // this API answers 409 when a lock is contended
///     .ignored(501..=501)    // and 501 for inputs it does not handle
///     .build()?;
/// assert_eq!(classifier.outcome(StatusCode::CONFLICT), Outcome::Failure);
/// assert_eq!(classifier.outcome(StatusCode::NOT_IMPLEMENTED), Outcome::Ignored);
/// assert_eq!(classifier.outcome(StatusCode::BAD_GATEWAY), Outcome::Failure);
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct StatusClassifierBuilder {
    table: StatusClassifier,
    error: Option<ConfigError>,
}

impl StatusClassifierBuilder {
    fn set(mut self, codes: RangeInclusive<u16>, setting: &'static str, outcome: Outcome) -> Self {
        if self.error.is_some() {
            return self;
        }
        let valid = codes.start() <= codes.end()
            && CONFIGURABLE.contains(codes.start())
            && CONFIGURABLE.contains(codes.end());
        if !valid {
            self.error = Some(ConfigError::out_of_range(
                CLASSIFIER,
                setting,
                format!("{codes:?}"),
                "a non-empty range within 100..=599",
            ));
            return self;
        }
        let table = &mut self.table;
        match outcome {
            Outcome::Failure => {
                table.failures.insert_range(codes.clone());
                table.ignored.remove_range(codes);
            }
            Outcome::Ignored => {
                table.failures.remove_range(codes.clone());
                table.ignored.insert_range(codes);
            }
            Outcome::Success => {
                table.failures.remove_range(codes.clone());
                table.ignored.remove_range(codes);
            }
        }
        self
    }

    /// Count these statuses as failures (and retry them, in
    /// [`HttpRetryPolicy`](super::HttpRetryPolicy)).
    pub fn failures(self, codes: RangeInclusive<u16>) -> Self {
        self.set(codes, "failures", Outcome::Failure)
    }

    /// Ignore these statuses: they say nothing about the server's health, and are not retried.
    pub fn ignored(self, codes: RangeInclusive<u16>) -> Self {
        self.set(codes, "ignored", Outcome::Ignored)
    }

    /// Count these statuses as successes.
    pub fn successes(self, codes: RangeInclusive<u16>) -> Self {
        self.set(codes, "successes", Outcome::Success)
    }

    /// Builds the classifier.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for the first range given that was empty (`start > end`)
    /// or reached outside 100 to 599.
    pub fn build(self) -> Result<StatusClassifier, ConfigError> {
        match self.error {
            Some(error) => Err(error),
            None => Ok(self.table),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(classifier: &StatusClassifier, code: u16) -> Outcome {
        classifier.outcome(StatusCode::from_u16(code).unwrap())
    }

    #[test]
    fn the_default_table_covers_every_valid_status() {
        let classifier = StatusClassifier::default();
        for code in 100..=999 {
            let expected = match code {
                408 | 429 => Outcome::Failure,
                400..=499 => Outcome::Ignored,
                100..=399 => Outcome::Success,
                _ => Outcome::Failure,
            };
            assert_eq!(outcome(&classifier, code), expected, "status {code}");
        }
    }

    #[test]
    fn later_ranges_override_earlier_ones() {
        let classifier = StatusClassifier::builder()
            .successes(500..=599)
            .failures(503..=503)
            .build()
            .unwrap();
        assert_eq!(outcome(&classifier, 500), Outcome::Success);
        assert_eq!(outcome(&classifier, 503), Outcome::Failure);
        assert_eq!(outcome(&classifier, 404), Outcome::Ignored);
    }

    #[test]
    fn ranges_outside_the_configurable_codes_are_config_errors() {
        #[allow(clippy::reversed_empty_ranges)]
        let empty = 500..=400;
        for range in [99..=100, 599..=600, empty, 0..=0] {
            let err = StatusClassifier::builder()
                .failures(range.clone())
                .build()
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::OutOfRange {
                        setting: "failures",
                        ..
                    }
                ),
                "{range:?}: {err}"
            );
        }
    }
}
