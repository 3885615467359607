//! [`LoadShedLayer`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::LoadShed;
use super::limit::{Kind, LAYER, Limit, Limiter, Sampling, SlaGuard};
use super::queue::{QueueOrder, WaitQueue};
use crate::clock::{self, Instant};
use crate::error::{ConfigError, ONE_HOUR};
use crate::observe::{Event, Listener, LoadShedObserver};

/// Rejects calls with [`Overloaded`](super::Overloaded) while the concurrency limit is
/// reached, instead of queueing them. The limit is fixed
/// ([`max_concurrency`](LoadShedLayerBuilder::max_concurrency)) or adaptive
/// ([`limit`](LoadShedLayerBuilder::limit), [`latency_objective`](LoadShedLayerBuilder::latency_objective)).
/// Every service this layer wraps, and every clone of them, shares one limit: build one layer
/// per protected resource.
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::load_shed::LoadShedLayer;
///
/// let layer = LoadShedLayer::builder()
///     .max_concurrency(64)
///     .retry_after(Duration::from_secs(1))
///     .build()?;
/// assert_eq!(layer.limit(), 64);
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct LoadShedLayer {
    limiter: Arc<Limiter>,
    queue: Option<Arc<WaitQueue>>,
    retry_after: Duration,
    /// Where the limiter's nanosecond timestamps start.
    origin: Instant,
    observer: Arc<LoadShedObserver>,
}

impl fmt::Debug for LoadShedLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedLayer")
            .field("limiter", &self.limiter)
            .field("queue", &self.queue)
            .field("retry_after", &self.retry_after)
            .field("name", &self.observer.name())
            .finish()
    }
}

impl LoadShedLayer {
    /// Starts building a load-shedding layer; a limit must be set, with
    /// [`max_concurrency`](LoadShedLayerBuilder::max_concurrency),
    /// [`limit`](LoadShedLayerBuilder::limit) or
    /// [`latency_objective`](LoadShedLayerBuilder::latency_objective).
    pub fn builder() -> LoadShedLayerBuilder {
        LoadShedLayerBuilder {
            max_concurrency: None,
            limit: None,
            sampling: None,
            queue: None,
            retry_after: Duration::from_secs(1),
            name: None,
            events: None,
        }
    }

    /// The concurrency limit now: the most calls admitted at once. Fixed, or moved by the
    /// adaptive algorithm after each sampling window.
    pub fn limit(&self) -> u64 {
        self.limiter.limit()
    }

    /// The concurrency limit now; the same as [`limit`](Self::limit).
    pub fn max_concurrency(&self) -> u64 {
        self.limiter.limit()
    }

    /// Calls in flight now, through every service of this layer.
    pub fn in_flight(&self) -> u64 {
        self.limiter.in_flight()
    }

    /// Callers waiting in the queue now (0 without one).
    pub fn queued(&self) -> u64 {
        self.queue.as_ref().map_or(0, |queue| queue.len())
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> LoadShed<S> {
        LoadShed::new(
            inner,
            Arc::clone(&self.limiter),
            self.retry_after,
            self.origin,
            self.queue.clone(),
            Arc::clone(&self.observer),
        )
    }
}

/// Builder of [`LoadShedLayer`]. Every setting is checked by [`build`](Self::build).
#[derive(Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct LoadShedLayerBuilder {
    max_concurrency: Option<u64>,
    limit: Option<Limit>,
    sampling: Option<Sampling>,
    queue: Option<(usize, Duration, QueueOrder)>,
    name: Option<Arc<str>>,
    events: Option<Listener>,
    retry_after: Duration,
}

impl fmt::Debug for LoadShedLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedLayerBuilder")
            .field("max_concurrency", &self.max_concurrency)
            .field("limit", &self.limit)
            .field("sampling", &self.sampling)
            .field("queue", &self.queue)
            .field("retry_after", &self.retry_after)
            .field("name", &self.name)
            .field("on_event", &self.events.as_ref().map(|_| ".."))
            .finish()
    }
}

