//! Vegas: estimates the queue from the no-load latency and the current one, as TCP Vegas does.

use std::time::Duration;

use super::{Bounds, Estimate, LAYER, Window, bounds_setters, check_f64};
use crate::error::ConfigError;

/// Consecutive windows at the minimum limit after which the no-load latency is taken to be
/// stale and re-measured.
const STALE_AT_MIN_WINDOWS: u64 = 5;

/// Vegas: estimates how many calls are queued, `queue = limit × (1 − no_load_rtt /
/// window_rtt)`, and keeps it between `alpha` and `beta` calls, both scaled by
/// `log10(limit)` (at least 1) so that a large limit tolerates a proportionally small queue:
///
/// | estimated queue | next limit |
/// | --- | --- |
/// | at most `log10(limit)` (nearly none) | `limit + beta × log10(limit)` |
/// | below `alpha × log10(limit)` | `limit + log10(limit)` |
/// | above `2 × beta × log10(limit)` | `limit − queue + alpha × log10(limit)` |
/// | above `beta × log10(limit)` | `limit − log10(limit)` |
/// | in between | unchanged |
/// | a window with a drop | `limit − log10(limit)` |
///
/// The no-load latency is the lowest window minimum seen since the last probe.
///
/// One departure from Netflix's Vegas, which only ever steps down by `log10(limit)`: an
/// estimated queue over twice `beta` cuts straight to the calls estimated in service
/// (`limit − queue`) plus `alpha`. Stepping down by one or two calls a window, a 3× overload
/// on a service of 10 workers kept latency at 2.7 × its unloaded level for most of a second
/// (`tests/load_shed_sim.rs`). And, as for every algorithm here, a window closes early once
/// most of its calls (at least the sampling window's `min_samples`) are slower than the
/// latency at which `beta` calls would be queued.
///
/// | setting | default |
/// | --- | --- |
/// | `initial`, `min`, `max` | 20, 1, 1000 |
/// | `alpha`, `beta` | 3, 6 (calls, times `log10(limit)`) |
/// | `smoothing` | 1 (the next limit as computed) |
/// | `probe_interval` | 30 s |
///
/// ```
/// use tower_firebreak::load_shed::{LoadShedLayer, Vegas};
///
/// let layer = LoadShedLayer::builder()
///     .limit(Vegas::default().initial(10).alpha(3.0).beta(6.0))
///     .build()?;
/// assert_eq!(layer.limit(), 10);
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
///
/// # Known drift, and what this does about it
///
/// - **Creeping up while not limit-bound**: with few calls in flight there is no queue, and
///   the limit would grow by `beta` a window up to `max`. It moves only after a window in
///   which the calls in flight reached at least half of it (the app-limited guard).
/// - **A stale no-load latency**: a minimum only goes down, so once the service is slower
///   for good (a bigger payload, a colder cache) every window looks queued and the limit
///   sinks to `min`. Every `probe_interval` the no-load latency is re-measured as the latest
///   window's minimum (the least queued call in it), and also after 5 windows at `min`,
///   where calls barely queue. A probe made during an overload measures queued calls, and
///   the queue it lets through stays until the next probe: raise `probe_interval` when
///   overloads are long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vegas {
    pub(crate) bounds: Bounds,
    alpha: f64,
    beta: f64,
    smoothing: f64,
    probe_interval_ms: u64,
}

impl Default for Vegas {
    fn default() -> Self {
        Vegas {
            bounds: Bounds::DEFAULT,
            alpha: 3.0,
            beta: 6.0,
            smoothing: 1.0,
            probe_interval_ms: 30_000,
        }
    }
}

/// `Estimate::counter` holds windows at the minimum in its low half, milliseconds since the
/// last probe in its high half.
const HALF: u32 = 32;
const LOW: u64 = (1 << HALF) - 1;

impl Vegas {
    bounds_setters!(20, 1, 1000);

    /// Grow while fewer than `alpha × log10(limit)` calls are estimated queued, in
    /// `(0, 100]`; default 3.
    pub fn alpha(mut self, calls: f64) -> Self {
        self.alpha = calls;
        self
    }

    /// Shrink while more than `beta × log10(limit)` calls are estimated queued, in
    /// `[alpha, 100]`; default 6.
    pub fn beta(mut self, calls: f64) -> Self {
        self.beta = calls;
        self
    }

    /// The weight of each window's next limit, in `(0, 1]`; default 1.
    pub fn smoothing(mut self, weight: f64) -> Self {
        self.smoothing = weight;
        self
    }

