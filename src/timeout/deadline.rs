//! Request deadlines: the instant by which a whole request, every attempt included, must be
//! done, readable anywhere below the layer that set it, for any request type.
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_firebreak::ServiceBuilderExt;
//! use tower_firebreak::error::BoxError;
//! use tower_firebreak::timeout::deadline;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // Any service below the deadline layer can ask how much time the request has left.
//! let inner = service_fn(|name: &'static str| async move {
//!     let left = deadline::remaining().expect("a deadline was set above");
//!     Ok::<_, BoxError>(format!("{name} has {left:?} left"))
//! });
//! let svc = ServiceBuilder::new()
//!     .deadline(Duration::from_secs(2))?
//!     .service(inner);
//!
//! assert_eq!(svc.oneshot("request").await?, "request has 2s left");
//! # Ok(())
//! # }
//! ```
//!
//! # Setting a deadline
//!
//! - [`DeadlineLayer`](super::DeadlineLayer) (or `ServiceBuilderExt::deadline`) gives every
//!   request a time budget on arrival, and fails it with
//!   [`DeadlineExceeded`](super::DeadlineExceeded) if the budget runs out.
//! - [`scope`] runs a future under an explicit deadline, for example one a server read from
//!   an incoming request.
//!
//! A deadline can only be tightened: an inner scope or layer that asks for a later instant
//! than the one already in force keeps the earlier one, as with gRPC deadlines.
//!
//! # Reading it
//!
//! [`current`] returns the deadline in force and [`remaining`] the time left. Both work in a
//! service's `call` and while its response future is polled. [`Timeout`](super::Timeout)
//! bounds each attempt by `min(per-attempt timeout, remaining deadline)`, and refuses to call
//! its inner service at all once the deadline has passed.
//!
//! # Why a task-local
//!
//! Three designs were possible:
//!
//! - **A request extension** (`http::Request::extensions`) exists only for HTTP requests.
//! - **A trait on the request** ("has a deadline") works across any hop, but every request
//!   type must implement it, and the orphan rule forbids implementing it for foreign types
//!   such as `String` or a tonic request, so users would wrap every request.
//! - **A task-local** works for every request type with no code from the user, and it is the
//!   model Finagle's request contexts use. Like tokio's `task_local!`, it is a thread-local
//!   that holds the deadline only while the request's futures are polled and is restored
//!   afterwards (also on panic). Entering and leaving costs about 6 ns per poll.
//!
//! This crate uses the task-local. Its limit is that it belongs to a task, so a deadline does
//! not follow work that another task does:
//!
//! - **Spawned tasks** start without it. Wrap the spawned future in [`inherit`] (or [`scope`])
//!   to carry it over.
//! - **`tower::buffer`** calls the inner service from its worker task. A service below the
//!   buffer sees no deadline in its `call`, but its response future is polled by the caller's
//!   task, where the deadline is in force. [`Timeout`](super::Timeout) reads the deadline again
//!   when it arms its timer, so below a buffer it still stops at the deadline; only the
//!   "already expired, do not call" check is lost, because that happens in `call`. The
//!   [`Deadline`](super::Deadline) layer above the buffer enforces the deadline in any case.
//! - **Across processes**, the `http` feature's `PropagateDeadlineLayer` writes the remaining
//!   time into a `grpc-timeout` request header, and its `AcceptDeadlineLayer` makes it the
//!   server's deadline (an expired one is refused at once).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::cell::Cell;

use pin_project_lite::pin_project;

use crate::clock::{self, Instant};

thread_local! {
    // The deadline in force while a scoped future is being polled (or a scoped closure runs)
    // on this thread. Set on entry and restored on exit, so it behaves as a task-local: a
    // task sees it only while it is inside a scope. A `Cell` of a `Copy` value rather than
    // tokio's `task_local!` (a `RefCell<Option<T>>` around an `Option<F>`): entering and
    // leaving is two plain loads and stores, which halves the cost of the deadline layer.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Puts the previous deadline back when dropped, so a panic inside a scope cannot leave a
/// stale deadline in force on the thread.
struct Restore {
    previous: Option<Instant>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        DEADLINE.with(|slot| slot.set(self.previous));
    }
}

