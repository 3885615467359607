//! Response futures of [`Timeout`](super::Timeout) and [`Deadline`](super::Deadline).
//!
//! Both arm their timer lazily: the inner future is polled first, and only if it is still
//! pending is a tokio `Sleep` created and registered. A response that is ready on its first
//! poll (a cache hit, an immediate error, a fail-fast rejection from a layer below) costs no
//! clock read, no timer registration and no timer removal.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Sleep, sleep_until};

use super::deadline;
use super::error::{DeadlineExceeded, Elapsed};
use super::observer::{self, TimeoutObserver};
use crate::clock::{self, Instant};
use crate::error::BoxError;

/// Which limit the armed timer stands for, so that the right error is returned when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// The inner future has not been pending yet, so no timer exists.
    NotArmed,
    /// The timer fires at the end of the per-attempt timeout.
    Attempt,
    /// The timer fires at the request's deadline, which comes first.
    Deadline,
    /// Neither limit is representable as an instant (a timeout of centuries), so the call is
    /// never timed out.
    Unbounded,
}

pin_project! {
    /// Response future of [`Timeout`](super::Timeout).
    ///
    /// Resolves to the inner response, to a boxed [`Elapsed`] when the per-attempt timeout
    /// passes first, or to a boxed [`DeadlineExceeded`] when the request's deadline passes
    /// first (or had passed before the call).
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F> {
        #[pin]
        state: TimeoutState<F>,
    }
}

pin_project! {
    #[project = TimeoutStateProj]
    enum TimeoutState<F> {
        /// The deadline had passed when `call` ran; the inner service was not called.
        Expired,
        Running {
            #[pin]
            inner: F,
            #[pin]
            sleep: Option<Sleep>,
            timeout: Duration,
            // The deadline seen in `call`, if any; read again when the timer is armed, for
            // futures created on another task (below `tower::buffer`).
            deadline: Option<Instant>,
            // When the attempt started: read in `call` only if a deadline forced a clock read
            // there anyway, otherwise when the timer is armed (the first pending poll).
            started: Option<Instant>,
            limit: Limit,
            // Told when the call times out; `None` for a layer nobody watches.
            observer: Option<Arc<TimeoutObserver>>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn running(
        inner: F,
        timeout: Duration,
        deadline: Option<Instant>,
        started: Option<Instant>,
        observer: Option<Arc<TimeoutObserver>>,
    ) -> Self {
        ResponseFuture {
            state: TimeoutState::Running {
                inner,
                sleep: None,
                timeout,
                deadline,
                started,
                limit: Limit::NotArmed,
                observer,
            },
        }
    }

    pub(crate) fn expired() -> Self {
        ResponseFuture {
            state: TimeoutState::Expired,
        }
    }

    /// Whether a timer has been created for this call (for tests of the lazy arming).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn timer_armed(&self) -> bool {
        matches!(&self.state, TimeoutState::Running { sleep: Some(_), .. })
    }
}

/// The instant the attempt's timer should fire and the limit it stands for. A deadline that
/// falls at or before the end of the attempt wins, because no later attempt could use the
/// time either.
fn earliest_limit(
    started: Instant,
    timeout: Duration,
    deadline: Option<Instant>,
) -> Option<(Instant, Limit)> {
    match (started.checked_add(timeout), deadline) {
        (Some(attempt_end), Some(deadline)) if deadline <= attempt_end => {
            Some((deadline, Limit::Deadline))
        }
        (Some(attempt_end), _) => Some((attempt_end, Limit::Attempt)),
        (None, Some(deadline)) => Some((deadline, Limit::Deadline)),
        (None, None) => None,
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let TimeoutStateProj::Running {
            inner,
            mut sleep,
            timeout,
            deadline,
            started,
            limit,
            observer,
        } = self.project().state.project()
        else {
            return Poll::Ready(Err(DeadlineExceeded::new().into()));
        };

        // The inner future goes first: a response that is ready wins over a timer that fired
        // in the same instant, and a response ready on the first poll never arms a timer.
        if let Poll::Ready(result) = inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }

        if *limit == Limit::NotArmed {
            let deadline = deadline.or_else(deadline::current);
            let started = started.unwrap_or_else(clock::now);
            match earliest_limit(started, *timeout, deadline) {
                Some((at, armed_for)) => {
                    *limit = armed_for;
                    sleep.set(Some(sleep_until(at)));
                }
                None => *limit = Limit::Unbounded,
            }
        }

        let Some(timer) = sleep.as_mut().as_pin_mut() else {
            return Poll::Pending;
        };
        ready!(timer.poll(cx));
        let error: BoxError = match limit {
            Limit::Deadline => {
                observer::deadline_exceeded(observer.as_deref());
                DeadlineExceeded::new().into()
            }
            _ => {
                observer::timed_out(observer.as_deref(), *timeout);
                Elapsed::new(*timeout).into()
            }
        };
        Poll::Ready(Err(error))
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.state {
            TimeoutState::Expired => f.debug_struct("ResponseFuture").finish_non_exhaustive(),
            TimeoutState::Running {
                timeout,
                deadline,
                limit,
                ..
            } => f
                .debug_struct("ResponseFuture")
                .field("timeout", timeout)
                .field("deadline", deadline)
                .field("limit", limit)
                .finish_non_exhaustive(),
        }
    }
}

