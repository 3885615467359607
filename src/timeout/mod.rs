//! Per-attempt timeouts and whole-request deadlines.
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_firebreak::ServiceBuilderExt;
//! use tower_firebreak::error::{BoxError, ErrorKind};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let slow = service_fn(|()| async {
//!     tokio::time::sleep(Duration::from_secs(5)).await;
//!     Ok::<_, BoxError>("finally")
//! });
//! let svc = ServiceBuilder::new()
//!     .deadline(Duration::from_secs(1))?           // the whole request: 1 s
//!     .timeout_attempt(Duration::from_secs(2))?    // one attempt: 2 s, but the deadline is sooner
//!     .service(slow);
//!
//! let started = tokio::time::Instant::now();
//! let err = svc.oneshot(()).await.unwrap_err();
//! assert_eq!(ErrorKind::of(&*err), ErrorKind::DeadlineExceeded);
//! assert_eq!(started.elapsed(), Duration::from_secs(1));
//! # Ok(())
//! # }
//! ```
//!
//! - [`Timeout`] bounds one attempt by `min(per-attempt timeout, time left before the
//!   deadline)`. It fails with [`Elapsed`] when its own timeout was the limit, and with
//!   [`DeadlineExceeded`] when the deadline was; a deadline that passed before the call fails
//!   at once, without calling the inner service.
//! - [`Deadline`] sets the request's deadline from a budget and enforces it over everything
//!   below, retries included. [`deadline`] sets one explicitly and reads it anywhere below;
//!   its docs explain how the deadline travels (a task-local) and where it does not.
//!
//! Where the layers go: a timeout *inside* a retry layer limits each attempt; a deadline
//! *outside* it limits the whole request. See the crate docs for the full order.
//!
//! # Cost
//!
//! Neither layer allocates. Both poll the inner future before touching a timer, so a response
//! that is ready on its first poll reads no clock and registers no timer: 5.7 ns per call
//! against 39.6 ns for `tower::timeout`. A pending one arms a single tokio timer on its first
//! `Pending`; building that timer inside the pinned future costs 13 ns more per call than
//! tower's eager timer (104.3 ns against 90.9 ns). `Timeout` reads the clock in `call` only for
//! a request that carries a deadline. Method and figures: `BENCHMARKS.md`.
//!
//! Both need a tokio runtime with time enabled once a response is pending, as tokio's own
//! timers do.
//!
//! # Watching it
//!
//! A [`Timeout`] that fails a call logs it with `tracing` at `debug` and, if its layer was
//! given a [`name`](TimeoutLayerBuilder::name) or a listener
//! ([`on_event`](TimeoutLayerBuilder::on_event)), or with the `metrics` feature, reports it
//! as an [`Event`](crate::observe::Event) and counts it in `firebreak_timeouts_total`. Such a
//! layer hands every response future a reference to what it reports to: one reference-count
//! increment and decrement per call, no allocation. A layer without them costs what is
//! stated above.

pub mod deadline;
mod error;
mod future;
mod layer;
mod observer;

use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::Arc;

use tower::Service;

pub use self::error::{DeadlineExceeded, Elapsed};
pub use self::future::{DeadlineFuture, ResponseFuture};
pub use self::layer::{DeadlineLayer, DeadlineLayerBuilder, TimeoutLayer, TimeoutLayerBuilder};
use self::observer::TimeoutObserver;
use crate::clock;
use crate::error::BoxError;

/// Bounds each call by a per-attempt timeout and the request's deadline.
///
/// Made by [`TimeoutLayer`]. `poll_ready` is the inner service's, unchanged.
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
    observer: Option<Arc<TimeoutObserver>>,
}

impl<S> Timeout<S> {
    fn new(inner: S, timeout: Duration, observer: Option<Arc<TimeoutObserver>>) -> Self {
        Timeout {
            inner,
            timeout,
            observer,
        }
    }

    inner_service_accessors!();
}

impl<S, Request> Service<Request> for Timeout<S>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // Only a request with a deadline pays for a clock read here: it is needed to refuse
        // an attempt that has no time left, and it then doubles as the attempt's start.
        let (deadline, started) = match deadline::current() {
            Some(deadline) => {
                let now = clock::now();
                if now >= deadline {
                    observer::deadline_exceeded(self.observer.as_deref());
                    return ResponseFuture::expired();
                }
                (Some(deadline), Some(now))
            }
            None => (None, None),
        };
        ResponseFuture::running(
            self.inner.call(request),
            self.timeout,
            deadline,
            started,
            self.observer.clone(),
        )
    }
}

/// Gives each request a deadline, visible to every layer below, and enforces it.
///
/// Made by [`DeadlineLayer`]. `poll_ready` is the inner service's, unchanged.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    budget: Duration,
}

impl<S> Deadline<S> {
    fn new(inner: S, budget: Duration) -> Self {
        Deadline { inner, budget }
    }

    inner_service_accessors!();
}

impl<S, Request> Service<Request> for Deadline<S>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let now = clock::now();
        let outer = deadline::current();
        let own = now.checked_add(self.budget);
        let deadline = match (own, outer) {
            (Some(own), Some(outer)) => Some(own.min(outer)),
            (own, outer) => own.or(outer),
        };
        match deadline {
            // Only an outer deadline can already have passed: the budget is positive.
            Some(deadline) if deadline <= now => DeadlineFuture::expired(),
            Some(deadline) => {
                // In force during the inner `call` here, and during every poll of its future.
                let inner = deadline::within(deadline, || self.inner.call(request));
                DeadlineFuture::bounded(inner, deadline)
            }
            None => DeadlineFuture::unbounded(self.inner.call(request)),
        }
    }
}
