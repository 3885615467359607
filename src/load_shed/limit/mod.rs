//! The concurrency limit: calls in flight, counted with one compare-and-swap per admission so
//! that the limit is never exceeded, against a limit that is either fixed or moved by an
//! adaptive algorithm between sampling windows. No tower, no tokio, no clock: times come in
//! as nanoseconds from the caller.
//!
//! # The adaptive part
//!
//! Each completed, sampled call adds its round-trip time to a window aggregate held in
//! atomics ([`Aggregate`]): a count, a sum, a minimum, and counts of drops and of samples over
//! the algorithm's alarm latency. The highest in-flight count seen is noted at admission. When
//! a completion finds the window over (old enough and with enough samples, or alarmed: at
//! least `min_samples` slow samples and most of the window slow), it tries to take
//! the `updating` flag with one compare-and-swap: the winner swaps the aggregate out, folds it
//! into the algorithm's state ([`Estimate`]) and stores the new limit; everyone else returns at
//! once (nobody waits). Under the flag the winner checks again that the window is still over,
//! so a completion that saw a stale window end cannot apply a second update for the same
//! window.
//!
//! A sample that races with the hand-off lands in one window or the next, never in none
//! (every counter is swapped to zero and added to with read-modify-writes); its count and its
//! time may land on different sides, which skews one window's mean by one sample at most.

mod aimd;
mod fixed;
mod gradient;
mod sla;
mod vegas;

use std::fmt;
use std::time::Duration;

pub use self::aimd::Aimd;
pub use self::fixed::Fixed;
pub use self::gradient::Gradient2;
pub use self::sla::SlaGuard;
pub use self::vegas::Vegas;
use crate::error::ConfigError;
use crate::sync::{AtomicBool, AtomicU64, Ordering, Padded};

pub(crate) const LAYER: &str = "LoadShedLayer";

/// The highest limit any configuration accepts.
pub(crate) const MAX_LIMIT: u64 = 1_000_000;

/// How the concurrency limit is set: fixed, or moved by an adaptive algorithm from the
/// latency and the errors of the calls it admits.
///
/// Built from one of the algorithm configurations ([`Fixed`], [`Aimd`], [`Gradient2`],
/// [`Vegas`], [`SlaGuard`]), each of which converts into it, and passed to
/// [`LoadShedLayerBuilder::limit`](super::LoadShedLayerBuilder::limit):
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::load_shed::{Aimd, Gradient2, Limit, LoadShedLayer, SlaGuard};
///
/// let aimd = LoadShedLayer::builder()
///     .limit(Aimd::default().initial(20).min(1).max(1000))
///     .build()?;
/// assert_eq!(aimd.limit(), 20);
///
/// let gradient = LoadShedLayer::builder().limit(Limit::gradient2(Gradient2::default())).build()?;
/// let guard = LoadShedLayer::builder().limit(SlaGuard::new(Duration::from_millis(50))).build()?;
/// # let _ = (gradient, guard);
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub(crate) kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Fixed(Fixed),
    Adaptive(Algorithm),
}

/// The adaptive algorithms, each a state machine over window aggregates.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Algorithm {
    Aimd(Aimd),
    Gradient2(Gradient2),
    Vegas(Vegas),
    Sla(SlaGuard),
}

impl Limit {
    /// A fixed limit of `max_concurrency` calls in flight (1 to 1,000,000); the same as
    /// [`LoadShedLayerBuilder::max_concurrency`](super::LoadShedLayerBuilder::max_concurrency).
    pub fn fixed(max_concurrency: u64) -> Limit {
        Fixed::new(max_concurrency).into()
    }

    /// Additive increase, multiplicative decrease on drops: see [`Aimd`].
    pub fn aimd(aimd: Aimd) -> Limit {
        aimd.into()
    }

    /// The ratio of long-term to recent latency: see [`Gradient2`].
    pub fn gradient2(gradient: Gradient2) -> Limit {
        gradient.into()
    }

    /// The queue estimated from no-load and recent latency: see [`Vegas`].
    pub fn vegas(vegas: Vegas) -> Limit {
        vegas.into()
    }

    /// Sheds early to keep admitted calls within a latency objective: see [`SlaGuard`].
    pub fn sla(guard: SlaGuard) -> Limit {
        guard.into()
    }

