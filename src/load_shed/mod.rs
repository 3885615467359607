//! Load shedding: reject work beyond a concurrency limit at once, with
//! [`Overloaded`], instead of queueing it until it is too late to be useful.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_firebreak::ServiceBuilderExt;
//! use tower_firebreak::error::{BoxError, ErrorKind};
//! use tower_firebreak::load_shed::LoadShedLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let slow = service_fn(|_: ()| async {
//!     tokio::time::sleep(Duration::from_secs(1)).await;
//!     Ok::<_, BoxError>("done")
//! });
//! let mut svc = tower::ServiceBuilder::new()
//!     .load_shed_with(LoadShedLayer::builder().max_concurrency(1).build()?)
//!     .service(slow);
//!
//! let first = svc.ready().await?.call(());    // takes the one slot
//! let second = svc.ready().await?.call(());   // none left: rejected at once
//! let err = second.await.unwrap_err();
//! assert_eq!(ErrorKind::of(&*err), ErrorKind::Overloaded);
//! assert_eq!(ErrorKind::retry_after(&*err), Some(Duration::from_secs(1)));
//! assert_eq!(first.await?, "done");
//! # Ok(())
//! # }
//! ```
//!
//! # Why reject instead of queue
//!
//! `tower::limit::ConcurrencyLimit` makes callers wait in `poll_ready` for a slot. Under
//! overload the wait grows until requests time out after having waited, which is the slowest
//! way to fail and keeps the caller's own resources tied up (tower issue 793 asks for a
//! rejecting limit). [`LoadShed`] answers at once: a caller can retry elsewhere, serve a
//! fallback, or pass the rejection on (an HTTP server answers 503 with `Retry-After`).
//!
//! # Adaptive limits
//!
//! The right limit is rarely known, and it moves with the service's speed. An adaptive limit
//! learns it from the calls it admits: their latency, and whether they were dropped further
//! down (an error of kind `TimedOut`, `DeadlineExceeded` or `Overloaded`, see
//! [`ErrorKind`](crate::error::ErrorKind)). Choose one with
//! [`limit`](LoadShedLayerBuilder::limit):
//!
//! | algorithm | learns from | when to pick it |
//! | --- | --- | --- |
//! | [`Fixed`] (`max_concurrency`) | nothing | the capacity is known (a pool, a thread count) |
//! | [`Aimd`] | drops, and calls slower than its `drop_latency` | a clear failure signal exists |
//! | [`Gradient2`] | recent latency against its long-term average | latency varies, no target known |
//! | [`Vegas`] | the queue estimated from no-load and recent latency | steady service times |
//! | [`SlaGuard`] (`latency_objective`) | calls over a latency objective | a latency target must hold |
//!
//! ```
//! use std::time::Duration;
//! use tower_firebreak::load_shed::{Gradient2, LoadShedLayer};
//!
//! # fn main() -> Result<(), tower_firebreak::error::ConfigError> {
//! // Shed early so that 99% of admitted calls answer within 50 ms.
//! let guard = LoadShedLayer::builder().latency_objective(Duration::from_millis(50)).build()?;
//! // Or learn the limit from latency alone, between 10 and 500.
//! let gradient = LoadShedLayer::builder()
//!     .limit(Gradient2::default().initial(50).min(10).max(500))
//!     .build()?;
//! assert_eq!(gradient.limit(), 50); // the limit now, for metrics
//! # let _ = guard;
//! # Ok(())
//! # }
//! ```
//!
//! Each algorithm is a small state machine over **sampling windows**
//! ([`sample_window`](LoadShedLayerBuilder::sample_window), default 100 ms and at least 10
//! calls): completed calls add their latency to counters held in atomics, and the call that
//! completes a window folds it into the algorithm and stores the new limit, while every
//! other call goes on without waiting. A window also closes early once at least its minimum
//! number of calls, and most of its calls, were slower than the algorithm's alarm latency,
//! so a sudden overload is answered after a few slow calls rather than at the end of a
//! window. Every algorithm grows the limit only after a window in which the calls in flight
//! reached half of it: a limit that is not what holds traffic back is not evidence that a
//! higher one would be safe, and without this guard limits creep up to their maximum while
//! the service is quiet. Each algorithm's documentation gives its parameters, its known
//! drifts and what this crate does about them.
//!
//! Measured in `tests/load_shed_sim.rs` (virtual time, seeded): a server of 10 workers,
//! 10 ms each, with an unbounded FIFO queue, offered 3× its capacity for 10 s. Every
//! adaptive limit kept goodput at 97% of capacity or more and the p99 latency of admitted
//! calls at 1.9 × the unloaded latency or less, and stopped shedding within 1 s of the load
//! falling back.
//!
//! # Behaviour
//!
//! - Without a queue, `poll_ready` is the inner service's; `call` takes a slot or fails at
//!   once with a boxed [`Overloaded`] carrying the limit it found full and the layer's
//!   [`retry_after`](LoadShedLayerBuilder::retry_after) hint, without calling the inner
//!   service.
//! - The slot is held by the response future and given back when the inner future completes,
//!   or when the response future is dropped (cancellation), or when the inner service panics:
//!   no path leaks a slot. The limit is never exceeded: taking a slot is one
//!   compare-and-swap from the count the decision was made on, against the limit read just
//!   before (a loom model checks it). When an adaptive limit falls below the calls in
//!   flight, admissions stop until enough of them finish.
//! - A cancelled call is not sampled: it says nothing about how long the work takes.
//! - Clones share the limit. This crate's retry layer never retries [`Overloaded`].
//!
//! # Cost
//!
//! - **Fixed limit**: one compare-and-swap to take the slot, one decrement to give it back,
//!   and the reference count of the shared limit (in the response future). No allocation, no
//!   clock read.
//! - **Adaptive limit**: the same, plus two clock reads (admission and completion) and two
//!   atomic additions to the window's counters per call, two more for a call that was
//!   dropped or slow (a minimum and a maximum are compared first and written only when they
//!   change); once a window, one call folds it. No allocation, no lock. See
//!   `BENCHMARKS.md` for the figures.
//! - A rejected call allocates the boxed error it returns.
//! - **With a queue**: a caller that must wait allocates its timer and its place in the
//!   list, and takes the lock; a finishing call takes it only when someone waits.
//!
//! # Client-side throttling
//!
//! [`ThrottleLayer`] is the other side: a client that sees its dependency reject requests as
//! overloaded rejects some of its own, locally, with [`Throttled`] (Google SRE, chapter 21),
//! so that what it sends settles at about `k` times what the dependency accepts.
//!
//! # Waiting briefly instead: the bounded queue
//!
//! [`queue`](LoadShedLayerBuilder::queue) lets a few callers wait, each for at most
//! `max_wait`, for a slot when the limit is full, served first-in-first-out or, under
//! overload usually better, last-in-first-out ([`QueueOrder`]): the freshest requests are
//! served while their callers are still there, the oldest time out. A full queue or an
//! expired wait is answered with [`Overloaded`], as without a queue.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_firebreak::error::BoxError;
//! use tower_firebreak::load_shed::{LoadShedLayer, QueueOrder};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let layer = LoadShedLayer::builder()
//!     .max_concurrency(1)
//!     .queue(8, Duration::from_millis(50), QueueOrder::Lifo)
//!     .build()?;
//! let svc = tower::ServiceBuilder::new().layer(layer).service(service_fn(|_: ()| async {
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//!     Ok::<_, BoxError>("done")
//! }));
//! let first = tokio::spawn(svc.clone().oneshot(()));
//! tokio::task::yield_now().await;
//! // The limit is full: this waits in the queue for the first call's slot, 10 ms.
//! assert_eq!(svc.oneshot(()).await?, "done");
//! assert_eq!(first.await??, "done");
//! # Ok(())
//! # }
//! ```
//!
//! With a queue, `poll_ready` reserves the slot, taking a free one or waiting in the queue,
//! and the response future of the next `call` holds it (tower's contract). `poll_ready`
//! returns `Pending` only while waiting; a finishing call wakes the waiter it hands its slot
//! to, and the wait's timer wakes it at `max_wait`. A service clone dropped while waiting
//! leaves the queue, and a slot handed to it just before goes back (to the next waiter): no
//! waiter holds or leaks a slot. The waiters are a list behind a lock, which is not on the
//! hot path: a finishing call reads an atomic count of waiters first and takes the lock
//! only when someone waits, and a caller takes it only to wait (a loom model checks that a
//! slot freed while a caller joins the queue is never lost). Without a queue, nothing of it
//! runs.

