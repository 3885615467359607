//! [`SlaLayer`]: the four layers an [`Sla`](super::Sla) derives, composed in order.

use std::fmt;
use std::time::Duration;

use tower::Layer;

use crate::circuit_breaker::{
    AnyErrorIsFailure, CircuitBreaker, CircuitBreakerLayer, Classify, Handle, Outcome,
};
use crate::error::{BoxError, ErrorKind};
use crate::load_shed::{LoadShed, LoadShedLayer};
use crate::retry::{CloneRequests, Retry, RetryBudget, RetryErrors, RetryLayer};
use crate::timeout::{Timeout, TimeoutLayer};

/// The service an [`SlaLayer`] makes: retry → circuit breaker → timeout → load shed → `S`.
pub type SlaService<S, P = RetryErrors, R = CloneRequests, C = IgnoreLocalShedding> =
    Retry<CircuitBreaker<Timeout<LoadShed<S>>, C>, P, R>;

/// The breaker's classification in an [`SlaLayer`]: a rejection by this crate's load
/// shedding or throttling ([`ErrorKind::Overloaded`]) is [`Outcome::Ignored`]; everything
/// else is classified by the inner classifier `C` (by default [`AnyErrorIsFailure`]: every
/// other error is a failure of the dependency).
///
/// The caller decided a rejection alone, so it says nothing about the dependency's health;
/// counting it would let the stack's own load shedding, below the breaker, open the breaker.
/// Such a rejection is recognised by its type, wherever it comes from: an in-process
/// dependency shedding with this crate is ignored too. Nothing retries it either (see
/// [`RetryLayer`]): a rejection asks for less load, not a verdict on health.
///
/// ```
/// use tower_firebreak::circuit_breaker::{Classify, Outcome};
/// use tower_firebreak::error::BoxError;
/// use tower_firebreak::sla::IgnoreLocalShedding;
///
/// let classify: IgnoreLocalShedding = IgnoreLocalShedding::default(); // every other error fails
/// let io: Result<(), BoxError> = Err(std::io::Error::other("reset").into());
/// assert_eq!(classify.classify(&io), Outcome::Failure);
/// assert_eq!(classify.classify(&Ok::<(), BoxError>(())), Outcome::Success);
///
/// // Wrapping a classifier of your own, here one that ignores every error:
/// let lenient = IgnoreLocalShedding::new(|_: &Result<(), BoxError>| Outcome::Ignored);
/// assert_eq!(lenient.classify(&io), Outcome::Ignored);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct IgnoreLocalShedding<C = AnyErrorIsFailure> {
    inner: C,
}

impl<C> IgnoreLocalShedding<C> {
    /// Ignores local rejections and classifies everything else with `inner`.
    pub fn new(inner: C) -> Self {
        IgnoreLocalShedding { inner }
    }

    /// The inner classifier.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }
}

impl<Response, C> Classify<Response, BoxError> for IgnoreLocalShedding<C>
where
    C: Classify<Response, BoxError>,
{
    fn classify(&self, result: &Result<Response, BoxError>) -> Outcome {
        match result {
            Err(err) if ErrorKind::of(&**err) == ErrorKind::Overloaded => Outcome::Ignored,
            _ => self.inner.classify(result),
        }
    }

    fn retry_after(&self, result: &Result<Response, BoxError>) -> Option<Duration> {
        self.inner.retry_after(result)
    }
}

/// The client-side stack of an [`Sla`](super::Sla), outermost first: retry under a budget,
/// circuit breaker, per-attempt timeout, load shed. Made by
/// [`Sla::client_layer`](super::Sla::client_layer).
///
/// Every service it wraps, and every clone, shares one breaker, one retry budget and one
/// concurrency limit. Each part can be read, and replaced whole:
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::circuit_breaker::{AnyErrorIsFailure, CircuitBreakerLayer, State};
/// use tower_firebreak::sla::{IgnoreLocalShedding, Sla};
///
/// let sla = Sla::builder()
///     .latency_objective(Duration::from_millis(100))
///     .availability(0.999)
///     .max_concurrency(32)
///     .build()?;
/// let layer = sla.client_layer()?
///     // A breaker of your own; its classifier still ignores the stack's own shedding.
///     .with_circuit_breaker(
///         CircuitBreakerLayer::builder()
///             .consecutive_failures(5)
///             .classifier(IgnoreLocalShedding::new(AnyErrorIsFailure))
///             .build()?,
///     );
/// assert_eq!(layer.breaker().state(), State::Closed);
/// assert_eq!(layer.timeout_layer().attempt_timeout(), Duration::from_millis(100));
/// assert_eq!(layer.load_shed_layer().max_concurrency(), 32);
/// assert_eq!(layer.retry_layer().max_attempts(), 3);
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
pub struct SlaLayer<P = RetryErrors, R = CloneRequests, C = IgnoreLocalShedding> {
    retry: RetryLayer<P, R>,
    breaker: CircuitBreakerLayer<C>,
    timeout: TimeoutLayer,
    load_shed: LoadShedLayer,
}

