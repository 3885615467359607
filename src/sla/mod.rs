//! [`Sla`]: state what a dependency promises, and get the stack that protects its callers,
//! in the right order, with every parameter derived from the promise.
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_firebreak::error::{BoxError, ErrorKind};
//! use tower_firebreak::sla::Sla;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // "99.9% of calls succeed within 50 ms; at most 32 calls at once."
//! let sla = Sla::builder()
//!     .latency_objective(Duration::from_millis(50))
//!     .availability(0.999)
//!     .max_concurrency(32)
//!     .build()?;
//! assert_eq!(sla.attempt_timeout(), Duration::from_millis(50));
//! assert_eq!(sla.trip_after_failures(), 14);
//!
//! let hanging = service_fn(|_: u32| std::future::pending::<Result<u32, BoxError>>());
//! let client = ServiceBuilder::new().layer(sla.client_layer()?).service(hanging);
//! // Three attempts of 50 ms each, then the last attempt's timeout is returned.
//! let err = client.oneshot(7).await.unwrap_err();
//! assert_eq!(ErrorKind::of(&*err), ErrorKind::TimedOut);
//! # Ok(())
//! # }
//! ```
//!
//! # The promise
//!
//! An SLA here is the usual service-level objective of a dependency, as its owners state it:
//!
//! - a **latency objective** `L` and an **availability** `A`: the share `A` of calls succeed
//!   within `L` (the "good events" SLI of the SRE workbook, where a call that is too slow
//!   counts against availability like one that fails). `1 - A` is the **error budget**;
//! - a **maximum concurrency** `N`: the calls in flight this caller may have at once (the
//!   dependency's workers, or this caller's share of them).
//!
//! # The stack, outermost first
//!
//! [`Sla::client_layer`] builds, in the order the [crate docs](crate#layer-order) teach:
//!
//! 1. **retry under a budget** ([`RetryLayer`]): repairs the failures of a dependency that
//!    is degraded, within a budget, so that retries cannot multiply the load on one that is
//!    down;
//! 2. **circuit breaker** ([`CircuitBreakerLayer`]): stops calling a dependency that is down,
//!    fails fast while it is, probes it once a second. Above the timeout, so a timed-out
//!    attempt counts as a failure; below retry, so a rejection ([`CircuitOpen`]) is never
//!    retried;
//! 3. **per-attempt timeout** ([`TimeoutLayer`]): below retry, it bounds each attempt, not
//!    the whole call;
//! 4. **load shed** ([`LoadShedLayer`]): at most `N` attempts in flight; beyond that, fail at
//!    once with [`Overloaded`], which is neither retried nor counted by the breaker (it says
//!    nothing about the dependency's health);
//! 5. the client of the dependency.
//!
//! # How each parameter is derived
//!
//! | parameter | value | why |
//! | --- | --- | --- |
//! | attempt timeout | `L` | An attempt not answered within `L` has already broken the promise; waiting longer holds one of the caller's slots for an answer that is out of contract, and a retry has a fresh chance. |
//! | attempts | 3 | Against a dependency failing a share `f` of calls independently, a call succeeds with `1 - f^attempts`: at `f` = 30%, 70% → 91% → 97.3% (99.2% with a fourth). The budget bounds the load retries add; the count bounds the time a failing call takes: three attempts and their backoff stay within `6 L`. |
//! | backoff | exponential from `L`, doubling, at most `8 L`, full jitter | Spreads the retries of calls that failed together over about one attempt's time, so they do not come back as a wave; costs on average `L / 2` before the first retry. |
//! | trip after | `k` failures in a row, `k = max(⌈log(10⁻⁴) / log(½)⌉, ⌈log(10⁻⁹) / log(1 - A)⌉)`, at most 1,000: 14 for any `A` ≥ 77.3% | A run of `k` failures is evidence that the dependency is down, not degraded: a dependency that still serves half its calls makes such a run once in 10,000 calls, one within its error budget once in 10⁹ calls. A window over many calls would be as sure, but a healthy window must first fill with failures to trip: with 14 in a row, a hard outage costs 14 calls. |
//! | open for | 1 s, up to 10% less at random; 1 probe | While the dependency is down it gets one call a second, and it is back in use within a second of healing. |
//! | retry budget | retries up to `max(½, 1 - A)` of requests plus 10 a second, over 10 s | Up to the failure rate at which the breaker counts the dependency as down (half its calls), every failure can be retried once: a degraded dependency is repaired, and retries add at most half the load. Above it the breaker, not retries, is the tool. |
//! | concurrency limit | `N` | More calls in flight than the dependency promised to serve only queue there. |
//!
//! Each value can be overridden on the [`SlaBuilder`], and each layer replaced whole on the
//! [`SlaLayer`] (for example to classify results with your own [`Classify`]).
//!
//! With these values a call takes at most `3 L` of attempts and `3 L` of backoff (`L` then
//! `2 L` at most, drawn at random), and a call made while the breaker is open fails at once.
//! For a tighter bound on the whole call, put a
//! [`DeadlineLayer`](crate::timeout::DeadlineLayer) above the stack: retries stop when it
//! leaves too little time, and each attempt is cut at the deadline.
//!
//! # What it costs a dependency that is down
//!
//! About `k` calls to trip (14), plus the calls already in flight when the `k`-th fails
//! (up to `L` × the call rate, when the dependency hangs), then one probe a second. In
//! `examples/cascade.rs` (500 calls a second, `L` = 50 ms) that is 0.4% to 0.6% of the
//! calls offered during a 20 s outage, and 0.7% to 1.1% during a 10 s one.
//!
//! # The server side
//!
//! A component that makes the promise itself guards it with [`Sla::server_layer`]: a
//! concurrency limit that adapts to keep the latency of the calls it admits within the
//! objective, shedding new work (503 with `Retry-After`, over HTTP) before breaching it. See
//! [`SlaGuard`].
//!
//! [`RetryLayer`]: crate::retry::RetryLayer
//! [`CircuitBreakerLayer`]: crate::circuit_breaker::CircuitBreakerLayer
//! [`CircuitOpen`]: crate::circuit_breaker::CircuitOpen
//! [`Classify`]: crate::circuit_breaker::Classify
//! [`TimeoutLayer`]: crate::timeout::TimeoutLayer
//! [`LoadShedLayer`]: crate::load_shed::LoadShedLayer
//! [`Overloaded`]: crate::load_shed::Overloaded