    /// Whether the limit moves (every kind but [`Fixed`]).
    pub fn is_adaptive(&self) -> bool {
        matches!(self.kind, Kind::Adaptive(_))
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match &self.kind {
            Kind::Fixed(fixed) => fixed.validate(),
            Kind::Adaptive(Algorithm::Aimd(a)) => a.validate(),
            Kind::Adaptive(Algorithm::Gradient2(g)) => g.validate(),
            Kind::Adaptive(Algorithm::Vegas(v)) => v.validate(),
            Kind::Adaptive(Algorithm::Sla(s)) => s.validate(),
        }
    }
}

impl From<Fixed> for Limit {
    fn from(fixed: Fixed) -> Limit {
        Limit {
            kind: Kind::Fixed(fixed),
        }
    }
}

macro_rules! adaptive_into_limit {
    ($($ty:ident),*) => {$(
        impl From<$ty> for Limit {
            fn from(algorithm: $ty) -> Limit {
                Limit { kind: Kind::Adaptive(Algorithm::$ty(algorithm)) }
            }
        }
    )*};
}
adaptive_into_limit!(Aimd, Gradient2, Vegas);

impl From<SlaGuard> for Limit {
    fn from(guard: SlaGuard) -> Limit {
        Limit {
            kind: Kind::Adaptive(Algorithm::Sla(guard)),
        }
    }
}

/// Where an adaptive limit starts and the range it moves in; shared by every algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub(crate) initial: u64,
    pub(crate) min: u64,
    pub(crate) max: u64,
}

impl Bounds {
    pub(crate) const DEFAULT: Bounds = Bounds {
        initial: 20,
        min: 1,
        max: 1000,
    };

    pub(crate) fn validate(&self, algorithm: &'static str) -> Result<(), ConfigError> {
        for (setting, value) in [("min", self.min), ("max", self.max)] {
            if !(1..=MAX_LIMIT).contains(&value) {
                return Err(ConfigError::out_of_range(
                    LAYER,
                    setting_name(algorithm, setting),
                    value,
                    "from 1 to 1,000,000",
                ));
            }
        }
        if self.min > self.max {
            return Err(ConfigError::MinAboveMax {
                layer: LAYER,
                min_setting: setting_name(algorithm, "min"),
                max_setting: setting_name(algorithm, "max"),
            });
        }
        if !(self.min..=self.max).contains(&self.initial) {
            return Err(ConfigError::out_of_range(
                LAYER,
                setting_name(algorithm, "initial"),
                self.initial,
                "from `min` to `max`",
            ));
        }
        Ok(())
    }

    /// `limit` clamped to `[min, max]`; NaN (which no algorithm should produce) gives `min`.
    pub(crate) fn clamp(&self, limit: f64) -> f64 {
        if limit.is_nan() {
            return self.min as f64;
        }
        limit.clamp(self.min as f64, self.max as f64)
    }
}

/// `"Aimd::min"` and so on: the name a [`ConfigError`] gives a setting.
fn setting_name(algorithm: &'static str, setting: &'static str) -> &'static str {
    match (algorithm, setting) {
        ("Aimd", "initial") => "Aimd::initial",
        ("Aimd", "min") => "Aimd::min",
        ("Aimd", "max") => "Aimd::max",
        ("Gradient2", "initial") => "Gradient2::initial",
        ("Gradient2", "min") => "Gradient2::min",
        ("Gradient2", "max") => "Gradient2::max",
        ("Vegas", "initial") => "Vegas::initial",
        ("Vegas", "min") => "Vegas::min",
        ("Vegas", "max") => "Vegas::max",
        ("SlaGuard", "initial") => "SlaGuard::initial",
        ("SlaGuard", "min") => "SlaGuard::min",
        ("SlaGuard", "max") => "SlaGuard::max",
        _ => setting,
    }
}

/// A finite number within `range`, or a [`ConfigError::OutOfRange`] for `setting`.
pub(crate) fn check_f64(
    setting: &'static str,
    value: f64,
    range: std::ops::RangeInclusive<f64>,
    expected: &'static str,
) -> Result<(), ConfigError> {
    if value.is_finite() && range.contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::out_of_range(LAYER, setting, value, expected))
    }
}

