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
use crate::sync::{AtomicBool, Ordering};

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
