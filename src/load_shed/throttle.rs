//! Client-side adaptive throttling (Google SRE, chapter 21): a client that sees its dependency
//! reject requests as overloaded rejects some of its own requests locally, before the
//! dependency has to spend anything on them.
//!
//! Over a sliding window the client counts `requests` (every request it attempted, including
//! those it rejected itself) and `accepts` (requests the dependency did not reject as
//! overloaded). Each new request is rejected locally with probability
//!
//! ```text
//! max(0, (requests - k × accepts) / (requests + 1))
//! ```
//!
//! While the dependency accepts everything, that is 0. When it can accept only some, the
//! requests the client sends settle at about `k` times what the dependency accepts: `k = 2`
//! (the default) lets through twice what gets accepted, so the dependency still sees enough
//! traffic to show it has recovered, while no longer paying for most of what it would reject.
//!
//! A local rejection is logged with `tracing` at `debug`, passed as an
//! [`Event::Throttled`](crate::observe::Event::Throttled) to the listener set with
//! [`on_event`](ThrottleLayerBuilder::on_event) and, with the `metrics` feature, counted.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tower::{Layer, Service};

use crate::error::{BoxError, ConfigError, ErrorKind};
#[cfg(feature = "metrics")]
use crate::observe::metrics::ThrottleMetrics;
use crate::observe::{self, Event, Observer};
use crate::sync::{AtomicU64, Ordering};
use crate::ticker::{BucketClock, Epochs, Ticker};

const LAYER: &str = "ThrottleLayer";

/// Buckets the window is split into: counts expire a tenth of the window at a time.
const BUCKETS: usize = 10;

/// The call was rejected by the client itself: its dependency has been rejecting requests as
/// overloaded, so this one was not sent (see [`ThrottleLayer`]).
///
/// [`ErrorKind::of`] names it [`ErrorKind::Overloaded`]: it means the same to a caller (the
/// dependency is overloaded, back off), and the retry layer never retries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Throttled {
    probability: f64,
}

impl Throttled {
    /// The probability of local rejection when this request was rejected.
    pub fn probability(&self) -> f64 {
        self.probability
    }
}

impl fmt::Display for Throttled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "throttled locally: the dependency has been rejecting requests ({:.0}% are held back)",
            self.probability * 100.0
        )
    }
}

impl std::error::Error for Throttled {}

/// Decides whether the dependency rejected a call as overloaded.
///
/// Implemented for any `Fn(&Result<Response, BoxError>) -> bool` (true: rejected). The default,
/// [`OverloadedIsRejection`], counts an error that [`ErrorKind::of`] calls
/// [`Overloaded`](ErrorKind::Overloaded) (from a load-shedding layer below, or a throttle of
/// its own) as a rejection, and anything else as accepted: a dependency that answered with
/// an error of its own still accepted the request.
pub trait IsRejection<Response> {
    /// Whether the dependency rejected this call as overloaded.
    fn is_rejection(&self, result: &Result<Response, BoxError>) -> bool;
}

impl<F, Response> IsRejection<Response> for F
where
    F: Fn(&Result<Response, BoxError>) -> bool,
{
    fn is_rejection(&self, result: &Result<Response, BoxError>) -> bool {
        self(result)
    }
}

/// The default [`IsRejection`]: an [`Overloaded`](ErrorKind::Overloaded) error is a rejection.
#[derive(Debug, Clone, Copy, Default)]
pub struct OverloadedIsRejection;

impl<Response> IsRejection<Response> for OverloadedIsRejection {
    fn is_rejection(&self, result: &Result<Response, BoxError>) -> bool {
        matches!(result, Err(err) if ErrorKind::of(&**err) == ErrorKind::Overloaded)
    }
}

/// Client-side adaptive throttling: rejects requests locally, with a probability that grows
/// as the dependency rejects more of them, so that what is sent settles at about `k` times
/// what the dependency accepts. Clones of the layer and of its services share the counts.
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::load_shed::ThrottleLayer;
///
/// let layer = ThrottleLayer::builder()
///     .k(2.0)                            // send up to twice what gets accepted
///     .window(Duration::from_secs(60))   // over the last minute
///     .build()?;
/// assert_eq!(layer.rejection_probability(), 0.0);
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
pub struct ThrottleLayer<C = OverloadedIsRejection> {
    state: Arc<ThrottleState>,
    classifier: C,
    seed: u64,
}

impl<C: Clone> Clone for ThrottleLayer<C> {
    fn clone(&self) -> Self {
        ThrottleLayer {
            state: Arc::clone(&self.state),
            classifier: self.classifier.clone(),
            seed: self.seed,
        }
    }
}

impl<C> fmt::Debug for ThrottleLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleLayer")
            .field("k", &self.state.k)
            .field("rejection_probability", &self.rejection_probability())
            .finish_non_exhaustive()
    }
}

impl ThrottleLayer {
    /// Starts building a throttle: `k` 2, a 2-minute window (the SRE book's values).
    pub fn builder() -> ThrottleLayerBuilder {
        ThrottleLayerBuilder {
            k: 2.0,
            window: Duration::from_secs(120),
            seed: None,
            classifier: OverloadedIsRejection,
            name: None,
            events: None,
        }
    }
}