impl LoadShedLayerBuilder {
    /// A fixed limit: the most calls in flight at once, from 1 to 1,000,000. The same as
    /// `.limit(Fixed::new(limit))`; cannot be combined with [`limit`](Self::limit).
    pub fn max_concurrency(mut self, limit: u64) -> Self {
        self.max_concurrency = Some(limit);
        self
    }

    /// How the limit is set: [`Fixed`](super::Fixed), or an adaptive algorithm
    /// ([`Aimd`](super::Aimd), [`Gradient2`](super::Gradient2), [`Vegas`](super::Vegas),
    /// [`SlaGuard`](super::SlaGuard)), each checked by `build`. Replaces an earlier `limit`
    /// or `latency_objective`.
    ///
    /// ```
    /// use tower_firebreak::load_shed::{Aimd, LoadShedLayer};
    ///
    /// let layer = LoadShedLayer::builder()
    ///     .limit(Aimd::default().initial(20).min(1).max(1000))
    ///     .build()?;
    /// assert_eq!(layer.limit(), 20);
    /// # Ok::<(), tower_firebreak::error::ConfigError>(())
    /// ```
    pub fn limit(mut self, limit: impl Into<Limit>) -> Self {
        self.limit = Some(limit.into());
        self
    }

    /// The SLA guard with its defaults: shed early so that 99% of admitted calls complete
    /// within `objective` (greater than zero, at most 1 hour). The same as
    /// `.limit(SlaGuard::new(objective))`; see [`SlaGuard`](super::SlaGuard).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_firebreak::load_shed::LoadShedLayer;
    ///
    /// let guard = LoadShedLayer::builder().latency_objective(Duration::from_millis(50)).build()?;
    /// # let _ = guard;
    /// # Ok::<(), tower_firebreak::error::ConfigError>(())
    /// ```
    pub fn latency_objective(self, objective: Duration) -> Self {
        self.limit(SlaGuard::new(objective))
    }

    /// For an adaptive limit: fold samples into the algorithm once a window is at least
    /// `window` long (1 ms to 1 minute) and holds at least `min_samples` completed calls
    /// (1 to 1,000,000); default 100 ms and 10. A window with fewer calls stays open until it
    /// has them. Not for a fixed limit.
    pub fn sample_window(mut self, window: Duration, min_samples: u64) -> Self {
        self.sampling = Some(Sampling {
            window,
            min_samples,
        });
        self
    }

    /// Let up to `capacity` callers (1 to 1,000,000) wait, each for at most `max_wait`
    /// (greater than zero, at most 1 hour), for a slot when the limit is full, served in
    /// `order`; beyond that, reject as without a queue. Default: no queue, reject at once.
    ///
    /// With a queue, `poll_ready` reserves the slot (taking a free one, or waiting in the
    /// queue), and `call` uses it. It returns `Pending` only while its caller waits in the
    /// queue, and is woken when a finishing call hands it a slot or when `max_wait` has
    /// passed; then it reports ready, and `call` answers [`Overloaded`](super::Overloaded)
    /// without calling the inner service. A clone dropped while waiting leaves the queue (a
    /// slot it was just handed goes to the next waiter). A `call` without `poll_ready` decides
    /// at once, as without a queue. Needs a tokio runtime with time enabled (for `max_wait`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_firebreak::load_shed::{LoadShedLayer, QueueOrder};
    ///
    /// let layer = LoadShedLayer::builder()
    ///     .max_concurrency(64)
    ///     .queue(32, Duration::from_millis(50), QueueOrder::Lifo)
    ///     .build()?;
    /// assert_eq!(layer.queued(), 0);
    /// # Ok::<(), tower_firebreak::error::ConfigError>(())
    /// ```
    pub fn queue(mut self, capacity: usize, max_wait: Duration, order: QueueOrder) -> Self {
        self.queue = Some((capacity, max_wait, order));
        self
    }

    /// The hint a rejection carries of when to come back
    /// ([`Overloaded::retry_after`](super::Overloaded::retry_after)), greater than zero and at
    /// most 1 hour; default 1 s.
    pub fn retry_after(mut self, hint: Duration) -> Self {
        self.retry_after = hint;
        self
    }

