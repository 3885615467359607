//! Trip models: when the outcomes of the closed state say the breaker should open.
//!
//! A success in the closed state is the hot path. It writes only its own striped counter (one
//! cache line per stripe; service clones are spread over the stripes), so threads that share a
//! breaker do not fight over a cache line. All evaluation happens when a failure arrives: it
//! sums the stripes to learn how many calls there have been.
//!
//! - [`Model::Consecutive`]: trips after `n` failures with no success between them. A success
//!   only sets a flag, and only if it is not already set, so in steady state it is a read.
//! - [`Model::Rate`]: trips when at least `rate` of the last `n` calls failed (and at least
//!   `min_calls` calls have been made in this closed cycle). It keeps the call index of each
//!   of the last `ceil(rate * n)` failures in a ring. The window slides exactly: the check on
//!   each failure is "was the `ceil(rate * w)`-th most recent failure among the last `w`
//!   calls?", with `w = min(n, calls in this cycle)`, one load. Under concurrency, calls that
//!   complete at the same moment are ordered as they reach the counters.
//!
//! Failures carry the generation of the closed cycle they were admitted in. A failure from an
//! earlier cycle neither counts nor resets anything.

use crate::sync::{AtomicBool, AtomicU64, Ordering, Padded};

use super::state::{GENERATION_MASK, is_older};

/// How ring entries and cycle markers pack a generation with a call index.
const INDEX_BITS: u32 = 40;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

fn pack(generation: u32, index: u64) -> u64 {
    (u64::from(generation & GENERATION_MASK) << INDEX_BITS) | (index & INDEX_MASK)
}

fn unpack(packed: u64) -> (u32, u64) {
    ((packed >> INDEX_BITS) as u32, packed & INDEX_MASK)
}

/// `later - earlier` in the 40-bit index space. Indices are kept modulo 2^40 (about 10^12
/// calls); distances are only ever taken between indices of the same closed cycle that are
/// at most `n` calls apart, so the wrap is harmless.
fn distance(earlier: u64, later: u64) -> u64 {
    later.wrapping_sub(earlier) & INDEX_MASK
}

/// The trip model chosen at build time, with its settings validated by the builder.
#[derive(Debug)]
pub(crate) enum Model {
    Consecutive(Consecutive),
    Rate(Rate),
}

/// Trips after `threshold` failures in a row.
#[derive(Debug)]
pub(crate) struct Consecutive {
    threshold: u32,
    /// Set by a success, cleared by the next failure, which then starts a new run.
    success_seen: AtomicBool,
    /// The current run of failures: the generation it belongs to and its length.
    run: AtomicU64,
}

/// Trips when at least `rate` of the last `calls` calls failed.
#[derive(Debug)]
pub(crate) struct Rate {
    calls: u64,
    rate: f64,
    min_calls: u64,
    /// Call indices of the last `ceil(rate * calls)` failures, each with its generation.
    ring: Box<[AtomicU64]>,
    /// How many failures have been written to the ring: the next one goes to
    /// `ring_writes % ring.len()`. Separate from the failure total, which also counts stale
    /// failures that are not written, so that the ring has no holes.
    ring_writes: AtomicU64,
    /// The generation of the current closed cycle and the call index it started after.
    cycle: AtomicU64,
}

/// Outcome counters and the trip model of one breaker.
#[derive(Debug)]
pub(crate) struct Window {
    /// Successes, one counter per stripe. Every service clone picks a stripe when created.
    successes: Box<[Padded<AtomicU64>]>,
    /// Failures and ignored outcomes are rarer; one shared counter each.
    failures: AtomicU64,
    model: Model,
}

impl Model {
    pub(crate) fn consecutive(threshold: u32) -> Model {
        Model::Consecutive(Consecutive {
            threshold,
            success_seen: AtomicBool::new(false),
            run: AtomicU64::new(pack(0, 0)),
        })
    }

    /// `calls >= 1`, `rate` in (0, 1], `min_calls >= 1`: validated by the builder.
    pub(crate) fn rate(calls: u64, rate: f64, min_calls: u64) -> Model {
        let remembered = failures_needed(rate, calls);
        Model::Rate(Rate {
            calls,
            rate,
            min_calls,
            ring: (0..remembered)
                .map(|_| AtomicU64::new(pack(0, 0)))
                .collect(),
            ring_writes: AtomicU64::new(0),
            // Generation 0 starts after call 0. A ring entry of index 0 is never in a window,
            // since real failures have indices from 1.
            cycle: AtomicU64::new(pack(0, 0)),
        })
    }
}

/// How many failures among `calls` calls reach `rate`: `ceil(rate * calls)`, at least 1.
fn failures_needed(rate: f64, calls: u64) -> u64 {
    // A tiny tolerance so that, say, 0.3 * 10 (2.9999999999999996) needs 3, not 4.
    ((rate * calls as f64) - 1e-9).ceil().max(1.0) as u64
}