mod error;
mod future;
mod layer;
mod limit;
mod queue;
mod throttle;
mod waiting;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::Service;

pub use self::error::Overloaded;
use self::future::Permit;
pub use self::future::ResponseFuture;
pub use self::layer::{LoadShedLayer, LoadShedLayerBuilder};
use self::limit::Limiter;
pub(crate) use self::limit::MAX_LIMIT;
pub use self::limit::{Aimd, Fixed, Gradient2, Limit, SlaGuard, Vegas};
pub use self::queue::QueueOrder;
use self::queue::WaitQueue;
pub use self::throttle::{
    IsRejection, OverloadedIsRejection, Throttle, ThrottleFuture, ThrottleLayer,
    ThrottleLayerBuilder, Throttled,
};
use self::waiting::{Ready, Waiting};
use crate::clock::Instant;
use crate::error::BoxError;
use crate::observe::LoadShedObserver;

/// A service that rejects calls beyond its concurrency limit. Made by [`LoadShedLayer`]; see
/// the [module docs](self).
pub struct LoadShed<S> {
    inner: S,
    local: Arc<Local>,
    /// With a wait queue: what `poll_ready` reserved for the next `call`.
    waiting: Waiting,
}

/// What one service clone shares with its response futures: the shared limit, the hint and
/// the limit's time origin.
/// Each clone has its own, so the reference count a call takes for its permit is on a cache
/// line of its own (the alignment keeps neighbours off it), and the only line all threads
/// write is the count of calls in flight.
#[repr(align(128))]
#[derive(Debug)]
pub(crate) struct Local {
    pub(crate) limiter: Arc<Limiter>,
    retry_after: Duration,
    /// Whether the limit is adaptive (calls are timed), kept here, on the clone's own line,
    /// so that a fixed limit's call path reads nothing more of the shared limiter.
    pub(crate) adaptive: bool,
    pub(crate) origin: Instant,
    /// The layer's wait queue, if it has one.
    pub(crate) queue: Option<Arc<WaitQueue>>,
    /// Reports sheds and limit changes (`tracing`, listener, metrics); off the admitted path.
    pub(crate) observer: Arc<LoadShedObserver>,
}