    /// A name for `tracing` events, [`Event`]s and the `name` label of metrics.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Calls `listener` with an [`Event::LoadShed`] for every call rejected and an
    /// [`Event::LimitChanged`] whenever an adaptive limit moves; admitted calls report
    /// nothing. See [`observe`](crate::observe).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use tower_firebreak::load_shed::LoadShedLayer;
    /// use tower_firebreak::observe::Event;
    ///
    /// let shed = Arc::new(AtomicU64::new(0));
    /// let counter = Arc::clone(&shed);
    /// let layer = LoadShedLayer::builder()
    ///     .max_concurrency(64)
    ///     .name("api")
    ///     .on_event(move |event: &Event<'_>| {
    ///         if let Event::LoadShed { .. } = event {
    ///             counter.fetch_add(1, Ordering::Relaxed);
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
    /// - [`ConfigError::Missing`] with no limit set;
    /// - [`ConfigError::Incompatible`] for both `max_concurrency` and `limit`, or
    ///   `sample_window` with a fixed limit;
    /// - [`ConfigError::OutOfRange`] for a queue capacity outside 1 to 1,000,000 or a
    ///   `max_wait` above 1 hour, a limit outside 1 to 1,000,000, an algorithm
    ///   setting outside its range (NaN and infinities included), a sampling window outside
    ///   1 ms to 1 minute or `min_samples` outside 1 to 1,000,000, a hint above 1 hour;
    /// - [`ConfigError::MinAboveMax`] for an algorithm's `min` above its `max`;
    /// - [`ConfigError::ZeroDuration`] for a zero hint, latency or `max_wait`.
    pub fn build(self) -> Result<LoadShedLayer, ConfigError> {
        let limit = match (self.max_concurrency, self.limit) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Incompatible {
                    layer: LAYER,
                    setting: "limit",
                    other: "max_concurrency",
                });
            }
            (Some(fixed), None) => Limit::fixed(fixed),
            (None, Some(limit)) => limit,
            (None, None) => {
                return Err(ConfigError::Missing {
                    layer: LAYER,
                    setting: "max_concurrency",
                });
            }
        };
        limit.validate()?;
        if let Some(sampling) = self.sampling {
            if !limit.is_adaptive() {
                return Err(ConfigError::Incompatible {
                    layer: LAYER,
                    setting: "sample_window",
                    other: "max_concurrency",
                });
            }
            if !(Duration::from_millis(1)..=Duration::from_secs(60)).contains(&sampling.window) {
                return Err(ConfigError::out_of_range(
                    LAYER,
                    "sample_window",
                    format!("{:?}", sampling.window),
                    "from 1 ms to 1 minute",
                ));
            }
            if !(1..=1_000_000).contains(&sampling.min_samples) {
                return Err(ConfigError::out_of_range(
                    LAYER,
                    "sample_window",
                    sampling.min_samples,
                    "at least 1 and at most 1,000,000 samples",
                ));
            }
        }
        let queue = match self.queue {
            None => None,
            Some((capacity, max_wait, order)) => {
                if !(1..=1_000_000).contains(&capacity) {
                    return Err(ConfigError::out_of_range(
                        LAYER,
                        "queue",
                        capacity,
                        "a capacity from 1 to 1,000,000",
                    ));
                }
                ConfigError::check_duration(
                    LAYER,
                    "queue",
                    max_wait,
                    ONE_HOUR,
                    "a wait of at most 1 hour",
                )?;
                Some(Arc::new(WaitQueue::new(capacity, max_wait, order)))
            }
        };
        ConfigError::check_duration(
            LAYER,
            "retry_after",
            self.retry_after,
            ONE_HOUR,
            "at most 1 hour",
        )?;
        let limiter = match limit.kind {
            Kind::Fixed(fixed) => Limiter::fixed(fixed.max_concurrency),
            Kind::Adaptive(algorithm) => {
                Limiter::adaptive(algorithm, self.sampling.unwrap_or(Sampling::DEFAULT))
            }
        };
        let observer = Arc::new(LoadShedObserver::new(
            self.name,
            self.events,
            limiter.limit(),
        ));
        Ok(LoadShedLayer {
            limiter: Arc::new(limiter),
            queue,
            retry_after: self.retry_after,
            origin: clock::now(),
            observer,
        })
    }
}
