//! The error a breaker returns instead of calling its service.

use std::fmt;
use std::time::Duration;

use crate::clock::{self, Instant};

/// The breaker is open: the call was rejected without reaching the inner service.
///
/// Returned (boxed) by [`CircuitBreaker`](super::CircuitBreaker) while the circuit is open,
/// forced open, or half-open with every probe slot taken. [`retry_after`](Self::retry_after)
/// tells how long until the breaker lets a probe through. Retrying sooner only adds load, so
/// this crate's retry layer never retries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircuitOpen {
    reason: Reason,
    probe_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    Open,
    ForcedOpen,
    ProbesInFlight,
}

impl CircuitOpen {
    pub(crate) fn new(reason: Reason, probe_at: Option<Instant>) -> Self {
        CircuitOpen { reason, probe_at }
    }

    /// How long until the breaker lets a probe through, measured now; zero if that time
    /// has come.
    ///
    /// `None` when no time is known: the circuit was forced open by its
    /// [`Handle`](super::Handle) (it stays open until reset), or it is half-open and every
    /// probe slot is taken (the probes' outcomes decide what happens next).
    pub fn retry_after(&self) -> Option<Duration> {
        self.probe_at
            .map(|at| at.saturating_duration_since(clock::now()))
    }

    /// Whether the circuit was forced open by its handle rather than tripped.
    pub fn is_forced(&self) -> bool {
        self.reason == Reason::ForcedOpen
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            Reason::Open => f.write_str("circuit open: the dependency is failing"),
            Reason::ForcedOpen => f.write_str("circuit forced open"),
            Reason::ProbesInFlight => f.write_str("circuit half-open: every probe slot is taken"),
        }
    }
}

impl std::error::Error for CircuitOpen {}
