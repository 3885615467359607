//! A timer task that moves bucketed state (a breaker's time window, a retry budget) from one
//! bucket to the next as time passes, so that the call path finds its bucket with one load
//! instead of a clock read (about 21 ns here, more than some layers' whole budget).
//!
//! The state says how to move ([`Epochs::advance_to`]); a [`Ticker`] keeps a tokio task doing
//! it at every bucket boundary while the state is in use, and stops it once the state has sat
//! idle for a given number of buckets (by then there is nothing left to move). The call path
//! calls [`Ticker::keep_moving`]: one load while the task runs. When it does not (first use,
//! after an idle stop, or outside a tokio runtime), that call catches the state up by the
//! clock itself and, inside a runtime, starts the task again.

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::clock::{self, Instant};
use crate::sync::{AtomicBool, AtomicU64, Ordering, Padded};

/// State that a [`Ticker`] moves forward.
pub(crate) trait Epochs: Send + Sync + 'static {
    /// The ticker that drives this state; `None` if it needs none (a breaker without a time
    /// window), which makes [`Ticker::keep_moving`] a single branch.
    fn ticker(&self) -> Option<&Ticker>;
    /// Moves the state forward to `epoch` (whole periods since the ticker was made). Must be
    /// harmless when called concurrently or with an epoch already reached.
    fn advance_to(&self, epoch: u64);
    /// The epoch the state has reached.
    fn epoch(&self) -> u64;
    /// A count that changes whenever the state is used, so the timer can tell it sits idle.
    fn activity(&self) -> u64;
}

/// Period, origin and on/off switch of one timer task.
#[derive(Debug)]
pub(crate) struct Ticker {
    period: Duration,
    origin: Instant,
    /// Periods without activity after which the task stops.
    idle_periods: u64,
    running: AtomicBool,
}

impl Ticker {
    /// `period` must be at least 1 ns (the builders ask for 1 ms or more).
    pub(crate) fn new(period: Duration, idle_periods: u64) -> Ticker {
        Ticker {
            period,
            origin: clock::now(),
            idle_periods: idle_periods.max(1),
            running: AtomicBool::new(false),
        }
    }

    /// The epoch at `at`: whole periods since the ticker was made.
    pub(crate) fn epoch_at(&self, at: Instant) -> u64 {
        let elapsed = at.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.period.as_nanos().max(1)).unwrap_or(u64::MAX)
    }

    fn epoch_start(&self, epoch: u64) -> Instant {
        let period = u64::try_from(self.period.as_nanos()).unwrap_or(u64::MAX);
        self.origin + Duration::from_nanos(period.saturating_mul(epoch))
    }

    /// Makes sure `state` is moved forward as time passes: one load when its timer runs.
    #[inline]
    pub(crate) fn keep_moving<T: Epochs>(state: &Arc<T>) {
        if let Some(ticker) = state.ticker()
            && !ticker.running.load(Ordering::Relaxed)
        {
            start(state, ticker);
        }
    }
}

#[cold]
fn start<T: Epochs>(state: &Arc<T>, ticker: &Ticker) {
    // Catch up first, so this use counts in the bucket of now, not of the past.
    state.advance_to(ticker.epoch_at(clock::now()));
    // Without a runtime there is no timer: every use catches up like this one.
    if let Ok(runtime) = tokio::runtime::Handle::try_current()
        && ticker
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    {
        runtime.spawn(run(Arc::downgrade(state)));
    }
}

/// Switches the ticker off when its task ends or is dropped with its runtime, so that the
/// next use starts a new one.
struct Running<T: Epochs> {
    state: Weak<T>,
}

impl<T: Epochs> Drop for Running<T> {
    fn drop(&mut self) {
        if let Some(state) = self.state.upgrade()
            && let Some(ticker) = state.ticker()
        {
            ticker.running.store(false, Ordering::Release);
        }
    }
}

