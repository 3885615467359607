//! The bounded wait queue: callers that find the limit full wait, for at most `max_wait`, for
//! a slot that a finishing call hands to them, first-in-first-out or last-in-first-out.
//!
//! Not the hot path: the list of waiters is behind a lock, which is taken only when a caller
//! must wait, when a waiter changes its waker, gives up or is served, and when a slot is freed
//! *while someone waits*. The count of waiters is an atomic that a finishing call reads first,
//! so with nobody waiting, freeing a slot takes no lock.
//!
//! # No lost wake-up
//!
//! A finishing call frees its slot, then reads the count of waiters; a caller about to wait
//! raises the count, then tries once more for a slot (both with a sequentially consistent
//! fence between the two steps). Either the finishing call sees the waiter and hands it the
//! slot, or the waiter sees the free slot and takes it: never neither.

use std::collections::VecDeque;
use std::sync::{Arc, PoisonError};
use std::task::Waker;
use std::time::Duration;

use super::limit::Limiter;
use crate::sync::{AtomicBool, AtomicU64, Mutex, Ordering, fence};

/// Which waiter a freed slot goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueOrder {
    /// The one that has waited longest: fair, but under a long overload every waiter has
    /// waited nearly `max_wait` by the time it is served.
    Fifo,
    /// The one that arrived last: under overload the freshest requests are served while
    /// their callers still wait for them, and the oldest time out (as Facebook's adaptive
    /// LIFO does).
    Lifo,
}

/// The shared wait queue of one layer.
#[derive(Debug)]
pub(crate) struct WaitQueue {
    capacity: usize,
    pub(crate) max_wait: Duration,
    order: QueueOrder,
    /// How many entries `list` holds; read without the lock by every finishing call.
    waiters: AtomicU64,
    next_id: AtomicU64,
    list: Mutex<VecDeque<Entry>>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    waker: Waker,
    granted: Arc<AtomicBool>,
}

/// A place in the queue.
#[derive(Debug)]
pub(crate) struct Ticket {
    id: u64,
    /// Set, under the lock, by the finishing call that took a slot on this waiter's behalf.
    granted: Arc<AtomicBool>,
}

impl Ticket {
    pub(crate) fn granted(&self) -> bool {
        // Acquire: pairs with the Release that granted it.
        self.granted.load(Ordering::Acquire)
    }
}

/// What asking to wait gave.
#[derive(Debug)]
pub(crate) enum Enqueued {
    /// The queue is full: reject.
    Full,
    /// A slot came free while asking: taken; the calls now in flight.
    Granted(u64),
    /// Waiting.
    Waiting(Ticket),
}

impl WaitQueue {
    /// `capacity >= 1` and `max_wait > 0`, validated by the builder.
    pub(crate) fn new(capacity: usize, max_wait: Duration, order: QueueOrder) -> WaitQueue {
        WaitQueue {
            capacity,
            max_wait,
            order,
            waiters: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            list: Mutex::new(VecDeque::new()),
        }
    }

    /// Whether anyone waits (one load, no lock).
    #[inline]
    pub(crate) fn has_waiters(&self) -> bool {
        self.waiters.load(Ordering::Relaxed) > 0
    }

    /// Callers waiting now.
    pub(crate) fn len(&self) -> u64 {
        self.waiters.load(Ordering::Relaxed)
    }

