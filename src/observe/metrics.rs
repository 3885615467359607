//! The metrics the layers record with the `metrics` feature, through the
//! [`metrics`](https://docs.rs/metrics/0.24) facade: their names, labels and meaning, which
//! are stable.
//!
//! ```
//! # #[cfg(feature = "metrics")]
//! # {
//! use tower_firebreak::circuit_breaker::CircuitBreakerLayer;
//! use tower_firebreak::observe::metrics::BREAKER_STATE;
//!
//! // Install the program's recorder (a Prometheus exporter, say) before building layers:
//! // each layer registers its metrics once, when it is built, with the recorder installed then.
//! let breaker = CircuitBreakerLayer::builder().name("payments").build()?;
//! // The recorder now has `firebreak_circuit_breaker_state{name="payments"}` at 0 (closed).
//! assert_eq!(BREAKER_STATE, "firebreak_circuit_breaker_state");
//! # let _ = breaker;
//! # }
//! # Ok::<(), tower_firebreak::error::ConfigError>(())
//! ```
//!
//! Every metric has a `name` label: the name given to the layer's builder (`name(..)`), or
//! the empty string. Give each layer a distinct name; layers with the same name add to the
//! same counters and overwrite each other's gauges.
//!
//! | Metric | Kind | Labels | Meaning |
//! |---|---|---|---|
//! | `firebreak_circuit_breaker_calls_total` | counter | `name`, `outcome` | Calls through a breaker by outcome: `success`, `failure` and `ignored` as classified (closed calls and half-open probes; a slow success counts as a success), `rejected` without calling the service. Calls while disabled are not counted. |
//! | `firebreak_circuit_breaker_rejections_total` | counter | `name`, `state` | Rejected calls by the state that rejected them: `open`, `forced_open`, or `half_open` (every probe slot taken). |
//! | `firebreak_circuit_breaker_state` | gauge | `name` | The breaker's state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled. |
//! | `firebreak_circuit_breaker_transitions_total` | counter | `name`, `to` | Changes of state, by the state entered (`closed`, `open`, `half_open`, `forced_open`, `disabled`). |
//! | `firebreak_retry_attempts_total` | counter | `name` | Attempts made by a retry layer, first attempts included. |
//! | `firebreak_retry_retries_total` | counter | `name` | Retries scheduled (attempts after the first). |
//! | `firebreak_retry_budget_exhausted_total` | counter | `name` | Calls that were not retried because the retry budget was empty. |
//! | `firebreak_retry_budget_balance` | gauge | `name` | Retries the budget allows now, in tokens: set at every retry decision and every tick of the budget's window (a tenth of its ttl) while it is in use. A budget shared by several retry layers ticks this gauge for the first one built with it. |
//! | `firebreak_throttle_rejections_total` | counter | `name` | Calls the client-side throttle rejected locally. |
//! | `firebreak_throttle_probability` | gauge | `name` | The throttle's probability of local rejection, set at every tick of its window (a tenth of it) while it is in use, and at every rejection. |
//! | `firebreak_timeouts_total` | counter | `name`, `kind` | Attempts a timeout layer failed: `attempt` when the per-attempt timeout elapsed, `deadline` when the request's deadline was the limit. |
//! | `firebreak_load_shed_rejections_total` | counter | `name` | Calls a load-shedding layer rejected as overloaded. |
//! | `firebreak_concurrency_limit` | gauge | `name` | A load-shedding layer's concurrency limit. |
//!
//! The names are also constants in this module (they exist without the feature too), so
//! tests and dashboards can refer to them.
//!
//! # Cost
//!
//! Each layer registers its handles once, when it is built, so no call looks a metric up. On
//! the success path, the breaker counts `outcome="success"` and the retry layer counts an
//! attempt: a call through the handle to the recorder, which for most exporters (and
//! `metrics-util`'s `AtomicStorage`) is one atomic increment on a counter that every thread
//! using the layer shares. Measured with `cargo bench --bench circuit_breaker -- closed` with
//! and without `--features metrics` (the bench then installs a recorder of plain atomic
//! counters), runs interleaved in one session on the 2-vCPU benchmark machine:
//! `closed_success/firebreak_rate` took 20.3 and 25.3 ns per call without the feature, 37.6
//! and 37.6 ns with it, so about 12 to 17 ns more per call. Everything else is counted on the
//! paths it describes. A timeout layer hands its response futures a reference to its
//! handles: a reference-count increment and decrement per call. Without the feature, none of
//! this is compiled, and with it but no recorder installed each handle is a no-op (one
//! branch).
//!
//! Because handles are registered at build time, a recorder installed after a layer was built
//! does not see that layer's metrics; in tests, build the layers inside
//! [`metrics::with_local_recorder`](https://docs.rs/metrics/0.24/metrics/fn.with_local_recorder.html).

