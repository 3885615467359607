//! AIMD: additive increase, multiplicative decrease, as TCP Reno does with its window.

use std::time::Duration;

use super::{Bounds, Estimate, LAYER, Window, bounds_setters, check_f64};
use crate::error::{ConfigError, ONE_HOUR};

/// Additive increase, multiplicative decrease: the limit grows by one each window in which
/// calls completed without a drop, and is multiplied by
/// [`backoff_ratio`](Self::backoff_ratio) after a window with one.
///
/// A **drop** is a call whose error says it was too late or refused further down: timed out,
/// deadline exceeded, or overloaded ([`ErrorKind`](crate::error::ErrorKind) `TimedOut`,
/// `DeadlineExceeded`, `Overloaded`). With [`drop_latency`](Self::drop_latency), a call
/// slower than that also counts as one.
///
/// | setting | default |
/// | --- | --- |
/// | `initial`, `min`, `max` | 20, 1, 1000 |
/// | `backoff_ratio` | 0.9 |
/// | `drop_latency` | none |
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::load_shed::{Aimd, LoadShedLayer};
///
/// let layer = LoadShedLayer::builder()
///     .limit(Aimd::default().initial(20).min(1).max(1000).drop_latency(Duration::from_millis(50)))
///     .build()?;
/// assert_eq!(layer.limit(), 20);
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
///
/// # Known drift, and what this does about it
///
/// AIMD only learns from drops. A service that is never limit-bound (a few calls in flight
/// under a high limit) drops nothing, so a plain AIMD limit would creep up to `max` and then
/// protect nothing when a burst comes. Here the limit grows only after a window in which the
/// calls in flight reached at least half of it (the app-limited guard). And since a
/// service that queues gets slower before it fails, AIMD alone lets latency grow until
/// something times out: set `drop_latency` to the slowest answer still worth giving (below
/// the callers' timeout), or pick [`Gradient2`](super::Gradient2), [`Vegas`](super::Vegas)
/// or [`SlaGuard`](super::SlaGuard), which react to latency itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aimd {
    pub(crate) bounds: Bounds,
    backoff_ratio: f64,
    pub(crate) drop_latency: Option<Duration>,
}

impl Default for Aimd {
    fn default() -> Self {
        Aimd {
            bounds: Bounds::DEFAULT,
            backoff_ratio: 0.9,
            drop_latency: None,
        }
    }
}

impl Aimd {
    bounds_setters!(20, 1, 1000);

    /// What the limit is multiplied by after a window with a drop, in `[0.5, 1)`; default
    /// 0.9.
    pub fn backoff_ratio(mut self, ratio: f64) -> Self {
        self.backoff_ratio = ratio;
        self
    }

    /// Count a call slower than `latency` as a drop, as a timeout would (greater than zero,
    /// at most 1 hour); default none.
    pub fn drop_latency(mut self, latency: Duration) -> Self {
        self.drop_latency = Some(latency);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.bounds.validate("Aimd")?;
        check_f64(
            "Aimd::backoff_ratio",
            self.backoff_ratio,
            0.5..=1.0,
            "in [0.5, 1)",
        )?;
        if self.backoff_ratio >= 1.0 {
            return Err(ConfigError::out_of_range(
                LAYER,
                "Aimd::backoff_ratio",
                self.backoff_ratio,
                "in [0.5, 1)",
            ));
        }
        if let Some(latency) = self.drop_latency {
            check_duration("Aimd::drop_latency", latency)?;
        }
        Ok(())
    }

    /// The next limit after `window`.
    pub(crate) fn next(&self, estimate: &mut Estimate, window: &Window) {
        let limit = estimate.limit;
        estimate.limit = if window.drops + window.slow > 0 {
            limit * self.backoff_ratio
        } else if window.limit_bound(limit) {
            limit + 1.0
        } else {
            limit
        };
    }
}

/// A latency setting: greater than zero, at most 1 hour.
pub(crate) fn check_duration(setting: &'static str, value: Duration) -> Result<(), ConfigError> {
    ConfigError::check_duration(LAYER, setting, value, ONE_HOUR, "at most 1 hour")
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    use crate::load_shed::limit::{next_limit, window_of_10ms_calls};

    fn window(drops: u64, slow: u64, max_in_flight: u64) -> Window {
        window_of_10ms_calls(100, drops, slow, max_in_flight)
    }

    fn step(aimd: &Aimd, limit: f64, w: Window) -> f64 {
        next_limit(limit, &w, |estimate, w| aimd.next(estimate, w))
    }

    #[test]
    fn grows_by_one_when_limit_bound_and_backs_off_on_drops_or_slow_calls() {
        let aimd = Aimd::default();
        assert_eq!(step(&aimd, 20.0, window(0, 0, 10)), 21.0);
        assert_eq!(step(&aimd, 20.0, window(1, 0, 20)), 18.0);
        assert_eq!(step(&aimd, 20.0, window(0, 3, 20)), 18.0);
    }

    #[test]
    fn does_not_grow_when_the_app_is_not_limit_bound() {
        assert_eq!(step(&Aimd::default(), 20.0, window(0, 0, 9)), 20.0);
    }
}
