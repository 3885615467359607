//! [`RetryLayer`] and its builder.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::Retry;
use super::backoff::Backoff;
use super::budget::RetryBudget;
use super::policy::{CloneRequests, RetryErrors};
use crate::error::ConfigError;
#[cfg(feature = "metrics")]
use crate::observe::metrics::RetryMetrics;
use crate::observe::{self, Event, Observer};
use crate::sync::{AtomicU64, Ordering};

const LAYER: &str = "RetryLayer";

/// The most attempts a request may be given (the first one included).
const MAX_ATTEMPTS: u32 = 100;

/// What every service of one layer shares; read-only once built, but for the seed that
/// each new service clone draws from.
pub(crate) struct Settings {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) max_retry_after: Duration,
    pub(crate) budget: Option<RetryBudget>,
    /// Gives each service clone the seed of its own jitter generator.
    seed: AtomicU64,
    observer: Observer,
    #[cfg(feature = "metrics")]
    metrics: RetryMetrics,
}

impl Settings {
    /// The jitter seed for a new service clone: consecutive clones get unrelated seeds.
    pub(crate) fn seed_for_clone(&self) -> u64 {
        mix(self.seed.fetch_add(1, Ordering::Relaxed))
    }

    /// An attempt is about to be made (with the `metrics` feature, counted; otherwise
    /// nothing).
    #[inline]
    pub(crate) fn count_attempt(&self) {
        #[cfg(feature = "metrics")]
        self.metrics.attempts.increment(1);
    }

    /// Attempt number `attempt` failed and will be retried after `delay`.
    pub(crate) fn retry_scheduled(&self, attempt: u32, delay: Duration) {
        let name = self.observer.name();
        tracing::debug!(name, attempt, ?delay, "retrying");
        #[cfg(feature = "metrics")]
        {
            self.metrics.retries.increment(1);
            self.set_balance();
        }
        self.observer.emit(&Event::RetryScheduled {
            name,
            attempt,
            delay,
        });
    }

    /// Attempt number `attempt` failed and would have been retried, but the budget is empty.
    pub(crate) fn budget_exhausted(&self, attempt: u32) {
        let name = self.observer.name();
        tracing::debug!(name, attempt, "retry budget exhausted; not retrying");
        #[cfg(feature = "metrics")]
        {
            self.metrics.exhausted.increment(1);
            self.set_balance();
        }
        self.observer
            .emit(&Event::RetryBudgetExhausted { name, attempt });
    }

    #[cfg(feature = "metrics")]
    fn set_balance(&self) {
        if let Some(budget) = &self.budget {
            self.metrics.balance.set(budget.balance());
        }
    }
}

/// SplitMix64's finaliser: spreads consecutive integers over the whole 64-bit range.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("max_retry_after", &self.max_retry_after)
            .field("budget", &self.budget)
            .field("observer", &self.observer)
            .finish_non_exhaustive()
    }
}

/// Retries failed calls with a jittered backoff, under a retry budget, within the request's
/// deadline. Produces [`Retry`]; see the [module docs](super) for the rules.
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::retry::{Backoff, Jitter, RetryBudget, RetryLayer};
///
/// let layer = RetryLayer::builder()
///     .max_attempts(3)
///     .backoff(Backoff::exponential(Duration::from_millis(50), 2.0, Duration::from_secs(1))
///         .jitter(Jitter::Full))
///     .budget(RetryBudget::default())
///     .build()?;
/// assert_eq!(layer.max_attempts(), 3);
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
pub struct RetryLayer<P = RetryErrors, R = CloneRequests> {
    settings: Arc<Settings>,
    policy: P,
    cloner: R,
}

impl<P: Clone, R: Clone> Clone for RetryLayer<P, R> {
    fn clone(&self) -> Self {
        RetryLayer {
            settings: Arc::clone(&self.settings),
            policy: self.policy.clone(),
            cloner: self.cloner.clone(),
        }
    }
}

impl<P, R> fmt::Debug for RetryLayer<P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RetryLayer {
    /// Starts building a retry layer. The defaults: 3 attempts; exponential backoff from
    /// 50 ms, doubling, at most 2 s, with full jitter; a fresh [`RetryBudget::default`]
    /// (10% of requests plus 10 a second); retry-after hints obeyed up to 30 s; every error
    /// retried (but those that say to back off); requests copied with `Clone`.
    pub fn builder() -> RetryLayerBuilder {
        RetryLayerBuilder {
            max_attempts: 3,
            backoff: Backoff::default(),
            max_retry_after: Duration::from_secs(30),
            budget: Budget::Default,
            policy: RetryErrors,
            cloner: CloneRequests,
            seed: None,
            name: None,
            events: None,
        }
    }
}

impl<P, R> RetryLayer<P, R> {
    /// Attempts per request, the first one included.
    pub fn max_attempts(&self) -> u32 {
        self.settings.max_attempts
    }

    /// The retry budget, to watch its balance; `None` if the layer was built
    /// [`without_budget`](RetryLayerBuilder::without_budget).
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.settings.budget.as_ref()
    }
}

impl<S, P: Clone, R: Clone> Layer<S> for RetryLayer<P, R> {
    type Service = Retry<S, P, R>;

    fn layer(&self, inner: S) -> Retry<S, P, R> {
        Retry::new(
            inner,
            Arc::clone(&self.settings),
            self.policy.clone(),
            self.cloner.clone(),
        )
    }
}