mod layer;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use self::layer::{IgnoreLocalShedding, SlaLayer, SlaService};
use crate::circuit_breaker::{AnyErrorIsFailure, CircuitBreakerLayer};
use crate::error::{ConfigError, ONE_HOUR};
use crate::load_shed::{LoadShedLayer, MAX_LIMIT, SlaGuard};
use crate::observe::{Event, Listener};
use crate::retry::{Backoff, CloneRequests, Jitter, RetryBudget, RetryErrors, RetryLayer};
use crate::timeout::TimeoutLayer;

const LAYER: &str = "Sla";

/// Attempts per call, the first included.
const ATTEMPTS: u32 = 3;
/// The failure rate above which a dependency counts as down rather than degraded.
const DOWN_RATE: f64 = 0.5;
/// How rarely a run of failures may trip the breaker against a dependency at `DOWN_RATE`...
const DEGRADED_TRIP_ODDS: f64 = 1e-4;
/// ...and against one within its error budget, per call.
const NOISE_TRIP_ODDS: f64 = 1e-9;
/// The longest run of failures the breaker waits for.
const MAX_TRIP_FAILURES: u32 = 1_000;
/// How long the breaker stays open after a trip (before jitter).
const OPEN_DURATION: Duration = Duration::from_secs(1);
/// Retries a second the budget allows whatever the traffic.
const BUDGET_MIN_PER_SECOND: u32 = 10;
// The longest latency objective accepted (the backoff goes up to 8 times it, and the retry
// layer accepts delays up to 24 hours) is `ONE_HOUR`; the most calls in flight is the most
// `LoadShedLayer` accepts as a limit, `MAX_LIMIT`.