pin_project! {
    /// Response future of [`Deadline`](super::Deadline).
    ///
    /// Runs the inner future with the request's deadline in force, and resolves to a boxed
    /// [`DeadlineExceeded`] if the deadline passes first (or had passed before the call).
    #[must_use = "futures do nothing unless polled"]
    pub struct DeadlineFuture<F> {
        #[pin]
        state: DeadlineState<F>,
    }
}

pin_project! {
    #[project = DeadlineStateProj]
    enum DeadlineState<F> {
        Expired,
        Bounded {
            // Polled with the deadline in force.
            #[pin]
            inner: F,
            #[pin]
            sleep: Option<Sleep>,
            deadline: Instant,
        },
        // The budget is too large to represent as an instant and no outer deadline exists.
        Unbounded { #[pin] inner: F },
    }
}

impl<F> DeadlineFuture<F> {
    pub(crate) fn bounded(inner: F, deadline: Instant) -> Self {
        DeadlineFuture {
            state: DeadlineState::Bounded {
                inner,
                sleep: None,
                deadline,
            },
        }
    }

    pub(crate) fn unbounded(inner: F) -> Self {
        DeadlineFuture {
            state: DeadlineState::Unbounded { inner },
        }
    }

    pub(crate) fn expired() -> Self {
        DeadlineFuture {
            state: DeadlineState::Expired,
        }
    }
}

impl<F, T, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            DeadlineStateProj::Expired => {
                tracing::debug!("deadline already passed: not called");
                Poll::Ready(Err(DeadlineExceeded::new().into()))
            }
            DeadlineStateProj::Unbounded { inner } => inner.poll(cx).map_err(Into::into),
            DeadlineStateProj::Bounded {
                inner,
                mut sleep,
                deadline,
            } => {
                if let Poll::Ready(result) = deadline::within(*deadline, || inner.poll(cx)) {
                    return Poll::Ready(result.map_err(Into::into));
                }
                if sleep.is_none() {
                    sleep.set(Some(sleep_until(*deadline)));
                }
                let timer = sleep.as_mut().as_pin_mut().expect("armed just above");
                ready!(timer.poll(cx));
                tracing::debug!("deadline exceeded");
                Poll::Ready(Err(DeadlineExceeded::new().into()))
            }
        }
    }
}

impl<F> std::fmt::Debug for DeadlineFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let deadline = match &self.state {
            DeadlineState::Bounded { deadline, .. } => Some(*deadline),
            _ => None,
        };
        f.debug_struct("DeadlineFuture")
            .field("deadline", &deadline)
            .finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::future::{pending, ready};
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use super::ResponseFuture;
    use crate::error::BoxError;

    fn poll_once<F: std::future::Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_response_ready_on_first_poll_never_arms_a_timer() {
        // No runtime is entered: arming a tokio timer here would panic, so this also proves
        // the ready path never touches the timer.
        let inner = ready(Ok::<_, BoxError>(7));
        let mut future = pin!(ResponseFuture::running(
            inner,
            Duration::from_secs(1),
            None,
            None,
            None
        ));
        assert!(matches!(poll_once(future.as_mut()), Poll::Ready(Ok(7))));
        assert!(!future.timer_armed());
    }

    #[test]
    fn a_pending_response_arms_exactly_one_timer() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let _context = runtime.enter();
        let inner = pending::<Result<u8, BoxError>>();
        let mut future = pin!(ResponseFuture::running(
            inner,
            Duration::from_secs(1),
            None,
            None,
            None
        ));
        assert!(poll_once(future.as_mut()).is_pending());
        assert!(future.timer_armed());
        assert!(poll_once(future.as_mut()).is_pending());
        assert!(future.timer_armed());
    }
}
