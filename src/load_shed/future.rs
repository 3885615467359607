//! The load-shedding layer's response future and the permit it carries.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::Local;
use super::error::Overloaded;
use super::limit::{Sample, nanos};
use crate::clock;
use crate::error::{BoxError, ErrorKind};

/// A slot of the concurrency limit, given back when dropped: on completion, on cancellation
/// (the future dropped) and on a panic in the inner service (unwinding drops it), so no path
/// leaks a slot.
#[derive(Debug)]
pub(crate) struct Permit {
    local: Arc<Local>,
}

impl Permit {
    /// `local.limiter.try_acquire()` must have succeeded for this permit.
    #[inline]
    pub(crate) fn new(local: Arc<Local>) -> Self {
        Permit { local }
    }

    /// When an adaptive limit admits a call: now, in nanoseconds since the limit's origin.
    pub(crate) fn admitted_at(&self) -> u64 {
        since_origin(&self.local)
    }

    /// An adaptive limit's call completed with `result`, admitted at `started_ns`: records
    /// its latency and whether it was a drop, then the slot is given back (by the drop at the
    /// end). A cancelled call never gets here, so it is not sampled.
    #[inline(never)]
    fn complete_timed<T>(self, started_ns: u64, result: &Result<T, BoxError>) {
        let dropped = match result {
            Ok(_) => false,
            Err(err) => is_drop(err),
        };
        let end_ns = since_origin(&self.local);
        let observer = &self.local.observer;
        self.local.limiter.record(
            Sample {
                rtt_ns: end_ns.saturating_sub(started_ns),
                end_ns,
                dropped,
            },
            |previous, limit| observer.limit_changed(previous, limit),
        );
    }
}

/// Now, in nanoseconds since the limit's origin.
fn since_origin(local: &Local) -> u64 {
    nanos(clock::now().saturating_duration_since(local.origin))
}

fn is_drop(err: &BoxError) -> bool {
    matches!(
        ErrorKind::of(&**err),
        ErrorKind::TimedOut | ErrorKind::DeadlineExceeded | ErrorKind::Overloaded
    )
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.local.limiter.release();
        if let Some(queue) = &self.local.queue {
            queue.after_release(&self.local.limiter);
        }
    }
}

pin_project! {
    /// Response future of [`LoadShed`](super::LoadShed).
    ///
    /// Resolves to the inner response or error (boxed), or to a boxed [`Overloaded`] when
    /// the call was rejected. Holds the call's slot until it completes or is dropped.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // A fixed limit's call: nothing to time. Kept apart from `Timed` so that it carries
        // no timestamp (one in the permit cost it about 8 ns a call, measured).
        Admitted { #[pin] inner: F, permit: Option<Permit> },
        // An adaptive limit's call, admitted at `started_ns` (see `Permit::admitted_at`).
        Timed { #[pin] inner: F, permit: Option<Permit>, started_ns: u64 },
        Rejected { error: Option<Overloaded> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn admitted(inner: F, permit: Permit) -> Self {
        ResponseFuture {
            state: State::Admitted {
                inner,
                permit: Some(permit),
            },
        }
    }

    /// An adaptive limit's call, admitted at `started_ns`.
    pub(crate) fn timed(inner: F, permit: Permit, started_ns: u64) -> Self {
        ResponseFuture {
            state: State::Timed {
                inner,
                permit: Some(permit),
                started_ns,
            },
        }
    }

    pub(crate) fn rejected(error: Overloaded) -> Self {
        ResponseFuture {
            state: State::Rejected { error: Some(error) },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    // Always inlined: out of line, the call and the result's trip through memory cost the
    // fixed limit's admitted path about 8 ns (measured with `cargo bench --bench load_shed`).
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Admitted { inner, permit } => {
                let result = ready!(inner.poll(cx));
                // The work is done: free the slot now, not when the caller drops the future.
                drop(permit.take());
                Poll::Ready(result.map_err(Into::into))
            }
            StateProj::Timed {
                inner,
                permit,
                started_ns,
            } => {
                let result = ready!(inner.poll(cx)).map_err(Into::into);
                if let Some(permit) = permit.take() {
                    permit.complete_timed(*started_ns, &result);
                }
                Poll::Ready(result)
            }
            StateProj::Rejected { error } => match error.take() {
                Some(error) => Poll::Ready(Err(Box::new(error))),
                None => panic!("ResponseFuture polled after completion"),
            },
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let admitted = matches!(self.state, State::Admitted { .. } | State::Timed { .. });
        f.debug_struct("ResponseFuture")
            .field("admitted", &admitted)
            .finish_non_exhaustive()
    }
}