/// A dependency's service-level objective, checked, with the parameters of the stack that
/// protects its callers derived from it. See the [module docs](self) for the rules.
///
/// `Sla` holds only values; [`client_layer`](Sla::client_layer) builds the layers, with a
/// fresh breaker, retry budget and concurrency limit each time.
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::sla::Sla;
///
/// let sla = Sla::builder()
///     .latency_objective(Duration::from_millis(200))
///     .availability(0.99)
///     .max_concurrency(64)
///     .build()?;
/// assert_eq!(sla.attempt_timeout(), Duration::from_millis(200));
/// assert_eq!(sla.max_attempts(), 3);
/// assert_eq!(sla.retry_budget_ratio(), 0.5);
/// assert_eq!(sla.open_duration(), Duration::from_secs(1));
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Sla {
    latency_objective: Duration,
    availability: f64,
    max_concurrency: u64,
    attempt_timeout: Duration,
    max_attempts: u32,
    backoff: Backoff,
    retry_budget_ratio: f64,
    trip_after_failures: u32,
    open_duration: Duration,
    name: Option<Arc<str>>,
    seed: Option<u64>,
    events: Option<Events>,
}

/// The listener an [`SlaBuilder::on_event`] gives every layer of the stack.
#[derive(Clone)]
struct Events(Listener);

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Events(..)")
    }
}

impl Events {
    /// A listener for one layer's builder, calling the shared one.
    fn for_layer(&self) -> impl Fn(&Event<'_>) + Send + Sync + 'static {
        let listener = Arc::clone(&self.0);
        move |event: &Event<'_>| listener(event)
    }
}

impl Sla {
    /// Starts stating an objective: [`latency_objective`](SlaBuilder::latency_objective),
    /// [`availability`](SlaBuilder::availability) and
    /// [`max_concurrency`](SlaBuilder::max_concurrency) are required.
    pub fn builder() -> SlaBuilder {
        SlaBuilder::default()
    }

    /// The latency objective `L`: the share [`availability`](Self::availability) of calls
    /// succeed within it.
    pub fn latency_objective(&self) -> Duration {
        self.latency_objective
    }

    /// The availability `A` promised, in (0, 1).
    pub fn availability(&self) -> f64 {
        self.availability
    }

    /// `1 - A`: the share of calls that may fail (or be too slow) while the dependency keeps
    /// its promise.
    pub fn error_budget(&self) -> f64 {
        1.0 - self.availability
    }

    /// The most attempts in flight at once; beyond that, calls fail at once with
    /// [`Overloaded`](crate::load_shed::Overloaded).
    pub fn max_concurrency(&self) -> u64 {
        self.max_concurrency
    }

    /// The longest one attempt may take: the latency objective, unless overridden.
    pub fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout
    }

    /// Attempts per call, the first one included: 3 unless overridden.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delays between attempts: exponential from the latency objective, doubling, at most
    /// 8 times it, with full jitter, unless overridden.
    pub fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// Retries allowed per request by the retry budget, on top of 10 a second:
    /// `max(0.5, error budget)` unless overridden.
    pub fn retry_budget_ratio(&self) -> f64 {
        self.retry_budget_ratio
    }

    /// Failures in a row that open the breaker: see the [module docs](self) for the rule.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_firebreak::sla::Sla;
    ///
    /// let sla = |availability| {
    ///     Sla::builder()
    ///         .latency_objective(Duration::from_millis(100))
    ///         .availability(availability)
    ///         .max_concurrency(10)
    ///         .build()
    /// };
    /// assert_eq!(sla(0.999)?.trip_after_failures(), 14); // 0.5^14 < 1e-4
    /// assert_eq!(sla(0.5)?.trip_after_failures(), 30);   // 0.5^30 < 1e-9
    /// # Ok::<(), tower_firebreak::error::ConfigError>(())
    /// ```
    pub fn trip_after_failures(&self) -> u32 {
        self.trip_after_failures
    }

    /// How long the breaker stays open after a trip, before jitter: 1 s unless overridden.
    pub fn open_duration(&self) -> Duration {
        self.open_duration
    }

