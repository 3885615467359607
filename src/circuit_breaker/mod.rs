//! A lock-free circuit breaker: stop calling a dependency that keeps failing, fail fast while
//! it is open, probe it with a bounded number of calls, close when it recovers.
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_firebreak::circuit_breaker::{CircuitBreakerLayer, CircuitOpen, State};
//! use tower_firebreak::error::{BoxError, ErrorKind};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let breaker = CircuitBreakerLayer::builder()
//!     .consecutive_failures(3)
//!     .open_duration(Duration::from_secs(10))
//!     .jitter(0.0)
//!     .build()?;
//! let handle = breaker.handle();
//! let failing = service_fn(|_: ()| async { Err::<(), BoxError>("connection refused".into()) });
//! let svc = ServiceBuilder::new().layer(breaker).service(failing);
//!
//! for _ in 0..3 {
//!     let err = svc.clone().oneshot(()).await.unwrap_err();
//!     assert_eq!(ErrorKind::of(&*err), ErrorKind::Inner); // the dependency's own error
//! }
//! assert_eq!(handle.state(), State::Open);
//!
//! // Now calls fail at once, without reaching the dependency.
//! let err = svc.clone().oneshot(()).await.unwrap_err();
//! assert_eq!(ErrorKind::of(&*err), ErrorKind::CircuitOpen);
//! let open = err.downcast_ref::<CircuitOpen>().unwrap();
//! assert_eq!(open.retry_after(), Some(Duration::from_secs(10)));
//! # Ok(())
//! # }
//! ```
//!
//! # Behaviour
//!
//! - **Closed**: calls go through. Each result is classified ([`Classify`]; by default any
//!   error is a failure) as a success, a failure, or ignored (not counted). The trip model
//!   decides when to open:
//!   - [`consecutive_failures`](CircuitBreakerLayerBuilder::consecutive_failures): `n`
//!     failures with no success between them;
//!   - [`failure_rate`](CircuitBreakerLayerBuilder::failure_rate): a share of a **count
//!     window** that slides over exactly the last `n` calls;
//!   - [`time_window`](CircuitBreakerLayerBuilder::time_window): a share of the calls of the
//!     last stretch of time, kept in `n` buckets (the error bound is one bucket, documented
//!     there).
//!
//!   Both windows wait for [`min_calls`](CircuitBreakerLayerBuilder::min_calls) calls, and
//!   can also trip on the share of [`slow_calls`](CircuitBreakerLayerBuilder::slow_calls).
//! - **Open**: calls fail at once with [`CircuitOpen`], whose
//!   [`retry_after`](CircuitOpen::retry_after) says when probing starts. The open period is
//!   fixed or grows exponentially over consecutive trips, shortened by random jitter so a
//!   fleet of clients does not probe in lockstep. If a failed call's dependency said when to
//!   come back ([`Classify::retry_after`], such as an HTTP `Retry-After`), the open period
//!   lasts at least until then, up to
//!   [`max_retry_after`](CircuitBreakerLayerBuilder::max_retry_after).
//! - **Half-open**: exactly [`half_open_probes`](CircuitBreakerLayerBuilder::half_open_probes)
//!   calls are let through, never more, under any interleaving. A probe that is cancelled,
//!   panics or is classified as ignored gives its slot back. The breaker closes once enough
//!   probes succeed ([`probe_success_ratio`](CircuitBreakerLayerBuilder::probe_success_ratio))
//!   and reopens once too many failed; if probes are in flight and none finished for a
//!   whole [`half_open_max_wait`](CircuitBreakerLayerBuilder::half_open_max_wait), it
//!   reopens: half-open can never be stuck.
//! - Every transition starts a new **generation**. A call reports its outcome with the
//!   generation it was admitted in, and an outcome from an earlier cycle changes nothing: a
//!   slow call admitted while closed cannot close a half-open circuit.
//! - A [`Handle`] reads the state and [`Metrics`], and forces the breaker open, disables it
//!   or resets it.
//!
//! # Watching it
//!
//! Transitions are logged with `tracing` at `info` (a trip from closed to open at `warn`,
//! with the trip model), each with the breaker's [`name`](CircuitBreakerLayerBuilder::name)
//! and the reason; rejected calls at `debug`. Transitions and rejections are passed as
//! [`Event`](crate::observe::Event)s to the listener set with
//! [`on_event`](CircuitBreakerLayerBuilder::on_event), and transitions to the one set with
//! [`on_transition`](CircuitBreakerLayerBuilder::on_transition). With the `metrics` feature,
//! the breaker counts calls by outcome and rejections, and shows its state as a gauge (see
//! [`observe::metrics`](crate::observe::metrics)). A call that goes through reports nothing
//! but, with the `metrics` feature, one counter increment.
//!
//! # `poll_ready`
//!
//! By default `poll_ready` is the inner service's: a breaker that is open still reports
//! ready, and `call` fails fast with [`CircuitOpen`]. This is what a caller that wants an
//! answer now needs. With [`backpressure`](CircuitBreakerLayerBuilder::backpressure), an
//! open breaker reports `Pending` from `poll_ready` and wakes the task when the open period
//! ends (or the handle resets or disables it), so `tower::balance` and `tower::buffer` route
//! work to other endpoints instead. Half-open reports ready; a call beyond the probe slots
//! then fails with [`CircuitOpen`]. If the breaker tripped outside a tokio runtime (no timer
//! could be armed), backpressure mode falls back to failing fast.
//!
//! # How it is built
//!
//! The state machine (`state.rs`) is one `AtomicU64`: phase, generation and the half-open
//! probe counters, changed only by compare-and-swap. The trip models (`window.rs`) keep
//! successes in striped counters, one cache line per stripe, and do their arithmetic when a
//! failure (or a slow call) arrives. A time window's buckets are moved on by a timer task,
//! so no call reads the clock to find its bucket. Each service clone owns a private reference to the breaker, so the call
//! path writes no cache line shared with other threads. Neither file knows about tower or tokio;
//! `shared.rs` adds time (the open period ends with a tokio timer, so a rejected call reads no
//! clock) and the listener, and this module is the `Service`.
//!
//! On the closed and half-open paths a call allocates nothing; a rejected call allocates the
//! boxed [`CircuitOpen`] it returns. Memory per breaker is fixed by its configuration.

