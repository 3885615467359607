//! What the layers report when something other than success happens: a state change of a
//! breaker, a rejected call, a retry, an exhausted budget, a timeout, a throttled or shed call.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_firebreak::circuit_breaker::{CircuitBreakerLayer, State};
//! use tower_firebreak::error::BoxError;
//! use tower_firebreak::observe::Event;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let breaker = CircuitBreakerLayer::builder()
//!     .name("payments")
//!     .consecutive_failures(2)
//!     .on_event({
//!         let seen = Arc::clone(&seen);
//!         move |event: &Event<'_>| {
//!             if let Event::BreakerTransition { name, to, .. } = event {
//!                 seen.lock().unwrap().push(format!("{name}: {}", to.as_str()));
//!             }
//!         }
//!     })
//!     .build()?;
//! let failing = service_fn(|_: ()| async { Err::<(), BoxError>("refused".into()) });
//! let svc = ServiceBuilder::new().layer(breaker).service(failing);
//! for _ in 0..2 {
//!     let _ = svc.clone().oneshot(()).await;
//! }
//! assert_eq!(*seen.lock().unwrap(), ["payments: open"]);
//! # Ok(())
//! # }
//! ```
//!
//! # Three ways to watch
//!
//! - **`tracing`**, always on: breaker transitions at `info` (a trip, closed to open, at
//!   `warn`), with the breaker's name and the reason; rejected calls, retries, exhausted
//!   budgets, timeouts, throttled and shed calls at `debug`. A call that succeeds logs
//!   nothing.
//! - **A listener**, for programs that want the events without `tracing` or `metrics`: the
//!   layer builders take one with `on_event`, called with an [`Event`] on the thread that saw
//!   it. Events borrow (the layer's name is a `&str`), so emitting one allocates nothing.
//! - **Metrics**, with the `metrics` feature: counters and gauges through the `metrics`
//!   facade, listed in [`metrics`] with their labels.
//!
//! # Cost
//!
//! Events are only made on the paths they describe, none of which is a success: with no
//! listener, a layer pays one branch on those paths, and nothing on the success path. The
//! listener runs inline, on the call path of the call that caused the event (for a breaker
//! transition, the call that made it), so it must be quick and must not block; hand the
//! event to a channel if there is real work to do. It must not panic either: the panic
//! would unwind through that call, or through the breaker's timer task (for a transition the
//! timer makes), and stop what the task was doing.
//!
//! Exceptions to "nothing on the success path":
//!
//! - a [`TimeoutLayer`](crate::timeout::TimeoutLayer) with a name, a listener or (with the
//!   `metrics` feature, whether or not a recorder is installed) metrics hands every response
//!   future a reference to them, since a timeout is only known there: one reference-count
//!   increment and decrement per call, and no allocation;
//! - with the `metrics` feature, the circuit breaker counts every call by outcome and the
//!   retry layer counts every attempt: one counter increment per call each (see
//!   [`metrics`]).
//!
//! `tracing` events carry the layer's name in a `name` field (`breaker` for a circuit
//! breaker), and their target is the module that emits them (`tower_firebreak::retry::...`),
//! so a filter such as `tower_firebreak=debug` shows them all.

pub mod metrics;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::circuit_breaker::{State, TransitionReason};

