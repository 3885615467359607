//! Trip models: when the outcomes of the closed state say the breaker should open.
//!
//! A success in the closed state is the hot path. It writes only its own striped counter (one
//! cache line per stripe; service clones are spread over the stripes), so threads that share a
//! breaker do not fight over a cache line. All evaluation happens when a failure (or a slow
//! call) arrives: it sums the stripes to learn how many calls there have been.
//!
//! - [`Model::Consecutive`]: trips after `n` failures with no success between them. The run
//!   (its generation, its length and whether a success ended it) is one word; a success marks
//!   it ended once per run, so in steady state a success is one read of it.
//! - [`Model::Rate`] (a count window): trips when at least `rate` of the last `n` calls failed
//!   (and at least `min_calls` calls have been made in this closed cycle). It keeps the call
//!   index of each of the last `ceil(rate * n)` failures in a ring. The window slides exactly:
//!   the check on each failure is "was the `ceil(rate * w)`-th most recent failure among the
//!   last `w` calls?", with `w = min(n, calls in this cycle)`, one load. Under concurrency,
//!   calls that complete at the same moment are ordered as they reach the counters. Slow calls
//!   get a second ring of the same kind.
//! - [`Model::Time`] (a time window): trips when at least `rate` of the calls of the last `n`
//!   buckets failed. Every counter is split into `n` buckets; a recorder adds to the bucket of
//!   the current epoch, which it reads with one load. Time moves the epoch forward from
//!   outside the call path (`shared.rs` runs a timer per bucket), and whoever moves it empties
//!   the bucket that becomes current *before* publishing the new epoch, so no call is ever
//!   counted in a bucket that is then emptied under it. The window therefore covers the
//!   current, partly elapsed bucket and the `n - 1` before it: between `(n - 1) / n` of the
//!   configured duration and all of it. That is the whole error bound, and the tests check it.
//!
//! Failures carry the generation of the closed cycle they were admitted in. A failure from an
//! earlier cycle neither counts nor resets anything.

use crate::sync::{AtomicU64, Ordering, Padded, fence};

use super::state::{GENERATION_BITS, GENERATION_MASK, is_older};
use crate::ticker::BucketClock;

/// Counters per cache line: 16 × 8 bytes fill one 128-byte [`Padded`] line.
const PER_LINE: usize = 16;

/// One stripe's counters (its buckets), alone on their cache line(s).
type Line = Padded<[AtomicU64; PER_LINE]>;

fn new_line() -> Line {
    Padded(std::array::from_fn(|_| AtomicU64::new(0)))
}

fn zeroed(count: usize) -> Box<[AtomicU64]> {
    (0..count).map(|_| AtomicU64::new(0)).collect()
}

/// How ring entries and cycle markers pack a generation (28 bits, as in the state word) with
/// a call index (36 bits).
const INDEX_BITS: u32 = 64 - GENERATION_BITS;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

fn pack(generation: u32, index: u64) -> u64 {
    (u64::from(generation & GENERATION_MASK) << INDEX_BITS) | (index & INDEX_MASK)
}

fn unpack(packed: u64) -> (u32, u64) {
    ((packed >> INDEX_BITS) as u32, packed & INDEX_MASK)
}

/// `later - earlier` in the 36-bit index space. Indices are kept modulo 2^36 (about 7 × 10^10
/// calls); distances are only ever taken between indices of the same closed cycle that are
/// at most `n` calls apart, so the wrap is harmless.
fn distance(earlier: u64, later: u64) -> u64 {
    later.wrapping_sub(earlier) & INDEX_MASK
}

/// The most buckets a time window can have (well within what a [`BucketClock`] holds).
pub(crate) const MAX_BUCKETS: u32 = 1024;

/// The trip model chosen at build time, with its settings validated by the builder.
#[derive(Debug)]
// Built once per breaker and kept behind its `Arc`: the size of the enum costs nothing, and
// boxing the time window would add a pointer chase to every call's bucket lookup.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Model {
    Consecutive(Consecutive),
    Rate(Rate),
    Time(TimeWindow),
}