mod error;
mod future;
mod handle;
mod layer;
#[cfg(all(test, loom))]
mod loom;
mod shared;
mod state;
mod window;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::futures::OwnedNotified;
use tower::Service;

pub use self::error::CircuitOpen;
use self::future::Permit;
pub use self::future::ResponseFuture;
pub use self::handle::{Handle, Metrics, State, StateTransition, TransitionReason};
pub use self::layer::{
    AnyErrorIsFailure, CircuitBreakerLayer, CircuitBreakerLayerBuilder, Classify, Outcome,
};
use self::shared::Shared;
use self::state::{Admission, Phase};
use crate::error::BoxError;

/// What one service clone shares with its response futures: the breaker, the clone's stripe
/// of the success counter, and the classifier. Each clone has its own, so the reference count
/// a call touches is not one that other threads' calls touch; the alignment keeps two clones'
/// reference counts off one cache line even when they are allocated side by side.
#[repr(align(128))]
pub(crate) struct Local<C> {
    shared: Arc<Shared>,
    stripe: usize,
    classifier: C,
}

impl<C> Local<C> {
    fn new(shared: Arc<Shared>, classifier: C) -> Arc<Self> {
        let stripe = shared.take_stripe();
        Arc::new(Local {
            shared,
            stripe,
            classifier,
        })
    }
}

/// A service behind a circuit breaker. Made by [`CircuitBreakerLayer`]; see the
/// [module docs](self).
///
/// Clones share the breaker.
pub struct CircuitBreaker<S, C = AnyErrorIsFailure> {
    inner: S,
    local: Arc<Local<C>>,
    backpressure: Option<Backpressure>,
}

/// A backpressure-mode service waiting in `poll_ready` for the breaker to admit calls.
#[derive(Default)]
struct Backpressure {
    waiting: Option<Pin<Box<OwnedNotified>>>,
}

impl<S, C> CircuitBreaker<S, C> {
    fn new(inner: S, shared: Arc<Shared>, classifier: C, backpressure: bool) -> Self {
        CircuitBreaker {
            inner,
            local: Local::new(shared, classifier),
            backpressure: backpressure.then(Backpressure::default),
        }
    }

    /// A handle on the breaker.
    pub fn handle(&self) -> Handle {
        Handle::new(Arc::clone(&self.local.shared))
    }

    inner_service_accessors!();
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        CircuitBreaker {
            inner: self.inner.clone(),
            local: Local::new(
                Arc::clone(&self.local.shared),
                self.local.classifier.clone(),
            ),
            backpressure: self.backpressure.as_ref().map(|_| Backpressure::default()),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.local.shared)
            .field("backpressure", &self.backpressure.is_some())
            .finish()
    }
}

impl Backpressure {
    /// Ready once the breaker admits calls; otherwise waits for the next transition that may.
    fn poll_admitting(&mut self, shared: &Arc<Shared>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let now = shared.state.snapshot();
            match now.phase {
                Phase::Open | Phase::ForcedOpen => {}
                // No timer will wake us (see the module docs): fail fast instead.
                Phase::OpenUntimed => {
                    if !shared.end_untimed_open(now.generation) {
                        self.waiting = None;
                        return Poll::Ready(());
                    }
                    continue;
                }
                Phase::Closed | Phase::HalfOpen | Phase::Disabled => {
                    self.waiting = None;
                    return Poll::Ready(());
                }
            }
            match &mut self.waiting {
                None => {
                    // Register first, then look at the state again: a transition between the
                    // look above and the registration would otherwise be missed.
                    let mut notified = Box::pin(Arc::clone(&shared.admitting).notified_owned());
                    notified.as_mut().enable();
                    self.waiting = Some(notified);
                }
                Some(notified) => match notified.as_mut().poll(cx) {
                    Poll::Ready(()) => self.waiting = None,
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }
}

impl<S, C, Request> Service<Request> for CircuitBreaker<S, C>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if let Some(backpressure) = &mut self.backpressure
            && backpressure
                .poll_admitting(&self.local.shared, cx)
                .is_pending()
        {
            return Poll::Pending;
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let shared = &self.local.shared;
        loop {
            // The permit exists before the inner call: if `call` panics, the permit's drop
            // gives a probe slot back.
            let permit = match shared.state.admit() {
                Admission::Closed { generation } => {
                    shared.keep_window_moving();
                    Permit::closed(&self.local, generation)
                }
                Admission::Probe { generation } => Permit::probe(&self.local, generation),
                Admission::Untracked => Permit::untracked(),
                Admission::Rejected {
                    phase: Phase::OpenUntimed,
                    generation,
                } if shared.end_untimed_open(generation) => continue,
                Admission::Rejected {
                    phase: Phase::Open,
                    generation,
                } if shared.end_hinted_open(generation) => continue,
                Admission::Rejected { phase, .. } => {
                    return ResponseFuture::rejected(shared.rejection(phase));
                }
            };
            return ResponseFuture::called(self.inner.call(request), permit);
        }
    }
}
