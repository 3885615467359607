//! Gradient2: compares recent latency with a long-term average of it.

use super::{Bounds, Estimate, Window, bounds_setters, check_f64};
use crate::error::ConfigError;

/// Consecutive windows at the floor after which the long-term latency is taken to be stale
/// and replaced by the latest window's.
const STALE_AT_FLOOR_WINDOWS: u64 = 5;

/// Gradient2: each window, the limit is multiplied by the ratio of the long-term latency
/// (times a tolerance) to the window's average latency, kept in `[0.5, 1]`, plus a small
/// headroom, and smoothed:
///
/// ```text
/// gradient = clamp(tolerance × long_rtt / window_rtt, 0.5, 1)     (0.5 after a drop)
/// limit    = limit × gradient                                   if gradient < 1
///          = limit × (1 − smoothing) + (limit + queue_size) × smoothing   otherwise
/// ```
///
/// While latency stays within `tolerance` of its long-term level the limit grows by
/// `queue_size × smoothing` a window; once calls queue and latency rises past it, the limit
/// shrinks in proportion. The long-term latency is an exponential average over about
/// `long_window` windows.
///
/// # Departures from Netflix's Gradient2
///
/// Netflix's version computes `limit × gradient + queue_size` in every window and smooths
/// cuts and growth alike. Two measured problems (`tests/load_shed_sim.rs`: 10 workers, 10 ms
/// each, 3× overload; that form gave a p99 of 2.6 × the unloaded latency, 2.4 × after the
/// first second) led to two changes:
///
/// - the headroom is added only when the gradient is 1: added during a cut too, it holds
///   `queue_size` extra calls in the queue for good (the limit settles where
///   `limit × (1 − gradient) = queue_size`), which on a service of 10 workers is 40% more
///   latency;
/// - a cut applies in full at once: smoothed, it takes five windows to take effect, and the
///   queue an overload built stays that long.
///
/// And, as for every algorithm here, a window closes early once most of its calls (at least
/// the sampling window's `min_samples`) are slower than `tolerance × long_rtt`.
///
/// | setting | default |
/// | --- | --- |
/// | `initial`, `min`, `max` | 20, 1, 1000 |
/// | `tolerance` | 1.5 |
/// | `smoothing` | 0.2 |
/// | `queue_size` | 4 |
/// | `long_window` | 600 windows (1 minute with the default 100 ms sampling window) |
///
/// ```
/// use tower_firebreak::load_shed::{Gradient2, LoadShedLayer};
///
/// let layer = LoadShedLayer::builder()
///     .limit(Gradient2::default().initial(20).max(500).tolerance(1.5))
///     .build()?;
/// assert_eq!(layer.limit(), 20);
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
///
/// # Known drift, and what this does about it
///
/// - **Creeping up while not limit-bound.** Latency stays low when few calls are in flight,
///   so the gradient stays 1 and the limit would grow by the headroom every window, up to
///   `max`. The limit moves only after a window in which the calls in flight reached at
///   least half of it (the app-limited guard).
/// - **The long-term latency follows a standing queue.** Under an overload that lasts, the
///   average keeps absorbing the queued latency, so what counts as "normal" rises and the
///   limit with it. The average spans `long_window` windows (a minute by default), so over
///   an overload of seconds it moves little; over many minutes it does catch up. Lower
///   `tolerance`, or use an [`SlaGuard`](super::SlaGuard), where a latency bound must hold
///   however long the overload lasts.
/// - **Stale after latency falls.** When the service gets faster the average stays high and
///   lets more queueing through than it should: while the window's latency is below half the
///   long-term one, the long-term one is halved toward it each window.
/// - **Stale after latency rises for good.** A slower service (a bigger payload, a colder
///   cache) looks like queueing: the gradient stays at 0.5 and the limit halves each window
///   (cuts add no headroom here) toward `min`. After 5 windows at or below
///   `1.1 × max(min, 2 × queue_size)` (8.8 with the defaults), with the gradient still at
///   0.5, the window's latency becomes the new long-term latency (as Envoy's gradient controller re-measures its minimum latency when
///   its limit sits at the minimum). A real overload does not trigger it: as the limit
///   falls the queue drains and latency comes back down before the floor is reached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gradient2 {
    pub(crate) bounds: Bounds,
    tolerance: f64,
    smoothing: f64,
    queue_size: f64,
    long_window: u64,
}

impl Default for Gradient2 {
    fn default() -> Self {
        Gradient2 {
            bounds: Bounds::DEFAULT,
            tolerance: 1.5,
            smoothing: 0.2,
            queue_size: 4.0,
            long_window: 600,
        }
    }
}

impl Gradient2 {
    bounds_setters!(20, 1, 1000);

    /// How far above its long-term level latency may rise before the limit shrinks, as a
    /// ratio in `[1, 10]`; default 1.5.
    pub fn tolerance(mut self, ratio: f64) -> Self {
        self.tolerance = ratio;
        self
    }

