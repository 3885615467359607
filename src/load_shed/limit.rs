//! The concurrency limit: calls in flight, counted with one compare-and-swap per admission so
//! that the limit is never exceeded, and a permit that gives the slot back when dropped. No
//! tower, no tokio, no clock.

use crate::sync::{AtomicU64, Ordering, Padded};

/// Calls in flight against a fixed limit.
#[derive(Debug)]
pub(crate) struct Limiter {
    limit: u64,
    /// On a cache line of its own, away from the `Arc`'s reference counts.
    in_flight: Padded<AtomicU64>,
}

impl Limiter {
    /// `limit >= 1`, validated by the builder.
    pub(crate) fn new(limit: u64) -> Limiter {
        Limiter {
            limit,
            in_flight: Padded(AtomicU64::new(0)),
        }
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.0.load(Ordering::Relaxed)
    }

    /// Takes a slot if one is free. A compare-and-swap from the count the decision was made
    /// on, so two callers can never both take the last slot; a rejected caller writes
    /// nothing (an increment-then-undo would make others see a full limit that is not).
    pub(crate) fn try_acquire(&self) -> bool {
        let mut in_flight = self.in_flight.0.load(Ordering::Relaxed);
        loop {
            if in_flight >= self.limit {
                return false;
            }
            // Acquire on success, pairing with the Release in `release`: whatever the slot's
            // previous holder did happens before this holder starts, as with a semaphore.
            // (Free on x86, where every RMW is a full barrier.)
            match self.in_flight.0.compare_exchange_weak(
                in_flight,
                in_flight + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => in_flight = actual,
            }
        }
    }

    /// Gives a slot back. Called exactly once per successful [`try_acquire`], by the permit's
    /// drop.
    ///
    /// [`try_acquire`]: Limiter::try_acquire
    pub(crate) fn release(&self) {
        self.in_flight.0.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_again_after_a_release() {
        let limiter = Limiter::new(2);
        assert!(limiter.try_acquire());
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
        assert_eq!(limiter.in_flight(), 2);
        limiter.release();
        assert!(limiter.try_acquire());
        assert!(!limiter.try_acquire());
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// **The limit is never exceeded.** Limit 1: two threads acquire at once, each releasing
    /// what it got, while a third acquires once: at no point are two slots held, and every
    /// acquired slot comes back.
    #[test]
    fn the_limit_is_never_exceeded_and_every_slot_comes_back() {
        loom::model(|| {
            let limiter = Arc::new(Limiter::new(1));
            let held = Arc::new(AtomicU64::new(0));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let limiter = Arc::clone(&limiter);
                    let held = Arc::clone(&held);
                    thread::spawn(move || {
                        if limiter.try_acquire() {
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
            assert!(limiter.try_acquire(), "a slot is free again");
        });
    }
}