/// The timer task. Holds the state weakly, so a dropped state ends it at its next wake-up.
/// The switch-off guard is made outside the `async` block so that it runs even if the task
/// is dropped before its first poll.
fn run<T: Epochs>(state: Weak<T>) -> impl Future<Output = ()> + Send + 'static {
    let running = Running {
        state: state.clone(),
    };
    async move {
        let _running = running;
        let mut last_activity = None;
        let mut idle = 0_u64;
        loop {
            let next = {
                let Some(state) = state.upgrade() else {
                    return;
                };
                let Some(ticker) = state.ticker() else {
                    return;
                };
                ticker.epoch_start(state.epoch().saturating_add(1))
            };
            tokio::time::sleep_until(next).await;
            let Some(state) = state.upgrade() else {
                return;
            };
            let Some(ticker) = state.ticker() else {
                return;
            };
            state.advance_to(ticker.epoch_at(clock::now()));
            let activity = state.activity();
            if last_activity == Some(activity) {
                idle += 1;
                if idle >= ticker.idle_periods {
                    return;
                }
            } else {
                idle = 0;
            }
            last_activity = Some(activity);
        }
    }
}

/// How a [`BucketClock`] word packs the epoch with its bucket.
const BUCKET_BITS: u32 = 16;
const BUCKET_MASK: u64 = (1 << BUCKET_BITS) - 1;

/// The most buckets a [`BucketClock`] can have.
pub(crate) const MAX_BUCKETS: u64 = BUCKET_MASK;

/// Where bucketed counts are in time: the current epoch and its bucket (`epoch % buckets`),
/// packed in one word so that a recorder finds its bucket with one load and no division,
/// plus the rule every mover follows: a bucket is emptied *before* the epoch that makes it
/// current is published, so no count is ever swept away by the emptying.
#[derive(Debug)]
pub(crate) struct BucketClock {
    word: Padded<AtomicU64>,
    /// Held by whoever is moving the epoch, so that two movers never empty a bucket the other
    /// has already published as current.
    advancing: AtomicBool,
    buckets: u64,
}

impl BucketClock {
    /// `buckets` in `1..=MAX_BUCKETS`, validated by the builders.
    pub(crate) fn new(buckets: u64) -> BucketClock {
        BucketClock {
            word: Padded(AtomicU64::new(0)),
            advancing: AtomicBool::new(false),
            buckets: buckets.clamp(1, MAX_BUCKETS),
        }
    }

    pub(crate) fn buckets(&self) -> u64 {
        self.buckets
    }

    /// The bucket of the current epoch: one load.
    #[inline]
    pub(crate) fn bucket(&self) -> usize {
        // Acquire: pairs with the Release that published the epoch after emptying its bucket.
        (self.word.0.load(Ordering::Acquire) & BUCKET_MASK) as usize
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.word.0.load(Ordering::Acquire) >> BUCKET_BITS
    }

    /// Moves forward to `epoch`, calling `empty` for each bucket before it becomes current
    /// (for every bucket at once when a whole window has passed). If another thread is
    /// already moving, returns at once: that thread will get there.
    pub(crate) fn advance_to(&self, epoch: u64, mut empty: impl FnMut(usize)) {
        // Acquire: see the buckets as the previous mover left them.
        if self
            .advancing
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let mut current = self.word.0.load(Ordering::Relaxed) >> BUCKET_BITS;
        while current < epoch {
            let next = if epoch - current >= self.buckets {
                (0..self.buckets as usize).for_each(&mut empty);
                epoch
            } else {
                empty(((current + 1) % self.buckets) as usize);
                current + 1
            };
            // Release: a recorder that reads the new epoch (Acquire) adds to a bucket that is
            // already empty.
            self.word.0.store(
                (next << BUCKET_BITS) | (next % self.buckets),
                Ordering::Release,
            );
            current = next;
        }
        self.advancing.store(false, Ordering::Release);
    }
}