/// Generates the `initial`, `min` and `max` setters of an algorithm with a `bounds` field.
macro_rules! bounds_setters {
    ($default_initial:literal, $default_min:literal, $default_max:literal) => {
        /// The limit before the first window has been seen; default
        #[doc = concat!(stringify!($default_initial), ".")]
        /// Must lie in `[min, max]`.
        pub fn initial(mut self, limit: u64) -> Self {
            self.bounds.initial = limit;
            self
        }

        /// The lowest the limit goes, at least 1; default
        #[doc = concat!(stringify!($default_min), ".")]
        pub fn min(mut self, limit: u64) -> Self {
            self.bounds.min = limit;
            self
        }

        /// The highest the limit goes, at most 1,000,000; default
        #[doc = concat!(stringify!($default_max), ".")]
        pub fn max(mut self, limit: u64) -> Self {
            self.bounds.max = limit;
            self
        }
    };
}
pub(crate) use bounds_setters;

/// What one sampling window saw: the input of every algorithm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Window {
    /// Completed calls sampled (cancelled calls are not).
    pub(crate) samples: u64,
    /// Samples whose error says the work was too late or refused downstream (timed out,
    /// deadline exceeded, overloaded).
    pub(crate) drops: u64,
    /// Samples slower than the algorithm's alarm latency (if it has one): AIMD's
    /// `drop_latency`, the SLA guard's objective, Gradient2's tolerated latency, the latency
    /// at which Vegas estimates `beta` queued calls.
    pub(crate) slow: u64,
    pub(crate) avg_rtt_ns: f64,
    pub(crate) min_rtt_ns: f64,
    /// The most calls in flight at once during the window.
    pub(crate) max_in_flight: u64,
    /// How long the window lasted.
    pub(crate) duration_ns: u64,
}

impl Window {
    /// Whether calls in flight reached half the limit: below that, the limit was not what
    /// held throughput back, so the window says nothing about whether a higher one would be
    /// safe (the app-limited guard every algorithm applies before growing).
    pub(crate) fn limit_bound(&self, limit: f64) -> bool {
        (self.max_in_flight as f64) * 2.0 >= limit
    }
}

/// What an algorithm carries from one window to the next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Estimate {
    /// The limit, with the fraction the published (whole) limit drops.
    pub(crate) limit: f64,
    /// The latency the algorithm compares with (Gradient2: long-term average; Vegas: no-load
    /// latency), 0 before the first window; the SLA guard keeps here instead the limit at
    /// which the objective was last breached.
    pub(crate) baseline_rtt_ns: f64,
    /// Counted for the algorithm's own purpose: Gradient2, consecutive windows at its low
    /// limit; Vegas, windows at the minimum in the low 32 bits and milliseconds since its last
    /// baseline probe in the high 32; the SLA guard, clean windows since the last breach.
    pub(crate) counter: u64,
}

impl Algorithm {
    fn bounds(&self) -> Bounds {
        match self {
            Algorithm::Aimd(a) => a.bounds,
            Algorithm::Gradient2(g) => g.bounds,
            Algorithm::Vegas(v) => v.bounds,
            Algorithm::Sla(s) => s.bounds,
        }
    }

    /// The alarm latency after `estimate`: samples slower than this count as `slow`, and a
    /// window whose samples are mostly slow closes early. `u64::MAX` for none.
    fn alarm_ns(&self, estimate: &Estimate) -> u64 {
        let alarm = match self {
            Algorithm::Aimd(a) => a.drop_latency.map_or(f64::INFINITY, |d| nanos(d) as f64),
            Algorithm::Sla(s) => nanos(s.objective) as f64,
            Algorithm::Gradient2(g) => g.alarm_ns(estimate),
            Algorithm::Vegas(v) => v.alarm_ns(estimate),
        };
        if alarm.is_finite() && alarm > 0.0 {
            alarm as u64
        } else {
            u64::MAX
        }
    }

    pub(crate) fn next(&self, estimate: &mut Estimate, window: &Window) {
        match self {
            Algorithm::Aimd(a) => a.next(estimate, window),
            Algorithm::Gradient2(g) => g.next(estimate, window),
            Algorithm::Vegas(v) => v.next(estimate, window),
            Algorithm::Sla(s) => s.next(estimate, window),
        }
    }
}

/// Whole nanoseconds of `duration`, saturating.
pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// When an adaptive limit folds its samples: after `window`, once at least `min_samples`
/// calls completed in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sampling {
    pub(crate) window: Duration,
    pub(crate) min_samples: u64,
}

impl Sampling {
    pub(crate) const DEFAULT: Sampling = Sampling {
        window: Duration::from_millis(100),
        min_samples: 10,
    };
}