#[derive(Debug, Clone)]
enum Budget {
    Default,
    Given(RetryBudget),
    None,
}

/// Builder of [`RetryLayer`]. Every setting is checked by [`build`](Self::build).
#[must_use = "a builder does nothing until `build` is called"]
pub struct RetryLayerBuilder<P = RetryErrors, R = CloneRequests> {
    max_attempts: u32,
    backoff: Backoff,
    max_retry_after: Duration,
    budget: Budget,
    policy: P,
    cloner: R,
    seed: Option<u64>,
    name: Option<Arc<str>>,
    events: Option<observe::Listener>,
}

impl<P, R> fmt::Debug for RetryLayerBuilder<P, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayerBuilder")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("max_retry_after", &self.max_retry_after)
            .field("budget", &self.budget)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<P, R> RetryLayerBuilder<P, R> {
    /// Attempts per request, the first one included, from 1 to 100; default 3. With 1 the
    /// layer never retries.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The delays between attempts; default exponential from 50 ms, doubling, at most 2 s,
    /// with full jitter.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Share this budget (with other layers, or keep a clone to watch it). Default: a fresh
    /// [`RetryBudget::default`] for this layer and its services.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Budget::Given(budget);
        self
    }

    /// Retry without a budget: every failure may be retried up to `max_attempts`. This is how
    /// a blip becomes a retry storm; meant for tests and comparisons, or for a layer below
    /// another that has a budget.
    pub fn without_budget(mut self) -> Self {
        self.budget = Budget::None;
        self
    }

    /// The longest delay a retry-after hint may ask for (a longer one is shortened to this),
    /// greater than zero and at most 24 hours; default 30 s.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// Seeds the jitter, for reproducible tests and simulations. By default the seed is
    /// random.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// A name for `tracing` events, [`Event`]s and the `name` label of metrics.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Called with an [`Event::RetryScheduled`] for every retry and an
    /// [`Event::RetryBudgetExhausted`] for every retry the budget refused, on the thread that
    /// polled the call. Calls that succeed, and failures not worth a retry, report nothing.
    /// See [`observe`](crate::observe).
    ///
    /// ```
    /// use tower_firebreak::observe::Event;
    /// use tower_firebreak::retry::RetryLayer;
    ///
    /// let layer = RetryLayer::builder()
    ///     .name("inventory")
    ///     .on_event(|event: &Event<'_>| {
    ///         if let Event::RetryBudgetExhausted { name, .. } = event {
    ///             eprintln!("{name}: retry budget exhausted");
    ///         }
    ///     })
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok::<(), tower_firebreak::error::ConfigError>(())
    /// ```
    pub fn on_event(mut self, listener: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Self {
        self.events = Some(Arc::new(listener));
        self
    }

    /// Decide what to retry with `policy` instead of "every error".
    pub fn policy<Q>(self, policy: Q) -> RetryLayerBuilder<Q, R> {
        RetryLayerBuilder {
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            max_retry_after: self.max_retry_after,
            budget: self.budget,
            policy,
            cloner: self.cloner,
            seed: self.seed,
            name: self.name,
            events: self.events,
        }
    }

    /// Copy requests for retries with `cloner` instead of `Clone` (for requests that are not
    /// `Clone`, or that must not always be retried).
    pub fn clone_requests_with<Q>(self, cloner: Q) -> RetryLayerBuilder<P, Q> {
        RetryLayerBuilder {
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            max_retry_after: self.max_retry_after,
            budget: self.budget,
            policy: self.policy,
            cloner,
            seed: self.seed,
            name: self.name,
            events: self.events,
        }
    }

    /// Checks every setting and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting: attempts outside 1 to 100, an
    /// invalid backoff (zero initial delay, multiplier below 1 or not finite, initial above
    /// max, a delay above 24 hours), or a zero or huge `max_retry_after`.
    pub fn build(self) -> Result<RetryLayer<P, R>, ConfigError> {
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(ConfigError::out_of_range(
                LAYER,
                "max_attempts",
                self.max_attempts,
                "from 1 to 100",
            ));
        }
        self.backoff.validate()?;
        if self.max_retry_after.is_zero() {
            return Err(ConfigError::ZeroDuration {
                layer: LAYER,
                setting: "max_retry_after",
            });
        }
        if self.max_retry_after > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::out_of_range(
                LAYER,
                "max_retry_after",
                format!("{:?}", self.max_retry_after),
                "at most 24 hours",
            ));
        }
        let budget = match self.budget {
            Budget::Default => Some(RetryBudget::default()),
            Budget::Given(budget) => Some(budget),
            Budget::None => None,
        };
        let seed = self
            .seed
            .unwrap_or_else(|| RandomState::new().build_hasher().finish());
        let observer = Observer::new(self.name, self.events);
        #[cfg(feature = "metrics")]
        let metrics = RetryMetrics::new(&observer);
        #[cfg(feature = "metrics")]
        if let Some(budget) = &budget {
            budget.state.watch_balance(&metrics.balance);
            metrics.balance.set(budget.balance());
        }
        Ok(RetryLayer {
            settings: Arc::new(Settings {
                max_attempts: self.max_attempts,
                backoff: self.backoff,
                max_retry_after: self.max_retry_after,
                budget,
                seed: AtomicU64::new(seed),
                observer,
                #[cfg(feature = "metrics")]
                metrics,
            }),
            policy: self.policy,
            cloner: self.cloner,
        })
    }
}
