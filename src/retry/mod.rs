//! Retries with a jittered backoff, under a retry budget, within the request's deadline.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_firebreak::ServiceBuilderExt;
//! use tower_firebreak::error::BoxError;
//! use tower_firebreak::retry::{Backoff, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // A dependency that fails its first call, then recovers.
//! let calls = Arc::new(AtomicU32::new(0));
//! let flaky = service_fn({
//!     let calls = Arc::clone(&calls);
//!     move |name: &'static str| {
//!         let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
//!         async move {
//!             if first { Err::<String, BoxError>("connection reset".into()) } else { Ok(format!("hi {name}")) }
//!         }
//!     }
//! });
//! let retry = RetryLayer::builder()
//!     .max_attempts(3)
//!     .backoff(Backoff::exponential(Duration::from_millis(50), 2.0, Duration::from_secs(1)))
//!     .build()?;
//! let svc = ServiceBuilder::new()
//!     .deadline(Duration::from_secs(2))?  // all attempts together
//!     .retry_with(retry)
//!     .timeout_attempt(Duration::from_millis(300))?  // each attempt
//!     .service(flaky);
//!
//! assert_eq!(svc.oneshot("ada").await?, "hi ada");
//! assert_eq!(calls.load(Ordering::SeqCst), 2);
//! # Ok(())
//! # }
//! ```
//!
//! # When a failed call is retried
//!
//! After each attempt, in this order:
//!
//! 1. The [`RetryPolicy`] decides ([`RetryErrors`] by default: every error, no response).
//! 2. Errors that say to back off are never retried, whatever the policy says: an open
//!    circuit breaker, an overloaded service, an exhausted inner retry budget, a passed
//!    deadline. Retrying them only adds load to something that asked for less, so retries
//!    stay at one layer of the stack.
//! 3. No more than [`max_attempts`](RetryLayerBuilder::max_attempts) attempts, and only if
//!    the request could be copied ([`CloneRequest`]; a request that cannot is not retried).
//! 4. The delay is the error's retry-after hint if it has one (or the policy's
//!    [`Decision::RetryAfter`]), at most [`max_retry_after`](RetryLayerBuilder::max_retry_after);
//!    otherwise the [`Backoff`]'s.
//! 5. If the request has a deadline ([`deadline`](crate::timeout::deadline)) and less time
//!    is left than the delay, no attempt is started: it could not finish. A
//!    [`Timeout`](crate::timeout::Timeout) below bounds each attempt by the time left.
//! 6. Last, the [`RetryBudget`] must have a token. If it has none the call fails with
//!    [`BudgetExhausted`], whose source is the last attempt's error; in every other case
//!    above, the last attempt's result is returned unchanged.
//!
//! # Cost
//!
//! A call copies its request once (for a possible retry), clones the inner service into its
//! response future (as `tower::retry` does) and deposits into the budget (one increment on
//! the service clone's own cache line). Nothing else is allocated on the success path, and no
//! clock is read. A retry reads the clock if the request has a deadline, and a retry that
//! waits allocates and arms its timer. With the `metrics` feature, each attempt also adds one
//! counter increment.
//!
//! # Watching it
//!
//! Retries and retries the budget refused are logged with `tracing` at `debug`, passed as
//! [`Event`](crate::observe::Event)s to the listener set with
//! [`on_event`](RetryLayerBuilder::on_event), and, with the `metrics` feature, counted along
//! with attempts and the budget's balance (see [`observe::metrics`](crate::observe::metrics)).

mod backoff;
mod budget;
mod error;
mod future;
mod layer;
#[cfg(all(test, loom))]
mod loom;
mod policy;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;

pub use self::backoff::{Backoff, Jitter};
pub use self::budget::{RetryBudget, RetryBudgetBuilder};
pub use self::error::BudgetExhausted;
pub use self::future::ResponseFuture;
use self::layer::Settings;
pub use self::layer::{RetryLayer, RetryLayerBuilder};
pub use self::policy::{CloneRequest, CloneRequests, Decision, RetryErrors, RetryPolicy};
use crate::error::BoxError;
use crate::sync::{AtomicU64, Ordering};
use crate::ticker::Ticker;

/// A service whose failed calls are retried. Made by [`RetryLayer`]; see the
/// [module docs](self).
///
/// Clones share the layer's budget. The inner service must be `Clone`: each call takes the
/// service that was made ready and leaves a clone in its place, and retries call that
/// service again (as `tower::retry` does).
pub struct Retry<S, P = RetryErrors, R = CloneRequests> {
    inner: S,
    local: Arc<Local>,
    policy: P,
    cloner: R,
}

/// What one service clone shares with its response futures. Each clone has its own, so the
/// reference count a call touches (and the jitter seed a retry draws) is not one that other
/// threads' calls touch; the alignment keeps two clones' counts off one cache line.
#[repr(align(128))]
pub(crate) struct Local {
    pub(crate) settings: Arc<Settings>,
    /// This clone's deposit counter in the budget.
    stripe: usize,
    /// Seeds the jitter: each retry draws from a generator seeded with the next value.
    seed: AtomicU64,
}

impl Local {
    fn new(settings: Arc<Settings>) -> Arc<Local> {
        let stripe = settings
            .budget
            .as_ref()
            .map_or(0, |budget| budget.state.take_stripe());
        let seed = AtomicU64::new(settings.seed_for_clone());
        Arc::new(Local {
            settings,
            stripe,
            seed,
        })
    }

    pub(crate) fn next_seed(&self) -> u64 {
        self.seed.fetch_add(1, Ordering::Relaxed)
    }
}

impl<S, P, R> Retry<S, P, R> {
    fn new(inner: S, settings: Arc<Settings>, policy: P, cloner: R) -> Self {
        Retry {
            inner,
            local: Local::new(settings),
            policy,
            cloner,
        }
    }

    inner_service_accessors!();

    /// The retry budget, if the layer has one.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.local.settings.budget.as_ref()
    }
}

impl<S: Clone, P: Clone, R: Clone> Clone for Retry<S, P, R> {
    fn clone(&self) -> Self {
        Retry::new(
            self.inner.clone(),
            Arc::clone(&self.local.settings),
            self.policy.clone(),
            self.cloner.clone(),
        )
    }
}

impl<S: fmt::Debug, P, R> fmt::Debug for Retry<S, P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("settings", &self.local.settings)
            .finish_non_exhaustive()
    }
}

impl<S, P, R, Request> Service<Request> for Retry<S, P, R>
where
    S: Service<Request> + Clone,
    S::Error: Into<BoxError>,
    P: RetryPolicy<S::Response> + Clone,
    R: CloneRequest<Request> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request, P, R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let local = &self.local;
        local.settings.count_attempt();
        if let Some(budget) = &local.settings.budget {
            Ticker::keep_moving(&budget.state);
            budget.state.deposit(local.stripe);
        }
        let spare = if local.settings.max_attempts > 1 {
            self.cloner.clone_request(&request)
        } else {
            None
        };
        // The ready service makes this call and any retry; a clone waits for the next call.
        let clone = self.inner.clone();
        let mut service = std::mem::replace(&mut self.inner, clone);
        let response = service.call(request);
        ResponseFuture::new(
            response,
            service,
            spare,
            Arc::clone(&self.local),
            self.policy.clone(),
            self.cloner.clone(),
        )
    }
}