/// A listener of events, as the layer builders' `on_event` store it.
pub(crate) type Listener = Arc<dyn Fn(&Event<'_>) + Send + Sync>;

/// Something other than a success happened in a layer.
///
/// Passed by reference to the listener set with a layer builder's `on_event`. It borrows
/// from the layer (the `name`), so it is made on the stack and never allocated; copy out what
/// you keep. New kinds of events and new fields are added in minor releases, so match with a
/// wildcard arm and `..`.
///
/// `name` is the name the layer was given with its builder's `name` method, or `""`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// A circuit breaker changed state.
    #[non_exhaustive]
    BreakerTransition {
        /// The breaker's name.
        name: &'a str,
        /// The state it left.
        from: State,
        /// The state it entered.
        to: State,
        /// Why.
        reason: TransitionReason,
    },
    /// A circuit breaker rejected a call without calling its service, with
    /// [`CircuitOpen`](crate::circuit_breaker::CircuitOpen).
    #[non_exhaustive]
    BreakerRejected {
        /// The breaker's name.
        name: &'a str,
        /// The state that rejected it: [`State::Open`], [`State::ForcedOpen`], or
        /// [`State::HalfOpen`] with every probe slot taken.
        state: State,
    },
    /// The retry layer will try a failed call again after `delay`.
    #[non_exhaustive]
    RetryScheduled {
        /// The retry layer's name.
        name: &'a str,
        /// The attempt that failed, from 1; the next one is `attempt + 1`.
        attempt: u32,
        /// How long until the next attempt.
        delay: Duration,
    },
    /// The retry layer would have tried again, but the retry budget was empty: the call fails
    /// with [`BudgetExhausted`](crate::retry::BudgetExhausted).
    #[non_exhaustive]
    RetryBudgetExhausted {
        /// The retry layer's name.
        name: &'a str,
        /// The attempt that failed last, from 1.
        attempt: u32,
    },
    /// The throttle rejected a call locally with
    /// [`Throttled`](crate::load_shed::Throttled).
    #[non_exhaustive]
    Throttled {
        /// The throttle's name.
        name: &'a str,
        /// The probability of local rejection the call was rejected with.
        probability: f64,
    },
    /// An attempt outlived its per-attempt timeout and failed with
    /// [`Elapsed`](crate::timeout::Elapsed).
    #[non_exhaustive]
    TimedOut {
        /// The timeout layer's name.
        name: &'a str,
        /// The per-attempt timeout.
        timeout: Duration,
    },
    /// A timeout layer failed a call with
    /// [`DeadlineExceeded`](crate::timeout::DeadlineExceeded): the request's deadline came
    /// before the attempt's timeout, or had passed before the call.
    #[non_exhaustive]
    DeadlineExceeded {
        /// The timeout layer's name.
        name: &'a str,
    },
    /// A load-shedding layer rejected a call with
    /// [`Overloaded`](crate::load_shed::Overloaded).
    #[non_exhaustive]
    LoadShed {
        /// The load-shedding layer's name.
        name: &'a str,
        /// Its concurrency limit when it rejected the call.
        limit: u64,
    },
    /// An adaptive concurrency limit moved.
    #[non_exhaustive]
    LimitChanged {
        /// The load-shedding layer's name.
        name: &'a str,
        /// The limit before.
        previous: u64,
        /// The limit now.
        limit: u64,
    },
}

impl<'a> Event<'a> {
    /// The name of the layer that reported it (`""` if it has none).
    pub fn name(&self) -> &'a str {
        match *self {
            Event::BreakerTransition { name, .. }
            | Event::BreakerRejected { name, .. }
            | Event::RetryScheduled { name, .. }
            | Event::RetryBudgetExhausted { name, .. }
            | Event::Throttled { name, .. }
            | Event::TimedOut { name, .. }
            | Event::DeadlineExceeded { name }
            | Event::LoadShed { name, .. }
            | Event::LimitChanged { name, .. } => name,
        }
    }

    /// The kind of event as a stable, `snake_case` string (`"breaker_transition"`,
    /// `"retry_scheduled"`, ...), for logs and labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::BreakerTransition { .. } => "breaker_transition",
            Event::BreakerRejected { .. } => "breaker_rejected",
            Event::RetryScheduled { .. } => "retry_scheduled",
            Event::RetryBudgetExhausted { .. } => "retry_budget_exhausted",
            Event::Throttled { .. } => "throttled",
            Event::TimedOut { .. } => "timed_out",
            Event::DeadlineExceeded { .. } => "deadline_exceeded",
            Event::LoadShed { .. } => "load_shed",
            Event::LimitChanged { .. } => "limit_changed",
        }
    }
}

/// A layer's name and listener: what every event it reports needs. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Observer {
    name: Option<Arc<str>>,
    listener: Option<Listener>,
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observer")
            .field("name", &self.name())
            .field("listener", &self.listener.is_some())
            .finish()
    }
}

