//! The load-shedding layer's response future and the permit it carries.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::Local;
use super::error::Overloaded;
use crate::error::BoxError;

/// A slot of the concurrency limit, given back when dropped: on completion, on cancellation
/// (the future dropped) and on a panic in the inner service (unwinding drops it), so no path
/// leaks a slot.
#[derive(Debug)]
pub(crate) struct Permit {
    local: Arc<Local>,
}

impl Permit {
    /// `local.limiter.try_acquire()` must have returned `true` for this permit.
    pub(crate) fn new(local: Arc<Local>) -> Self {
        Permit { local }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.local.limiter.release();
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
        Admitted { #[pin] inner: F, permit: Option<Permit> },
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

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Admitted { inner, permit } => {
                let result = ready!(inner.poll(cx));
                // The work is done: free the slot now, not when the caller drops the future.
                drop(permit.take());
                Poll::Ready(result.map_err(Into::into))
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
        let admitted = matches!(self.state, State::Admitted { .. });
        f.debug_struct("ResponseFuture")
            .field("admitted", &admitted)
            .finish_non_exhaustive()
    }
}