impl Window {
    pub(crate) fn new(model: Model, stripes: usize) -> Window {
        Window {
            successes: (0..stripes.max(1))
                .map(|_| Padded(AtomicU64::new(0)))
                .collect(),
            failures: AtomicU64::new(0),
            model,
        }
    }

    pub(crate) fn stripes(&self) -> usize {
        self.successes.len()
    }

    /// A call admitted while closed succeeded. The hot path: one increment of the caller's
    /// own stripe, plus, for the consecutive model, a read of a flag that is almost always
    /// already set.
    #[inline]
    pub(crate) fn record_success(&self, stripe: usize) {
        // Relaxed: a count, read only to evaluate failures, which tolerate a call in flight.
        self.successes[stripe % self.successes.len()]
            .0
            .fetch_add(1, Ordering::Relaxed);
        if let Model::Consecutive(model) = &self.model
            && !model.success_seen.load(Ordering::Relaxed)
        {
            model.success_seen.store(true, Ordering::Relaxed);
        }
    }

    /// A call admitted while closed in cycle `generation` failed. Returns whether the model
    /// says to trip.
    pub(crate) fn record_failure(&self, generation: u32) -> bool {
        let failures_before = self.failures.fetch_add(1, Ordering::Relaxed);
        match &self.model {
            Model::Consecutive(model) => model.on_failure(generation),
            Model::Rate(model) => {
                let index = self.total_successes() + failures_before + 1;
                model.on_failure(generation, index)
            }
        }
    }

    /// The closed cycle `generation` starts now (the breaker just closed). Calls before this
    /// point no longer count.
    pub(crate) fn start_cycle(&self, generation: u32) {
        match &self.model {
            Model::Consecutive(model) => model.start_cycle(generation),
            Model::Rate(model) => model.start_cycle(generation, self.total_calls()),
        }
    }