/// Calls in flight against a limit, fixed or adaptive.
pub(crate) struct Limiter {
    /// On a cache line of their own, away from the `Arc`'s reference counts: an admission
    /// reads the limit and updates the count, so both are on the one line it touches.
    counts: Padded<Counts>,
    adaptive: Option<Adaptive>,
}

#[derive(Debug)]
struct Counts {
    in_flight: AtomicU64,
    /// The limit admissions read. Written only by the one thread folding a window.
    limit: AtomicU64,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("adaptive", &self.adaptive.as_ref().map(|a| &a.algorithm))
            .finish()
    }
}

/// The sampling state of an adaptive limit.
struct Adaptive {
    algorithm: Algorithm,
    bounds: Bounds,
    window_ns: u64,
    min_samples: u64,
    /// Written by every completion: a line of its own.
    aggregate: Padded<Aggregate>,
    /// Read by every completion, written once a window.
    window_end_ns: AtomicU64,
    /// The algorithm's alarm latency: read by every completion, written once a window.
    alarm_ns: AtomicU64,
    /// Taken by the one thread folding a window. Everything below is read and written only
    /// by its holder: the Acquire that takes it and the Release that gives it back order
    /// one holder's writes before the next holder's reads, so Relaxed suffices inside.
    updating: AtomicBool,
    window_start_ns: AtomicU64,
    limit_bits: AtomicU64,
    baseline_bits: AtomicU64,
    counter: AtomicU64,
    /// Windows folded so far, the samples they held, and the fewest one held: what the unit
    /// tests and loom models check, so only in test builds.
    #[cfg(test)]
    windows: AtomicU64,
    #[cfg(test)]
    samples_folded: AtomicU64,
    #[cfg(test)]
    smallest_fold: AtomicU64,
}

impl Adaptive {
    /// Whether a window should close early: it has enough samples, most of them slower than
    /// the alarm latency. A sudden overload is then answered after `min_samples` slow calls
    /// rather than at the end of the window.
    #[inline]
    fn alarmed(&self, slow: u64, samples: u64) -> bool {
        slow >= self.min_samples && slow * 2 >= samples
    }
}

/// The running totals of one window. Every field is only ever swapped out or changed by a
/// read-modify-write, so no sample is lost; Relaxed, as each is an independent counter.
#[derive(Debug)]
struct Aggregate {
    samples: AtomicU64,
    rtt_sum_ns: AtomicU64,
    min_rtt_ns: AtomicU64,
    drops: AtomicU64,
    slow: AtomicU64,
    max_in_flight: AtomicU64,
}

/// One completed call, as the limiter sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) rtt_ns: u64,
    /// When it completed, in nanoseconds since the limiter's origin.
    pub(crate) end_ns: u64,
    pub(crate) dropped: bool,
}

impl Limiter {
    /// A fixed limit, `limit >= 1` (validated by the builder).
    pub(crate) fn fixed(limit: u64) -> Limiter {
        Limiter {
            counts: Padded(Counts {
                in_flight: AtomicU64::new(0),
                limit: AtomicU64::new(limit),
            }),
            adaptive: None,
        }
    }

    /// An adaptive limit starting at its initial value; the first window starts at 0 ns.
    pub(crate) fn adaptive(algorithm: Algorithm, sampling: Sampling) -> Limiter {
        let bounds = algorithm.bounds();
        let window_ns = nanos(sampling.window).max(1);
        Limiter {
            counts: Padded(Counts {
                in_flight: AtomicU64::new(0),
                limit: AtomicU64::new(bounds.initial),
            }),
            adaptive: Some(Adaptive {
                alarm_ns: AtomicU64::new(algorithm.alarm_ns(&Estimate {
                    limit: bounds.initial as f64,
                    baseline_rtt_ns: 0.0,
                    counter: 0,
                })),
                algorithm,
                bounds,
                window_ns,
                min_samples: sampling.min_samples.max(1),
                aggregate: Padded(Aggregate {
                    samples: AtomicU64::new(0),
                    rtt_sum_ns: AtomicU64::new(0),
                    min_rtt_ns: AtomicU64::new(u64::MAX),
                    drops: AtomicU64::new(0),
                    slow: AtomicU64::new(0),
                    max_in_flight: AtomicU64::new(0),
                }),
                window_end_ns: AtomicU64::new(window_ns),
                updating: AtomicBool::new(false),
                window_start_ns: AtomicU64::new(0),
                limit_bits: AtomicU64::new((bounds.initial as f64).to_bits()),
                baseline_bits: AtomicU64::new(0_f64.to_bits()),
                counter: AtomicU64::new(0),
                #[cfg(test)]
                windows: AtomicU64::new(0),
                #[cfg(test)]
                samples_folded: AtomicU64::new(0),
                #[cfg(test)]
                smallest_fold: AtomicU64::new(u64::MAX),
            }),
        }
    }

