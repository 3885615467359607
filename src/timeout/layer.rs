//! [`TimeoutLayer`] and [`DeadlineLayer`], with their builders.

use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::observer::TimeoutObserver;
use super::{Deadline, Timeout};
use crate::error::ConfigError;
use crate::observe::{self, Event, Observer};

/// Fails an attempt that takes longer than a per-attempt timeout, or than the time left
/// before the request's deadline, whichever is shorter.
///
/// Built with [`TimeoutLayer::builder`] or [`TimeoutLayer::new`]; produces [`Timeout`].
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::timeout::TimeoutLayer;
///
/// let layer = TimeoutLayer::builder()
///     .attempt_timeout(Duration::from_millis(300))
///     .build()?;
/// assert_eq!(layer.attempt_timeout(), Duration::from_millis(300));
///
/// // Invalid settings are errors, not panics.
/// assert!(TimeoutLayer::new(Duration::ZERO).is_err());
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct TimeoutLayer {
    timeout: Duration,
    /// Only for a layer with a name, a listener or metrics: see `TimeoutLayerBuilder::name`.
    observer: Option<Arc<TimeoutObserver>>,
}

impl TimeoutLayer {
    /// Starts building a timeout layer.
    pub fn builder() -> TimeoutLayerBuilder {
        TimeoutLayerBuilder::default()
    }

    /// A timeout layer with the given per-attempt timeout; shorthand for the builder.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroDuration`] if `timeout` is zero.
    pub fn new(timeout: Duration) -> Result<Self, ConfigError> {
        Self::builder().attempt_timeout(timeout).build()
    }

    /// The per-attempt timeout.
    pub fn attempt_timeout(&self) -> Duration {
        self.timeout
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout::new(inner, self.timeout, self.observer.clone())
    }
}

/// Builder of [`TimeoutLayer`].
#[derive(Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct TimeoutLayerBuilder {
    timeout: Option<Duration>,
    name: Option<Arc<str>>,
    events: Option<observe::Listener>,
}

impl std::fmt::Debug for TimeoutLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutLayerBuilder")
            .field("timeout", &self.timeout)
            .field("name", &self.name)
            .field("listener", &self.events.is_some())
            .finish()
    }
}

impl TimeoutLayerBuilder {
    /// The longest one attempt may take. Required, and must be greater than zero.
    ///
    /// The attempt's clock starts when its response future is first polled, or at `call`
    /// when the request carries a deadline. A timeout too large to add to the current
    /// instant (centuries) never fires.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// A name for `tracing` events, [`Event`]s and the `name` label of metrics.
    ///
    /// A timeout is only known in the response future, so a layer with a name, a listener
    /// or (with the `metrics` feature) metrics gives each response future a reference to
    /// them: one reference-count increment and decrement per call, no allocation. A layer
    /// with none of them pays nothing.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Called with an [`Event::TimedOut`] for every attempt that outlived its timeout and an
    /// [`Event::DeadlineExceeded`] for every call this layer failed because the request's
    /// deadline came first (or had passed), on the thread that polled the call. Calls that
    /// finish in time report nothing. Costs a reference count per call: see
    /// [`name`](Self::name).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_firebreak::observe::Event;
    /// use tower_firebreak::timeout::TimeoutLayer;
    ///
    /// let layer = TimeoutLayer::builder()
    ///     .attempt_timeout(Duration::from_millis(300))
    ///     .name("search")
    ///     .on_event(|event: &Event<'_>| {
    ///         if let Event::TimedOut { name, timeout, .. } = event {
    ///             eprintln!("{name}: an attempt took longer than {timeout:?}");
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

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Missing`] without an attempt timeout, [`ConfigError::ZeroDuration`] if
    /// it is zero.
    pub fn build(self) -> Result<TimeoutLayer, ConfigError> {
        let timeout = required_positive(self.timeout, "TimeoutLayer", "attempt_timeout")?;
        let observed = cfg!(feature = "metrics") || self.name.is_some() || self.events.is_some();
        let observer =
            observed.then(|| Arc::new(TimeoutObserver::new(Observer::new(self.name, self.events))));
        Ok(TimeoutLayer { timeout, observer })
    }
}

/// Gives each request a deadline a fixed budget from its arrival, makes it visible to every
/// layer below, and fails the request with
/// [`DeadlineExceeded`](super::DeadlineExceeded) when it passes.
///
/// An earlier deadline already in force (from an outer layer or
/// [`deadline::scope`](super::deadline::scope)) is kept. Built with
/// [`DeadlineLayer::builder`] or [`DeadlineLayer::new`]; produces [`Deadline`].
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::timeout::DeadlineLayer;
///
/// let layer = DeadlineLayer::new(Duration::from_secs(2))?;
/// assert_eq!(layer.budget(), Duration::from_secs(2));
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    budget: Duration,
}

impl DeadlineLayer {
    /// Starts building a deadline layer.
    pub fn builder() -> DeadlineLayerBuilder {
        DeadlineLayerBuilder { budget: None }
    }

    /// A deadline layer with the given budget; shorthand for the builder.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroDuration`] if `budget` is zero.
    pub fn new(budget: Duration) -> Result<Self, ConfigError> {
        Self::builder().budget(budget).build()
    }

    /// The time each request is given from its arrival.
    pub fn budget(&self) -> Duration {
        self.budget
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline::new(inner, self.budget)
    }
}

/// Builder of [`DeadlineLayer`].
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct DeadlineLayerBuilder {
    budget: Option<Duration>,
}

impl DeadlineLayerBuilder {
    /// The time a request has, from the moment it reaches the layer, to finish every attempt.
    /// Required, and must be greater than zero. A budget too large to add to the current
    /// instant (centuries) sets no deadline of its own.
    pub fn budget(mut self, budget: Duration) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Missing`] without a budget, [`ConfigError::ZeroDuration`] if it is zero.
    pub fn build(self) -> Result<DeadlineLayer, ConfigError> {
        let budget = required_positive(self.budget, "DeadlineLayer", "budget")?;
        Ok(DeadlineLayer { budget })
    }
}

fn required_positive(
    value: Option<Duration>,
    layer: &'static str,
    setting: &'static str,
) -> Result<Duration, ConfigError> {
    match value {
        None => Err(ConfigError::Missing { layer, setting }),
        Some(Duration::ZERO) => Err(ConfigError::ZeroDuration { layer, setting }),
        Some(duration) => Ok(duration),
    }
}
