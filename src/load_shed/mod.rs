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
//! # Behaviour
//!
//! - `poll_ready` is the inner service's; `call` takes a slot or fails at once with a boxed
//!   [`Overloaded`] carrying the layer's [`retry_after`](LoadShedLayerBuilder::retry_after)
//!   hint, without calling the inner service.
//! - The slot is held by the response future and given back when the inner future completes,
//!   or when the response future is dropped (cancellation), or when the inner service panics:
//!   no path leaks a slot. The limit is never exceeded: taking a slot is one
//!   compare-and-swap from the count the decision was made on (a loom model checks it).
//! - Clones share the limit. This crate's retry layer never retries [`Overloaded`].
//!
//! # Cost
//!
//! An admitted call: one compare-and-swap to take the slot, one decrement to give it back,
//! and the reference count of the shared limit (in the response future). No allocation, no
//! clock read. A rejected call allocates the boxed error it returns.
//!
//! # Client-side throttling
//!
//! [`ThrottleLayer`] is the other side: a client that sees its dependency reject requests as
//! overloaded rejects some of its own, locally, with [`Throttled`] (Google SRE, chapter 21),
//! so that what it sends settles at about `k` times what the dependency accepts.
//!
//! Adaptive limits (AIMD, Gradient2, Vegas), a bounded wait queue and an SLA guard are
//! planned; today the server-side limit is fixed.

mod error;
mod future;
mod layer;
mod limit;
mod throttle;

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
pub use self::throttle::{
    IsRejection, OverloadedIsRejection, Throttle, ThrottleFuture, ThrottleLayer,
    ThrottleLayerBuilder, Throttled,
};
use crate::error::BoxError;

/// A service that rejects calls beyond its concurrency limit. Made by [`LoadShedLayer`]; see
/// the [module docs](self).
pub struct LoadShed<S> {
    inner: S,
    local: Arc<Local>,
}

/// What one service clone shares with its response futures: the shared limit and the hint.
/// Each clone has its own, so the reference count a call takes for its permit is on a cache
/// line of its own (the alignment keeps neighbours off it), and the only line all threads
/// write is the count of calls in flight.
#[repr(align(128))]
#[derive(Debug)]
pub(crate) struct Local {
    pub(crate) limiter: Arc<Limiter>,
    retry_after: Duration,
}

impl<S: Clone> Clone for LoadShed<S> {
    fn clone(&self) -> Self {
        LoadShed::new(
            self.inner.clone(),
            Arc::clone(&self.local.limiter),
            self.local.retry_after,
        )
    }
}

impl<S> LoadShed<S> {
    fn new(inner: S, limiter: Arc<Limiter>, retry_after: Duration) -> Self {
        LoadShed {
            inner,
            local: Arc::new(Local {
                limiter,
                retry_after,
            }),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Calls in flight now, through every service sharing this limit.
    pub fn in_flight(&self) -> u64 {
        self.local.limiter.in_flight()
    }
}

impl<S: fmt::Debug> fmt::Debug for LoadShed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShed")
            .field("inner", &self.inner)
            .field("max_concurrency", &self.local.limiter.limit())
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
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let local = &self.local;
        if !local.limiter.try_acquire() {
            tracing::debug!(limit = local.limiter.limit(), "load shed: overloaded");
            return ResponseFuture::rejected(Overloaded::new(
                local.limiter.limit(),
                local.retry_after,
            ));
        }
        // The permit exists before the inner call, so a panic in `call` gives the slot back.
        let permit = Permit::new(Arc::clone(local));
        ResponseFuture::admitted(self.inner.call(request), permit)
    }
}