impl Local {
    /// The permit for a slot just taken for this clone, which brought the calls in flight to
    /// `in_flight`: an adaptive limit notes that for its window's maximum.
    #[inline]
    pub(crate) fn permit_for(self: &Arc<Self>, in_flight: u64) -> Permit {
        if self.adaptive {
            self.limiter.admitted(in_flight);
        }
        Permit::new(Arc::clone(self))
    }
}

impl<S: Clone> Clone for LoadShed<S> {
    fn clone(&self) -> Self {
        LoadShed::new(
            self.inner.clone(),
            Arc::clone(&self.local.limiter),
            self.local.retry_after,
            self.local.origin,
            self.local.queue.clone(),
            Arc::clone(&self.local.observer),
        )
    }
}

impl<S> LoadShed<S> {
    fn new(
        inner: S,
        limiter: Arc<Limiter>,
        retry_after: Duration,
        origin: Instant,
        queue: Option<Arc<WaitQueue>>,
        observer: Arc<LoadShedObserver>,
    ) -> Self {
        LoadShed {
            inner,
            local: Arc::new(Local {
                adaptive: limiter.is_adaptive(),
                limiter,
                retry_after,
                origin,
                queue,
                observer,
            }),
            waiting: Waiting::default(),
        }
    }

    inner_service_accessors!();

    /// Calls in flight now, through every service sharing this limit.
    pub fn in_flight(&self) -> u64 {
        self.local.limiter.in_flight()
    }

    /// The concurrency limit now, shared by every service of the layer: fixed, or moved by
    /// the adaptive algorithm after each sampling window. For metrics.
    pub fn current_limit(&self) -> u64 {
        self.local.limiter.limit()
    }
}

impl<S: fmt::Debug> fmt::Debug for LoadShed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShed")
            .field("inner", &self.inner)
            .field("limit", &self.local.limiter.limit())
            .field("in_flight", &self.local.limiter.in_flight())
            .finish()
    }
}

impl<S, Request> Service<Request> for LoadShed<S>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.local.queue.is_some() && self.waiting.poll_slot(&self.local, cx).is_pending() {
            return Poll::Pending;
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let local = &self.local;
        if local.queue.is_some() {
            match self.waiting.take() {
                Ready::Slot(permit) => return self.admit(permit, request),
                Ready::Reject(limit) => return self.reject(limit),
                Ready::Undecided => {}
            }
        }
        let in_flight = match local.limiter.try_acquire() {
            Ok(in_flight) => in_flight,
            Err(limit) => return self.reject(limit),
        };
        // The permit exists before the inner call, so a panic in `call` gives the slot back.
        let permit = local.permit_for(in_flight);
        self.admit(permit, request)
    }
}

impl<S> LoadShed<S> {
    #[inline]
    fn admit<Request>(&mut self, permit: Permit, request: Request) -> ResponseFuture<S::Future>
    where
        S: Service<Request>,
    {
        if self.local.adaptive {
            let started_ns = permit.admitted_at();
            return ResponseFuture::timed(self.inner.call(request), permit, started_ns);
        }
        ResponseFuture::admitted(self.inner.call(request), permit)
    }

    #[cold]
    fn reject<F>(&self, limit: u64) -> ResponseFuture<F> {
        self.local.observer.shed(limit);
        ResponseFuture::rejected(Overloaded::new(limit, self.local.retry_after))
    }
}