/// Counter: calls through a circuit breaker, by `outcome`.
pub const BREAKER_CALLS: &str = "firebreak_circuit_breaker_calls_total";
/// Counter: calls a circuit breaker rejected, by the `state` that rejected them.
pub const BREAKER_REJECTIONS: &str = "firebreak_circuit_breaker_rejections_total";
/// Gauge: a circuit breaker's state (0 closed, 1 open, 2 half-open, 3 forced open, 4
/// disabled).
pub const BREAKER_STATE: &str = "firebreak_circuit_breaker_state";
/// Counter: a circuit breaker's changes of state, by the state entered (`to`).
pub const BREAKER_TRANSITIONS: &str = "firebreak_circuit_breaker_transitions_total";
/// Counter: attempts made by a retry layer, first attempts included.
pub const RETRY_ATTEMPTS: &str = "firebreak_retry_attempts_total";
/// Counter: retries scheduled by a retry layer.
pub const RETRY_RETRIES: &str = "firebreak_retry_retries_total";
/// Counter: calls not retried because the retry budget was empty.
pub const RETRY_BUDGET_EXHAUSTED: &str = "firebreak_retry_budget_exhausted_total";
/// Gauge: retries a retry layer's budget allows now, in tokens.
pub const RETRY_BUDGET_BALANCE: &str = "firebreak_retry_budget_balance";
/// Counter: calls the client-side throttle rejected locally.
pub const THROTTLE_REJECTIONS: &str = "firebreak_throttle_rejections_total";
/// Gauge: the throttle's probability of local rejection.
pub const THROTTLE_PROBABILITY: &str = "firebreak_throttle_probability";
/// Counter: attempts a timeout layer failed, by `kind` (`attempt` or `deadline`).
pub const TIMEOUTS: &str = "firebreak_timeouts_total";
/// Counter: calls a load-shedding layer rejected as overloaded.
pub const LOAD_SHED_REJECTIONS: &str = "firebreak_load_shed_rejections_total";
/// Gauge: a load-shedding layer's concurrency limit.
pub const CONCURRENCY_LIMIT: &str = "firebreak_concurrency_limit";

#[cfg(feature = "metrics")]
pub(crate) use self::handles::*;

/// The handles each layer registers when it is built.
#[cfg(feature = "metrics")]
mod handles {
    use ::metrics::{Counter, Gauge, counter, describe_counter, describe_gauge, gauge};

    use super::*;
    use crate::circuit_breaker::State;
    use crate::observe::Observer;

    /// A circuit breaker's state as its gauge shows it.
    fn state_value(state: State) -> f64 {
        match state {
            State::Closed => 0.0,
            State::Open => 1.0,
            State::HalfOpen => 2.0,
            State::ForcedOpen => 3.0,
            State::Disabled => 4.0,
        }
    }

    const STATES: [State; 5] = [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
    ];

    fn state_index(state: State) -> usize {
        STATES.iter().position(|s| *s == state).unwrap_or(0)
    }

    #[derive(Debug)]
    pub(crate) struct BreakerMetrics {
        pub(crate) success: Counter,
        pub(crate) failure: Counter,
        pub(crate) ignored: Counter,
        rejected: Counter,
        /// Rejections by rejecting state, indexed like `STATES`.
        rejected_in: [Counter; 5],
        state: Gauge,
        /// Transitions by state entered, indexed like `STATES`.
        transitions: [Counter; 5],
    }

    impl BreakerMetrics {
        pub(crate) fn new(observer: &Observer) -> BreakerMetrics {
            describe_counter!(
                BREAKER_CALLS,
                "Calls through a circuit breaker, by outcome."
            );
            describe_counter!(
                BREAKER_REJECTIONS,
                "Calls a circuit breaker rejected, by the state that rejected them."
            );
            describe_gauge!(
                BREAKER_STATE,
                "Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled."
            );
            describe_counter!(
                BREAKER_TRANSITIONS,
                "Circuit breaker changes of state, by the state entered."
            );
            let name = observer.label();
            let calls = |outcome: &'static str| counter!(BREAKER_CALLS, "name" => name.clone(), "outcome" => outcome);
            let metrics = BreakerMetrics {
                success: calls("success"),
                failure: calls("failure"),
                ignored: calls("ignored"),
                rejected: calls("rejected"),
                rejected_in: STATES.map(|state| {
                    counter!(BREAKER_REJECTIONS, "name" => name.clone(), "state" => state.as_str())
                }),
                state: gauge!(BREAKER_STATE, "name" => name.clone()),
                transitions: STATES.map(|state| {
                    counter!(BREAKER_TRANSITIONS, "name" => name.clone(), "to" => state.as_str())
                }),
            };
            metrics.state.set(state_value(State::Closed));
            metrics
        }