/// Trips after `threshold` failures in a row.
#[derive(Debug)]
pub(crate) struct Consecutive {
    threshold: u32,
    /// The current run of failures: the generation it belongs to, its length, and whether a
    /// success of that generation has ended it ([`BROKEN`]; the next failure then starts a
    /// new run). One word, so that a success and a failure of the same cycle cannot miss
    /// each other, and an outcome of another cycle can be told apart and ignored.
    run: AtomicU64,
}

/// In a consecutive run word: a success ended the run.
const BROKEN: u64 = 1 << (INDEX_BITS - 1);
/// In a consecutive run word: the run's length.
const LENGTH_MASK: u64 = BROKEN - 1;

/// Trips when at least `rate` of the last `calls` calls failed (or, with slow-call detection,
/// when at least the slow rate of them were slow).
#[derive(Debug)]
pub(crate) struct Rate {
    calls: u64,
    min_calls: u64,
    failures: Recent,
    slow: Option<Recent>,
    /// The generation of the current closed cycle and the call index it started after.
    cycle: AtomicU64,
}

/// One event (a failure or a slow call) of a count window: call number `index` of cycle
/// `generation`, which started after call `start`.
#[derive(Debug, Clone, Copy)]
struct Event {
    generation: u32,
    index: u64,
    start: u64,
}

/// A count window's shape: the last `calls` calls, judged once `min_calls` were made.
#[derive(Debug, Clone, Copy)]
struct Span {
    calls: u64,
    min_calls: u64,
}

/// The call indices of the most recent events of one kind (failures, or slow calls): enough
/// of them to tell whether `rate` of the last `calls` calls were such events.
#[derive(Debug)]
struct Recent {
    rate: f64,
    /// Call indices of the last `ceil(rate * calls)` events, each with its generation.
    ring: Box<[AtomicU64]>,
    /// How many events have been written to the ring: the next one goes to
    /// `writes % ring.len()`. Stale events are not written, so the ring has no holes.
    writes: AtomicU64,
}

/// Trips when at least `rate` of the calls in the last `buckets` buckets failed (or, with
/// slow-call detection, at least the slow rate of them were slow).
#[derive(Debug)]
pub(crate) struct TimeWindow {
    rate: f64,
    slow_rate: Option<f64>,
    min_calls: u64,
    /// The current epoch (bucket lengths since the breaker was built) and its bucket.
    clock: BucketClock,
    /// The generation of the current closed cycle (in the low bits: nothing).
    cycle: AtomicU64,
}

/// The calls, failures and slow calls in the trip model's current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Counts {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

/// Outcome counters and the trip model of one breaker.
#[derive(Debug)]
pub(crate) struct Window {
    /// Successes: per stripe, one counter per bucket (one bucket unless the model is a time
    /// window), on cache lines of their own. Every service clone picks a stripe when created.
    successes: Box<[Line]>,
    /// A power of two, so that a clone's stripe is found with a mask, not a division.
    stripes: usize,
    lines_per_stripe: usize,
    /// Failures and slow calls are rarer; one shared counter per bucket.
    failures: Box<[AtomicU64]>,
    slow: Box<[AtomicU64]>,
    /// What emptied buckets held, so that the totals since the breaker was built stay exact.
    retired: [AtomicU64; 3],
    model: Model,
}

impl Model {
    pub(crate) fn consecutive(threshold: u32) -> Model {
        Model::Consecutive(Consecutive {
            threshold,
            run: AtomicU64::new(pack(0, 0)),
        })
    }

    /// `calls >= 1`, `rate` in (0, 1], `min_calls >= 1`: validated by the builder.
    pub(crate) fn rate(calls: u64, rate: f64, min_calls: u64) -> Model {
        Model::Rate(Rate {
            calls,
            min_calls,
            failures: Recent::new(rate, calls),
            slow: None,
            // Generation 0 starts after call 0. A ring entry of index 0 is never in a window,
            // since real calls have indices from 1.
            cycle: AtomicU64::new(pack(0, 0)),
        })
    }