/// Runs `f` with exactly `deadline` in force (no tightening: callers have done it).
pub(crate) fn within<R>(deadline: Instant, f: impl FnOnce() -> R) -> R {
    let _restore = Restore {
        previous: DEADLINE.with(|slot| slot.replace(Some(deadline))),
    };
    f()
}

/// The deadline in force for the request being handled, if any.
///
/// Reading it costs a thread-local access (about 2 ns); it does not read the clock.
pub fn current() -> Option<Instant> {
    DEADLINE.with(Cell::get)
}

/// The time left before the deadline in force, or `None` when there is no deadline.
///
/// Returns `Some(Duration::ZERO)` once the deadline has passed. Reads the clock only when a
/// deadline is set.
pub fn remaining() -> Option<Duration> {
    current().map(|deadline| deadline.saturating_duration_since(clock::now()))
}

/// The earlier of `deadline` and the deadline already in force.
pub(crate) fn tightened(deadline: Instant) -> Instant {
    match current() {
        Some(outer) => outer.min(deadline),
        None => deadline,
    }
}

/// Runs `future` with `deadline` in force (or the deadline already in force, if earlier).
///
/// The deadline is visible to [`current`] and [`remaining`] whenever the returned future is
/// polled, including from the services the future calls. `scope` does not cancel the future
/// when the deadline passes; the [`Timeout`](super::Timeout) and
/// [`Deadline`](super::Deadline) layers below enforce it, or wrap the scope in
/// `tokio::time::timeout_at` to enforce it yourself.
///
/// Call it where the request is created, so the call itself happens inside the scope:
///
/// ```
/// use std::time::Duration;
/// use tower::{ServiceExt, service_fn};
/// use tower_firebreak::{clock, error::BoxError, timeout::deadline};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), BoxError> {
/// let svc = service_fn(|()| async { Ok::<_, BoxError>(deadline::remaining()) });
/// let at = clock::now() + Duration::from_millis(300);
/// let left = deadline::scope(at, svc.oneshot(())).await?;
/// assert_eq!(left, Some(Duration::from_millis(300)));
/// # Ok(())
/// # }
/// ```
pub fn scope<F: Future>(deadline: Instant, future: F) -> Scoped<F> {
    Scoped {
        future,
        deadline: Some(tightened(deadline)),
    }
}

/// Runs the closure `f` with `deadline` in force (or the deadline already in force, if
/// earlier), for code that is not a future, such as a service's `call`.
pub fn sync_scope<R>(deadline: Instant, f: impl FnOnce() -> R) -> R {
    within(tightened(deadline), f)
}

/// Carries the deadline in force now into `future`, which may then run on another task.
///
/// Use it when spawning work that belongs to the current request:
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::{clock, timeout::deadline};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let at = clock::now() + Duration::from_secs(1);
/// deadline::scope(at, async {
///     let lost = tokio::spawn(async { deadline::current() });
///     let kept = tokio::spawn(deadline::inherit(async { deadline::current() }));
///     assert_eq!(lost.await.unwrap(), None);
///     assert_eq!(kept.await.unwrap(), Some(at));
/// })
/// .await;
/// # }
/// ```
pub fn inherit<F: Future>(future: F) -> Scoped<F> {
    Scoped {
        future,
        deadline: current(),
    }
}

pin_project! {
    /// A future run under a deadline, returned by [`scope`] and [`inherit`].
    ///
    /// Its output is the output of the future it wraps.
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct Scoped<F> {
        #[pin]
        future: F,
        // `None` only from `inherit` with no deadline in force: then the future runs under
        // whatever deadline its poller has, as it would unwrapped.
        deadline: Option<Instant>,
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        match *this.deadline {
            Some(deadline) => within(deadline, || this.future.poll(cx)),
            None => this.future.poll(cx),
        }
    }
}
