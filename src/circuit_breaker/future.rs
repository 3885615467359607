//! The breaker's response future and the permit it carries.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;

use super::Local;
use super::error::CircuitOpen;
use super::handle::TransitionReason;
use super::layer::{Classify, Outcome};
use super::shared::Shared;
use super::state::Phase;
use crate::clock::{self, Instant};
use crate::error::BoxError;

/// What a call was admitted as, and what it owes the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Closed in this generation: report the outcome to the trip model.
    Closed(u32),
    /// Holds a half-open probe slot of this generation: report the outcome, or give the slot
    /// back.
    Probe(u32),
    /// Disabled, or already settled: owes nothing.
    Settled,
}

/// The call's ticket. Dropped without an outcome (the future was cancelled, or the inner
/// service panicked), a probe gives its slot back, so a lost probe cannot wedge half-open.
pub(crate) struct Permit<C> {
    local: Option<Arc<Local<C>>>,
    kind: Kind,
}

impl<C> Permit<C> {
    pub(crate) fn closed(local: &Arc<Local<C>>, generation: u32) -> Self {
        Permit {
            local: Some(Arc::clone(local)),
            kind: Kind::Closed(generation),
        }
    }

    pub(crate) fn probe(local: &Arc<Local<C>>, generation: u32) -> Self {
        Permit {
            local: Some(Arc::clone(local)),
            kind: Kind::Probe(generation),
        }
    }

    pub(crate) fn untracked() -> Self {
        Permit {
            local: None,
            kind: Kind::Settled,
        }
    }

    /// The slow-call threshold, if this call's duration matters: it is tracked, and the
    /// breaker watches for slow calls.
    fn slow_threshold(&self) -> Option<Duration> {
        match (&self.local, self.kind) {
            (Some(local), Kind::Closed(_) | Kind::Probe(_)) => local.shared.slow_threshold(),
            _ => None,
        }
    }

    /// Reports the call's result, and whether it was slow.
    fn settle<T, E>(&mut self, result: &Result<T, E>, slow: bool)
    where
        C: Classify<T, E>,
    {
        let kind = std::mem::replace(&mut self.kind, Kind::Settled);
        let Some(local) = &self.local else { return };
        if kind == Kind::Settled {
            return;
        }
        let outcome = local.classifier.classify(result);
        let shared = &local.shared;
        shared.count_outcome(outcome);
        if outcome == Outcome::Failure
            && let Some(hint) = local.classifier.retry_after(result)
        {
            shared.asked_to_wait(hint);
        }
        match (kind, outcome) {
            (Kind::Settled, _) | (Kind::Closed(_), Outcome::Ignored) => {}
            (Kind::Closed(generation), Outcome::Success) => {
                shared.window.record_success(local.stripe, generation);
                if slow && shared.window.record_slow(generation) {
                    trip(shared, generation, TransitionReason::SlowCallThreshold);
                }
            }
            (Kind::Closed(generation), Outcome::Failure) => {
                if shared.window.record_failure(generation) {
                    trip(shared, generation, TransitionReason::FailureThreshold);
                }
                if slow && shared.window.record_slow(generation) {
                    trip(shared, generation, TransitionReason::SlowCallThreshold);
                }
            }
            (Kind::Probe(generation), Outcome::Ignored) => {
                shared.state.probe_abandoned(generation);
            }
            (Kind::Probe(generation), verdict) => {
                // A slow probe fails: a dependency that only answers slowly has not recovered.
                let success = verdict == Outcome::Success && !slow;
                if let Some(transition) = shared.state.probe_finished(generation, success) {
                    let reason = if transition.to == Phase::Closed {
                        TransitionReason::ProbesSucceeded
                    } else {
                        TransitionReason::ProbesFailed
                    };
                    shared.after(transition, reason);
                }
            }
        }
    }
}

/// Opens closed cycle `generation`, unless another outcome already did.
fn trip(shared: &Arc<Shared>, generation: u32, reason: TransitionReason) {
    if let Some(transition) = shared.state.trip(generation) {
        shared.after(transition, reason);
    }
}

impl<C> Drop for Permit<C> {
    fn drop(&mut self) {
        if let (Kind::Probe(generation), Some(local)) = (self.kind, &self.local) {
            local.shared.state.probe_abandoned(generation);
        }
    }
}

pin_project! {
    /// Response future of [`CircuitBreaker`](super::CircuitBreaker).
    ///
    /// Resolves to the inner response or error (boxed), or to a boxed [`CircuitOpen`] when the
    /// call was rejected. It reports the call's outcome to the breaker when it completes; if
    /// it is dropped first, the call counts as nothing, and a probe's slot is given back.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: CallState<F>,
        permit: Permit<C>,
        // With slow-call detection: when the inner future first returned `Pending`.
        started: Option<Instant>,
    }
}

pin_project! {
    #[project = CallStateProj]
    enum CallState<F> {
        Called { #[pin] inner: F },
        Rejected { error: Option<CircuitOpen> },
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn called(inner: F, permit: Permit<C>) -> Self {
        ResponseFuture {
            state: CallState::Called { inner },
            permit,
            started: None,
        }
    }

    pub(crate) fn rejected(error: CircuitOpen) -> Self {
        ResponseFuture {
            state: CallState::Rejected { error: Some(error) },
            permit: Permit::untracked(),
            started: None,
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.state.project() {
            CallStateProj::Rejected { error } => {
                let error = error.take().expect("polled after completion");
                Poll::Ready(Err(Box::new(error)))
            }
            CallStateProj::Called { inner } => match inner.poll(cx) {
                Poll::Pending => {
                    // The clock is read only for a call that waits, and only if slow calls
                    // are watched: a response ready on its first poll was not slow.
                    if this.started.is_none() && this.permit.slow_threshold().is_some() {
                        *this.started = Some(clock::now());
                    }
                    Poll::Pending
                }
                Poll::Ready(result) => {
                    // `started` is only set when slow calls are watched and the call waited.
                    let slow = match *this.started {
                        Some(started) => this.permit.slow_threshold().is_some_and(|threshold| {
                            clock::now().saturating_duration_since(started) >= threshold
                        }),
                        None => false,
                    };
                    this.permit.settle(&result, slow);
                    Poll::Ready(result.map_err(Into::into))
                }
            },
        }
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rejected = matches!(self.state, CallState::Rejected { .. });
        f.debug_struct("ResponseFuture")
            .field("rejected", &rejected)
            .field("permit", &self.permit.kind)
            .finish_non_exhaustive()
    }
}
