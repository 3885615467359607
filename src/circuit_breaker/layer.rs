//! [`CircuitBreakerLayer`], its builder, and outcome classification.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::CircuitBreaker;
use super::handle::{Handle, StateTransition};
use super::shared::{Listener, OpenDuration, Shared, Timing};
use super::state::{MAX_PROBES, StateMachine};
use super::window::{MAX_BUCKETS, Model, Window};
use crate::error::{ConfigError, ONE_HOUR};
use crate::observe::{self, Event, Observer};

const LAYER: &str = "CircuitBreakerLayer";

/// What a call's result means to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The dependency did its job.
    Success,
    /// The dependency failed; counts toward tripping.
    Failure,
    /// Says nothing about the dependency's health (a client error, a cancellation, a
    /// "not found"): not counted. A probe with this outcome gives its slot back.
    Ignored,
}

/// Classifies a call's result as an [`Outcome`].
///
/// Implemented for any `Fn(&Result<Response, Error>) -> Outcome`, so a closure will do:
///
/// ```
/// use tower_firebreak::circuit_breaker::Outcome;
///
/// // An HTTP-like status: 5xx is a failure, 4xx is the caller's problem.
/// let classify = |result: &Result<u16, std::io::Error>| match result {
///     Ok(status) if *status >= 500 => Outcome::Failure,
///     Ok(status) if *status >= 400 => Outcome::Ignored,
///     Ok(_) => Outcome::Success,
///     Err(_) => Outcome::Failure,
/// };
/// # let _ = classify;
/// ```
pub trait Classify<Response, Error> {
    /// The outcome of one call.
    fn classify(&self, result: &Result<Response, Error>) -> Outcome;

    /// How long the dependency asked its callers to stay away, if this result says so: an
    /// HTTP `Retry-After`, a gRPC pushback. Asked only of results classified as failures.
    /// When the breaker opens, it stays open at least until the latest such time (capped by
    /// [`max_retry_after`](CircuitBreakerLayerBuilder::max_retry_after)): probing a dependency
    /// that said when it will be back, before then, only adds to its load. `None` by default.
    fn retry_after(&self, result: &Result<Response, Error>) -> Option<Duration> {
        let _ = result;
        None
    }
}

impl<F, Response, Error> Classify<Response, Error> for F
where
    F: Fn(&Result<Response, Error>) -> Outcome,
{
    fn classify(&self, result: &Result<Response, Error>) -> Outcome {
        self(result)
    }
}

/// The default classification: `Ok` is a success, `Err` a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnyErrorIsFailure;