    /// `buckets` in `1..=MAX_BUCKETS`, `rate` in (0, 1], `min_calls >= 1`: validated by the
    /// builder, which also keeps the time a bucket covers (see `shared.rs`).
    pub(crate) fn time(buckets: u32, rate: f64, min_calls: u64) -> Model {
        Model::Time(TimeWindow {
            rate,
            slow_rate: None,
            min_calls,
            clock: BucketClock::new(u64::from(buckets)),
            cycle: AtomicU64::new(pack(0, 0)),
        })
    }

    /// Adds slow-call detection to a rate model: it also trips when at least `rate` of the
    /// calls in its window were slow. The builder allows it on the two windowed models only;
    /// the consecutive model is returned unchanged.
    pub(crate) fn with_slow_rate(self, rate: f64) -> Model {
        match self {
            Model::Rate(mut model) => {
                model.slow = Some(Recent::new(rate, model.calls));
                Model::Rate(model)
            }
            Model::Time(mut model) => {
                model.slow_rate = Some(rate);
                Model::Time(model)
            }
            consecutive @ Model::Consecutive(_) => consecutive,
        }
    }

    fn buckets(&self) -> usize {
        match self {
            Model::Time(model) => model.clock.buckets() as usize,
            Model::Consecutive(_) | Model::Rate(_) => 1,
        }
    }
}

/// How many events among `calls` calls reach `rate`: `ceil(rate * calls)`, at least 1.
fn failures_needed(rate: f64, calls: u64) -> u64 {
    // A tiny tolerance so that, say, 0.3 * 10 (2.9999999999999996) needs 3, not 4.
    ((rate * calls as f64) - 1e-9).ceil().max(1.0) as u64
}

impl Window {
    pub(crate) fn new(model: Model, stripes: usize) -> Window {
        let stripes = stripes.max(1).next_power_of_two();
        let buckets = model.buckets();
        let lines_per_stripe = buckets.div_ceil(PER_LINE);
        Window {
            successes: (0..stripes * lines_per_stripe)
                .map(|_| new_line())
                .collect(),
            stripes,
            lines_per_stripe,
            failures: zeroed(buckets),
            slow: zeroed(buckets),
            retired: std::array::from_fn(|_| AtomicU64::new(0)),
            model,
        }
    }