    /// Builds the client-side stack: retry under a budget → circuit breaker → per-attempt
    /// timeout → load shed. Each call makes a new breaker, budget and limit: build it once per
    /// dependency and clone the services it wraps.
    ///
    /// Every error is retried (unless it is one this crate never retries) and counts as a
    /// failure, except local shedding; [`client_layer_with`](Self::client_layer_with) takes
    /// your own rules.
    ///
    /// # Errors
    ///
    /// None for an `Sla` from [`SlaBuilder::build`], which checked every value; the
    /// [`ConfigError`] of a layer's own builder otherwise.
    pub fn client_layer(&self) -> Result<SlaLayer, ConfigError> {
        self.client_layer_with(RetryErrors, CloneRequests, AnyErrorIsFailure)
    }

    /// The stack of [`client_layer`](Self::client_layer) with your own rules for what is
    /// retried (`policy`), what may be sent twice (`cloner`) and what counts against the
    /// dependency's health (`classifier`, wrapped in [`IgnoreLocalShedding`] so the stack's
    /// own shedding never opens its breaker). Every derived value is kept: attempts, backoff,
    /// retry budget, trip count, open duration, probes, name and seed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_firebreak::circuit_breaker::{AnyErrorIsFailure, Outcome};
    /// use tower_firebreak::error::BoxError;
    /// use tower_firebreak::retry::{CloneRequests, Decision};
    /// use tower_firebreak::sla::Sla;
    ///
    /// let sla = Sla::builder()
    ///     .latency_objective(Duration::from_millis(100))
    ///     .availability(0.999)
    ///     .max_concurrency(32)
    ///     .build()?;
    /// // Retry only I/O errors; everything else is final.
    /// let policy = |result: &Result<u32, BoxError>| match result {
    ///     Err(err) if err.is::<std::io::Error>() => Decision::Retry,
    ///     _ => Decision::Return,
    /// };
    /// let layer = sla.client_layer_with(policy, CloneRequests, AnyErrorIsFailure)?;
    /// assert_eq!(layer.retry_layer().max_attempts(), 3);
    /// # Ok::<(), tower_firebreak::error::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`client_layer`](Self::client_layer).
    pub fn client_layer_with<P, R, C>(
        &self,
        policy: P,
        cloner: R,
        classifier: C,
    ) -> Result<SlaLayer<P, R, IgnoreLocalShedding<C>>, ConfigError> {
        let budget = RetryBudget::builder()
            .ratio(self.retry_budget_ratio)
            .min_per_second(BUDGET_MIN_PER_SECOND)
            .build()?;
        let mut retry = RetryLayer::builder()
            .max_attempts(self.max_attempts)
            .backoff(self.backoff)
            .budget(budget);
        let mut breaker = CircuitBreakerLayer::builder()
            .consecutive_failures(self.trip_after_failures)
            .open_duration(self.open_duration)
            .half_open_probes(1);
        if let Some(seed) = self.seed {
            retry = retry.seed(seed);
            breaker = breaker.seed(seed);
        }
        let mut timeout = TimeoutLayer::builder().attempt_timeout(self.attempt_timeout);
        let mut load_shed = LoadShedLayer::builder().max_concurrency(self.max_concurrency);
        if let Some(name) = &self.name {
            breaker = breaker.name(Arc::clone(name));
            retry = retry.name(Arc::clone(name));
            timeout = timeout.name(Arc::clone(name));
            load_shed = load_shed.name(Arc::clone(name));
        }
        if let Some(events) = &self.events {
            breaker = breaker.on_event(events.for_layer());
            retry = retry.on_event(events.for_layer());
            timeout = timeout.on_event(events.for_layer());
            load_shed = load_shed.on_event(events.for_layer());
        }
        Ok(SlaLayer::new(
            retry.policy(policy).clone_requests_with(cloner).build()?,
            breaker
                .classifier(IgnoreLocalShedding::new(classifier))
                .build()?,
            timeout.build()?,
            load_shed.build()?,
        ))
    }