    /// Whether calls must be timed and recorded.
    #[inline]
    pub(crate) fn is_adaptive(&self) -> bool {
        self.adaptive.is_some()
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> u64 {
        // Relaxed: a limit is a value to compare with, not a publication of other data.
        self.counts.0.limit.load(Ordering::Relaxed)
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.counts.0.in_flight.load(Ordering::Relaxed)
    }

    /// Takes a slot if one is free under the current limit and returns the calls now in
    /// flight; otherwise returns the limit it found full. A compare-and-swap from the count the decision was made on, so two callers
    /// can never both take the last slot, and no admission exceeds the limit it read. A
    /// rejected caller writes nothing (an increment-then-undo would make others see a full
    /// limit that is not). When the limit is lowered below the calls in flight, admissions
    /// stop until enough of them finish.
    #[inline]
    pub(crate) fn try_acquire(&self) -> Result<u64, u64> {
        let counts = &self.counts.0;
        let limit = counts.limit.load(Ordering::Relaxed);
        let mut in_flight = counts.in_flight.load(Ordering::Relaxed);
        loop {
            if in_flight >= limit {
                return Err(limit);
            }
            // Acquire on success, pairing with the Release in `release`: whatever the slot's
            // previous holder did happens before this holder starts, as with a semaphore.
            // (Free on x86, where every RMW is a full barrier.)
            match counts.in_flight.compare_exchange_weak(
                in_flight,
                in_flight + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(in_flight + 1),
                Err(actual) => in_flight = actual,
            }
        }
    }

    /// For an adaptive limit: notes that an admission brought the calls in flight to
    /// `in_flight`, for the window's maximum.
    #[inline]
    pub(crate) fn admitted(&self, in_flight: u64) {
        if let Some(adaptive) = &self.adaptive {
            // A load first: the maximum rarely changes, so most calls write nothing here.
            let max = &adaptive.aggregate.0.max_in_flight;
            if in_flight > max.load(Ordering::Relaxed) {
                max.fetch_max(in_flight, Ordering::Relaxed);
            }
        }
    }

    /// Gives a slot back. Called exactly once per successful [`try_acquire`], by the permit's
    /// drop.
    ///
    /// [`try_acquire`]: Limiter::try_acquire
    #[inline]
    pub(crate) fn release(&self) {
        self.counts.0.in_flight.fetch_sub(1, Ordering::Release);
    }

    /// Adds a completed call to the window, and folds the window if it is over. Does nothing
    /// for a fixed limit. When this call folds a window that moves the published limit,
    /// `moved(previous, new)` is called before the next fold can start, so reports of the
    /// limit (a gauge, events) arrive in the order the limit moved.
    #[inline]
    pub(crate) fn record(&self, sample: Sample, moved: impl FnOnce(u64, u64)) {
        let Some(adaptive) = &self.adaptive else {
            return;
        };
        let aggregate = &adaptive.aggregate.0;
        let rtt = sample.rtt_ns.max(1);
        let samples = aggregate.samples.fetch_add(1, Ordering::Relaxed) + 1;
        aggregate.rtt_sum_ns.fetch_add(rtt, Ordering::Relaxed);
        if rtt < aggregate.min_rtt_ns.load(Ordering::Relaxed) {
            aggregate.min_rtt_ns.fetch_min(rtt, Ordering::Relaxed);
        }
        if sample.dropped {
            aggregate.drops.fetch_add(1, Ordering::Relaxed);
        }
        let mut alarm = false;
        // Relaxed, here and for the window end: a stale value only decides whether this
        // thread goes on to the check under the flag.
        if rtt > adaptive.alarm_ns.load(Ordering::Relaxed) {
            let slow = aggregate.slow.fetch_add(1, Ordering::Relaxed) + 1;
            alarm = adaptive.alarmed(slow, samples);
        }
        if alarm
            || (sample.end_ns >= adaptive.window_end_ns.load(Ordering::Relaxed)
                && samples >= adaptive.min_samples)
        {
            self.fold_window(adaptive, sample.end_ns, moved);
        }
    }

    /// Folds the window into the algorithm and publishes the new limit, if this thread wins
    /// the `updating` flag and the window is still over once it holds it.
    #[cold]
    fn fold_window(&self, adaptive: &Adaptive, now_ns: u64, moved: impl FnOnce(u64, u64)) {
        // Acquire: see the state the previous holder left (its Release below).
        if adaptive
            .updating
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let aggregate = &adaptive.aggregate.0;
        // Checked again under the flag: the previous holder may have just folded this window
        // (moved its end, emptied its counts), in which case there is nothing to do.
        let samples = aggregate.samples.load(Ordering::Relaxed);
        let over = now_ns >= adaptive.window_end_ns.load(Ordering::Relaxed)
            && samples >= adaptive.min_samples;
        if !over && !adaptive.alarmed(aggregate.slow.load(Ordering::Relaxed), samples) {
            adaptive.updating.store(false, Ordering::Release);
            return;
        }
        let start = adaptive.window_start_ns.load(Ordering::Relaxed);
        let samples = aggregate.samples.swap(0, Ordering::Relaxed);
        let rtt_sum = aggregate.rtt_sum_ns.swap(0, Ordering::Relaxed);
        let min_rtt = aggregate.min_rtt_ns.swap(u64::MAX, Ordering::Relaxed);
        let drops = aggregate.drops.swap(0, Ordering::Relaxed);
        let slow = aggregate.slow.swap(0, Ordering::Relaxed);
        // The calls still in flight belong to the next window too.
        let max_in_flight = aggregate
            .max_in_flight
            .swap(self.in_flight(), Ordering::Relaxed);
        let window = Window {
            samples,
            drops,
            slow,
            avg_rtt_ns: rtt_sum as f64 / samples.max(1) as f64,
            min_rtt_ns: if min_rtt == u64::MAX {
                rtt_sum as f64 / samples.max(1) as f64
            } else {
                min_rtt as f64
            },
            max_in_flight,
            duration_ns: now_ns.saturating_sub(start).max(1),
        };
        let mut estimate = Estimate {
            limit: f64::from_bits(adaptive.limit_bits.load(Ordering::Relaxed)),
            baseline_rtt_ns: f64::from_bits(adaptive.baseline_bits.load(Ordering::Relaxed)),
            counter: adaptive.counter.load(Ordering::Relaxed),
        };
        adaptive.algorithm.next(&mut estimate, &window);
        estimate.limit = adaptive.bounds.clamp(estimate.limit);
        adaptive
            .limit_bits
            .store(estimate.limit.to_bits(), Ordering::Relaxed);
        adaptive
            .baseline_bits
            .store(estimate.baseline_rtt_ns.to_bits(), Ordering::Relaxed);
        adaptive.counter.store(estimate.counter, Ordering::Relaxed);
        adaptive
            .alarm_ns
            .store(adaptive.algorithm.alarm_ns(&estimate), Ordering::Relaxed);
        #[cfg(test)]
        {
            adaptive.windows.fetch_add(1, Ordering::Relaxed);
            adaptive
                .samples_folded
                .fetch_add(samples, Ordering::Relaxed);
            adaptive.smallest_fold.fetch_min(samples, Ordering::Relaxed);
        }
        // The published limit is whole: the fraction stays in the estimate, so small steps
        // add up over windows. Only the flag's holder writes it, so the swap's old value is
        // the limit this fold replaced.
        let limit = estimate.limit.floor() as u64;
        let previous = self.counts.0.limit.swap(limit, Ordering::Relaxed);
        adaptive.window_start_ns.store(now_ns, Ordering::Relaxed);
        adaptive
            .window_end_ns
            .store(now_ns.saturating_add(adaptive.window_ns), Ordering::Relaxed);
        if previous != limit {
            // Still holding the flag: no later fold can report before this one.
            moved(previous, limit);
        }
        // Release: the next holder sees everything written above.
        adaptive.updating.store(false, Ordering::Release);
    }

    /// Windows folded so far; 0 for a fixed limit.
    #[cfg(test)]
    pub(crate) fn windows(&self) -> u64 {
        self.adaptive
            .as_ref()
            .map_or(0, |a| a.windows.load(Ordering::Relaxed))
    }
}

/// A 100 ms window of `samples` calls of 10 ms each, for the algorithms' unit tests.
#[cfg(all(test, not(loom)))]
pub(crate) fn window_of_10ms_calls(
    samples: u64,
    drops: u64,
    slow: u64,
    max_in_flight: u64,
) -> Window {
    Window {
        samples,
        drops,
        slow,
        avg_rtt_ns: 1e7,
        min_rtt_ns: 1e7,
        max_in_flight,
        duration_ns: 100_000_000,
    }
}

/// The limit an algorithm's `next` makes of `limit` after `window`, from a fresh estimate.
#[cfg(all(test, not(loom)))]
pub(crate) fn next_limit(
    limit: f64,
    window: &Window,
    next: impl FnOnce(&mut Estimate, &Window),
) -> f64 {
    let mut estimate = Estimate {
        limit,
        baseline_rtt_ns: 0.0,
        counter: 0,
    };
    next(&mut estimate, window);
    estimate.limit
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_again_after_a_release() {
        let limiter = Limiter::fixed(2);
        assert!(limiter.try_acquire().is_ok());
        assert!(limiter.try_acquire().is_ok());
        assert_eq!(limiter.try_acquire(), Err(2));
        assert_eq!(limiter.in_flight(), 2);
        limiter.release();
        assert!(limiter.try_acquire().is_ok());
        assert!(limiter.try_acquire().is_err());
    }

    fn sample(rtt_ms: u64, end_ms: u64, dropped: bool) -> Sample {
        Sample {
            rtt_ns: rtt_ms * 1_000_000,
            end_ns: end_ms * 1_000_000,
            dropped,
        }
    }

    #[test]
    fn a_window_is_folded_once_when_it_is_over_and_has_enough_samples() {
        let limiter = Limiter::adaptive(
            Algorithm::Aimd(Aimd::default().initial(10)),
            Sampling {
                window: Duration::from_millis(100),
                min_samples: 3,
            },
        );
        // Keep the limit bound, so that AIMD grows it.
        for _ in 0..5 {
            let in_flight = limiter.try_acquire().unwrap();
            limiter.admitted(in_flight);
        }
        limiter.record(sample(10, 50, false), |_, _| {});
        limiter.record(sample(10, 150, false), |_, _| {}); // over, but only 2 samples
        assert_eq!(limiter.windows(), 0);
        limiter.record(sample(10, 160, false), |_, _| {});
        assert_eq!((limiter.windows(), limiter.limit()), (1, 11));
        limiter.record(sample(10, 170, false), |_, _| {}); // the next window has just begun
        assert_eq!(limiter.windows(), 1);
        // A drop in the next window cuts the limit.
        limiter.record(sample(10, 250, true), |_, _| {});
        limiter.record(sample(10, 270, false), |_, _| {});
        assert_eq!((limiter.windows(), limiter.limit()), (2, 9));
    }

    #[test]
    fn a_lowered_limit_stops_admissions_until_calls_finish() {
        let limiter = Limiter::adaptive(
            Algorithm::Aimd(Aimd::default().initial(4).backoff_ratio(0.5)),
            Sampling {
                window: Duration::from_millis(1),
                min_samples: 1,
            },
        );
        for _ in 0..4 {
            limiter.try_acquire().unwrap();
        }
        limiter.release();
        limiter.record(sample(1, 5, true), |_, _| {}); // 4 → 2 with 3 in flight
        assert_eq!(limiter.limit(), 2);
        assert_eq!(limiter.try_acquire(), Err(2));
        limiter.release();
        limiter.release();
        assert!(limiter.try_acquire().is_ok());
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// Runs `model` under loom with at most `preemptions` preemptions (`None`: every
    /// interleaving). `LOOM_MAX_PREEMPTIONS` overrides it for a deeper, slower run.
    fn check(preemptions: Option<usize>, model: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = preemptions;
        }
        builder.check(model);
    }

    /// **The limit is never exceeded.** Limit 1: two threads acquire at once, each releasing
    /// what it got: at no point are two slots held, and every acquired slot comes back.
    #[test]
    fn the_limit_is_never_exceeded_and_every_slot_comes_back() {
        loom::model(|| {
            let limiter = Arc::new(Limiter::fixed(1));
            let held = Arc::new(AtomicU64::new(0));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let limiter = Arc::clone(&limiter);
                    let held = Arc::clone(&held);
                    thread::spawn(move || {
                        if limiter.try_acquire().is_ok() {
                            let before = held.fetch_add(1, Ordering::SeqCst);
                            assert_eq!(before, 0, "two slots held under a limit of one");
                            held.fetch_sub(1, Ordering::SeqCst);
                            limiter.release();
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
            assert_eq!(limiter.in_flight(), 0);
            assert!(limiter.try_acquire().is_ok(), "a slot is free again");
        });
    }

    /// An AIMD limiter folding every sample (1 ns windows, 1 sample), starting at `initial`,
    /// halving on a drop.
    fn eager(initial: u64) -> Limiter {
        Limiter::adaptive(
            Algorithm::Aimd(Aimd::default().initial(initial).backoff_ratio(0.5)),
            Sampling {
                window: Duration::from_nanos(1),
                min_samples: 1,
            },
        )
    }

    /// **Lowering the limit under calls in flight.** Limit 2 with one call in flight: one
    /// thread completes it with a drop (the limit falls to 1), while another acquires. The
    /// admission never exceeds the limit it read: if it got a slot, two were in flight under
    /// a limit of 2, or one under 1; once the cut is published and both finish, exactly one
    /// slot can be taken.
    #[test]
    fn the_limit_can_be_lowered_while_calls_are_in_flight() {
        loom::model(|| {
            let limiter = Arc::new(eager(2));
            limiter.try_acquire().unwrap();
            let completing = {
                let limiter = Arc::clone(&limiter);
                thread::spawn(move || {
                    limiter.record(
                        Sample {
                            rtt_ns: 5,
                            end_ns: 10,
                            dropped: true,
                        },
                        |_, _| {},
                    );
                    limiter.release();
                })
            };
            let admitting = {
                let limiter = Arc::clone(&limiter);
                thread::spawn(move || match limiter.try_acquire() {
                    Ok(in_flight) => {
                        assert!(in_flight <= 2);
                        assert!(limiter.in_flight() <= 2);
                        limiter.release();
                    }
                    Err(limit) => assert!(limit >= 1),
                })
            };
            completing.join().unwrap();
            admitting.join().unwrap();
            assert_eq!(limiter.limit(), 1);
            assert_eq!(limiter.in_flight(), 0);
            assert!(limiter.try_acquire().is_ok());
            assert_eq!(limiter.try_acquire(), Err(1));
        });
    }

    /// **Window hand-off.** Two threads each record a sample that ends a window (at 10 ns
    /// and 20 ns, windows of 1 ns): one or both fold, depending on the interleaving, but
    /// every sample is either folded or still waiting in the open window (none is lost),
    /// no window is folded twice, and the limit is what that many folds give (AIMD from 3
    /// with 2 calls in flight: +1 per window without drops).
    ///
    /// Up to 3 preemptions: a fold touches a dozen atomics, and the exhaustive run takes
    /// about 45 s in release mode on the 2-core CI machine, against under 2 s for this
    /// bound (loom's own guidance is that 2 or 3 catch most bugs).
    #[test]
    fn window_hand_off_never_loses_or_double_applies_an_update() {
        check(Some(4), || {
            let limiter = Arc::new(eager(3));
            for _ in 0..2 {
                let in_flight = limiter.try_acquire().unwrap();
                limiter.admitted(in_flight);
            }
            let threads: Vec<_> = [10, 20]
                .into_iter()
                .map(|end_ns| {
                    let limiter = Arc::clone(&limiter);
                    thread::spawn(move || {
                        limiter.record(
                            Sample {
                                rtt_ns: 5,
                                end_ns,
                                dropped: false,
                            },
                            |_, _| {},
                        );
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
            let adaptive = limiter.adaptive.as_ref().unwrap();
            let windows = limiter.windows();
            let folded = adaptive.samples_folded.load(Ordering::SeqCst);
            let waiting = adaptive.aggregate.0.samples.load(Ordering::SeqCst);
            assert_eq!(folded + waiting, 2, "a sample was lost or counted twice");
            assert!((1..=2).contains(&windows), "{windows} folds");
            let smallest = adaptive.smallest_fold.load(Ordering::SeqCst);
            assert!(
                smallest >= 1,
                "a window was folded twice (the second time empty)"
            );
            assert_eq!(limiter.limit(), 3 + windows);
        });
    }
}
