//! One breaker's shared state: the lock-free [`StateMachine`] and [`Window`], plus the parts
//! that need time and tokio, which `state.rs` and `window.rs` stay free of: how long to stay
//! open, the timer that ends the open period, the timer that moves a time window from one
//! bucket to the next, the listener and the tracing events.
//!
//! Only the thread that made a transition (won its compare-and-swap) runs the code here for
//! it, so nothing in this file races with itself for the same transition.

use std::sync::{Arc, Weak};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::Notify;

use super::error::{CircuitOpen, Reason};
use super::handle::{State, StateTransition, TransitionReason};
use super::layer::Outcome;
use super::state::{Phase, StateMachine, Transition, next_generation};
use super::window::Window;
use crate::clock::{self, Instant};
#[cfg(feature = "metrics")]
use crate::observe::metrics::BreakerMetrics;
use crate::observe::{Event, Observer};
use crate::sync::{AtomicU64, Ordering};
use crate::ticker::{Epochs, Ticker};

/// How long the breaker stays open after a trip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum OpenDuration {
    Fixed(Duration),
    /// `initial * multiplier^(trips - 1)`, at most `max`, over consecutive trips.
    Exponential {
        initial: Duration,
        multiplier: f64,
        max: Duration,
    },
}

/// A user callback for state transitions.
pub(crate) type Listener = Arc<dyn Fn(&StateTransition) + Send + Sync>;

/// Settings that shape behaviour after a trip, validated by the builder.
pub(crate) struct Timing {
    pub(crate) open: OpenDuration,
    /// Fraction of the open duration removed at random, in [0, 1).
    pub(crate) jitter: f64,
    pub(crate) half_open_max_wait: Duration,
    /// The longest a dependency's "retry after" may extend an open period.
    pub(crate) max_retry_after: Duration,
    /// Calls that take this long or longer are slow (see `slow_calls` on the builder).
    pub(crate) slow_threshold: Option<Duration>,
    /// For a time window: the time one bucket covers.
    pub(crate) bucket_width: Option<Duration>,
}