    fn lock(&self) -> impl std::ops::DerefMut<Target = VecDeque<Entry>> + '_ {
        // Nothing panics while holding it, but a poisoned list is still consistent.
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the queue, woken through `waker` when served, unless it is full or a slot is
    /// free after all.
    pub(crate) fn enqueue(&self, limiter: &Limiter, waker: &Waker) -> Enqueued {
        let mut list = self.lock();
        if list.len() >= self.capacity {
            return Enqueued::Full;
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        if list.is_empty() {
            // Announced first, then one more try: a call that finished before the count was
            // raised left its slot free, and this sees it (see the module docs). With others
            // already waiting, their turn comes first.
            fence(Ordering::SeqCst);
            if let Ok(in_flight) = limiter.try_acquire() {
                self.waiters.fetch_sub(1, Ordering::SeqCst);
                return Enqueued::Granted(in_flight);
            }
        }
        let ticket = Ticket {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            granted: Arc::new(AtomicBool::new(false)),
        };
        list.push_back(Entry {
            id: ticket.id,
            waker: waker.clone(),
            granted: Arc::clone(&ticket.granted),
        });
        Enqueued::Waiting(ticket)
    }

    /// A slot was just given back: hands free slots to waiters, in the queue's order.
    #[inline]
    pub(crate) fn after_release(&self, limiter: &Limiter) {
        // Pairs with the fence in `enqueue`: this sees the waiter, or it saw the free slot.
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.hand_over(limiter);
        }
    }

    #[cold]
    fn hand_over(&self, limiter: &Limiter) {
        loop {
            let waker = {
                let mut list = self.lock();
                let entry = match self.order {
                    QueueOrder::Fifo => list.pop_front(),
                    QueueOrder::Lifo => list.pop_back(),
                };
                let Some(entry) = entry else { return };
                if limiter.try_acquire().is_err() {
                    // Taken by a caller that did not queue, or the limit fell: the waiter
                    // keeps its place, and the next slot freed comes here again.
                    match self.order {
                        QueueOrder::Fifo => list.push_front(entry),
                        QueueOrder::Lifo => list.push_back(entry),
                    }
                    return;
                }
                self.waiters.fetch_sub(1, Ordering::SeqCst);
                entry.granted.store(true, Ordering::Release);
                entry.waker
            };
            // Woken outside the lock.
            waker.wake();
        }
    }

    /// Replaces the waker of `ticket`'s entry, if it is still waiting.
    pub(crate) fn update_waker(&self, ticket: &Ticket, waker: &Waker) {
        let mut list = self.lock();
        if let Some(entry) = list.iter_mut().find(|entry| entry.id == ticket.id)
            && !entry.waker.will_wake(waker)
        {
            entry.waker = waker.clone();
        }
    }

    /// Leaves the queue. `false` if `ticket` was already served: its slot is then the
    /// caller's to use or give back.
    pub(crate) fn cancel(&self, ticket: &Ticket) -> bool {
        let mut list = self.lock();
        match list.iter().position(|entry| entry.id == ticket.id) {
            Some(index) => {
                list.remove(index);
                self.waiters.fetch_sub(1, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// **No lost wake-up.** Limit 1, held. One thread finishes the held call (frees the slot,
    /// then hands free slots to waiters) while another asks to wait: whatever the
    /// interleaving, the waiter ends up with the slot, either at once or handed to it, and
    /// nobody is left waiting.
    #[test]
    fn a_slot_freed_while_a_caller_joins_the_queue_is_never_lost() {
        for order in [QueueOrder::Fifo, QueueOrder::Lifo] {
            loom::model(move || {
                let limiter = Arc::new(Limiter::fixed(1));
                let queue = Arc::new(WaitQueue::new(4, Duration::from_secs(1), order));
                limiter.try_acquire().unwrap();
                let finishing = {
                    let (limiter, queue) = (Arc::clone(&limiter), Arc::clone(&queue));
                    thread::spawn(move || {
                        limiter.release();
                        queue.after_release(&limiter);
                    })
                };
                let enqueued = queue.enqueue(&limiter, Waker::noop());
                finishing.join().unwrap();
                let served = match enqueued {
                    Enqueued::Granted(_) => true,
                    Enqueued::Waiting(ticket) => ticket.granted(),
                    Enqueued::Full => false,
                };
                assert!(served, "the waiter missed the freed slot");
                assert_eq!((limiter.in_flight(), queue.len()), (1, 0));
            });
        }
    }
}