        pub(crate) fn rejected(&self, state: State) {
            self.rejected.increment(1);
            self.rejected_in[state_index(state)].increment(1);
        }

        pub(crate) fn transition(&self, to: State) {
            self.state.set(state_value(to));
            self.transitions[state_index(to)].increment(1);
        }
    }

    #[derive(Debug)]
    pub(crate) struct RetryMetrics {
        pub(crate) attempts: Counter,
        pub(crate) retries: Counter,
        pub(crate) exhausted: Counter,
        pub(crate) balance: Gauge,
    }

    impl RetryMetrics {
        pub(crate) fn new(observer: &Observer) -> RetryMetrics {
            describe_counter!(
                RETRY_ATTEMPTS,
                "Attempts made by a retry layer, first attempts included."
            );
            describe_counter!(RETRY_RETRIES, "Retries scheduled by a retry layer.");
            describe_counter!(
                RETRY_BUDGET_EXHAUSTED,
                "Calls not retried because the retry budget was empty."
            );
            describe_gauge!(
                RETRY_BUDGET_BALANCE,
                "Retries the retry budget allows now, in tokens."
            );
            let name = observer.label();
            RetryMetrics {
                attempts: counter!(RETRY_ATTEMPTS, "name" => name.clone()),
                retries: counter!(RETRY_RETRIES, "name" => name.clone()),
                exhausted: counter!(RETRY_BUDGET_EXHAUSTED, "name" => name.clone()),
                balance: gauge!(RETRY_BUDGET_BALANCE, "name" => name),
            }
        }
    }

    #[derive(Debug)]
    pub(crate) struct ThrottleMetrics {
        pub(crate) rejections: Counter,
        pub(crate) probability: Gauge,
    }

    impl ThrottleMetrics {
        pub(crate) fn new(observer: &Observer) -> ThrottleMetrics {
            describe_counter!(
                THROTTLE_REJECTIONS,
                "Calls the client-side throttle rejected locally."
            );
            describe_gauge!(
                THROTTLE_PROBABILITY,
                "The client-side throttle's probability of local rejection."
            );
            let name = observer.label();
            let metrics = ThrottleMetrics {
                rejections: counter!(THROTTLE_REJECTIONS, "name" => name.clone()),
                probability: gauge!(THROTTLE_PROBABILITY, "name" => name),
            };
            metrics.probability.set(0.0);
            metrics
        }
    }

    #[derive(Debug)]
    pub(crate) struct TimeoutMetrics {
        pub(crate) elapsed: Counter,
        pub(crate) deadline: Counter,
    }

    impl TimeoutMetrics {
        pub(crate) fn new(observer: &Observer) -> TimeoutMetrics {
            describe_counter!(
                TIMEOUTS,
                "Attempts a timeout layer failed, by the limit that ended them."
            );
            let name = observer.label();
            TimeoutMetrics {
                elapsed: counter!(TIMEOUTS, "name" => name.clone(), "kind" => "attempt"),
                deadline: counter!(TIMEOUTS, "name" => name, "kind" => "deadline"),
            }
        }
    }

    #[derive(Debug, Clone)]
    pub(crate) struct LoadShedMetrics {
        pub(crate) shed: Counter,
        pub(crate) limit: Gauge,
    }

    impl LoadShedMetrics {
        pub(crate) fn new(observer: &Observer, limit: u64) -> LoadShedMetrics {
            describe_counter!(
                LOAD_SHED_REJECTIONS,
                "Calls a load-shedding layer rejected as overloaded."
            );
            describe_gauge!(
                CONCURRENCY_LIMIT,
                "A load-shedding layer's concurrency limit."
            );
            let name = observer.label();
            let metrics = LoadShedMetrics {
                shed: counter!(LOAD_SHED_REJECTIONS, "name" => name.clone()),
                limit: gauge!(CONCURRENCY_LIMIT, "name" => name),
            };
            metrics.limit.set(limit as f64);
            metrics
        }
    }
}
