//! Errors: the boxed error layers return, configuration errors, and a way to tell failures
//! apart without matching on strings.
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_firebreak::error::{BoxError, ErrorKind};
//! use tower_firebreak::ServiceBuilderExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let hanging = service_fn(|_: ()| std::future::pending::<Result<(), BoxError>>());
//! let svc = ServiceBuilder::new()
//!     .timeout_attempt(Duration::from_millis(100))?
//!     .service(hanging);
//!
//! let err = svc.oneshot(()).await.unwrap_err();
//! assert_eq!(ErrorKind::of(&*err), ErrorKind::TimedOut);
//! # Ok(())
//! # }
//! ```
//!
//! # The model
//!
//! - A layer that can fail on its own returns [`BoxError`], as tower's layers do, so it stacks
//!   with tower and works with axum's `HandleErrorLayer`. The inner service's error is boxed
//!   unchanged, so it can still be downcast to its own type.
//! - Each failure a layer adds has its own public type ([`Elapsed`](crate::timeout::Elapsed),
//!   [`DeadlineExceeded`](crate::timeout::DeadlineExceeded),
//!   [`CircuitOpen`](crate::circuit_breaker::CircuitOpen),
//!   [`BudgetExhausted`](crate::retry::BudgetExhausted)). These types implement
//!   `std::error::Error`, can be downcast from a `BoxError`, and cannot be constructed outside
//!   this crate, so seeing one means this crate produced it.
//! - [`ErrorKind::of`] names the failure without downcasting to each type yourself.
//! - Builders return [`ConfigError`] for invalid configuration; nothing in the crate panics
//!   on bad input.

use std::error::Error;
use std::time::Duration;

/// The error type layers of this crate return: any error, boxed, thread-safe.
///
/// This is the same type as `tower::BoxError`.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// What kind of failure an error is, as far as this crate can tell.
///
/// New kinds are added as layers that produce them are added, so match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// One attempt took longer than its timeout ([`Elapsed`](crate::timeout::Elapsed)).
    /// Another attempt may succeed.
    TimedOut,
    /// The request's deadline passed
    /// ([`DeadlineExceeded`](crate::timeout::DeadlineExceeded)). No further attempt can
    /// succeed, so nothing should retry it.
    DeadlineExceeded,
    /// A circuit breaker is open and rejected the call without trying
    /// ([`CircuitOpen`](crate::circuit_breaker::CircuitOpen)). Retrying before its
    /// [`retry_after`](ErrorKind::retry_after) only adds load.
    CircuitOpen,
    /// A service at its concurrency limit rejected the call without trying
    /// ([`Overloaded`](crate::load_shed::Overloaded)), or the client held it back because its
    /// dependency has been rejecting ([`Throttled`](crate::load_shed::Throttled)). Retrying
    /// before its [`retry_after`](ErrorKind::retry_after) only adds load.
    Overloaded,
    /// A failed call was not retried because the retry budget was empty
    /// ([`BudgetExhausted`](crate::retry::BudgetExhausted), whose source is the last
    /// attempt's error). The dependency is failing broadly; back off.
    RetryBudgetExhausted,
    /// Not an error this crate produced: it came from the inner service (or anything else).
    Inner,
}

/// How far down a `source()` chain [`ErrorKind::of`] looks: far more than any real wrapping,
/// and a bound in case a chain is very long.
const MAX_SOURCE_DEPTH: usize = 32;

