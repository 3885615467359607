//! The bounded wait queue: callers that find the limit full wait, for at most `max_wait`, for
//! a slot that a finishing call hands to them, first-in-first-out or last-in-first-out.
//!
//! Not the hot path: the list of waiters is behind a lock, which is taken only when a caller
//! must wait, when a waiting clone is polled again, gives up or is served, and when a slot is
//! freed *while someone waits*. The count of waiters is an atomic that a finishing call reads
//! first, so with nobody waiting, freeing a slot takes no lock. The list is ordered by arrival
//! (ids are given under the lock, in order, and every re-insertion keeps the order), so a
//! waiter finds its entry by binary search, and the entries past their `max_wait` are always
//! at its front.
//!
//! # `max_wait` holds without polling
//!
//! Each entry carries its deadline. Whoever takes the lock to join the queue or to hand over
//! a slot first removes the entries whose deadline has passed and wakes them: a waiter whose
//! caller stopped polling (it dropped the `ready()` future but kept the service) does not
//! keep its place, or take a slot freed after its deadline. A slot handed over *before* the
//! deadline is the clone's, as a slot `poll_ready` reserved always is, until it calls or is
//! dropped.
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
use crate::clock::Instant;
use crate::sync::{AtomicU64, Mutex, Ordering, fence};

/// Now, for deadlines. Under loom, the plain monotonic clock: the models never reach a
/// deadline, and tokio's clock is not meant to run inside them.
#[cfg(not(loom))]
fn now() -> Instant {
    crate::clock::now()
}

#[cfg(loom)]
fn now() -> Instant {
    Instant::from_std(std::time::Instant::now())
}

/// A ticket's states: still in the list, served with a slot, or removed at its deadline.
const WAITING: u64 = 0;
const GRANTED: u64 = 1;
const EXPIRED: u64 = 2;

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
    deadline: Instant,
    waker: Waker,
    state: Arc<AtomicU64>,
}

/// A place in the queue.
#[derive(Debug)]
pub(crate) struct Ticket {
    id: u64,
    /// When the wait ends without a slot.
    pub(crate) deadline: Instant,
    /// `WAITING`, then, under the lock, `GRANTED` by the finishing call that took a slot on
    /// this waiter's behalf or `EXPIRED` by whoever removed it at its deadline.
    state: Arc<AtomicU64>,
}

impl Ticket {
    pub(crate) fn granted(&self) -> bool {
        // Acquire: pairs with the Release that granted it.
        self.state.load(Ordering::Acquire) == GRANTED
    }

    pub(crate) fn expired(&self) -> bool {
        self.state.load(Ordering::Acquire) == EXPIRED
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

    /// Removes the entries whose deadline is at or before `now` (all at the front: see the
    /// module docs), marking them expired; returns their wakers, to wake outside the lock.
    fn expire_overdue(&self, list: &mut VecDeque<Entry>, now: Instant) -> Vec<Waker> {
        let mut expired = Vec::new();
        while list.front().is_some_and(|entry| entry.deadline <= now) {
            let entry = list.pop_front().expect("checked");
            self.waiters.fetch_sub(1, Ordering::SeqCst);
            entry.state.store(EXPIRED, Ordering::Release);
            expired.push(entry.waker);
        }
        expired
    }

    /// The index of `ticket`'s entry, if it is still in the list.
    fn position(list: &VecDeque<Entry>, ticket: &Ticket) -> Option<usize> {
        list.binary_search_by_key(&ticket.id, |entry| entry.id).ok()
    }

    /// Joins the queue, woken through `waker` when served or at its deadline, unless it is
    /// full or a slot is free after all.
    pub(crate) fn enqueue(&self, limiter: &Limiter, waker: &Waker) -> Enqueued {
        let now = now();
        let mut list = self.lock();
        let expired = self.expire_overdue(&mut list, now);
        if list.len() >= self.capacity {
            drop(list);
            expired.into_iter().for_each(Waker::wake);
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
                drop(list);
                expired.into_iter().for_each(Waker::wake);
                return Enqueued::Granted(in_flight);
            }
        }
        let ticket = Ticket {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            deadline: now + self.max_wait,
            state: Arc::new(AtomicU64::new(WAITING)),
        };
        list.push_back(Entry {
            id: ticket.id,
            deadline: ticket.deadline,
            waker: waker.clone(),
            state: Arc::clone(&ticket.state),
        });
        drop(list);
        expired.into_iter().for_each(Waker::wake);
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
        let now = now();
        loop {
            let (expired, served) = {
                let mut list = self.lock();
                // Waiters past their deadline go first, so the slot goes to one still waiting.
                let expired = self.expire_overdue(&mut list, now);
                (expired, self.serve_next(&mut list, limiter))
            };
            // Woken outside the lock.
            expired.into_iter().for_each(Waker::wake);
            match served {
                Some(waker) => waker.wake(),
                None => return,
            }
        }
    }

    /// Takes a free slot for the next waiter in the queue's order and marks it served;
    /// returns its waker, or `None` if nobody waits or no slot is free.
    fn serve_next(&self, list: &mut VecDeque<Entry>, limiter: &Limiter) -> Option<Waker> {
        let entry = match self.order {
            QueueOrder::Fifo => list.pop_front(),
            QueueOrder::Lifo => list.pop_back(),
        }?;
        if limiter.try_acquire().is_err() {
            // Taken by a caller that did not queue, or the limit fell: the waiter keeps its
            // place, and the next slot freed comes here again.
            match self.order {
                QueueOrder::Fifo => list.push_front(entry),
                QueueOrder::Lifo => list.push_back(entry),
            }
            return None;
        }
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        entry.state.store(GRANTED, Ordering::Release);
        Some(entry.waker)
    }

    /// Replaces the waker of `ticket`'s entry, if it is still waiting.
    pub(crate) fn update_waker(&self, ticket: &Ticket, waker: &Waker) {
        let mut list = self.lock();
        if let Some(index) = Self::position(&list, ticket)
            && !list[index].waker.will_wake(waker)
        {
            list[index].waker = waker.clone();
        }
    }

    /// Leaves the queue. `false` if `ticket` was already served (its slot is then the
    /// caller's to use or give back) or removed at its deadline.
    pub(crate) fn cancel(&self, ticket: &Ticket) -> bool {
        let mut list = self.lock();
        match Self::position(&list, ticket) {
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