impl<Response, Error> Classify<Response, Error> for AnyErrorIsFailure {
    #[inline]
    fn classify(&self, result: &Result<Response, Error>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// Wraps services in a circuit breaker. Every service this layer wraps, and every clone of
/// them, shares one breaker: build one layer per dependency.
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::circuit_breaker::{CircuitBreakerLayer, State};
///
/// let layer = CircuitBreakerLayer::builder()
///     .name("payments")
///     .failure_rate(0.5, 100)       // half of the last 100 calls failed...
///     .min_calls(20)                // ...and at least 20 calls were seen
///     .open_duration(Duration::from_secs(5))
///     .half_open_probes(3)
///     .build()?;
/// assert_eq!(layer.handle().state(), State::Closed);
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
pub struct CircuitBreakerLayer<C = AnyErrorIsFailure> {
    shared: Arc<Shared>,
    classifier: C,
    backpressure: bool,
}

impl<C: Clone> Clone for CircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        CircuitBreakerLayer {
            shared: Arc::clone(&self.shared),
            classifier: self.classifier.clone(),
            backpressure: self.backpressure,
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.shared)
            .field("backpressure", &self.backpressure)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    /// Starts building a breaker. The defaults: trip when half of the last 100 calls failed
    /// (after at least 20 calls), stay open 5 s (up to 10% less, at random), then let 1 probe
    /// through and close if it succeeds; give up on a half-open probe after 30 s.
    pub fn builder() -> CircuitBreakerLayerBuilder {
        CircuitBreakerLayerBuilder::default()
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// A handle on the breaker: state, metrics, manual overrides.
    pub fn handle(&self) -> Handle {
        Handle::new(Arc::clone(&self.shared))
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> CircuitBreaker<S, C> {
        CircuitBreaker::new(
            inner,
            Arc::clone(&self.shared),
            self.classifier.clone(),
            self.backpressure,
        )
    }
}

#[derive(Debug, Clone, Copy)]
enum TripSetting {
    Consecutive(u32),
    Rate {
        rate: f64,
        calls: u64,
    },
    Time {
        rate: f64,
        window: Duration,
        buckets: u32,
    },
}

/// The shortest bucket a time window may have: its timer fires once per bucket.
const MIN_BUCKET: Duration = Duration::from_millis(1);

/// Builder of [`CircuitBreakerLayer`]. Every setting is checked by [`build`](Self::build).
#[must_use = "a builder does nothing until `build` is called"]
pub struct CircuitBreakerLayerBuilder<C = AnyErrorIsFailure> {
    trip: TripSetting,
    min_calls: u64,
    slow_calls: Option<(Duration, f64)>,
    probes: u32,
    probe_success_ratio: f64,
    open: OpenDuration,
    jitter: f64,
    half_open_max_wait: Duration,
    max_retry_after: Duration,
    name: Option<Arc<str>>,
    listener: Option<Listener>,
    events: Option<observe::Listener>,
    classifier: C,
    backpressure: bool,
    seed: Option<u64>,
    stripes: Option<usize>,
}

impl Default for CircuitBreakerLayerBuilder {
    fn default() -> Self {
        CircuitBreakerLayerBuilder {
            trip: TripSetting::Rate {
                rate: 0.5,
                calls: 100,
            },
            min_calls: 20,
            slow_calls: None,
            probes: 1,
            probe_success_ratio: 1.0,
            open: OpenDuration::Fixed(Duration::from_secs(5)),
            jitter: 0.1,
            half_open_max_wait: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
            name: None,
            listener: None,
            events: None,
            classifier: AnyErrorIsFailure,
            backpressure: false,
            seed: None,
            stripes: None,
        }
    }
}

impl<C> fmt::Debug for CircuitBreakerLayerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayerBuilder")
            .field("trip", &self.trip)
            .field("min_calls", &self.min_calls)
            .field("probes", &self.probes)
            .field("open", &self.open)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<C> CircuitBreakerLayerBuilder<C> {
    /// Trip after `failures` failures in a row (no success between them). At least 1.
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.trip = TripSetting::Consecutive(failures);
        self
    }

    /// Trip when at least `rate` of the last `calls` calls failed. `rate` in (0, 1]; `calls`
    /// from 1 to 1,000,000. The window slides call by call; memory is
    /// `8 * ceil(rate * calls)` bytes.
    pub fn failure_rate(mut self, rate: f64, calls: u64) -> Self {
        self.trip = TripSetting::Rate { rate, calls };
        self
    }

    /// Trip when at least `rate` of the calls that completed in the last `window` of time
    /// failed. `rate` in (0, 1]; `window` greater than zero; `buckets` from 1 to 1024, each
    /// at least 1 ms long.
    ///
    /// The window is kept as `buckets` buckets of `window / buckets` each, so it slides one
    /// bucket at a time: at any moment it holds the current, partly elapsed bucket and the
    /// `buckets - 1` before it, that is between `(buckets - 1) / buckets` of `window` and all
    /// of it. More buckets make the edge sharper and cost memory: per service-clone stripe,
    /// 128 bytes for every 16 buckets. A call adds to its bucket with one load and one
    /// increment and reads no clock; a tokio timer moves to the next bucket (outside a tokio
    /// runtime, the call path reads the clock instead).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_firebreak::circuit_breaker::CircuitBreakerLayer;
    ///
    /// // Half of the calls of the last 10 s (in 1 s buckets), once 20 calls were seen.
    /// let layer = CircuitBreakerLayer::builder()
    ///     .time_window(0.5, Duration::from_secs(10), 10)
    ///     .min_calls(20)
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok::<(), tower_firebreak::error::ConfigError>(())
    /// ```
    pub fn time_window(mut self, rate: f64, window: Duration, buckets: u32) -> Self {
        self.trip = TripSetting::Time {
            rate,
            window,
            buckets,
        };
        self
    }

    /// Also trip when at least `rate` of the calls in the window took `threshold` or longer,
    /// failed or not: a dependency that answers too slowly is failing its callers too.
    /// `threshold` greater than zero; `rate` in (0, 1]. Works with
    /// [`failure_rate`](Self::failure_rate) and [`time_window`](Self::time_window) (and the
    /// same [`min_calls`](Self::min_calls)); [`build`](Self::build) refuses it with
    /// [`consecutive_failures`](Self::consecutive_failures). Off by default.
    ///
    /// A call's time is measured from its first poll that returns `Pending` to its
    /// completion. A response that is ready on its first poll waited on nothing and is never
    /// slow, and costs no clock read; a pending one costs two. In half-open, a slow probe
    /// counts as a failed probe: a dependency that only answers slowly has not recovered.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_firebreak::circuit_breaker::CircuitBreakerLayer;
    ///
    /// let layer = CircuitBreakerLayer::builder()
    ///     .time_window(0.5, Duration::from_secs(10), 10)
    ///     .slow_calls(Duration::from_millis(800), 0.8) // 80% of calls slower than 800 ms
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok::<(), tower_firebreak::error::ConfigError>(())
    /// ```
    pub fn slow_calls(mut self, threshold: Duration, rate: f64) -> Self {
        self.slow_calls = Some((threshold, rate));
        self
    }

    /// With [`failure_rate`](Self::failure_rate) or [`time_window`](Self::time_window): calls
    /// that must be in the window (for a count window: made since the breaker closed) before
    /// the rates are evaluated, so that 1 failure out of 1 call does not trip. At least 1;
    /// default 20.
    pub fn min_calls(mut self, calls: u64) -> Self {
        self.min_calls = calls;
        self
    }

    /// Probe calls let through in half-open, from 1 to 1024; default 1. Never more are
    /// admitted at once, under any interleaving.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.probes = probes;
        self
    }

    /// The share of probes that must succeed to close, in (0, 1]; default 1 (all of them).
    /// The breaker reopens as soon as too many probes failed for the rest to be enough.
    pub fn probe_success_ratio(mut self, ratio: f64) -> Self {
        self.probe_success_ratio = ratio;
        self
    }

    /// Stay open this long after every trip (before jitter). Greater than zero; default 5 s.
    pub fn open_duration(mut self, duration: Duration) -> Self {
        self.open = OpenDuration::Fixed(duration);
        self
    }

    /// Stay open `initial` after a first trip, `multiplier` times longer after each trip that
    /// follows without a clean close, at most `max`. `initial` > 0, `multiplier` >= 1 and
    /// finite, `max` >= `initial`.
    pub fn open_duration_exponential(
        mut self,
        initial: Duration,
        multiplier: f64,
        max: Duration,
    ) -> Self {
        self.open = OpenDuration::Exponential {
            initial,
            multiplier,
            max,
        };
        self
    }

    /// Shorten each open period by a random fraction in `[0, jitter)`, so that many clients
    /// that tripped together do not probe together. In [0, 1); default 0.1. Jitter only
    /// shortens, so the configured duration (or cap) is never exceeded.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Checked every this long from the start of half-open: if probes are in flight and none
    /// finished since the previous check, they hang, and the breaker opens again. So a probe
    /// that hangs reopens the breaker within two waits, even after other probes finished.
    /// Greater than zero; default 30 s.
    pub fn half_open_max_wait(mut self, wait: Duration) -> Self {
        self.half_open_max_wait = wait;
        self
    }

    /// The most of a dependency's own "come back later" (the classifier's
    /// [`retry_after`](Classify::retry_after), such as an HTTP `Retry-After`) the breaker
    /// honours: an open period lasts until the later of its open duration and the failure's
    /// time plus the hint capped at this. Greater than zero, at most 1 hour; default 60 s, so
    /// that a wrong or hostile header cannot take a dependency out of use for long.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// A name for the handle, `tracing` events, [`Event`]s and the `name` label of metrics.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Called, on the thread that made it, after every change of state.
    pub fn on_transition(
        mut self,
        listener: impl Fn(&StateTransition) + Send + Sync + 'static,
    ) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Called with an [`Event::BreakerTransition`] after every change of state (on the thread
    /// that made it, after the `tracing` event and before the
    /// [`on_transition`](Self::on_transition) listener), and with an
    /// [`Event::BreakerRejected`] for every call rejected (on the thread that called). Calls
    /// that go through report nothing. See [`observe`](crate::observe).
    ///
    /// ```
    /// use tower_firebreak::circuit_breaker::CircuitBreakerLayer;
    /// use tower_firebreak::observe::Event;
    ///
    /// let layer = CircuitBreakerLayer::builder()
    ///     .name("payments")
    ///     .on_event(|event: &Event<'_>| match event {
    ///         Event::BreakerTransition { name, from, to, reason, .. } => {
    ///             eprintln!("{name}: {} -> {} ({})", from.as_str(), to.as_str(), reason.as_str())
    ///         }
    ///         _ => {}
    ///     })
    ///     .build()?;
    /// # let _ = layer;
    /// # Ok::<(), tower_firebreak::error::ConfigError>(())
    /// ```
    pub fn on_event(mut self, listener: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Self {
        self.events = Some(Arc::new(listener));
        self
    }

    /// In backpressure mode, `poll_ready` reports `Pending` while the circuit is open and
    /// wakes when probing may start, so that `tower::balance` or a buffer route around an open
    /// endpoint. Off by default: `poll_ready` is ready and `call` fails fast with
    /// [`CircuitOpen`](super::CircuitOpen).
    pub fn backpressure(mut self, enabled: bool) -> Self {
        self.backpressure = enabled;
        self
    }

    /// Seeds the jitter, for reproducible tests. By default the seed is random.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// How many success counters (one cache line each) to spread service clones over, from 1
    /// to 1024, rounded up to a power of two. Default: twice the available parallelism, so
    /// that threads using their own clones rarely share one.
    pub fn stripes(mut self, stripes: usize) -> Self {
        self.stripes = Some(stripes);
        self
    }

    /// Classify results with `classifier` instead of "any error is a failure".
    pub fn classifier<D>(self, classifier: D) -> CircuitBreakerLayerBuilder<D> {
        CircuitBreakerLayerBuilder {
            trip: self.trip,
            min_calls: self.min_calls,
            slow_calls: self.slow_calls,
            probes: self.probes,
            probe_success_ratio: self.probe_success_ratio,
            open: self.open,
            jitter: self.jitter,
            half_open_max_wait: self.half_open_max_wait,
            max_retry_after: self.max_retry_after,
            name: self.name,
            listener: self.listener,
            events: self.events,
            classifier,
            backpressure: self.backpressure,
            seed: self.seed,
            stripes: self.stripes,
        }
    }

    /// Checks every setting and builds the breaker.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting: zero consecutive failures, a window
    /// of 0 calls or 0 time, too many or too short buckets, a rate or ratio outside (0, 1] or
    /// NaN, slow calls with consecutive failures, zero probes, a zero duration, a multiplier
    /// below 1, an initial duration above the maximum, jitter outside [0, 1), a
    /// `max_retry_after` above 1 hour.
    pub fn build(self) -> Result<CircuitBreakerLayer<C>, ConfigError> {
        let mut bucket_width = None;
        let model = match self.trip {
            TripSetting::Consecutive(0) => {
                return Err(ConfigError::out_of_range(
                    LAYER,
                    "consecutive_failures",
                    0,
                    "at least 1",
                ));
            }
            TripSetting::Consecutive(_) if self.slow_calls.is_some() => {
                return Err(ConfigError::Incompatible {
                    layer: LAYER,
                    setting: "slow_calls",
                    other: "consecutive_failures",
                });
            }
            TripSetting::Consecutive(failures) => Model::consecutive(failures),
            TripSetting::Rate { rate, calls } => {
                unit_interval(rate, "failure_rate")?;
                if !(1..=1_000_000).contains(&calls) {
                    return Err(ConfigError::out_of_range(
                        LAYER,
                        "failure_rate",
                        calls,
                        "over 1 to 1,000,000 calls",
                    ));
                }
                at_least_one_call(self.min_calls)?;
                Model::rate(calls, rate, self.min_calls)
            }
            TripSetting::Time {
                rate,
                window,
                buckets,
            } => {
                unit_interval(rate, "time_window")?;
                positive(window, "time_window")?;
                if !(1..=MAX_BUCKETS).contains(&buckets) {
                    return Err(ConfigError::out_of_range(
                        LAYER,
                        "time_window",
                        buckets,
                        "from 1 to 1024 buckets",
                    ));
                }
                let width = window / buckets;
                if width < MIN_BUCKET {
                    return Err(ConfigError::out_of_range(
                        LAYER,
                        "time_window",
                        format!("{width:?} per bucket"),
                        "at least 1 ms per bucket",
                    ));
                }
                at_least_one_call(self.min_calls)?;
                bucket_width = Some(width);
                Model::time(buckets, rate, self.min_calls)
            }
        };
        let (model, slow_threshold) = match self.slow_calls {
            Some((threshold, rate)) => {
                positive(threshold, "slow_calls")?;
                unit_interval(rate, "slow_calls")?;
                (model.with_slow_rate(rate), Some(threshold))
            }
            None => (model, None),
        };
        if !(1..=MAX_PROBES).contains(&self.probes) {
            return Err(ConfigError::out_of_range(
                LAYER,
                "half_open_probes",
                self.probes,
                "from 1 to 1024",
            ));
        }
        unit_interval(self.probe_success_ratio, "probe_success_ratio")?;
        // The tolerance keeps, say, 2/3 of 3 probes at 2.
        let probes_to_close = ((self.probe_success_ratio * f64::from(self.probes)) - 1e-9)
            .ceil()
            .clamp(1.0, f64::from(self.probes)) as u32;
        match self.open {
            OpenDuration::Fixed(duration) => positive(duration, "open_duration")?,
            OpenDuration::Exponential {
                initial,
                multiplier,
                max,
            } => {
                positive(initial, "open_duration_exponential")?;
                if !(multiplier.is_finite() && multiplier >= 1.0) {
                    return Err(ConfigError::out_of_range(
                        LAYER,
                        "open_duration_exponential",
                        multiplier,
                        "a multiplier of at least 1",
                    ));
                }
                positive(max, "open_duration_exponential")?;
                if initial > max {
                    return Err(ConfigError::MinAboveMax {
                        layer: LAYER,
                        min_setting: "open_duration_exponential (initial)",
                        max_setting: "open_duration_exponential (max)",
                    });
                }
            }
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(ConfigError::out_of_range(
                LAYER,
                "jitter",
                self.jitter,
                "in [0, 1)",
            ));
        }
        positive(self.half_open_max_wait, "half_open_max_wait")?;
        ConfigError::check_duration(
            LAYER,
            "max_retry_after",
            self.max_retry_after,
            ONE_HOUR,
            "at most 1 hour",
        )?;
        let stripes = match self.stripes {
            Some(stripes) if !(1..=1024).contains(&stripes) => {
                return Err(ConfigError::out_of_range(
                    LAYER,
                    "stripes",
                    stripes,
                    "from 1 to 1024",
                ));
            }
            Some(stripes) => stripes,
            None => std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
        };
        let seed = self
            .seed
            .unwrap_or_else(|| RandomState::new().build_hasher().finish());

        let shared = Shared::new(
            StateMachine::new(self.probes, probes_to_close),
            Window::new(model, stripes),
            Timing {
                open: self.open,
                jitter: self.jitter,
                half_open_max_wait: self.half_open_max_wait,
                max_retry_after: self.max_retry_after,
                slow_threshold,
                bucket_width,
            },
            Observer::new(self.name, self.events),
            self.listener,
            seed,
            self.backpressure,
        );
        Ok(CircuitBreakerLayer {
            shared: Arc::new(shared),
            classifier: self.classifier,
            backpressure: self.backpressure,
        })
    }
}

fn at_least_one_call(min_calls: u64) -> Result<(), ConfigError> {
    if min_calls == 0 {
        Err(ConfigError::out_of_range(
            LAYER,
            "min_calls",
            0,
            "at least 1",
        ))
    } else {
        Ok(())
    }
}

fn unit_interval(value: f64, setting: &'static str) -> Result<(), ConfigError> {
    // NaN fails the comparison, so it is rejected too.
    if value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err(ConfigError::out_of_range(
            LAYER,
            setting,
            value,
            "in (0, 1]",
        ))
    }
}

/// The longest duration accepted: far beyond any sensible setting, and small enough that
/// adding it to the current instant can never overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

fn positive(duration: Duration, setting: &'static str) -> Result<(), ConfigError> {
    ConfigError::check_duration(LAYER, setting, duration, MAX_DURATION, "at most 365 days")
}