impl ErrorKind {
    /// Classifies an error.
    ///
    /// It looks at the error itself, then down its [`source`](Error::source) chain, so an
    /// error of this crate is still recognised after another layer wrapped it (for example
    /// `tower::buffer`'s `ServiceError`). The first error of this crate found decides the kind;
    /// if there is none, the kind is [`ErrorKind::Inner`].
    ///
    /// Pass a [`BoxError`] as `&*err`.
    ///
    /// ```
    /// use tower_firebreak::error::{BoxError, ErrorKind};
    ///
    /// let io: BoxError = std::io::Error::other("connection reset").into();
    /// assert_eq!(ErrorKind::of(&*io), ErrorKind::Inner);
    /// ```
    pub fn of(err: &(dyn Error + 'static)) -> ErrorKind {
        let mut current = Some(err);
        for _ in 0..MAX_SOURCE_DEPTH {
            let Some(e) = current else { break };
            if e.is::<crate::timeout::Elapsed>() {
                return ErrorKind::TimedOut;
            }
            if e.is::<crate::timeout::DeadlineExceeded>() {
                return ErrorKind::DeadlineExceeded;
            }
            if e.is::<crate::circuit_breaker::CircuitOpen>() {
                return ErrorKind::CircuitOpen;
            }
            if e.is::<crate::load_shed::Overloaded>() || e.is::<crate::load_shed::Throttled>() {
                return ErrorKind::Overloaded;
            }
            if e.is::<crate::retry::BudgetExhausted>() {
                return ErrorKind::RetryBudgetExhausted;
            }
            current = e.source();
        }
        ErrorKind::Inner
    }

    /// The hint an error of this crate carries about when to try again, looked up like
    /// [`ErrorKind::of`]: the first error of this crate in the `source()` chain that carries
    /// one. Today that is [`CircuitOpen`](crate::circuit_breaker::CircuitOpen) with a known
    /// time until its next probe.
    ///
    /// ```
    /// use tower_firebreak::error::{BoxError, ErrorKind};
    ///
    /// let io: BoxError = std::io::Error::other("connection reset").into();
    /// assert_eq!(ErrorKind::retry_after(&*io), None);
    /// ```
    pub fn retry_after(err: &(dyn Error + 'static)) -> Option<Duration> {
        let mut current = Some(err);
        for _ in 0..MAX_SOURCE_DEPTH {
            let e = current?;
            if let Some(open) = e.downcast_ref::<crate::circuit_breaker::CircuitOpen>() {
                return open.retry_after();
            }
            if let Some(overloaded) = e.downcast_ref::<crate::load_shed::Overloaded>() {
                return Some(overloaded.retry_after());
            }
            current = e.source();
        }
        None
    }
}

/// An invalid configuration, returned by a builder's `build` instead of a panic.
///
/// Each variant names the layer and the setting at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting the layer cannot work without was not given.
    #[error("{layer}: `{setting}` is required but was not set")]
    Missing {
        /// The layer being built, such as `"TimeoutLayer"`.
        layer: &'static str,
        /// The builder method that sets it.
        setting: &'static str,
    },
    /// A duration that must be positive was zero.
    #[error("{layer}: `{setting}` must be greater than zero")]
    ZeroDuration {
        /// The layer being built, such as `"TimeoutLayer"`.
        layer: &'static str,
        /// The builder method that set it.
        setting: &'static str,
    },
    /// A number outside the range the setting accepts (NaN included).
    #[error("{layer}: `{setting}` is {value}, but must be {expected}")]
    OutOfRange {
        /// The layer being built.
        layer: &'static str,
        /// The builder method that set it.
        setting: &'static str,
        /// The value given, as text.
        value: String,
        /// The accepted range, such as `"in (0, 1]"`.
        expected: &'static str,
    },
    /// Two settings that cannot be used together.
    #[error("{layer}: `{setting}` cannot be used with `{other}`")]
    Incompatible {
        /// The layer being built.
        layer: &'static str,
        /// The setting that was refused.
        setting: &'static str,
        /// The setting it conflicts with.
        other: &'static str,
    },
    /// A lower bound set above its upper bound.
    #[error("{layer}: `{min_setting}` must not be greater than `{max_setting}`")]
    MinAboveMax {
        /// The layer being built.
        layer: &'static str,
        /// The setting that is the lower bound.
        min_setting: &'static str,
        /// The setting that is the upper bound.
        max_setting: &'static str,
    },
}

/// The first error of type `T` in `err`'s `source()` chain, `err` included, looked up as far
/// as [`ErrorKind::of`] looks.
pub(crate) fn find_in_chain<'a, T: Error + 'static>(
    err: &'a (dyn Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(err);
    for _ in 0..MAX_SOURCE_DEPTH {
        let e = current?;
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// The longest most duration settings accept.
pub(crate) const ONE_HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

impl ConfigError {
    /// A duration setting: [`ConfigError::ZeroDuration`] if zero, [`ConfigError::OutOfRange`]
    /// (expecting `expected`, such as "at most 1 hour") if above `max`.
    pub(crate) fn check_duration(
        layer: &'static str,
        setting: &'static str,
        value: std::time::Duration,
        max: std::time::Duration,
        expected: &'static str,
    ) -> Result<(), ConfigError> {
        if value.is_zero() {
            Err(ConfigError::ZeroDuration { layer, setting })
        } else if value > max {
            Err(ConfigError::out_of_range(
                layer,
                setting,
                format!("{value:?}"),
                expected,
            ))
        } else {
            Ok(())
        }
    }

    /// [`ConfigError::OutOfRange`] for `setting` of `layer`, showing `value` as given.
    pub(crate) fn out_of_range(
        layer: &'static str,
        setting: &'static str,
        value: impl std::fmt::Display,
        expected: &'static str,
    ) -> ConfigError {
        ConfigError::OutOfRange {
            layer,
            setting,
            value: value.to_string(),
            expected,
        }
    }
}