pub(crate) struct Shared {
    pub(crate) state: StateMachine,
    pub(crate) window: Window,
    timing: Timing,
    /// The breaker's name and its `on_event` listener.
    observer: Observer,
    /// The `on_transition` listener.
    listener: Option<Listener>,
    #[cfg(feature = "metrics")]
    metrics: BreakerMetrics,
    /// Time zero for the instants kept below as nanoseconds in atomics.
    origin: Instant,
    /// When the current open period ends (nanoseconds since `origin`).
    open_until: AtomicU64,
    /// The latest time a failed call's dependency asked to be left alone until (nanoseconds
    /// since `origin`; 0 for never): an open period lasts at least until then.
    asked_until: AtomicU64,
    /// `generation + 1` of the open period that ends at a dependency's hint rather than at
    /// the open duration, 0 for none: a caller told to come back then (an HTTP retry
    /// honouring `Retry-After`) arrives at that very instant, so admission checks the clock
    /// rather than let it race the timer (see `end_hinted_open`). Tagged with the generation
    /// so that a later open period never reads an earlier one's end as its own.
    hinted_open: AtomicU64,
    /// When the current phase began (nanoseconds since `origin`).
    phase_since: AtomicU64,
    /// Trips since the breaker last closed, for exponential open durations.
    consecutive_trips: AtomicU64,
    /// Seeds for the jitter: each trip draws from a generator seeded with the next value.
    jitter_seed: AtomicU64,
    /// Which stripe the next service clone takes.
    next_stripe: AtomicU64,
    /// For a time window: the timer that moves it from bucket to bucket.
    window_ticker: Option<Ticker>,
    /// Wakes services waiting in `poll_ready` (backpressure mode) when calls may go again.
    pub(crate) admitting: Arc<Notify>,
    /// Whether services of this breaker wait in `poll_ready` at all: waking takes a lock
    /// inside `Notify`, which a fail-fast breaker need not pay on every transition.
    backpressure: bool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name())
            .field("state", &self.state.snapshot())
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        state: StateMachine,
        window: Window,
        timing: Timing,
        observer: Observer,
        listener: Option<Listener>,
        seed: u64,
        backpressure: bool,
    ) -> Shared {
        let window_ticker = timing.bucket_width.map(|width| {
            // Once a whole window passed with no call, every bucket is empty.
            Ticker::new(width, window.buckets() as u64)
        });
        Shared {
            state,
            window,
            timing,
            #[cfg(feature = "metrics")]
            metrics: BreakerMetrics::new(&observer),
            observer,
            listener,
            origin: clock::now(),
            open_until: AtomicU64::new(0),
            asked_until: AtomicU64::new(0),
            hinted_open: AtomicU64::new(0),
            phase_since: AtomicU64::new(0),
            consecutive_trips: AtomicU64::new(0),
            jitter_seed: AtomicU64::new(seed),
            next_stripe: AtomicU64::new(0),
            window_ticker,
            admitting: Arc::new(Notify::new()),
            backpressure,
        }
    }

    pub(crate) fn name(&self) -> Option<&str> {
        self.observer.given_name()
    }

    /// Counts a classified outcome (with the `metrics` feature; otherwise nothing).
    #[inline]
    pub(crate) fn count_outcome(&self, outcome: Outcome) {
        #[cfg(feature = "metrics")]
        match outcome {
            Outcome::Success => self.metrics.success.increment(1),
            Outcome::Failure => self.metrics.failure.increment(1),
            Outcome::Ignored => self.metrics.ignored.increment(1),
        }
        #[cfg(not(feature = "metrics"))]
        let _ = outcome;
    }

    /// The stripe for a new service clone, round robin.
    pub(crate) fn take_stripe(&self) -> usize {
        (self.next_stripe.fetch_add(1, Ordering::Relaxed) % self.window.stripes() as u64) as usize
    }

    fn nanos_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    fn instant_at(&self, nanos: u64) -> Instant {
        self.origin + Duration::from_nanos(nanos)
    }

    pub(crate) fn open_until(&self) -> Instant {
        self.instant_at(self.open_until.load(Ordering::Acquire))
    }

    pub(crate) fn phase_since(&self) -> Instant {
        self.instant_at(self.phase_since.load(Ordering::Acquire))
    }

    pub(crate) fn slow_threshold(&self) -> Option<Duration> {
        self.timing.slow_threshold
    }

    /// For a time window: makes sure its buckets move on as time passes (see `ticker.rs`).
    /// One load while the window's timer runs.
    #[inline]
    pub(crate) fn keep_window_moving(self: &Arc<Self>) {
        Ticker::keep_moving(self);
    }

    pub(crate) fn consecutive_trips(&self) -> u64 {
        self.consecutive_trips.load(Ordering::Relaxed)
    }

    /// The error for a call rejected in `phase`, reported as such.
    pub(crate) fn rejection(&self, phase: Phase) -> CircuitOpen {
        let state = State::from(phase);
        let name = self.observer.name();
        tracing::debug!(
            breaker = name,
            state = state.as_str(),
            "circuit breaker rejected a call"
        );
        #[cfg(feature = "metrics")]
        self.metrics.rejected(state);
        self.observer.emit(&Event::BreakerRejected { name, state });
        match phase {
            Phase::ForcedOpen => CircuitOpen::new(Reason::ForcedOpen, None),
            Phase::HalfOpen => CircuitOpen::new(Reason::ProbesInFlight, None),
            // A load, no clock read: the hint is measured when the caller asks for it.
            _ => CircuitOpen::new(Reason::Open, Some(self.open_until())),
        }
    }

    /// A failed call's dependency asked to be left alone for `hint` (capped by
    /// `max_retry_after`): the next open period lasts at least that long. Called before the
    /// failure is recorded, so the failure that trips the breaker counts its own hint. Only
    /// on failures that carry a hint, so the clock read is off every success path.
    pub(crate) fn asked_to_wait(&self, hint: Duration) {
        let hint = hint.min(self.timing.max_retry_after);
        if hint.is_zero() {
            return;
        }
        let until = self.nanos_at(clock::now() + hint);
        // Relaxed: a hint racing a trip on another thread may miss that open period; the
        // failure that trips the breaker stored its own hint before, on its own thread.
        self.asked_until.fetch_max(until, Ordering::Relaxed);
        // Already open (a call admitted before the trip failing late, with a longer hint):
        // lengthen the open period; its timer waits for the new end.
        let now = self.state.snapshot();
        if matches!(now.phase, Phase::Open | Phase::OpenUntimed)
            && self.open_until.fetch_max(until, Ordering::AcqRel) < until
        {
            // Release: whoever reads this tag sees the end stored just above.
            self.hinted_open
                .store(u64::from(now.generation) + 1, Ordering::Release);
        }
    }

    /// For an open period that ends at a dependency's hint: if it is over, start probing
    /// now rather than wait for the timer. Returns whether the state moved (then admission
    /// tries again). A load on rejections; the clock is read only during such a period.
    pub(crate) fn end_hinted_open(self: &Arc<Self>, generation: u32) -> bool {
        // Acquire: pairs with the Release after the period's end was stored.
        self.hinted_open.load(Ordering::Acquire) == u64::from(generation) + 1
            && self.end_open_if_over(generation)
    }

    /// For a breaker open with no timer: if the open period is over, start probing.
    /// Returns whether the state moved.
    pub(crate) fn end_untimed_open(self: &Arc<Self>, generation: u32) -> bool {
        self.end_open_if_over(generation)
    }

    /// Moves open cycle `generation` to half-open if its end has passed. Returns whether
    /// the state moved (by this thread or another).
    fn end_open_if_over(self: &Arc<Self>, generation: u32) -> bool {
        if clock::now() < self.open_until() {
            return false;
        }
        match self.state.open_elapsed(generation) {
            Some(transition) => {
                self.after(transition, TransitionReason::OpenElapsed);
                true
            }
            None => true, // someone else moved it
        }
    }

    /// Everything that follows a transition, run by the thread that made it.
    pub(crate) fn after(self: &Arc<Self>, transition: Transition, reason: TransitionReason) {
        let now = clock::now();
        self.phase_since
            .store(self.nanos_at(now), Ordering::Release);
        match transition.to {
            Phase::Open => {
                let trips = self.consecutive_trips.fetch_add(1, Ordering::Relaxed) + 1;
                // At least as long as the dependency asked (a hint already past is no limit).
                let asked = self.instant_at(self.asked_until.load(Ordering::Relaxed));
                let planned = now + self.open_duration(trips);
                let until = planned.max(asked);
                self.open_until
                    .store(self.nanos_at(until), Ordering::Release);
                let hinted = if asked > planned {
                    u64::from(transition.generation) + 1
                } else {
                    0
                };
                self.hinted_open.store(hinted, Ordering::Release);
                self.arm_open_timer(transition.generation, until);
            }
            Phase::Closed => {
                self.window.start_cycle(transition.generation);
                // A clean close (probes succeeded, or a reset) starts the backoff over, and
                // forgets what the dependency asked before it.
                self.consecutive_trips.store(0, Ordering::Relaxed);
                self.asked_until.store(0, Ordering::Relaxed);
            }
            Phase::Disabled => self.asked_until.store(0, Ordering::Relaxed),
            Phase::HalfOpen | Phase::ForcedOpen | Phase::OpenUntimed => {}
        }
        if self.backpressure
            && matches!(
                transition.to,
                Phase::Closed | Phase::HalfOpen | Phase::Disabled
            )
        {
            self.admitting.notify_waiters();
        }
        self.report(transition, reason, now);
    }

    fn report(&self, transition: Transition, reason: TransitionReason, at: Instant) {
        let event = StateTransition {
            from: State::from(transition.from),
            to: State::from(transition.to),
            reason,
            at,
        };
        let name = self.observer.name();
        let (from, to) = (event.from.as_str(), event.to.as_str());
        if event.from == State::Closed && event.to == State::Open {
            // A trip: the one transition that means a dependency just started failing.
            tracing::warn!(
                breaker = name,
                from,
                to,
                reason = reason.as_str(),
                trip_model = self.window.trip_model(),
                "circuit breaker tripped open"
            );
        } else {
            tracing::info!(
                breaker = name,
                from,
                to,
                reason = reason.as_str(),
                "circuit breaker state changed"
            );
        }
        #[cfg(feature = "metrics")]
        self.metrics.transition(event.to);
        self.observer.emit(&Event::BreakerTransition {
            name,
            from: event.from,
            to: event.to,
            reason,
        });
        if let Some(listener) = &self.listener {
            listener(&event);
        }
    }

    fn open_duration(&self, trips: u64) -> Duration {
        let base = match self.timing.open {
            OpenDuration::Fixed(duration) => duration,
            OpenDuration::Exponential {
                initial,
                multiplier,
                max,
            } => {
                let exponent = i32::try_from(trips.saturating_sub(1)).unwrap_or(i32::MAX);
                let scaled = initial.as_secs_f64() * multiplier.powi(exponent);
                if scaled.is_finite() && scaled < max.as_secs_f64() {
                    Duration::from_secs_f64(scaled)
                } else {
                    max
                }
            }
        };
        if self.timing.jitter == 0.0 {
            return base;
        }
        // Jitter only shortens, so the configured duration (and cap) is never exceeded.
        let seed = self
            .jitter_seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let cut = SmallRng::seed_from_u64(seed).random_range(0.0..self.timing.jitter);
        base.mul_f64(1.0 - cut)
    }

    /// Ends open cycle `generation` at `until` with a tokio timer, so that admission never
    /// has to read the clock. Without a runtime, admission checks the clock instead.
    fn arm_open_timer(self: &Arc<Self>, generation: u32, until: Instant) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(open_timer(
                    Arc::downgrade(self),
                    generation,
                    until,
                    self.timing.half_open_max_wait,
                ));
            }
            Err(_) => self.state.mark_untimed(generation),
        }
    }
}