impl Observer {
    pub(crate) fn new(name: Option<Arc<str>>, listener: Option<Listener>) -> Observer {
        Observer { name, listener }
    }

    /// The layer's name, or `""`.
    #[inline]
    pub(crate) fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    /// The layer's name, if it was given one.
    pub(crate) fn given_name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The name as a metrics label value: shares the name's allocation.
    #[cfg(feature = "metrics")]
    pub(crate) fn label(&self) -> ::metrics::SharedString {
        match &self.name {
            Some(name) => ::metrics::SharedString::from(Arc::clone(name)),
            None => ::metrics::SharedString::const_str(""),
        }
    }

    /// Passes `event` to the listener, if there is one.
    #[inline]
    pub(crate) fn emit(&self, event: &Event<'_>) {
        if let Some(listener) = &self.listener {
            listener(event);
        }
    }
}

/// What a load-shedding layer reports: a shed call and a moved limit, as an [`Event`], a
/// `tracing` event and (with the `metrics` feature) the `firebreak_load_shed_*` and
/// `firebreak_concurrency_limit` metrics. One per load-shedding layer, called on its
/// rejection path and where an adaptive limit moves, never for an admitted call.
#[derive(Debug, Clone)]
pub(crate) struct LoadShedObserver {
    observer: Observer,
    #[cfg(feature = "metrics")]
    metrics: metrics::LoadShedMetrics,
}

impl LoadShedObserver {
    /// For a layer called `name` (or none), starting at concurrency limit `limit`. With the
    /// `metrics` feature, registers its metrics with the recorder installed now.
    pub(crate) fn new(
        name: Option<Arc<str>>,
        listener: Option<Listener>,
        limit: u64,
    ) -> LoadShedObserver {
        let observer = Observer::new(name, listener);
        #[cfg(feature = "metrics")]
        let metrics = metrics::LoadShedMetrics::new(&observer, limit);
        #[cfg(not(feature = "metrics"))]
        let _ = limit;
        LoadShedObserver {
            observer,
            #[cfg(feature = "metrics")]
            metrics,
        }
    }

    /// The layer's name, or `""`.
    pub(crate) fn name(&self) -> &str {
        self.observer.name()
    }

    /// A call was rejected at concurrency limit `limit`.
    pub(crate) fn shed(&self, limit: u64) {
        tracing::debug!(name = self.name(), limit, "load shed: overloaded");
        #[cfg(feature = "metrics")]
        self.metrics.shed.increment(1);
        self.observer.emit(&Event::LoadShed {
            name: self.name(),
            limit,
        });
    }

    /// The concurrency limit moved from `previous` to `limit`.
    pub(crate) fn limit_changed(&self, previous: u64, limit: u64) {
        tracing::debug!(
            name = self.name(),
            previous,
            limit,
            "load shed: concurrency limit changed"
        );
        #[cfg(feature = "metrics")]
        self.metrics.limit.set(limit as f64);
        self.observer.emit(&Event::LimitChanged {
            name: self.name(),
            previous,
            limit,
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn the_load_shed_observer_reports_sheds_and_limit_changes() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener: Listener = {
            let seen = Arc::clone(&seen);
            Arc::new(move |event: &Event<'_>| {
                seen.lock().unwrap().push(format!("{event:?}"));
            })
        };
        let observer = LoadShedObserver::new(Some("db".into()), Some(listener), 8);
        observer.shed(8);
        observer.limit_changed(8, 12);
        assert_eq!(
            *seen.lock().unwrap(),
            [
                r#"LoadShed { name: "db", limit: 8 }"#,
                r#"LimitChanged { name: "db", previous: 8, limit: 12 }"#,
            ]
        );
    }

    #[test]
    fn events_name_their_layer_and_kind() {
        let event = Event::RetryScheduled {
            name: "api",
            attempt: 1,
            delay: Duration::from_millis(50),
        };
        assert_eq!((event.name(), event.kind()), ("api", "retry_scheduled"));
        assert_eq!(
            Event::DeadlineExceeded { name: "" }.kind(),
            "deadline_exceeded"
        );
    }
}
