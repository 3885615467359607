//! The SLA guard: a limit that keeps admitted calls within a latency objective.

use std::time::Duration;

use super::aimd::check_duration;
use super::{Bounds, Estimate, Window, bounds_setters, check_f64};
use crate::error::ConfigError;

/// The most a single window cuts the limit to, as a share of it.
const DEEPEST_CUT: f64 = 0.5;
/// The least a window in breach cuts the limit to, as a share of it.
const SHALLOWEST_CUT: f64 = 0.9;
/// Clean windows to wait before growing back to the limit at which the objective was last
/// breached.
const HOLD_BEFORE_RETRY: u64 = 10;

/// Sheds new work early, with [`Overloaded`](crate::load_shed::Overloaded), when the calls it
/// admits stop meeting a latency objective, rather than admitting them and answering late.
///
/// The objective is a latency that a share of admitted calls (the
/// [`percentile`](Self::percentile), 99% by default) must complete within. Each sampling
/// window counts the calls slower than the objective, plus drops (calls that timed out,
/// missed their deadline or were refused as overloaded further down):
///
/// - **In breach** (more than 1% of the window's calls over the objective, for p99): the
///   limit is cut to what Little's law says meets the objective at the rate calls are
///   completing, `completions per second × objective`, but by no less than 10% and no more
///   than 50% in one window.
/// - **No call over the objective**, and the calls in flight reached half the limit: the
///   limit grows by one, except that the step back to the limit at which the objective was
///   last breached waits for 10 such windows in a row.
/// - Otherwise (some calls over it, within the allowed share; or calls in flight below half
///   the limit) it stays.
///
/// # Why this design
///
/// A queue in front of a saturated service turns every extra call admitted into latency for
/// all of them, so the latency objective maps to a concurrency: with the service completing
/// `λ` calls a second, `λ × objective` calls in flight wait at most about `objective` each
/// (Little's law, `L = λW`). Cutting straight to that figure, not by a fixed ratio, stops a
/// breach in one or two windows however far the limit had grown, and it needs no model of
/// the service's unloaded latency, so it has no baseline to go stale: the objective is the
/// baseline. The slow regrowth (one call a window) probes for capacity that came back
/// without risking more than one call's worth of extra queueing per window, and it only
/// happens when the limit is what holds the traffic back (the app-limited guard), so an idle
/// service does not accumulate a limit it never tested. Each probe of the limit that last
/// breached the objective admits calls that will likely breach it again, so that step waits
/// 10 clean windows: on a small limit, where one call more is a large share of the latency,
/// probing at every window put a third of the calls over the objective (a test with one
/// worker, in `tests/load_shed.rs`).
///
/// The guard learns from calls that completed, so it acts about one latency after the
/// breach began; calls admitted before a cut still complete late. Expect the p99 of
/// admitted calls to sit within about one service time of the objective, not under it: in
/// `tests/load_shed_sim.rs`, an objective of 1.5 × the service time held the p99 at 1.6 ×.
///
/// The limit cannot make a service faster than it is: if calls are slow even one at a time,
/// the guard sheds down to `min` and keeps admitting that many.
///
/// | setting | default |
/// | --- | --- |
/// | `objective` | required |
/// | `percentile` | 0.99 |
/// | `initial`, `min`, `max` | 20, 1, 1000 |
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::load_shed::{LoadShedLayer, SlaGuard};
///
/// // The same layer two ways: the shortcut, and the algorithm with its settings.
/// let layer = LoadShedLayer::builder().latency_objective(Duration::from_millis(50)).build()?;
/// let tuned = LoadShedLayer::builder()
///     .limit(SlaGuard::new(Duration::from_millis(50)).percentile(0.99).max(500))
///     .build()?;
/// # let _ = (layer, tuned);
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlaGuard {
    pub(crate) bounds: Bounds,
    pub(crate) objective: Duration,
    percentile: f64,
}

impl SlaGuard {
    /// A guard that keeps 99% of admitted calls within `objective` (greater than zero, at
    /// most 1 hour; checked by `build`).
    pub fn new(objective: Duration) -> SlaGuard {
        SlaGuard {
            bounds: Bounds::DEFAULT,
            objective,
            percentile: 0.99,
        }
    }

    bounds_setters!(20, 1, 1000);

    /// The share of admitted calls that must complete within the objective, in `[0.5, 1)`;
    /// default 0.99.
    pub fn percentile(mut self, share: f64) -> Self {
        self.percentile = share;
        self
    }