/// If the timer task is dropped before it fires (its runtime shut down), the breaker would
/// stay open forever; this guard hands the job to the clock check in admission instead.
struct FallBackToClock {
    shared: Weak<Shared>,
    generation: u32,
    armed: bool,
}

impl Drop for FallBackToClock {
    fn drop(&mut self) {
        if self.armed
            && let Some(shared) = self.shared.upgrade()
        {
            shared.state.mark_untimed(self.generation);
        }
    }
}

/// The life of one open period: wait it out, move to half-open, then watch for probes that
/// hang. Holds the breaker weakly, so a dropped breaker ends the task at its next wake-up.
///
/// The fallback guard is made here, outside the `async` block, so that it is dropped (and
/// does its job) even if the task is dropped before its first poll.
fn open_timer(
    shared: Weak<Shared>,
    generation: u32,
    until: Instant,
    half_open_max_wait: Duration,
) -> impl Future<Output = ()> + Send + 'static {
    let fallback = FallBackToClock {
        shared: shared.clone(),
        generation,
        armed: true,
    };
    async move {
        let mut fallback = fallback;
        tokio::time::sleep_until(until).await;
        // A late hint may have lengthened the period: wait for its end, as long as this
        // period lasts (another one's end is not this timer's to wait for).
        loop {
            let Some(breaker) = shared.upgrade() else {
                return;
            };
            let end = breaker.open_until();
            let current = breaker.state.snapshot().generation == generation;
            drop(breaker);
            if !current || clock::now() >= end {
                break;
            }
            tokio::time::sleep_until(end).await;
        }
        fallback.armed = false;
        watch_half_open(shared, generation, half_open_max_wait).await;
    }
}

