//! Zero allocations per call: a counting global allocator watches whole calls through each
//! layer, and the timeout and deadline futures are polled by hand so nothing else runs.
//!
//! One test function only: the counter is process-wide, so a second test running on another
//! thread would add its allocations to the count.

use std::alloc::System;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Service, ServiceBuilder};
use tower_firebreak::ServiceBuilderExt;
use tower_firebreak::error::BoxError;
use tower_firebreak::timeout::deadline;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// A service whose response is ready on the first poll.
#[derive(Clone)]
struct Ready;
impl Service<u64> for Ready {
    type Response = u64;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u64, BoxError>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, x: u64) -> Self::Future {
        std::future::ready(Ok(x))
    }
}

/// A response that is pending once, then ready: enough to make a timeout arm its timer.
struct PendingOnce(Option<u64>, bool);
impl Future for PendingOnce {
    type Output = Result<u64, BoxError>;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if !self.1 {
            self.1 = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Ok(self.0.take().expect("polled after completion")))
    }
}
#[derive(Clone)]
struct Slow;
impl Service<u64> for Slow {
    type Response = u64;
    type Error = BoxError;
    type Future = PendingOnce;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, x: u64) -> Self::Future {
        PendingOnce(Some(x), false)
    }
}

/// Calls `svc` and polls the response to completion with a no-op waker; returns the number
/// of allocations made from `call` to completion.
fn allocations_per_call<S>(svc: &mut S, request: u64) -> usize
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let region = Region::new(GLOBAL);
    let mut response = pin!(svc.call(request));
    let value = loop {
        if let Poll::Ready(result) = response.as_mut().poll(&mut cx) {
            break result.expect("the call succeeds");
        }
    };
    let allocations = region.change().allocations;
    assert_eq!(value, request);
    allocations
}

#[test]
fn no_layer_allocates_per_call() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _context = runtime.enter();

    let mut timeout_ready = ServiceBuilder::new()
        .timeout_attempt(Duration::from_secs(1))
        .unwrap()
        .service(Ready);
    let mut timeout_pending = ServiceBuilder::new()
        .timeout_attempt(Duration::from_secs(1))
        .unwrap()
        .service(Slow);
    let mut stack_ready = ServiceBuilder::new()
        .deadline(Duration::from_secs(2))
        .unwrap()
        .timeout_attempt(Duration::from_secs(1))
        .unwrap()
        .service(Ready);
    let mut stack_pending = ServiceBuilder::new()
        .deadline(Duration::from_secs(2))
        .unwrap()
        .timeout_attempt(Duration::from_secs(1))
        .unwrap()
        .service(Slow);

    // Warm up once: tokio's timer and thread-locals may allocate on first use, not per call.
    allocations_per_call(&mut timeout_pending, 0);
    allocations_per_call(&mut stack_pending, 0);
    allocations_per_call(&mut timeout_ready, 0);
    allocations_per_call(&mut stack_ready, 0);

    for request in 1..=100 {
        assert_eq!(
            allocations_per_call(&mut timeout_ready, request),
            0,
            "timeout, ready"
        );
        assert_eq!(
            allocations_per_call(&mut timeout_pending, request),
            0,
            "timeout, pending"
        );
        assert_eq!(
            allocations_per_call(&mut stack_ready, request),
            0,
            "deadline + timeout, ready"
        );
        assert_eq!(
            allocations_per_call(&mut stack_pending, request),
            0,
            "deadline + timeout, pending"
        );
    }

    // An explicit deadline scope around a call allocates nothing either.
    let at = tower_firebreak::clock::now() + Duration::from_secs(1);
    let region = Region::new(GLOBAL);
    let left = deadline::sync_scope(at, deadline::remaining);
    assert_eq!(region.change().allocations, 0);
    assert!(left.is_some());
}
