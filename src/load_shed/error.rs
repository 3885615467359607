//! The error the load-shedding layer returns instead of calling its service.

use std::fmt;
use std::time::Duration;

/// The service is at its concurrency limit: the call was rejected at once, without reaching
/// it, instead of waiting for capacity that may not come in time.
///
/// Returned (boxed) by [`LoadShed`](super::LoadShed). [`retry_after`](Self::retry_after) is
/// the layer's hint of when capacity may be back. Retrying sooner only adds load, so this
/// crate's retry layer never retries it; an HTTP server would answer 503 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overloaded {
    limit: u64,
    retry_after: Duration,
}

impl Overloaded {
    pub(crate) fn new(limit: u64, retry_after: Duration) -> Self {
        Overloaded { limit, retry_after }
    }

    /// When to try again: the layer's
    /// [`retry_after`](super::LoadShedLayerBuilder::retry_after) setting.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }

    /// The concurrency limit that was reached: for an adaptive limit, its value when the call
    /// was rejected.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "overloaded: concurrency limit of {} reached; try again in {:?}",
            self.limit, self.retry_after
        )
    }
}

impl std::error::Error for Overloaded {}