    pub(crate) fn total_successes(&self) -> u64 {
        self.successes
            .iter()
            .map(|stripe| stripe.0.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn total_failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn total_calls(&self) -> u64 {
        self.total_successes() + self.total_failures()
    }

    /// For the metrics snapshot: calls and failures in the current window of cycle
    /// `generation` (for the consecutive model, the current run of failures).
    pub(crate) fn in_window(&self, generation: u32) -> (u64, u64) {
        match &self.model {
            Model::Consecutive(model) => {
                let (run_generation, length) = unpack(model.run.load(Ordering::Acquire));
                let length = if run_generation == generation {
                    length
                } else {
                    0
                };
                (length, length)
            }
            Model::Rate(model) => model.in_window(generation, self.total_calls()),
        }
    }
}

impl Consecutive {
    fn on_failure(&self, generation: u32) -> bool {
        // A success since the previous failure ends that run.
        let broken = self.success_seen.swap(false, Ordering::Relaxed);
        let mut current = self.run.load(Ordering::Acquire);
        loop {
            let (run_generation, length) = unpack(current);
            if is_older(generation, run_generation) {
                return false; // from an earlier closed cycle
            }
            let length = if broken || run_generation != generation {
                1
            } else {
                length + 1
            };
            match self.run.compare_exchange_weak(
                current,
                pack(generation, length),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return length >= u64::from(self.threshold),
                Err(actual) => current = actual,
            }
        }
    }

    fn start_cycle(&self, generation: u32) {
        advance_marker(&self.run, generation, 0);
    }
}

impl Rate {
    /// Call number `index` failed, in cycle `generation`.
    fn on_failure(&self, generation: u32, index: u64) -> bool {
        let Some(start) = self.cycle_start(generation, index - 1) else {
            return false; // from an earlier closed cycle
        };
        let len = self.ring.len() as u64;
        let slot = self.ring_writes.fetch_add(1, Ordering::Relaxed) % len;
        // Release: a reader that sees this entry sees a fully formed one.
        self.ring[slot as usize].store(pack(generation, index), Ordering::Release);

        let in_cycle = distance(start, index);
        let window = in_cycle.min(self.calls);
        if in_cycle < self.min_calls {
            return false;
        }
        let needed = failures_needed(self.rate, window).min(len);
        // The `needed`-th most recent failure, this one being the first.
        let oldest = (slot + len - (needed - 1)) % len;
        let (entry_generation, entry_index) =
            unpack(self.ring[oldest as usize].load(Ordering::Acquire));
        entry_generation == (generation & GENERATION_MASK)
            && entry_index != 0
            && distance(entry_index, index) < window
    }

    /// The call index cycle `generation` started after, starting the cycle now if nobody has
    /// yet (a failure can arrive between the close and `start_cycle`). `None` if `generation`
    /// is older than the current cycle.
    fn cycle_start(&self, generation: u32, index_if_new: u64) -> Option<u64> {
        let (cycle_generation, start) = unpack(self.cycle.load(Ordering::Acquire));
        if cycle_generation == generation {
            return Some(start);
        }
        if is_older(generation, cycle_generation) {
            return None;
        }
        advance_marker(&self.cycle, generation, index_if_new);
        let (cycle_generation, start) = unpack(self.cycle.load(Ordering::Acquire));
        (cycle_generation == generation).then_some(start)
    }

    fn start_cycle(&self, generation: u32, calls: u64) {
        advance_marker(&self.cycle, generation, calls);
    }

    fn in_window(&self, generation: u32, calls: u64) -> (u64, u64) {
        let (cycle_generation, start) = unpack(self.cycle.load(Ordering::Acquire));
        if cycle_generation != generation {
            return (0, 0);
        }
        let window = distance(start, calls).min(self.calls);
        let failures = self
            .ring
            .iter()
            .map(|entry| unpack(entry.load(Ordering::Acquire)))
            .filter(|&(entry_generation, index)| {
                entry_generation == generation && index != 0 && distance(index, calls) < window
            })
            .count() as u64;
        (window, failures)
    }
}

/// Moves a (generation, index) marker forward to `generation`, unless it is already there or
/// newer: whoever starts a cycle first wins, and a late, older start never undoes a newer one.
fn advance_marker(marker: &AtomicU64, generation: u32, index: u64) {
    let mut current = marker.load(Ordering::Acquire);
    loop {
        let (marker_generation, _) = unpack(current);
        if marker_generation == generation || is_older(generation, marker_generation) {
            return;
        }
        match marker.compare_exchange_weak(
            current,
            pack(generation, index),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_trip_only_without_a_success_between() {
        let w = Window::new(Model::consecutive(3), 2);
        assert!(!w.record_failure(0));
        assert!(!w.record_failure(0));
        w.record_success(1);
        assert!(!w.record_failure(0));
        assert!(!w.record_failure(0));
        assert!(w.record_failure(0));
    }

    #[test]
    fn consecutive_ignores_failures_of_an_earlier_cycle() {
        let w = Window::new(Model::consecutive(2), 1);
        w.start_cycle(5);
        assert!(!w.record_failure(5));
        assert!(!w.record_failure(4), "stale");
        assert!(w.record_failure(5));
    }

    #[test]
    fn the_rate_window_slides_over_exactly_the_last_n_calls() {
        // 50% of the last 10 calls, at least 10 calls.
        let w = Window::new(Model::rate(10, 0.5, 10), 1);
        // 4 failures, then 6 successes: 4/10, no trip.
        for _ in 0..4 {
            assert!(!w.record_failure(0));
        }
        for _ in 0..6 {
            w.record_success(0);
        }
        // Call 11 fails: the last 10 are calls 2..=11, with failures 2, 3, 4, 11: 4/10.
        assert!(!w.record_failure(0));
        // Call 12 fails: calls 3..=12 hold failures 3, 4, 11, 12: 4/10.
        assert!(!w.record_failure(0));
        // Call 13 fails: calls 4..=13 hold failures 4, 11, 12, 13: 4/10.
        assert!(!w.record_failure(0));
        // Call 14 fails: calls 5..=14 hold 11, 12, 13, 14: 4/10.
        assert!(!w.record_failure(0));
        // Call 15 fails: calls 6..=15 hold 11..=15: 5/10, trip.
        assert!(w.record_failure(0));
    }

    #[test]
    fn the_rate_waits_for_min_calls() {
        let w = Window::new(Model::rate(100, 0.5, 20), 1);
        for _ in 0..19 {
            assert!(!w.record_failure(0), "under min_calls");
        }
        assert!(w.record_failure(0), "20 of 20 failed");
    }

    #[test]
    fn a_new_cycle_forgets_the_old_failures() {
        let w = Window::new(Model::rate(4, 0.5, 4), 1);
        w.record_failure(0);
        w.record_failure(0);
        w.record_success(0);
        w.start_cycle(3);
        w.record_success(0);
        w.record_success(0);
        w.record_success(0);
        assert!(!w.record_failure(3), "1 of 4 in the new cycle");
        assert!(!w.record_failure(1), "stale");
        assert!(w.record_failure(3), "2 of the last 4");
        assert_eq!(w.in_window(3), (4, 2));
    }

    #[test]
    fn failures_needed_rounds_up_without_float_noise() {
        assert_eq!(failures_needed(0.3, 10), 3);
        assert_eq!(failures_needed(0.5, 10), 5);
        assert_eq!(failures_needed(0.01, 10), 1);
        assert_eq!(failures_needed(1.0, 7), 7);
        assert_eq!(failures_needed(0.55, 10), 6);
    }
}