    /// The weight of each window's target in the limit, in `(0, 1]`; default 0.2.
    pub fn smoothing(mut self, weight: f64) -> Self {
        self.smoothing = weight;
        self
    }

    /// Calls added on top of `limit × gradient`: the headroom that lets the limit grow, in
    /// `[0, 1000]`; default 4.
    pub fn queue_size(mut self, calls: f64) -> Self {
        self.queue_size = calls;
        self
    }

    /// How many windows the long-term latency averages over, from 1 to 100,000; default 600.
    pub fn long_window(mut self, windows: u64) -> Self {
        self.long_window = windows;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.bounds.validate("Gradient2")?;
        check_f64(
            "Gradient2::tolerance",
            self.tolerance,
            1.0..=10.0,
            "in [1, 10]",
        )?;
        check_f64(
            "Gradient2::smoothing",
            self.smoothing,
            f64::MIN_POSITIVE..=1.0,
            "in (0, 1]",
        )?;
        check_f64(
            "Gradient2::queue_size",
            self.queue_size,
            0.0..=1000.0,
            "in [0, 1000]",
        )?;
        if !(1..=100_000).contains(&self.long_window) {
            return Err(crate::error::ConfigError::out_of_range(
                super::LAYER,
                "Gradient2::long_window",
                self.long_window,
                "from 1 to 100,000",
            ));
        }
        Ok(())
    }

    /// The next limit after `window`.
    pub(crate) fn next(&self, estimate: &mut Estimate, window: &Window) {
        let short = window.avg_rtt_ns;
        let long = &mut estimate.baseline_rtt_ns;
        if *long <= 0.0 {
            *long = short;
        } else {
            *long += (short - *long) / self.long_window as f64;
            if *long > 2.0 * short {
                *long = (*long + short) / 2.0;
            }
        }
        let limit = estimate.limit;
        let gradient = if window.drops > 0 {
            0.5
        } else {
            (self.tolerance * *long / short).clamp(0.5, 1.0)
        };
        // The low limit below which a gradient pinned at 0.5 means a stale baseline rather
        // than an overload: `2 × queue_size` (where Netflix's `limit / 2 + queue_size` would
        // settle), or `min` if higher. This crate's cuts add no headroom, so the limit passes
        // it on its way down to `min`.
        let floor = (self.bounds.min as f64).max(2.0 * self.queue_size);
        if window.drops == 0 && gradient <= 0.5 && limit <= floor * 1.1 {
            estimate.counter += 1;
            if estimate.counter >= STALE_AT_FLOOR_WINDOWS {
                *long = short;
                estimate.counter = 0;
            }
        } else {
            estimate.counter = 0;
        }
        if window.drops == 0 && !window.limit_bound(limit) {
            return;
        }
        estimate.limit = if gradient < 1.0 {
            // A cut applies at once and adds no headroom (see "Departures" above).
            limit * gradient
        } else {
            let target = limit + self.queue_size;
            limit * (1.0 - self.smoothing) + target * self.smoothing
        };
    }

    /// The latency past which a sample says calls are queueing: `tolerance × long_rtt`.
    pub(crate) fn alarm_ns(&self, estimate: &Estimate) -> f64 {
        if estimate.baseline_rtt_ns > 0.0 {
            self.tolerance * estimate.baseline_rtt_ns
        } else {
            f64::INFINITY
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn window(avg_rtt_ms: f64, max_in_flight: u64) -> Window {
        Window {
            samples: 100,
            drops: 0,
            slow: 0,
            avg_rtt_ns: avg_rtt_ms * 1e6,
            min_rtt_ns: avg_rtt_ms * 1e6,
            max_in_flight,
            duration_ns: 100_000_000,
        }
    }

    #[test]
    fn grows_at_steady_latency_and_shrinks_when_latency_rises() {
        let gradient = Gradient2::default();
        let mut estimate = Estimate {
            limit: 20.0,
            baseline_rtt_ns: 0.0,
            counter: 0,
        };
        gradient.next(&mut estimate, &window(10.0, 20));
        assert!((estimate.limit - 20.8).abs() < 1e-9, "{estimate:?}");
        // Three times the latency: gradient 0.5.
        let before = estimate.limit;
        gradient.next(&mut estimate, &window(30.0, 20));
        assert!(estimate.limit < before, "{estimate:?}");
    }

    #[test]
    fn does_not_move_when_not_limit_bound() {
        let gradient = Gradient2::default();
        let mut estimate = Estimate {
            limit: 20.0,
            baseline_rtt_ns: 1e7,
            counter: 0,
        };
        gradient.next(&mut estimate, &window(10.0, 5));
        assert_eq!(estimate.limit, 20.0);
    }

    #[test]
    fn a_stale_baseline_is_replaced_after_windows_at_the_floor() {
        let gradient = Gradient2::default();
        let mut estimate = Estimate {
            limit: 8.0,
            baseline_rtt_ns: 1e7,
            counter: 0,
        };
        for _ in 0..5 {
            gradient.next(&mut estimate, &window(40.0, 1));
        }
        assert_eq!(estimate.baseline_rtt_ns, 4e7);
    }
}