    /// The stack of [`client_layer`](Self::client_layer) for an HTTP client (a hyper-util
    /// `Client`, a tower-http stack): retries what
    /// [`HttpRetryPolicy`](crate::http::HttpRetryPolicy) retries (honouring `Retry-After`),
    /// only requests [`IdempotentRequests`](crate::http::IdempotentRequests) allows to be sent
    /// twice, and counts failures as [`StatusClassifier`](crate::http::StatusClassifier)
    /// does (5xx, 408, 429 and transport errors; other 4xx are ignored).
    ///
    /// # Errors
    ///
    /// As [`client_layer`](Self::client_layer).
    #[cfg(feature = "http")]
    #[cfg_attr(docsrs, doc(cfg(feature = "http")))]
    pub fn http_client_layer(
        &self,
    ) -> Result<
        SlaLayer<
            crate::http::HttpRetryPolicy,
            crate::http::IdempotentRequests,
            IgnoreLocalShedding<crate::http::StatusClassifier>,
        >,
        ConfigError,
    > {
        self.client_layer_with(
            crate::http::HttpRetryPolicy::default(),
            crate::http::IdempotentRequests::default(),
            crate::http::StatusClassifier::default(),
        )
    }

    /// The server-side guard for a component that makes this promise itself: a
    /// [`LoadShedLayer`] with an [`SlaGuard`] limit, which sheds new work with
    /// [`Overloaded`](crate::load_shed::Overloaded) when the calls it admits stop completing
    /// within the latency objective, rather than admitting them and answering late.
    ///
    /// Derived: the guard's objective is `L`; its percentile is the availability, at most
    /// 0.99 (a sampling window of 100 ms rarely holds enough calls to see a rarer tail) and at
    /// least 0.5; its limit starts at 20 (or `N` if smaller) and stays within 1 and `N`, the
    /// maximum concurrency, so the guard never admits more than the component promised to
    /// serve at once. Put it innermost, just above the handler, so it measures the handler's
    /// own latency. Each call makes a new limit.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_firebreak::sla::Sla;
    ///
    /// let sla = Sla::builder()
    ///     .latency_objective(Duration::from_millis(200))
    ///     .availability(0.99)
    ///     .max_concurrency(256)
    ///     .build()?;
    /// let guard = sla.server_layer()?;
    /// assert_eq!(guard.limit(), 20);
    /// # Ok::<(), tower_firebreak::error::ConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// None for an `Sla` from [`SlaBuilder::build`]; the guard's [`ConfigError`] otherwise.
    pub fn server_layer(&self) -> Result<LoadShedLayer, ConfigError> {
        let guard = SlaGuard::new(self.latency_objective)
            .percentile(self.availability.clamp(0.5, 0.99))
            .initial(self.max_concurrency.min(20))
            .min(1)
            .max(self.max_concurrency);
        let mut layer = LoadShedLayer::builder().limit(guard);
        if let Some(name) = &self.name {
            layer = layer.name(Arc::clone(name));
        }
        if let Some(events) = &self.events {
            layer = layer.on_event(events.for_layer());
        }
        layer.build()
    }
}

/// Builder of [`Sla`]: the objective, then any override. Every value is checked by
/// [`build`](Self::build).
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::sla::Sla;
///
/// let sla = Sla::builder()
///     .latency_objective(Duration::from_millis(100))
///     .availability(0.999)
///     .max_concurrency(16)
///     .attempt_timeout(Duration::from_millis(150)) // override: a slower network in between
///     .max_attempts(2)
///     .build()?;
/// assert_eq!(sla.attempt_timeout(), Duration::from_millis(150));
/// assert_eq!(sla.max_attempts(), 2);
///
/// // Bad input is an error, not a panic.
/// assert!(Sla::builder().latency_objective(Duration::ZERO).availability(0.9).max_concurrency(1).build().is_err());
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct SlaBuilder {
    latency_objective: Option<Duration>,
    availability: Option<f64>,
    max_concurrency: Option<u64>,
    attempt_timeout: Option<Duration>,
    max_attempts: Option<u32>,
    backoff: Option<Backoff>,
    retry_budget_ratio: Option<f64>,
    trip_after_failures: Option<u32>,
    open_duration: Option<Duration>,
    name: Option<Arc<str>>,
    seed: Option<u64>,
    events: Option<Events>,
}

