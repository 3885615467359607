//! One service clone's side of the wait queue: the slot it reserved in `poll_ready`, or its
//! place in the queue and the timer of its maximum wait, or a rejection to answer `call` with.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Sleep;

use super::Local;
use super::future::Permit;
use super::queue::{Enqueued, Ticket, WaitQueue};

/// Where one clone stands between `poll_ready` and `call`.
#[derive(Debug, Default)]
pub(crate) struct Waiting {
    /// A slot taken in `poll_ready`, for the next `call`.
    reserved: Option<Permit>,
    /// A place in the queue.
    wait: Option<Wait>,
    /// The wait ended without a slot (queue full, or `max_wait` passed): the next `call`
    /// is rejected, reporting this limit (the one the wait failed against), unless a slot is
    /// free when `poll_ready` is called again.
    reject: Option<u64>,
}

/// A place in the queue, left on drop: a clone dropped while waiting (its caller gave up)
/// never holds or leaks a slot.
#[derive(Debug)]
struct Wait {
    ticket: Option<Ticket>,
    deadline: Pin<Box<Sleep>>,
    local: Arc<Local>,
}

impl Wait {
    fn queue(&self) -> &WaitQueue {
        self.local.queue.as_deref().expect("waiting needs a queue")
    }

    /// The slot this place was served with, if it was.
    fn take_slot(&mut self) -> Option<Permit> {
        let ticket = self.ticket.take_if(|ticket| ticket.granted())?;
        drop(ticket);
        // The finishing call took the slot on this waiter's behalf.
        Some(self.local.permit_for(self.local.limiter.in_flight()))
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if let Some(ticket) = &self.ticket
            && !self.queue().cancel(ticket)
            && ticket.granted()
        {
            // Served just before leaving: give the slot back (to the next waiter). Not in the
            // list and not granted means removed at its deadline: no slot to give back.
            drop(Permit::new(Arc::clone(&self.local)));
        }
    }
}

/// What `call` should do after `poll_ready`.
#[derive(Debug)]
pub(crate) enum Ready {
    /// Use this slot.
    Slot(Permit),
    /// Reject, reporting this limit.
    Reject(u64),
    /// `poll_ready` did not reserve anything: decide now, without waiting.
    Undecided,
}

impl Waiting {
    /// Reserves a slot, waiting for one in the queue if the limit is full: `Ready` once a
    /// slot is reserved or the wait is over without one (the next `call` is then rejected).
    pub(crate) fn poll_slot(&mut self, local: &Arc<Local>, cx: &mut Context<'_>) -> Poll<()> {
        if self.reserved.is_some() {
            return Poll::Ready(());
        }
        let queue = local.queue.as_deref().expect("waiting needs a queue");
        if self.reject.is_some() {
            // A verdict from an earlier overload is only good while it lasts: with a slot
            // free now (and nobody ahead), serve instead. Not queued again: a caller that
            // polls again while the inner service is not ready must get an answer.
            if !queue.has_waiters()
                && let Ok(in_flight) = local.limiter.try_acquire()
            {
                self.reject = None;
                self.reserve(local, in_flight);
            }
            return Poll::Ready(());
        }
        loop {
            if let Some(wait) = &mut self.wait {
                if let Some(permit) = wait.take_slot() {
                    self.wait = None;
                    self.reserved = Some(permit);
                    return Poll::Ready(());
                }
                let ticket = wait.ticket.as_ref().expect("still waiting");
                if ticket.expired() {
                    // Removed at its deadline by another caller, which woke this one.
                    wait.ticket = None;
                    self.wait = None;
                    self.reject = Some(local.limiter.limit());
                    return Poll::Ready(());
                }
                if wait.deadline.as_mut().poll(cx).is_ready() {
                    let ticket = wait.ticket.as_ref().expect("still waiting");
                    if queue.cancel(ticket) {
                        wait.ticket = None;
                        self.wait = None;
                        self.reject = Some(local.limiter.limit());
                        return Poll::Ready(());
                    }
                    // Served or expired meanwhile: the next turn says which.
                    continue;
                }
                let ticket = wait.ticket.as_ref().expect("still waiting");
                queue.update_waker(ticket, cx.waker());
                // Served between the check above and the new waker: take it now.
                if ticket.granted() {
                    continue;
                }
                return Poll::Pending;
            }
            // Nobody waits: take a free slot as the no-queue path does.
            if !queue.has_waiters()
                && let Ok(in_flight) = local.limiter.try_acquire()
            {
                self.reserve(local, in_flight);
                return Poll::Ready(());
            }
            match queue.enqueue(&local.limiter, cx.waker()) {
                Enqueued::Full => {
                    self.reject = Some(local.limiter.limit());
                    return Poll::Ready(());
                }
                Enqueued::Granted(in_flight) => {
                    self.reserve(local, in_flight);
                    return Poll::Ready(());
                }
                Enqueued::Waiting(ticket) => {
                    self.wait = Some(Wait {
                        deadline: Box::pin(tokio::time::sleep_until(ticket.deadline)),
                        ticket: Some(ticket),
                        local: Arc::clone(local),
                    });
                }
            }
        }
    }

    fn reserve(&mut self, local: &Arc<Local>, in_flight: u64) {
        self.reserved = Some(local.permit_for(in_flight));
    }

    /// What `poll_ready` left for this `call`.
    pub(crate) fn take(&mut self) -> Ready {
        if let Some(permit) = self.reserved.take() {
            Ready::Slot(permit)
        } else if let Some(limit) = self.reject.take() {
            Ready::Reject(limit)
        } else {
            Ready::Undecided
        }
    }
}
