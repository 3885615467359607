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
use tower::{Layer, Service, ServiceBuilder};
use tower_firebreak::ServiceBuilderExt;
use tower_firebreak::circuit_breaker::{CircuitBreakerLayer, Outcome, State};
use tower_firebreak::error::BoxError;
use tower_firebreak::load_shed::{
    Aimd, Gradient2, Limit, LoadShedLayer, SlaGuard, ThrottleLayer, Vegas,
};
use tower_firebreak::retry::RetryLayer;
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

/// Calls `svc` and polls the response to completion with a no-op waker, whatever the result;
/// returns the number of allocations made from `call` to completion, dropping included.
fn allocations_per_call_any<S: Service<u64>>(svc: &mut S, request: u64) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    let region = Region::new(GLOBAL);
    {
        let mut response = pin!(svc.call(request));
        while response.as_mut().poll(&mut cx).is_pending() {}
    }
    region.change().allocations
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

/// Fails every `n`-th call.
#[derive(Clone)]
struct FailsEvery(u64);
impl Service<u64> for FailsEvery {
    type Response = u64;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u64, BoxError>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, x: u64) -> Self::Future {
        if x.is_multiple_of(self.0) {
            std::future::ready(Err(Box::new(StaticError) as BoxError))
        } else {
            std::future::ready(Ok(x))
        }
    }
}

/// A zero-sized error: boxing it does not allocate, so only the breaker's allocations count.
#[derive(Debug)]
struct StaticError;
impl std::fmt::Display for StaticError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("failed")
    }
}
impl std::error::Error for StaticError {}