impl SlaBuilder {
    /// The latency objective: calls that succeed within it are "good". Required, greater than
    /// zero, at most 1 hour.
    pub fn latency_objective(mut self, objective: Duration) -> Self {
        self.latency_objective = Some(objective);
        self
    }

    /// The share of calls promised to succeed within the latency objective, in (0, 1): 0.999
    /// for "three nines". Required.
    pub fn availability(mut self, availability: f64) -> Self {
        self.availability = Some(availability);
        self
    }

    /// The most calls this caller may have in flight to the dependency, from 1 to 1,000,000.
    /// Required.
    pub fn max_concurrency(mut self, calls: u64) -> Self {
        self.max_concurrency = Some(calls);
        self
    }

    /// Overrides the attempt timeout (default: the latency objective). Greater than zero.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Overrides the attempts per call, the first included (default 3), from 1 to 100.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Overrides the delays between attempts (default: exponential from the latency objective,
    /// doubling, at most 8 times it, full jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Overrides the retry budget's ratio of retries to requests (default
    /// `max(0.5, error budget)`), from 0 to 1,000.
    pub fn retry_budget_ratio(mut self, ratio: f64) -> Self {
        self.retry_budget_ratio = Some(ratio);
        self
    }

    /// Overrides the failures in a row that open the breaker, from 1 to 1,000.
    pub fn trip_after_failures(mut self, failures: u32) -> Self {
        self.trip_after_failures = Some(failures);
        self
    }

    /// Overrides how long the breaker stays open after a trip (default 1 s). Greater than
    /// zero.
    pub fn open_duration(mut self, duration: Duration) -> Self {
        self.open_duration = Some(duration);
        self
    }