impl<P, R, C> fmt::Debug for SlaLayer<P, R, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlaLayer")
            .field("retry", &self.retry)
            .field("breaker", &self.breaker)
            .field("timeout", &self.timeout)
            .field("load_shed", &self.load_shed)
            .finish()
    }
}

impl<P: Clone, R: Clone, C: Clone> Clone for SlaLayer<P, R, C> {
    fn clone(&self) -> Self {
        SlaLayer {
            retry: self.retry.clone(),
            breaker: self.breaker.clone(),
            timeout: self.timeout.clone(),
            load_shed: self.load_shed.clone(),
        }
    }
}

impl<P, R, C> SlaLayer<P, R, C> {
    pub(crate) fn new(
        retry: RetryLayer<P, R>,
        breaker: CircuitBreakerLayer<C>,
        timeout: TimeoutLayer,
        load_shed: LoadShedLayer,
    ) -> Self {
        SlaLayer {
            retry,
            breaker,
            timeout,
            load_shed,
        }
    }
}

impl<P, R, C> SlaLayer<P, R, C> {
    /// The retry layer (outermost).
    pub fn retry_layer(&self) -> &RetryLayer<P, R> {
        &self.retry
    }

    /// The retry budget, to watch its balance; `None` if the retry layer was replaced by one
    /// without a budget.
    pub fn retry_budget(&self) -> Option<&RetryBudget> {
        self.retry.budget()
    }

    /// The circuit breaker layer.
    pub fn circuit_breaker_layer(&self) -> &CircuitBreakerLayer<C> {
        &self.breaker
    }

    /// A handle on the breaker: state, metrics, manual overrides.
    pub fn breaker(&self) -> Handle {
        self.breaker.handle()
    }

    /// The per-attempt timeout layer.
    pub fn timeout_layer(&self) -> &TimeoutLayer {
        &self.timeout
    }

    /// The load-shedding layer (innermost).
    pub fn load_shed_layer(&self) -> &LoadShedLayer {
        &self.load_shed
    }

    /// Replaces the retry layer, keeping the rest. To keep the derived attempts, backoff and
    /// budget and change only the policy or the request cloner, use
    /// [`Sla::client_layer_with`](super::Sla::client_layer_with).
    pub fn with_retry<Q, T>(self, retry: RetryLayer<Q, T>) -> SlaLayer<Q, T, C> {
        SlaLayer {
            retry,
            breaker: self.breaker,
            timeout: self.timeout,
            load_shed: self.load_shed,
        }
    }

    /// Replaces the circuit breaker, keeping the rest. A classifier of your own should
    /// ignore [`Overloaded`](crate::load_shed::Overloaded) (wrap it in
    /// [`IgnoreLocalShedding::new`]), or shedding below it can open the breaker. To keep the
    /// derived breaker and change only what counts as a failure, use
    /// [`Sla::client_layer_with`](super::Sla::client_layer_with).
    pub fn with_circuit_breaker<D>(self, breaker: CircuitBreakerLayer<D>) -> SlaLayer<P, R, D> {
        SlaLayer {
            retry: self.retry,
            breaker,
            timeout: self.timeout,
            load_shed: self.load_shed,
        }
    }

    /// Replaces the per-attempt timeout, keeping the rest.
    pub fn with_timeout(mut self, timeout: TimeoutLayer) -> Self {
        self.timeout = timeout;
        self
    }

    /// Replaces the load-shedding layer (for example with one shared with other stacks),
    /// keeping the rest.
    pub fn with_load_shed(mut self, load_shed: LoadShedLayer) -> Self {
        self.load_shed = load_shed;
        self
    }
}

impl<S, P: Clone, R: Clone, C: Clone> Layer<S> for SlaLayer<P, R, C> {
    type Service = SlaService<S, P, R, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let shed = self.load_shed.layer(inner);
        let timed = self.timeout.layer(shed);
        let guarded = self.breaker.layer(timed);
        self.retry.layer(guarded)
    }
}
