//! Allocations per call of the `http` feature's layers and policies, counted by a global
//! allocator over whole calls polled by hand (so nothing else runs).
//!
//! One test function only: the counter is process-wide, so a second test running on another
//! thread would add its allocations to the count.

#![cfg(feature = "http")]

use std::alloc::System;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Layer, Service};
use tower_firebreak::circuit_breaker::CircuitBreakerLayer;
use tower_firebreak::clock;
use tower_firebreak::error::BoxError;
use tower_firebreak::http::{
    AcceptDeadlineLayer, HttpRetryPolicy, IdempotentRequests, PropagateDeadlineLayer,
    StatusClassifier,
};
use tower_firebreak::retry::RetryLayer;
use tower_firebreak::timeout::deadline;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Answers every request at once with a bare response (which allocates nothing).
#[derive(Clone)]
struct Ready(StatusCode);

impl<B> Service<Request<B>> for Ready {
    type Response = Response<()>;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Response<()>, BoxError>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<B>) -> Self::Future {
        let mut response = Response::new(());
        *response.status_mut() = self.0;
        std::future::ready(Ok(response))
    }
}

fn call_once<S, B>(svc: &mut S, request: Request<B>) -> Result<S::Response, S::Error>
where
    S: Service<Request<B>>,
{
    let mut cx = Context::from_waker(Waker::noop());
    let Poll::Ready(ready) = svc.poll_ready(&mut cx) else {
        panic!("not ready")
    };
    ready.ok().expect("ready");
    let mut future = pin!(svc.call(request));
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("pending"),
    }
}

/// Allocations made by `calls` runs of `f`, after one run to warm up.
///
/// The counter is process-wide, and the test harness's own thread allocates now and then, so
/// the count is taken over several windows and the smallest kept: an allocation made by every
/// call shows in every window, a stray one in only one.
fn allocations(calls: usize, mut f: impl FnMut()) -> usize {
    const WINDOWS: usize = 5;
    f();
    (0..WINDOWS)
        .map(|_| {
            let region = Region::new(GLOBAL);
            for _ in 0..calls / WINDOWS {
                f();
            }
            region.change().allocations * WINDOWS
        })
        .min()
        .expect("several windows")
}

fn request(method: Method) -> Request<()> {
    let mut request = Request::new(());
    *request.method_mut() = method;
    request
}

/// A GET with one header, as real requests have: its header map has its table.
fn with_host() -> Request<()> {
    let mut request = request(Method::GET);
    request
        .headers_mut()
        .insert(http::header::HOST, HeaderValue::from_static("example.com"));
    request
}

#[test]
fn http_layers_allocate_nothing_per_call_but_a_written_header() {
    const CALLS: usize = 1000;

    // The breaker with the status classifier: failures and successes alike.
    let breaker = CircuitBreakerLayer::builder()
        .failure_rate(1.0, 1000)
        .min_calls(1_000_000)
        .classifier(StatusClassifier::default())
        .build()
        .unwrap();
    for status in [
        StatusCode::OK,
        StatusCode::BAD_GATEWAY,
        StatusCode::NOT_FOUND,
    ] {
        let mut svc = breaker.layer(Ready(status));
        let n = allocations(CALLS, || {
            call_once(&mut svc, request(Method::GET)).unwrap();
        });
        assert_eq!(n, 0, "breaker, {status}");
    }

    // Retry with the HTTP policy and the idempotency cloner, on success: a GET is copied for
    // a possible retry (a bare request's copy allocates nothing), a POST is not copied.
    let retry = RetryLayer::builder()
        .policy(HttpRetryPolicy::default())
        .clone_requests_with(IdempotentRequests::default())
        .without_budget()
        .build()
        .unwrap();
    let mut svc = retry.layer(Ready(StatusCode::OK));
    for method in [Method::GET, Method::POST] {
        let n = allocations(CALLS, || {
            call_once(&mut svc, request(method.clone())).unwrap();
        });
        assert_eq!(n, 0, "retry, {method}");
    }

    // Deadline propagation: nothing without a deadline; with one, the header's value (and a
    // table for the header map, if the request had no header yet).
    let mut svc = PropagateDeadlineLayer::new().layer(Ready(StatusCode::OK));
    let n = allocations(CALLS, || {
        call_once(&mut svc, request(Method::GET)).unwrap();
    });
    assert_eq!(n, 0, "propagate, no deadline");
    let at = clock::now() + Duration::from_secs(60);
    let n = allocations(CALLS, || {
        deadline::sync_scope(at, || call_once(&mut svc, request(Method::GET))).unwrap();
    });
    assert_eq!(
        n,
        3 * CALLS,
        "propagate, deadline, a request without headers"
    );
    let mut outbound: Vec<Request<()>> = (0..=CALLS).map(|_| with_host()).collect();
    let n = allocations(CALLS, || {
        let request = outbound.pop().expect("one per call");
        deadline::sync_scope(at, || call_once(&mut svc, request)).unwrap();
    });
    assert_eq!(n, CALLS, "propagate, deadline: one for the header's value");

    // The server side: reading the header and scoping the deadline allocate nothing.
    let mut svc = AcceptDeadlineLayer::new().layer(Ready(StatusCode::OK));
    // Requests with the header are built before counting: building one allocates its map.
    let mut inbound: Vec<Request<()>> = (0..=CALLS)
        .map(|_| {
            let mut request = request(Method::GET);
            request
                .headers_mut()
                .insert("grpc-timeout", HeaderValue::from_static("250m"));
            request
        })
        .collect();
    let n = allocations(CALLS, || {
        let request = inbound.pop().expect("one per call");
        let response = call_once(&mut svc, request).unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    });
    assert_eq!(n, 0, "accept, with a header");
}