    /// Names the dependency, for the layers' tracing events, [`Event`]s and metrics labels,
    /// and the breaker's handle.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Calls `listener` with every [`Event`] of the layers the `Sla` builds: breaker
    /// transitions and rejections, retries, an exhausted budget, timeouts, sheds and limit
    /// changes. See [`observe`](crate::observe).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    /// use tower_firebreak::observe::Event;
    /// use tower_firebreak::sla::Sla;
    ///
    /// let trips = Arc::new(AtomicU32::new(0));
    /// let counter = Arc::clone(&trips);
    /// let sla = Sla::builder()
    ///     .latency_objective(Duration::from_millis(100))
    ///     .availability(0.999)
    ///     .max_concurrency(32)
    ///     .name("prices")
    ///     .on_event(move |event: &Event<'_>| {
    ///         if matches!(event, Event::BreakerTransition { .. }) {
    ///             counter.fetch_add(1, Ordering::Relaxed);
    ///         }
    ///     })
    ///     .build()?;
    /// # let _ = sla;
    /// # Ok::<(), tower_firebreak::error::ConfigError>(())
    /// ```
    pub fn on_event(mut self, listener: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Self {
        self.events = Some(Events(Arc::new(listener)));
        self
    }

    /// Seeds the retry and breaker jitter, for reproducible tests and simulations. By default
    /// the seed is random.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Checks the objective and the overrides, and derives the rest.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Missing`] without a latency objective, availability or maximum
    /// concurrency; [`ConfigError::ZeroDuration`] for a zero latency objective, attempt
    /// timeout or open duration; [`ConfigError::OutOfRange`] for an availability outside
    /// (0, 1) (NaN included), a latency objective above 1 hour, a concurrency outside 1 to
    /// 1,000,000, attempts outside 1 to 100, a trip count outside 1 to 1,000, a budget ratio
    /// outside [0, 1000]; a backoff's own errors.
    pub fn build(self) -> Result<Sla, ConfigError> {
        let latency_objective = self.latency_objective.ok_or(ConfigError::Missing {
            layer: LAYER,
            setting: "latency_objective",
        })?;
        ConfigError::check_duration(
            LAYER,
            "latency_objective",
            latency_objective,
            ONE_HOUR,
            "at most 1 hour",
        )?;
        let availability = self.availability.ok_or(ConfigError::Missing {
            layer: LAYER,
            setting: "availability",
        })?;
        // NaN fails the comparison, so it is refused too.
        if !(availability > 0.0 && availability < 1.0) {
            return Err(ConfigError::out_of_range(
                LAYER,
                "availability",
                availability,
                "in (0, 1)",
            ));
        }
        let max_concurrency = self.max_concurrency.ok_or(ConfigError::Missing {
            layer: LAYER,
            setting: "max_concurrency",
        })?;
        if !(1..=MAX_LIMIT).contains(&max_concurrency) {
            return Err(ConfigError::out_of_range(
                LAYER,
                "max_concurrency",
                max_concurrency,
                "from 1 to 1,000,000",
            ));
        }
        let error_budget = 1.0 - availability;

        let attempt_timeout = self.attempt_timeout.unwrap_or(latency_objective);
        if attempt_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration {
                layer: LAYER,
                setting: "attempt_timeout",
            });
        }
        let max_attempts = self.max_attempts.unwrap_or(ATTEMPTS);
        if !(1..=100).contains(&max_attempts) {
            return Err(ConfigError::out_of_range(
                LAYER,
                "max_attempts",
                max_attempts,
                "from 1 to 100",
            ));
        }
        let trip_after_failures = self
            .trip_after_failures
            .unwrap_or_else(|| trip_after_failures(error_budget));
        if !(1..=MAX_TRIP_FAILURES).contains(&trip_after_failures) {
            return Err(ConfigError::out_of_range(
                LAYER,
                "trip_after_failures",
                trip_after_failures,
                "from 1 to 1,000",
            ));
        }
        let retry_budget_ratio = self
            .retry_budget_ratio
            .unwrap_or_else(|| DOWN_RATE.max(error_budget));
        if !(0.0..=1000.0).contains(&retry_budget_ratio) {
            return Err(ConfigError::out_of_range(
                LAYER,
                "retry_budget_ratio",
                retry_budget_ratio,
                "in [0, 1000]",
            ));
        }
        let open_duration = self.open_duration.unwrap_or(OPEN_DURATION);
        if open_duration.is_zero() {
            return Err(ConfigError::ZeroDuration {
                layer: LAYER,
                setting: "open_duration",
            });
        }
        let backoff = self.backoff.unwrap_or_else(|| {
            Backoff::exponential(latency_objective, 2.0, latency_objective * 8).jitter(Jitter::Full)
        });
        let sla = Sla {
            latency_objective,
            availability,
            max_concurrency,
            attempt_timeout,
            max_attempts,
            backoff,
            retry_budget_ratio,
            trip_after_failures,
            open_duration,
            name: self.name,
            seed: self.seed,
            events: self.events,
        };
        // The layers' builders check what is left (a backoff's shape, durations too large):
        // build once so that a bad override is an error here, not later.
        sla.client_layer()?;
        sla.server_layer()?;
        Ok(sla)
    }
}

/// The shortest run of failures that is evidence of an outage: rare (1 in 10⁴ calls) from a
/// dependency failing half its calls, and very rare (1 in 10⁹) from one within its error
/// budget.
fn trip_after_failures(error_budget: f64) -> u32 {
    // A failure rate that rounds to 1 (an availability below about 1e-16) has `ln` 0 and no
    // run long enough: infinite, then capped, not the -inf the division gives.
    let run = |rate: f64, odds: f64| {
        let run = (odds.ln() / rate.ln()).ceil();
        if run.is_finite() { run } else { f64::INFINITY }
    };
    let failures = run(DOWN_RATE, DEGRADED_TRIP_ODDS).max(run(error_budget, NOISE_TRIP_ODDS));
    // A budget close to 1 asks for a long run: capped.
    failures.clamp(1.0, f64::from(MAX_TRIP_FAILURES)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_failures_follow_the_error_budget() {
        // An availability so small that `1 - A` rounds to 1: the longest run, not the shortest.
        assert_eq!(trip_after_failures(1.0 - 1e-17), 1000);
        assert_eq!(trip_after_failures(0.001), 14);
        assert_eq!(trip_after_failures(0.2), 14);
        assert_eq!(trip_after_failures(0.3), 18); // 0.3^18 < 1e-9
        assert_eq!(trip_after_failures(0.999_999), MAX_TRIP_FAILURES);
    }
}