impl<C> ThrottleLayer<C> {
    /// The probability that a request is rejected locally now.
    pub fn rejection_probability(&self) -> f64 {
        self.state.probability()
    }

    /// (requests, accepts) in the current window.
    pub fn window_counts(&self) -> (u64, u64) {
        self.state.counts()
    }
}

impl<S, C: Clone> Layer<S> for ThrottleLayer<C> {
    type Service = Throttle<S, C>;

    fn layer(&self, inner: S) -> Throttle<S, C> {
        let clone = self.state.clones.fetch_add(1, Ordering::Relaxed);
        Throttle {
            inner,
            local: Arc::new(Local {
                state: Arc::clone(&self.state),
            }),
            classifier: self.classifier.clone(),
            rng: SmallRng::seed_from_u64(self.seed ^ clone.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        }
    }
}

/// Builder of [`ThrottleLayer`]. Every setting is checked by [`build`](Self::build).
#[must_use = "a builder does nothing until `build` is called"]
pub struct ThrottleLayerBuilder<C = OverloadedIsRejection> {
    k: f64,
    window: Duration,
    seed: Option<u64>,
    classifier: C,
    name: Option<Arc<str>>,
    events: Option<observe::Listener>,
}

impl<C> fmt::Debug for ThrottleLayerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleLayerBuilder")
            .field("k", &self.k)
            .field("window", &self.window)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<C> ThrottleLayerBuilder<C> {
    /// How many requests to send per accepted one once the dependency rejects, at least 1 and
    /// at most 1,000; default 2. Lower is more aggressive: 1.1 sends barely more than gets
    /// accepted, and recovery is seen later.
    pub fn k(mut self, k: f64) -> Self {
        self.k = k;
        self
    }

    /// The sliding window the counts are kept over, from 1 s to 1 hour; default 2 minutes.
    /// It slides a tenth at a time.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Seeds the random draws, for reproducible tests. By default the seed is random.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// A name for `tracing` events, [`Event`]s and the `name` label of metrics.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Called with an [`Event::Throttled`] for every call rejected locally, on the thread that
    /// called. Calls sent to the dependency report nothing. See [`observe`](crate::observe).
    pub fn on_event(mut self, listener: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Self {
        self.events = Some(Arc::new(listener));
        self
    }

    /// Decide what the dependency rejected with `classifier` instead of
    /// [`OverloadedIsRejection`] (for example, HTTP 429 and 503 responses).
    pub fn classifier<D>(self, classifier: D) -> ThrottleLayerBuilder<D> {
        ThrottleLayerBuilder {
            k: self.k,
            window: self.window,
            seed: self.seed,
            classifier,
            name: self.name,
            events: self.events,
        }
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError::OutOfRange`] for `k` outside [1, 1000] (NaN included) or a window
    /// outside [1 s, 1 hour].
    pub fn build(self) -> Result<ThrottleLayer<C>, ConfigError> {
        if !(1.0..=1000.0).contains(&self.k) {
            return Err(ConfigError::out_of_range(
                LAYER,
                "k",
                self.k,
                "in [1, 1000]",
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.window) {
            return Err(ConfigError::out_of_range(
                LAYER,
                "window",
                format!("{:?}", self.window),
                "from 1 s to 1 hour",
            ));
        }
        let seed = self.seed.unwrap_or_else(|| {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        });
        Ok(ThrottleLayer {
            state: Arc::new(ThrottleState::new(
                self.k,
                self.window,
                Observer::new(self.name, self.events),
            )),
            classifier: self.classifier,
            seed,
        })
    }
}

/// The shared counts: requests and accepts per bucket, moved on by a [`Ticker`].
#[derive(Debug)]
struct ThrottleState {
    k: f64,
    /// Per bucket. Not one cache line per counter: every call reads them all to compute the
    /// probability, and every thread writes the current bucket anyway.
    requests: Box<[AtomicU64]>,
    accepts: Box<[AtomicU64]>,
    /// The current epoch (tenths of the window since the layer was built) and its bucket.
    clock: BucketClock,
    /// Service clones made, to give each its own random stream.
    clones: AtomicU64,
    ticker: Ticker,
    observer: Observer,
    #[cfg(feature = "metrics")]
    metrics: ThrottleMetrics,
}

impl ThrottleState {
    fn new(k: f64, window: Duration, observer: Observer) -> ThrottleState {
        let counters = || (0..BUCKETS).map(|_| AtomicU64::new(0)).collect();
        ThrottleState {
            k,
            requests: counters(),
            accepts: counters(),
            clock: BucketClock::new(BUCKETS as u64),
            clones: AtomicU64::new(0),
            ticker: Ticker::new(window / BUCKETS as u32, BUCKETS as u64),
            #[cfg(feature = "metrics")]
            metrics: ThrottleMetrics::new(&observer),
            observer,
        }
    }

    /// A call was rejected locally with `probability`.
    fn throttled(&self, probability: f64) {
        let name = self.observer.name();
        tracing::debug!(name, probability, "throttled locally");
        #[cfg(feature = "metrics")]
        {
            self.metrics.rejections.increment(1);
            self.metrics.probability.set(probability);
        }
        self.observer.emit(&Event::Throttled { name, probability });
    }

    fn bucket(&self) -> usize {
        self.clock.bucket()
    }

    fn counts(&self) -> (u64, u64) {
        let sum = |counters: &[AtomicU64]| -> u64 {
            counters.iter().map(|c| c.load(Ordering::Relaxed)).sum()
        };
        (sum(&self.requests), sum(&self.accepts))
    }

    fn probability(&self) -> f64 {
        let (requests, accepts) = self.counts();
        let excess = requests as f64 - self.k * accepts as f64;
        (excess / (requests as f64 + 1.0)).max(0.0)
    }
}

impl Epochs for ThrottleState {
    fn ticker(&self) -> Option<&Ticker> {
        Some(&self.ticker)
    }

    fn advance_to(&self, epoch: u64) {
        self.clock.advance_to(epoch, |bucket| {
            self.requests[bucket].store(0, Ordering::Relaxed);
            self.accepts[bucket].store(0, Ordering::Relaxed);
        });
        #[cfg(feature = "metrics")]
        self.metrics.probability.set(self.probability());
    }

    fn epoch(&self) -> u64 {
        self.clock.epoch()
    }

    fn activity(&self) -> u64 {
        self.counts().0
    }
}

/// What one service clone shares with its response futures (on a line of its own).
#[repr(align(128))]
#[derive(Debug)]
struct Local {
    state: Arc<ThrottleState>,
}

/// A service behind client-side throttling. Made by [`ThrottleLayer`].
pub struct Throttle<S, C = OverloadedIsRejection> {
    inner: S,
    local: Arc<Local>,
    classifier: C,
    /// This clone's random stream: a draw per call needs no shared state.
    rng: SmallRng,
}

impl<S, C> Throttle<S, C> {
    inner_service_accessors!();
}

impl<S: Clone, C: Clone> Clone for Throttle<S, C> {
    fn clone(&self) -> Self {
        let clone = self.local.state.clones.fetch_add(1, Ordering::Relaxed);
        let mut rng = self.rng.clone();
        let seed: u64 = rng.random();
        Throttle {
            inner: self.inner.clone(),
            local: Arc::new(Local {
                state: Arc::clone(&self.local.state),
            }),
            classifier: self.classifier.clone(),
            rng: SmallRng::seed_from_u64(seed ^ clone),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Throttle<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("inner", &self.inner)
            .field("rejection_probability", &self.local.state.probability())
            .finish_non_exhaustive()
    }
}

impl<S, C, Request> Service<Request> for Throttle<S, C>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    C: IsRejection<S::Response> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ThrottleFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let state = &self.local.state;
        Ticker::keep_moving(state);
        let probability = state.probability();
        // Every attempted request counts, the ones rejected here too (as in the SRE book).
        state.requests[state.bucket()].fetch_add(1, Ordering::Relaxed);
        if probability > 0.0 && self.rng.random::<f64>() < probability {
            state.throttled(probability);
            return ThrottleFuture::throttled(Throttled { probability });
        }
        ThrottleFuture::sent(
            self.inner.call(request),
            Arc::clone(&self.local),
            self.classifier.clone(),
        )
    }
}

pin_project! {
    /// Response future of [`Throttle`]: the inner response (its error boxed), or a boxed
    /// [`Throttled`] when the request was rejected locally. Counts the dependency's answer.
    #[must_use = "futures do nothing unless polled"]
    pub struct ThrottleFuture<F, C> {
        #[pin]
        inner: Option<F>,
        sent: Option<(Arc<Local>, C)>,
        throttled: Option<Throttled>,
    }
}

impl<F, C> ThrottleFuture<F, C> {
    fn sent(inner: F, local: Arc<Local>, classifier: C) -> Self {
        ThrottleFuture {
            inner: Some(inner),
            sent: Some((local, classifier)),
            throttled: None,
        }
    }

    fn throttled(error: Throttled) -> Self {
        ThrottleFuture {
            inner: None,
            sent: None,
            throttled: Some(error),
        }
    }
}

impl<F, C> fmt::Debug for ThrottleFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThrottleFuture")
            .field("throttled", &self.throttled)
            .finish_non_exhaustive()
    }
}

impl<F, C, T, E> Future for ThrottleFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: IsRejection<T>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return match this.throttled.take() {
                Some(error) => Poll::Ready(Err(Box::new(error))),
                None => panic!("ThrottleFuture polled after completion"),
            };
        };
        let result = ready!(inner.poll(cx)).map_err(Into::into);
        if let Some((local, classifier)) = this.sent.take()
            && !classifier.is_rejection(&result)
        {
            let state = &local.state;
            state.accepts[state.bucket()].fetch_add(1, Ordering::Relaxed);
        }
        Poll::Ready(result)
    }
}
