//! [`Handle`]: watch and steer a breaker from outside the call path.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::shared::Shared;
use super::state::Phase;
use crate::clock::{self, Instant};

/// The state of a breaker, as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Calls go through; their outcomes are watched.
    Closed,
    /// Calls are rejected with [`CircuitOpen`](super::CircuitOpen) until the open period ends.
    Open,
    /// A bounded number of probe calls go through to test the dependency.
    HalfOpen,
    /// Held open by [`Handle::force_open`] until [`Handle::reset`].
    ForcedOpen,
    /// Held closed, watching nothing, by [`Handle::disable`] until [`Handle::reset`].
    Disabled,
}

impl State {
    /// The state as a stable, `snake_case` string (`"closed"`, `"open"`, `"half_open"`,
    /// `"forced_open"`, `"disabled"`), as logs and metric labels show it.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
        }
    }
}

impl From<Phase> for State {
    fn from(phase: Phase) -> State {
        match phase {
            Phase::Closed => State::Closed,
            Phase::Open | Phase::OpenUntimed => State::Open,
            Phase::HalfOpen => State::HalfOpen,
            Phase::ForcedOpen => State::ForcedOpen,
            Phase::Disabled => State::Disabled,
        }
    }
}

/// Why a breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransitionReason {
    /// The trip model's failure threshold was reached while closed.
    FailureThreshold,
    /// The share of slow calls reached its threshold while closed (see
    /// [`slow_calls`](super::CircuitBreakerLayerBuilder::slow_calls)).
    SlowCallThreshold,
    /// Enough half-open probes succeeded.
    ProbesSucceeded,
    /// Too many half-open probes failed for the rest to be enough.
    ProbesFailed,
    /// The open period ended.
    OpenElapsed,
    /// Half-open probes were sent but none finished within the maximum wait.
    HalfOpenStalled,
    /// [`Handle::force_open`].
    ForcedOpen,
    /// [`Handle::disable`].
    Disabled,
    /// [`Handle::reset`].
    Reset,
}

impl TransitionReason {
    /// The reason as a stable, `snake_case` string (`"failure_threshold"`,
    /// `"probes_succeeded"`, ...), as logs show it.
    pub fn as_str(&self) -> &'static str {
        match self {
            TransitionReason::FailureThreshold => "failure_threshold",
            TransitionReason::SlowCallThreshold => "slow_call_threshold",
            TransitionReason::ProbesSucceeded => "probes_succeeded",
            TransitionReason::ProbesFailed => "probes_failed",
            TransitionReason::OpenElapsed => "open_elapsed",
            TransitionReason::HalfOpenStalled => "half_open_stalled",
            TransitionReason::ForcedOpen => "forced_open",
            TransitionReason::Disabled => "disabled",
            TransitionReason::Reset => "reset",
        }
    }
}

/// A change of state, as given to the listener set with
/// [`on_transition`](super::CircuitBreakerLayerBuilder::on_transition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateTransition {
    /// The state left.
    pub from: State,
    /// The state entered.
    pub to: State,
    /// Why.
    pub reason: TransitionReason,
    /// When, on the crate's [`clock`](crate::clock).
    pub at: Instant,
}

/// A point-in-time view of a breaker.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Metrics {
    /// The current state.
    pub state: State,
    /// How long the breaker has been in it.
    pub time_in_state: Duration,
    /// Calls admitted while closed that succeeded, since the breaker was built.
    pub successes: u64,
    /// Calls admitted while closed that failed, since the breaker was built.
    pub failures: u64,
    /// Calls admitted while closed that were slower than the slow-call threshold, since the
    /// breaker was built (successes and failures alike; always 0 without
    /// [`slow_calls`](super::CircuitBreakerLayerBuilder::slow_calls)).
    pub slow_calls: u64,
    /// Calls in the trip model's current window (for consecutive failures: the current run).
    pub window_calls: u64,
    /// Failures among them. For a count window (`failure_rate`), counted up to the number
    /// that trips the breaker: the window remembers no more than that.
    pub window_failures: u64,
    /// Slow calls among them, counted like `window_failures`.
    pub window_slow_calls: u64,
    /// Trips since the breaker last closed cleanly (what grows an exponential open duration).
    pub consecutive_trips: u64,
    /// While open: how long until a probe is let through.
    pub retry_after: Option<Duration>,
}

impl Metrics {
    /// The failure rate in the current window, if it holds any call.
    pub fn failure_rate(&self) -> Option<f64> {
        (self.window_calls > 0).then(|| self.window_failures as f64 / self.window_calls as f64)
    }

    /// The share of slow calls in the current window, if it holds any call.
    pub fn slow_call_rate(&self) -> Option<f64> {
        (self.window_calls > 0).then(|| self.window_slow_calls as f64 / self.window_calls as f64)
    }
}

/// Watches and steers one breaker: its state, its metrics, and manual overrides.
///
/// Cheap to clone; every clone controls the same breaker. Get one from
/// [`CircuitBreakerLayer::handle`](super::CircuitBreakerLayer::handle) or
/// [`CircuitBreaker::handle`](super::CircuitBreaker::handle).
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("name", &self.shared.name())
            .field("state", &self.state())
            .finish()
    }
}

impl Handle {
    pub(crate) fn new(shared: Arc<Shared>) -> Handle {
        Handle { shared }
    }

    /// The breaker's name, if it was given one.
    pub fn name(&self) -> Option<&str> {
        self.shared.name()
    }

    /// The current state.
    pub fn state(&self) -> State {
        State::from(self.shared.state.snapshot().phase)
    }

    /// A snapshot of the breaker's counters. Reads every stripe of the success counter, so it
    /// is meant for metrics scraping, not for the call path.
    pub fn metrics(&self) -> Metrics {
        let now = clock::now();
        let snapshot = self.shared.state.snapshot();
        let window = self.shared.window.in_window(snapshot.generation);
        let state = State::from(snapshot.phase);
        Metrics {
            state,
            time_in_state: now.saturating_duration_since(self.shared.phase_since()),
            successes: self.shared.window.total_successes(),
            failures: self.shared.window.total_failures(),
            slow_calls: self.shared.window.total_slow(),
            window_calls: window.calls,
            window_failures: window.failures,
            window_slow_calls: window.slow,
            consecutive_trips: self.shared.consecutive_trips(),
            retry_after: (state == State::Open)
                .then(|| self.shared.open_until().saturating_duration_since(now)),
        }
    }

    /// Opens the circuit and keeps it open, whatever the calls do, until [`reset`](Self::reset).
    pub fn force_open(&self) {
        let transition = self.shared.state.force(Phase::ForcedOpen);
        self.shared.after(transition, TransitionReason::ForcedOpen);
    }

    /// Lets every call through and stops watching outcomes, until [`reset`](Self::reset).
    pub fn disable(&self) {
        let transition = self.shared.state.force(Phase::Disabled);
        self.shared.after(transition, TransitionReason::Disabled);
    }

    /// Closes the circuit with a fresh window and no trip history. Outcomes of calls admitted
    /// before the reset are ignored.
    pub fn reset(&self) {
        let transition = self.shared.state.force(Phase::Closed);
        self.shared.after(transition, TransitionReason::Reset);
    }
}