/// Events heard by [`listener`]: a success path must report none.
static EVENTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A listener for the `on_event` of every layer.
fn listener(_: &tower_firebreak::observe::Event<'_>) {
    EVENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Builds with a recorder installed when the `metrics` feature is on, so that the layers'
/// metrics are real handles that count, not no-ops.
fn observed<T>(build: impl FnOnce() -> T) -> T {
    #[cfg(feature = "metrics")]
    return metrics::with_local_recorder(&Atomics, build);
    #[cfg(not(feature = "metrics"))]
    build()
}

#[cfg(feature = "metrics")]
#[path = "support/atomics.rs"]
mod atomics;
#[cfg(feature = "metrics")]
use atomics::Atomics;

#[test]
fn no_layer_allocates_per_call() {
    // Paused, so the circuit breaker's open period can be ended by advancing time.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
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

    // The circuit breaker, closed: successes, and failures that do not trip it.
    let breaker = CircuitBreakerLayer::builder()
        .failure_rate(0.5, 100)
        .build()
        .unwrap();
    let mut closed_ok = breaker.layer(Ready);
    let mut closed_some_failures = breaker.layer(FailsEvery(10));
    allocations_per_call(&mut closed_ok, 1);
    allocations_per_call_any(&mut closed_some_failures, 10);
    for request in 1..=100 {
        assert_eq!(
            allocations_per_call(&mut closed_ok, request),
            0,
            "breaker, closed"
        );
        assert_eq!(
            allocations_per_call_any(&mut closed_some_failures, request),
            0,
            "breaker, closed, 10% failures"
        );
    }
    assert_eq!(breaker.handle().state(), State::Closed);

    // A time window with slow-call detection, on ready and on pending responses (a pending
    // one is timed). The first call starts the window's timer task: that is the warm-up.
    let timed = CircuitBreakerLayer::builder()
        .time_window(0.5, Duration::from_secs(10), 10)
        .slow_calls(Duration::from_secs(1), 0.5)
        .build()
        .unwrap();
    let mut timed_ready = timed.layer(Ready);
    let mut timed_pending = timed.layer(Slow);
    let mut timed_failures = timed.layer(FailsEvery(10));
    allocations_per_call(&mut timed_ready, 1);
    for request in 1..=100 {
        assert_eq!(
            allocations_per_call(&mut timed_ready, request),
            0,
            "breaker, time window, ready"
        );
        assert_eq!(
            allocations_per_call(&mut timed_pending, request),
            0,
            "breaker, time window, pending"
        );
        assert_eq!(
            allocations_per_call_any(&mut timed_failures, request),
            0,
            "breaker, time window, 10% failures"
        );
    }
    assert_eq!(timed.handle().state(), State::Closed);

    // Retry, with its default budget, on ready and on pending responses. The first call
    // starts the budget's timer task: that is the warm-up.
    let retry = RetryLayer::builder().build().unwrap();
    let mut retry_ready = retry.layer(Ready);
    let mut retry_pending = retry.layer(Slow);
    allocations_per_call(&mut retry_ready, 1);
    for request in 1..=100 {
        assert_eq!(
            allocations_per_call(&mut retry_ready, request),
            0,
            "retry, ready"
        );
        assert_eq!(
            allocations_per_call(&mut retry_pending, request),
            0,
            "retry, pending"
        );
    }
    assert_eq!(retry.budget().unwrap().retries(), 0);

    // Load shedding, admitted calls (ready and pending).
    let shed = LoadShedLayer::builder().max_concurrency(8).build().unwrap();
    let mut shed_ready = shed.layer(Ready);
    let mut shed_pending = shed.layer(Slow);
    for request in 1..=100 {
        assert_eq!(
            allocations_per_call(&mut shed_ready, request),
            0,
            "load shed, ready"
        );
        assert_eq!(
            allocations_per_call(&mut shed_pending, request),
            0,
            "load shed, pending"
        );
    }
    assert_eq!(shed.in_flight(), 0);

    // Adaptive limits, admitted calls: every call is timed and sampled, and with a 1 ms
    // window of 1 sample and the clock moved 1 ms between calls, every call also folds a
    // window into the algorithm.
    let adaptive: [Limit; 4] = [
        Aimd::default().into(),
        Gradient2::default().into(),
        Vegas::default().into(),
        SlaGuard::new(Duration::from_millis(100)).into(),
    ];
    for limit in adaptive {
        let shed = LoadShedLayer::builder()
            .limit(limit.clone())
            .sample_window(Duration::from_millis(1), 1)
            .build()
            .unwrap();
        let mut shed_ready = shed.layer(Ready);
        let mut shed_pending = shed.layer(Slow);
        for request in 1..=100 {
            runtime.block_on(tokio::time::advance(Duration::from_millis(1)));
            assert_eq!(
                allocations_per_call(&mut shed_ready, request),
                0,
                "load shed, {limit:?}, ready"
            );
            assert_eq!(
                allocations_per_call(&mut shed_pending, request),
                0,
                "load shed, {limit:?}, pending"
            );
        }
        assert_eq!(shed.in_flight(), 0);
    }

    // Client-side throttling, calls sent (the first call starts its window's timer task).
    let throttle = ThrottleLayer::builder().seed(1).build().unwrap();
    let mut throttled = throttle.layer(Ready);
    allocations_per_call(&mut throttled, 1);
    for request in 1..=100 {
        assert_eq!(
            allocations_per_call(&mut throttled, request),
            0,
            "throttle, sent"
        );
    }

    // Half-open: trip it, let the open period pass, then probe. Probes classified as ignored
    // give their slot back, so the breaker stays half-open for the whole measurement.
    let probing = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(1))
        .jitter(0.0)
        .half_open_probes(2)
        .classifier(|result: &Result<u64, BoxError>| match result {
            Ok(_) => Outcome::Ignored,
            Err(_) => Outcome::Failure,
        })
        .build()
        .unwrap();
    let mut tripping = probing.layer(FailsEvery(1));
    let mut probe = probing.layer(Ready);
    allocations_per_call_any(&mut tripping, 1);
    runtime.block_on(async {
        tokio::time::advance(Duration::from_secs(1)).await;
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    });
    assert_eq!(probing.handle().state(), State::HalfOpen);
    for request in 1..=100 {
        assert_eq!(
            allocations_per_call(&mut probe, request),
            0,
            "breaker, half-open probe"
        );
    }
    assert_eq!(probing.handle().state(), State::HalfOpen);

    // Open: the only allocation is the boxed `CircuitOpen` the call returns.
    let open = CircuitBreakerLayer::builder().build().unwrap();
    let mut rejecting = open.layer(Ready);
    open.handle().force_open();
    for request in 1..=100 {
        assert_eq!(
            allocations_per_call_any(&mut rejecting, request),
            1,
            "breaker, open"
        );
    }

    // With a listener on every layer (and, with the `metrics` feature, real metric handles),
    // success paths allocate nothing and report nothing.
    let breaker = observed(|| {
        CircuitBreakerLayer::builder()
            .name("observed")
            .on_event(listener)
            .build()
            .unwrap()
    });
    let mut breaker_ok = breaker.layer(Ready);
    let retry = observed(|| {
        RetryLayer::builder()
            .name("observed")
            .on_event(listener)
            .build()
            .unwrap()
    });
    let mut retry_ok = retry.layer(Ready);
    let throttle = observed(|| {
        ThrottleLayer::builder()
            .name("observed")
            .seed(1)
            .on_event(listener)
            .build()
            .unwrap()
    });
    let mut throttle_ok = throttle.layer(Ready);
    let timeout = observed(|| {
        tower_firebreak::timeout::TimeoutLayer::builder()
            .name("observed")
            .attempt_timeout(Duration::from_secs(1))
            .on_event(listener)
            .build()
            .unwrap()
    });
    let mut timeout_ready = timeout.layer(Ready);
    let mut timeout_pending = timeout.layer(Slow);
    // Warm up: the retry budget's and the throttle's timer tasks start on first use.
    allocations_per_call(&mut retry_ok, 0);
    allocations_per_call(&mut throttle_ok, 0);
    allocations_per_call(&mut timeout_pending, 0);
    for request in 1..=100 {
        assert_eq!(
            allocations_per_call(&mut breaker_ok, request),
            0,
            "observed breaker"
        );
        assert_eq!(
            allocations_per_call(&mut retry_ok, request),
            0,
            "observed retry"
        );
        assert_eq!(
            allocations_per_call(&mut throttle_ok, request),
            0,
            "observed throttle"
        );
        assert_eq!(
            allocations_per_call(&mut timeout_ready, request),
            0,
            "observed timeout, ready"
        );
        assert_eq!(
            allocations_per_call(&mut timeout_pending, request),
            0,
            "observed timeout, pending"
        );
    }
    assert_eq!(EVENTS.load(std::sync::atomic::Ordering::Relaxed), 0);
    // A rejection is reported, and allocates nothing more than the error it returns.
    breaker.handle().force_open();
    let events = EVENTS.load(std::sync::atomic::Ordering::Relaxed);
    for request in 1..=100 {
        assert_eq!(
            allocations_per_call_any(&mut breaker_ok, request),
            1,
            "observed breaker, open"
        );
    }
    assert_eq!(
        EVENTS.load(std::sync::atomic::Ordering::Relaxed),
        events + 100
    );

    // An explicit deadline scope around a call allocates nothing either.
    let at = tower_firebreak::clock::now() + Duration::from_secs(1);
    let region = Region::new(GLOBAL);
    let left = deadline::sync_scope(at, deadline::remaining);
    assert_eq!(region.change().allocations, 0);
    assert!(left.is_some());
}