    /// The trip model, named after the builder method that chose it, for logs.
    pub(crate) fn trip_model(&self) -> &'static str {
        match self.model {
            Model::Consecutive(_) => "consecutive_failures",
            Model::Rate(_) => "failure_rate",
            Model::Time(_) => "time_window",
        }
    }

    pub(crate) fn stripes(&self) -> usize {
        self.stripes
    }

    /// Buckets per counter: the time window's, 1 for the other models.
    pub(crate) fn buckets(&self) -> usize {
        self.failures.len()
    }

    /// The bucket outcomes are counted in now: always 0 unless the model is a time window.
    #[inline]
    fn bucket(&self) -> usize {
        match &self.model {
            Model::Time(model) => model.bucket(),
            Model::Consecutive(_) | Model::Rate(_) => 0,
        }
    }

    #[inline]
    fn success_counter(&self, stripe: usize, bucket: usize) -> &AtomicU64 {
        let line = (stripe & (self.stripes - 1)) * self.lines_per_stripe + bucket / PER_LINE;
        &self.successes[line].0[bucket % PER_LINE]
    }

    /// A call admitted while closed in cycle `generation` succeeded. The hot path: a read of
    /// the cycle (or run) word, which only changes on failures and transitions, and one
    /// increment of the caller's own stripe (in the current bucket). A success of an earlier
    /// cycle counts in the totals only.
    #[inline]
    pub(crate) fn record_success(&self, stripe: usize, generation: u32) {
        let counts = match &self.model {
            Model::Consecutive(model) => {
                model.on_success(generation);
                true
            }
            Model::Rate(model) => model
                .cycle_start(generation, || self.live_calls())
                .is_some(),
            Model::Time(model) => self.join_time_cycle(model, generation),
        };
        if !counts {
            self.retired[0].fetch_add(1, Ordering::Relaxed);
            return;
        }
        let bucket = self.bucket();
        // Relaxed: a count, read only to evaluate failures, which tolerate a call in flight.
        // (The bucket was read with Acquire, which orders this increment after the emptying
        // of that bucket: see `advance_to`.)
        self.success_counter(stripe, bucket)
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A call admitted while closed in cycle `generation` failed. Returns whether the model
    /// says to trip.
    pub(crate) fn record_failure(&self, generation: u32) -> bool {
        match &self.model {
            Model::Consecutive(model) => {
                self.failures[0].fetch_add(1, Ordering::Relaxed);
                model.on_failure(generation)
            }
            Model::Rate(model) => {
                let Some(start) = model.cycle_start(generation, || self.live_calls()) else {
                    // From an earlier cycle: it counts in the totals, not in the window.
                    self.retired[1].fetch_add(1, Ordering::Relaxed);
                    return false;
                };
                let failures_before = self.failures[0].fetch_add(1, Ordering::Relaxed);
                let event = Event {
                    generation,
                    index: self.live_successes() + failures_before + 1,
                    start,
                };
                model.on_failure(event, failures_before, &self.failures[0])
            }
            Model::Time(model) => {
                if !self.join_time_cycle(model, generation) {
                    // From an earlier cycle: it counts in the totals, not in the window.
                    self.retired[1].fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                self.failures[model.bucket()].fetch_add(1, Ordering::Relaxed);
                model.trips_on_failures(self.time_counts())
            }
        }
    }

    /// A call admitted while closed in cycle `generation` took longer than the slow-call
    /// threshold (it was recorded as a success or failure first). Returns whether the model
    /// says to trip on the slow-call rate.
    pub(crate) fn record_slow(&self, generation: u32) -> bool {
        match &self.model {
            Model::Consecutive(_) => {
                self.slow[0].fetch_add(1, Ordering::Relaxed);
                false
            }
            Model::Rate(model) => {
                let Some(start) = model.cycle_start(generation, || self.live_calls()) else {
                    self.retired[2].fetch_add(1, Ordering::Relaxed);
                    return false;
                };
                self.slow[0].fetch_add(1, Ordering::Relaxed);
                // This call was counted when it was recorded, so it is the latest one.
                model.on_slow(Event {
                    generation,
                    index: self.live_calls(),
                    start,
                })
            }
            Model::Time(model) => {
                if !self.join_time_cycle(model, generation) {
                    self.retired[2].fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                self.slow[model.bucket()].fetch_add(1, Ordering::Relaxed);
                model.trips_on_slow(self.time_counts())
            }
        }
    }

    /// The closed cycle `generation` starts now (the breaker just closed). Calls before this
    /// point no longer count.
    pub(crate) fn start_cycle(&self, generation: u32) {
        match &self.model {
            Model::Consecutive(model) => model.start_cycle(generation),
            Model::Rate(model) => model.start_cycle(generation, self.live_calls()),
            Model::Time(model) => {
                self.join_time_cycle(model, generation);
            }
        }
    }

    /// For a time window: whether an outcome of cycle `generation` counts in the window,
    /// starting that cycle (emptying every bucket) if it is newer than the current one.
    fn join_time_cycle(&self, model: &TimeWindow, generation: u32) -> bool {
        let (current, _) = unpack(model.cycle.load(Ordering::Acquire));
        if current == generation & GENERATION_MASK {
            return true;
        }
        if is_older(generation, current) {
            return false;
        }
        if advance_marker(&model.cycle, generation, 0) {
            // The winner empties the window. Calls of the new cycle recorded meanwhile may
            // be emptied with it: at most the calls that completed in these few nanoseconds.
            for bucket in 0..self.failures.len() {
                self.empty_bucket(bucket);
            }
        }
        let (current, _) = unpack(model.cycle.load(Ordering::Acquire));
        current == generation & GENERATION_MASK
    }

    /// For a time window: moves the current epoch forward to `epoch` (a count of bucket
    /// lengths since the breaker was built), emptying each bucket before it becomes current.
    /// If another thread is already moving it, returns at once: that thread will get there.
    /// Does nothing for the other models, or if the epoch is already there.
    pub(crate) fn advance_to(&self, epoch: u64) {
        if let Model::Time(model) = &self.model {
            model
                .clock
                .advance_to(epoch, |bucket| self.empty_bucket(bucket));
        }
    }

    /// The current epoch of a time window; `None` for the other models.
    pub(crate) fn epoch(&self) -> Option<u64> {
        match &self.model {
            Model::Time(model) => Some(model.clock.epoch()),
            Model::Consecutive(_) | Model::Rate(_) => None,
        }
    }

    /// Empties one bucket of every counter, keeping what it held in the totals. Each counter
    /// is swapped, so an increment is either in the swapped value or after it, never lost.
    fn empty_bucket(&self, bucket: usize) {
        let successes: u64 = (0..self.stripes)
            .map(|stripe| {
                self.success_counter(stripe, bucket)
                    .swap(0, Ordering::Relaxed)
            })
            .sum();
        let failures = self.failures[bucket].swap(0, Ordering::Relaxed);
        let slow = self.slow[bucket].swap(0, Ordering::Relaxed);
        for (total, value) in self.retired.iter().zip([successes, failures, slow]) {
            total.fetch_add(value, Ordering::Relaxed);
        }
    }

    /// The live counts of a time window (every bucket).
    fn time_counts(&self) -> Counts {
        let successes = self.live_successes();
        let failures = sum(&self.failures);
        Counts {
            calls: successes + failures,
            failures,
            slow: sum(&self.slow),
        }
    }

    pub(crate) fn total_successes(&self) -> u64 {
        self.live_successes() + self.retired[0].load(Ordering::Relaxed)
    }

    /// Successes in every bucket of every stripe (only the counters in use are read).
    fn live_successes(&self) -> u64 {
        (0..self.failures.len())
            .flat_map(|bucket| (0..self.stripes).map(move |stripe| (stripe, bucket)))
            .map(|(stripe, bucket)| self.success_counter(stripe, bucket).load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn total_failures(&self) -> u64 {
        sum(&self.failures) + self.retired[1].load(Ordering::Relaxed)
    }

    pub(crate) fn total_slow(&self) -> u64 {
        sum(&self.slow) + self.retired[2].load(Ordering::Relaxed)
    }

    pub(crate) fn total_calls(&self) -> u64 {
        self.total_successes() + self.total_failures()
    }

    /// Calls in the live counters: the call-index space of a count window (outcomes of
    /// earlier cycles go straight to the totals and take no index).
    fn live_calls(&self) -> u64 {
        self.live_successes() + sum(&self.failures)
    }

    /// For the metrics snapshot: calls, failures and slow calls in the current window of
    /// cycle `generation` (for the consecutive model, the current run of failures). For a
    /// count window, failures and slow calls are counted up to the number that trips.
    pub(crate) fn in_window(&self, generation: u32) -> Counts {
        match &self.model {
            Model::Consecutive(model) => {
                let (run_generation, run) = unpack(model.run.load(Ordering::Acquire));
                // A run a success has ended, or of another cycle, is no run.
                let length = if run_generation == generation && run & BROKEN == 0 {
                    run & LENGTH_MASK
                } else {
                    0
                };
                Counts {
                    calls: length,
                    failures: length,
                    slow: 0,
                }
            }
            Model::Rate(model) => model.in_window(generation, self.live_calls()),
            Model::Time(model) => {
                let (current, _) = unpack(model.cycle.load(Ordering::Acquire));
                if current == generation {
                    self.time_counts()
                } else {
                    Counts::default()
                }
            }
        }
    }
}

fn sum(counters: &[AtomicU64]) -> u64 {
    counters
        .iter()
        .map(|counter| counter.load(Ordering::Relaxed))
        .sum()
}

impl Consecutive {
    /// A success of cycle `generation` ends the current run of that cycle. In steady state
    /// (the run already ended, or no failure yet in this cycle) it is one load.
    #[inline]
    fn on_success(&self, generation: u32) {
        let mut current = self.run.load(Ordering::Relaxed);
        loop {
            let (run_generation, run) = unpack(current);
            // A run of another cycle: an older success is stale, and a newer cycle has no
            // run to end yet (its first failure starts one).
            if run_generation != generation || run & BROKEN != 0 {
                return;
            }
            match self.run.compare_exchange_weak(
                current,
                pack(generation, run | BROKEN),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    fn on_failure(&self, generation: u32) -> bool {
        let mut current = self.run.load(Ordering::Acquire);
        loop {
            let (run_generation, run) = unpack(current);
            if is_older(generation, run_generation) {
                return false; // from an earlier closed cycle
            }
            // A success since the previous failure, or a new cycle, starts a new run.
            let length = if run & BROKEN != 0 || run_generation != generation {
                1
            } else {
                (run & LENGTH_MASK) + 1
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

impl Recent {
    fn new(rate: f64, calls: u64) -> Recent {
        Recent {
            rate,
            ring: zeroed(failures_needed(rate, calls) as usize),
            writes: AtomicU64::new(0),
        }
    }

    /// `event` is of this kind (it was slow). Returns whether at least `rate` of the last
    /// `min(calls, calls in the cycle)` calls were, once the cycle has `min_calls` calls.
    fn record(&self, event: Event, span: Span) -> bool {
        let number = self.writes.fetch_add(1, Ordering::Relaxed);
        self.record_numbered(number, None, event, span)
    }

    /// Records `event` as event number `number` of this kind, taken from `numbers` (the
    /// counter that also gave the event its call index, so that ring order and call order
    /// agree), and checks the rate, as [`record`](Self::record) does.
    ///
    /// Two events that race can each write their entry and then look for the other's before
    /// it is written. The `SeqCst` fence between writing and looking rules that out for at
    /// least one of them (store buffering), and that one also checks the window as of every
    /// later-numbered event already written: so a window that reaches the rate is always
    /// reported by at least one of the events that filled it (the state machine turns several
    /// reports into one trip).
    fn record_numbered(
        &self,
        number: u64,
        numbers: Option<&AtomicU64>,
        event: Event,
        span: Span,
    ) -> bool {
        let len = self.ring.len() as u64;
        let slot = number % len;
        // Release: a reader that sees this entry sees a fully formed one.
        self.ring[slot as usize].store(pack(event.generation, event.index), Ordering::Release);
        fence(Ordering::SeqCst);
        let mut trips = self.trips_at(slot, event, span);
        if let Some(numbers) = numbers {
            let next = numbers.load(Ordering::Relaxed);
            for later in (number + 1)..next.min(number + len) {
                let later_slot = later % len;
                let (entry_generation, entry_index) =
                    unpack(self.ring[later_slot as usize].load(Ordering::Acquire));
                let ahead = distance(event.index, entry_index);
                if entry_generation == (event.generation & GENERATION_MASK)
                    && ahead > 0
                    && ahead < span.calls
                {
                    let later_event = Event {
                        index: entry_index,
                        ..event
                    };
                    trips |= self.trips_at(later_slot, later_event, span);
                }
            }
        }
        trips
    }

    /// Whether the window ending at `event` (written at `slot`) reaches the rate: is the
    /// `ceil(rate * w)`-th most recent event among its last `w` calls?
    fn trips_at(&self, slot: u64, event: Event, span: Span) -> bool {
        let len = self.ring.len() as u64;
        let in_cycle = distance(event.start, event.index);
        let window = in_cycle.min(span.calls);
        if in_cycle < span.min_calls {
            return false;
        }
        let needed = failures_needed(self.rate, window).min(len);
        // The `needed`-th most recent event, this one being the first.
        let oldest = (slot + len - (needed - 1)) % len;
        let (entry_generation, entry_index) =
            unpack(self.ring[oldest as usize].load(Ordering::Acquire));
        entry_generation == (event.generation & GENERATION_MASK)
            && entry_index != 0
            && distance(entry_index, event.index) < window
    }

    /// Events of cycle `generation` among the last `window` calls before call `calls`.
    fn count(&self, generation: u32, calls: u64, window: u64) -> u64 {
        self.ring
            .iter()
            .map(|entry| unpack(entry.load(Ordering::Acquire)))
            .filter(|&(entry_generation, index)| {
                entry_generation == generation && index != 0 && distance(index, calls) < window
            })
            .count() as u64
    }
}

impl Rate {
    fn span(&self) -> Span {
        Span {
            calls: self.calls,
            min_calls: self.min_calls,
        }
    }

    /// Call number `index` failed, in cycle `generation`, which started after call `start`;
    /// it is failure number `number` of the failure counter `numbers`.
    fn on_failure(&self, event: Event, number: u64, numbers: &AtomicU64) -> bool {
        self.failures
            .record_numbered(number, Some(numbers), event, self.span())
    }

    /// `event`'s call was slow.
    fn on_slow(&self, event: Event) -> bool {
        let Some(slow) = &self.slow else {
            return false;
        };
        slow.record(event, self.span())
    }

    /// The call index cycle `generation` started after, starting the cycle now (after the
    /// calls counted so far) if nobody has yet: an outcome can arrive between the close and
    /// `start_cycle`. `None` if `generation` is older than the current cycle. One load when
    /// the cycle is the current one.
    #[inline]
    fn cycle_start(&self, generation: u32, calls_now: impl FnOnce() -> u64) -> Option<u64> {
        let (cycle_generation, start) = unpack(self.cycle.load(Ordering::Acquire));
        if cycle_generation == generation {
            return Some(start);
        }
        if is_older(generation, cycle_generation) {
            return None;
        }
        advance_marker(&self.cycle, generation, calls_now());
        let (cycle_generation, start) = unpack(self.cycle.load(Ordering::Acquire));
        (cycle_generation == generation).then_some(start)
    }

    fn start_cycle(&self, generation: u32, calls: u64) {
        advance_marker(&self.cycle, generation, calls);
    }

    fn in_window(&self, generation: u32, calls: u64) -> Counts {
        let (cycle_generation, start) = unpack(self.cycle.load(Ordering::Acquire));
        if cycle_generation != generation {
            return Counts::default();
        }
        let window = distance(start, calls).min(self.calls);
        Counts {
            calls: window,
            failures: self.failures.count(generation, calls, window),
            slow: self
                .slow
                .as_ref()
                .map_or(0, |slow| slow.count(generation, calls, window)),
        }
    }
}

impl TimeWindow {
    /// The bucket of the current epoch: one load, no division.
    #[inline]
    fn bucket(&self) -> usize {
        self.clock.bucket()
    }

    fn trips_on_failures(&self, counts: Counts) -> bool {
        counts.calls >= self.min_calls
            && counts.failures >= failures_needed(self.rate, counts.calls)
    }

    fn trips_on_slow(&self, counts: Counts) -> bool {
        self.slow_rate.is_some_and(|rate| {
            counts.calls >= self.min_calls && counts.slow >= failures_needed(rate, counts.calls)
        })
    }
}

/// Moves a (generation, index) marker forward to `generation`, unless it is already there or
/// newer: whoever starts a cycle first wins, and a late, older start never undoes a newer one.
/// Returns whether this call moved it.
fn advance_marker(marker: &AtomicU64, generation: u32, index: u64) -> bool {
    let mut current = marker.load(Ordering::Acquire);
    loop {
        let (marker_generation, _) = unpack(current);
        if marker_generation == generation || is_older(generation, marker_generation) {
            return false;
        }
        match marker.compare_exchange_weak(
            current,
            pack(generation, index),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => return true,
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
        w.record_success(1, 0);
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
            w.record_success(0, 0);
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
        w.record_success(0, 0);
        w.start_cycle(3);
        w.record_success(0, 1); // stale: not in the window
        w.record_success(0, 3);
        w.record_success(0, 3);
        w.record_success(0, 3);
        assert!(!w.record_failure(3), "1 of 4 in the new cycle");
        assert!(!w.record_failure(1), "stale");
        assert!(w.record_failure(3), "2 of the last 4");
        assert_eq!(
            w.in_window(3),
            Counts {
                calls: 4,
                failures: 2,
                slow: 0
            }
        );
    }

    #[test]
    fn failures_needed_rounds_up_without_float_noise() {
        assert_eq!(failures_needed(0.3, 10), 3);
        assert_eq!(failures_needed(0.5, 10), 5);
        assert_eq!(failures_needed(0.01, 10), 1);
        assert_eq!(failures_needed(1.0, 7), 7);
        assert_eq!(failures_needed(0.55, 10), 6);
    }

    #[test]
    fn a_time_window_counts_the_last_buckets_and_keeps_the_totals() {
        // 50% of the last 4 buckets, at least 4 calls; 2 stripes.
        let w = Window::new(Model::time(4, 0.5, 4), 2);
        w.record_success(0, 0);
        w.record_success(1, 0);
        assert!(!w.record_failure(0), "1 of 3, under min_calls");
        w.advance_to(3);
        w.record_success(1, 0);
        w.record_success(0, 0);
        assert!(!w.record_failure(0), "2 of 6");
        assert!(!w.record_failure(0), "3 of 7");
        // Epoch 4 empties bucket 0 (epoch 0's 3 calls): 2 failures, 2 successes remain.
        w.advance_to(4);
        assert_eq!(
            w.in_window(0),
            Counts {
                calls: 4,
                failures: 2,
                slow: 0
            }
        );
        assert!(w.record_failure(0), "3 of 5");
        // Jumping a whole window empties everything; the totals stay exact.
        w.advance_to(100);
        assert_eq!(w.in_window(0), Counts::default());
        assert_eq!((w.total_successes(), w.total_failures()), (4, 4));
        assert_eq!(w.epoch(), Some(100));
    }

    #[test]
    fn a_time_window_ignores_stale_failures_and_starts_each_cycle_empty() {
        let w = Window::new(Model::time(2, 0.5, 2), 1);
        w.record_failure(0);
        w.start_cycle(2);
        assert_eq!(w.in_window(2), Counts::default());
        assert!(!w.record_failure(1), "stale");
        assert!(!w.record_failure(0), "stale");
        assert_eq!(w.in_window(2), Counts::default());
        assert_eq!(w.total_failures(), 3);
        w.record_success(0, 2);
        assert!(w.record_failure(2), "1 of 2");
        // A failure of a newer cycle than the window knows starts that cycle itself.
        assert!(!w.record_failure(4), "1 of 1, under min_calls");
        assert_eq!(w.in_window(4).calls, 1);
    }

    #[test]
    fn slow_calls_are_a_rate_of_their_own() {
        let w = Window::new(Model::rate(4, 1.0, 4).with_slow_rate(0.5), 1);
        w.record_success(0, 0);
        w.record_success(0, 0);
        w.record_success(0, 0);
        assert!(!w.record_slow(0), "1 slow of 3 calls, under min_calls");
        w.record_success(0, 0);
        assert!(w.record_slow(0), "2 of the last 4");
        assert_eq!(w.in_window(0).slow, 2);
        assert_eq!(w.total_slow(), 2);

        let w = Window::new(Model::time(2, 1.0, 2).with_slow_rate(0.5), 1);
        w.record_success(0, 0);
        assert!(!w.record_slow(0), "under min_calls");
        w.record_success(0, 0);
        assert!(w.record_slow(0), "2 of 2");
        assert!(!Window::new(Model::consecutive(1), 1).record_slow(0));
    }
}