    /// Re-measure the no-load latency this often, from 1 s to 1 day; default 30 s.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.bounds.validate("Vegas")?;
        check_f64(
            "Vegas::alpha",
            self.alpha,
            f64::MIN_POSITIVE..=100.0,
            "in (0, 100]",
        )?;
        check_f64("Vegas::beta", self.beta, 0.0..=100.0, "in [alpha, 100]")?;
        if self.beta < self.alpha {
            return Err(ConfigError::MinAboveMax {
                layer: LAYER,
                min_setting: "Vegas::alpha",
                max_setting: "Vegas::beta",
            });
        }
        check_f64(
            "Vegas::smoothing",
            self.smoothing,
            f64::MIN_POSITIVE..=1.0,
            "in (0, 1]",
        )?;
        if !(1_000..=86_400_000).contains(&self.probe_interval_ms) {
            return Err(ConfigError::out_of_range(
                LAYER,
                "Vegas::probe_interval",
                format!("{} ms", self.probe_interval_ms),
                "from 1 s to 1 day",
            ));
        }
        Ok(())
    }

    /// The next limit after `window`.
    pub(crate) fn next(&self, estimate: &mut Estimate, window: &Window) {
        let mut at_min = estimate.counter & LOW;
        let mut since_probe = estimate.counter >> HALF;
        let no_load = &mut estimate.baseline_rtt_ns;
        since_probe += window.duration_ns / 1_000_000;
        if estimate.limit <= self.bounds.min as f64 {
            at_min += 1;
        } else {
            at_min = 0;
        }
        if *no_load <= 0.0
            || since_probe >= self.probe_interval_ms
            || at_min >= STALE_AT_MIN_WINDOWS
        {
            *no_load = window.min_rtt_ns;
            since_probe = 0;
            at_min = 0;
        } else {
            *no_load = no_load.min(window.min_rtt_ns);
        }
        estimate.counter = (since_probe.min(LOW) << HALF) | at_min.min(LOW);

        let limit = estimate.limit;
        let log = limit.log10().max(1.0);
        let next = if window.drops > 0 {
            limit - log
        } else if !window.limit_bound(limit) {
            return;
        } else {
            let queue = limit * (1.0 - *no_load / window.avg_rtt_ns);
            if queue <= log {
                limit + self.beta * log
            } else if queue < self.alpha * log {
                limit + log
            } else if queue > 2.0 * self.beta * log {
                // Far over: straight to the calls estimated in service, plus alpha.
                limit - queue + self.alpha * log
            } else if queue > self.beta * log {
                limit - log
            } else {
                limit
            }
        };
        estimate.limit = limit * (1.0 - self.smoothing) + next * self.smoothing;
    }

    /// The latency at which `beta × log10(limit)` calls are estimated queued:
    /// `no_load / (1 − beta × log10(limit) / limit)`.
    pub(crate) fn alarm_ns(&self, estimate: &Estimate) -> f64 {
        let limit = estimate.limit;
        let share = self.beta * limit.log10().max(1.0) / limit;
        if estimate.baseline_rtt_ns > 0.0 && share < 1.0 {
            estimate.baseline_rtt_ns / (1.0 - share)
        } else {
            f64::INFINITY
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    fn window(avg_rtt_ms: f64, min_rtt_ms: f64, max_in_flight: u64) -> Window {
        Window {
            samples: 100,
            drops: 0,
            slow: 0,
            avg_rtt_ns: avg_rtt_ms * 1e6,
            min_rtt_ns: min_rtt_ms * 1e6,
            max_in_flight,
            duration_ns: 100_000_000,
        }
    }

    fn estimate(limit: f64, no_load_ms: f64) -> Estimate {
        Estimate {
            limit,
            baseline_rtt_ns: no_load_ms * 1e6,
            counter: 0,
        }
    }

    #[test]
    fn keeps_the_estimated_queue_between_alpha_and_beta() {
        let vegas = Vegas::default();
        // No queue: grow by beta.
        let mut e = estimate(20.0, 10.0);
        vegas.next(&mut e, &window(10.0, 10.0, 20));
        assert!(
            (e.limit - (20.0 + 6.0 * 20f64.log10())).abs() < 1e-9,
            "{e:?}"
        );
        // Queue of 20 × (1 − 10/20) = 10 > 6 × 1.3: shrink.
        let mut e = estimate(20.0, 10.0);
        vegas.next(&mut e, &window(20.0, 20.0, 20));
        assert!(e.limit < 20.0, "{e:?}");
        // Queue of 20 × (1 − 10/12.5) = 4, between 3.9 and 7.8: unchanged.
        let mut e = estimate(20.0, 10.0);
        vegas.next(&mut e, &window(12.5, 12.0, 20));
        assert_eq!(e.limit, 20.0);
    }

    #[test]
    fn does_not_grow_when_not_limit_bound() {
        let mut e = estimate(20.0, 10.0);
        Vegas::default().next(&mut e, &window(10.0, 10.0, 3));
        assert_eq!(e.limit, 20.0);
    }

    #[test]
    fn the_no_load_latency_is_re_measured_by_a_probe() {
        let vegas = Vegas::default().probe_interval(Duration::from_millis(1000));
        let mut e = estimate(20.0, 10.0);
        for _ in 0..10 {
            vegas.next(&mut e, &window(30.0, 25.0, 5));
        }
        assert_eq!(e.baseline_rtt_ns, 25e6);
    }
}