async fn watch_half_open(shared: Weak<Shared>, generation: u32, half_open_max_wait: Duration) {
    let half_open = {
        let Some(breaker) = shared.upgrade() else {
            return;
        };
        match breaker.state.open_elapsed(generation) {
            Some(transition) => {
                breaker.after(transition, TransitionReason::OpenElapsed);
                transition.generation
            }
            None => {
                // Ended by admission's clock check (`end_hinted_open`): the half-open cycle
                // it started still wants its watch. Forced, reset or anything else: done.
                let now = breaker.state.snapshot();
                if now.phase != Phase::HalfOpen || now.generation != next_generation(generation) {
                    return;
                }
                now.generation
            }
        }
    };

    // "No probe finished for too long" is checked every `half_open_max_wait` while this
    // half-open cycle lasts: probes in flight and none finished since the previous check
    // means they hang. With no traffic it keeps waiting, since no probe was sent.
    let mut finished_before = 0;
    loop {
        tokio::time::sleep(half_open_max_wait).await;
        let Some(breaker) = shared.upgrade() else {
            return;
        };
        let now = breaker.state.snapshot();
        if now.phase != Phase::HalfOpen || now.generation != half_open {
            return;
        }
        if let Some(transition) = breaker.state.half_open_stalled(half_open, finished_before) {
            // Reopening arms a new timer task for the new open period.
            breaker.after(transition, TransitionReason::HalfOpenStalled);
            return;
        }
        finished_before = now.finished;
    }
}

/// A time window's buckets move with the breaker's window timer.
impl Epochs for Shared {
    fn ticker(&self) -> Option<&Ticker> {
        self.window_ticker.as_ref()
    }

    fn advance_to(&self, epoch: u64) {
        self.window.advance_to(epoch);
    }

    fn epoch(&self) -> u64 {
        self.window.epoch().unwrap_or(0)
    }

    fn activity(&self) -> u64 {
        self.window.total_calls()
    }
}
