//! The two ways a call runs out of time.

use std::fmt;
use std::time::Duration;

/// One attempt took longer than the per-attempt timeout.
///
/// Returned (boxed) by [`Timeout`](super::Timeout) when its own timeout, not the request's
/// deadline, was the earlier limit. Another attempt may still succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elapsed {
    timeout: Duration,
}

impl Elapsed {
    pub(crate) fn new(timeout: Duration) -> Self {
        Elapsed { timeout }
    }

    /// The per-attempt timeout that expired.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl fmt::Display for Elapsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request attempt timed out after {:?}", self.timeout)
    }
}

impl std::error::Error for Elapsed {}

/// The request's deadline has passed.
///
/// Returned (boxed) by [`Deadline`](super::Deadline) when the whole request outlives its
/// deadline, by [`Timeout`](super::Timeout) when the deadline comes before the per-attempt
/// timeout, and by either without calling the inner service when the deadline had already
/// passed on arrival. Unlike [`Elapsed`], retrying cannot help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineExceeded {
    _private: (),
}

impl DeadlineExceeded {
    pub(crate) fn new() -> Self {
        DeadlineExceeded { _private: () }
    }
}

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("request deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}