    /// The latency objective.
    pub fn objective(&self) -> Duration {
        self.objective
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.bounds.validate("SlaGuard")?;
        check_duration("latency_objective", self.objective)?;
        check_f64(
            "SlaGuard::percentile",
            self.percentile,
            0.5..=1.0,
            "in [0.5, 1)",
        )?;
        if self.percentile >= 1.0 {
            return Err(ConfigError::out_of_range(
                super::LAYER,
                "SlaGuard::percentile",
                self.percentile,
                "in [0.5, 1)",
            ));
        }
        Ok(())
    }

    /// The next limit after `window`.
    pub(crate) fn next(&self, estimate: &mut Estimate, window: &Window) {
        let limit = estimate.limit;
        let allowed = ((1.0 - self.percentile) * window.samples as f64).floor();
        let breaches = (window.slow + window.drops) as f64;
        // The limit of the last breach, and clean windows since.
        let breached_at = &mut estimate.baseline_rtt_ns;
        let clean = &mut estimate.counter;
        estimate.limit = if breaches > allowed {
            *breached_at = limit;
            *clean = 0;
            let rate = window.samples as f64 * 1e9 / window.duration_ns as f64;
            let little = rate * self.objective.as_secs_f64();
            little.clamp(limit * DEEPEST_CUT, limit * SHALLOWEST_CUT)
        } else if breaches == 0.0 && window.limit_bound(limit) {
            *clean += 1;
            // Back to where the last breach was: only after a pause (see "Why this design").
            let retrying = limit < *breached_at && limit + 1.0 >= *breached_at;
            if !retrying || *clean >= HOLD_BEFORE_RETRY {
                limit + 1.0
            } else {
                limit
            }
        } else {
            limit
        };
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    use crate::load_shed::limit::{next_limit, window_of_10ms_calls};

    fn window(samples: u64, slow: u64, max_in_flight: u64) -> Window {
        window_of_10ms_calls(samples, 0, slow, max_in_flight)
    }

    fn step(guard: &SlaGuard, limit: f64, w: Window) -> f64 {
        next_limit(limit, &w, |estimate, w| guard.next(estimate, w))
    }

    #[test]
    fn a_breach_cuts_toward_littles_law_within_bounds() {
        let guard = SlaGuard::new(Duration::from_millis(15));
        // 100 completions in 100 ms = 1000/s; × 15 ms = 15 calls.
        assert!((step(&guard, 30.0, window(100, 50, 30)) - 15.0).abs() < 1e-9);
        // Never more than halved...
        assert_eq!(step(&guard, 100.0, window(100, 50, 100)), 50.0);
        // ...and at least a 10% cut.
        assert_eq!(step(&guard, 16.0, window(100, 50, 16)), 16.0 * 0.9);
    }

    #[test]
    fn within_the_objective_grows_by_one_only_when_limit_bound() {
        let guard = SlaGuard::new(Duration::from_millis(15));
        assert_eq!(step(&guard, 20.0, window(100, 0, 10)), 21.0);
        assert_eq!(step(&guard, 20.0, window(100, 0, 9)), 20.0);
        // Within the allowed share, but some calls over: hold.
        assert_eq!(step(&guard, 20.0, window(100, 1, 10)), 20.0);
    }

    #[test]
    fn the_step_back_to_the_breached_limit_waits_for_clean_windows() {
        let guard = SlaGuard::new(Duration::from_millis(15));
        let mut estimate = Estimate {
            limit: 16.0,
            baseline_rtt_ns: 0.0,
            counter: 0,
        };
        // A breach at 16 with 1,400 completions a second: cut to 14.
        let breach = Window {
            samples: 140,
            ..window(140, 70, 16)
        };
        guard.next(&mut estimate, &breach);
        assert!((estimate.limit - 14.4).abs() < 1e-9, "{estimate:?}");
        // Up to 15.4 at once, then 9 more clean windows before 16.
        let clean = window(100, 0, 16);
        guard.next(&mut estimate, &clean);
        assert!((estimate.limit - 15.4).abs() < 1e-9, "{estimate:?}");
        for _ in 0..8 {
            guard.next(&mut estimate, &clean);
            assert!((estimate.limit - 15.4).abs() < 1e-9, "{estimate:?}");
        }
        guard.next(&mut estimate, &clean);
        assert!((estimate.limit - 16.4).abs() < 1e-9, "{estimate:?}");
        // Past it, one a window again.
        guard.next(&mut estimate, &clean);
        assert!((estimate.limit - 17.4).abs() < 1e-9, "{estimate:?}");
    }
}
