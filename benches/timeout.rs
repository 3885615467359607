//! Per-call cost of the timeout and deadline layers, side by side in one run with a bare
//! service and with `tower::timeout::Timeout`.
//!
//! `cargo bench --bench timeout`. Each iteration is one whole call: `call`, then polls with a
//! no-op waker until the response is ready. The services are built once, outside the timed
//! loop. Two inner services:
//!
//! - `ready`: the response is ready on the first poll (a cache hit, an immediate error);
//! - `pending_once`: the response is pending once, then ready, so a timeout must arm a timer.

use std::future::Future;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Service, ServiceBuilder};
use tower_firebreak::ServiceBuilderExt;
use tower_firebreak::clock;
use tower_firebreak::error::BoxError;
use tower_firebreak::timeout::deadline;

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

/// Pending on the first poll (waking itself), ready on the second.
struct PendingOnce(u64, bool);
impl Future for PendingOnce {
    type Output = Result<u64, BoxError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.1 {
            return Poll::Ready(Ok(self.0));
        }
        self.1 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[derive(Clone)]
struct PendingOnceService;
impl Service<u64> for PendingOnceService {
    type Response = u64;
    type Error = BoxError;
    type Future = PendingOnce;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, x: u64) -> Self::Future {
        PendingOnce(x, false)
    }
}

/// One whole call: `call`, then poll until ready.
#[inline(always)]
fn one_call<S>(svc: &mut S, request: u64) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut response = pin!(svc.call(black_box(request)));
    loop {
        if let Poll::Ready(result) = response.as_mut().poll(&mut cx) {
            return result.expect("the bench services never fail");
        }
    }
}

fn bench_stacks<S>(c: &mut Criterion, group_name: &str, inner: S)
where
    S: Service<u64, Response = u64, Error = BoxError> + Clone,
{
    let timeout = Duration::from_secs(1);
    let mut bare = inner.clone();
    let mut tower_timeout = tower::timeout::Timeout::new(inner.clone(), timeout);
    let mut firebreak_timeout = ServiceBuilder::new()
        .timeout_attempt(timeout)
        .expect("valid")
        .service(inner.clone());
    let mut firebreak_deadline_timeout = ServiceBuilder::new()
        .deadline(Duration::from_secs(2))
        .expect("valid")
        .timeout_attempt(timeout)
        .expect("valid")
        .service(inner);

    let mut group = c.benchmark_group(group_name);
    group.bench_function("bare", |b| b.iter(|| one_call(&mut bare, 1)));
    group.bench_function("tower_timeout", |b| {
        b.iter(|| one_call(&mut tower_timeout, 1))
    });
    group.bench_function("firebreak_timeout", |b| {
        b.iter(|| one_call(&mut firebreak_timeout, 1))
    });
    group.bench_function("firebreak_deadline_and_timeout", |b| {
        b.iter(|| one_call(&mut firebreak_deadline_timeout, 1))
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    // Timers need a runtime context; it is entered but never driven, since every response
    // completes without a timer firing (a dropped timer is removed from the wheel).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _context = runtime.enter();

    let mut group = c.benchmark_group("clock");
    group.bench_function("firebreak_clock_now", |b| b.iter(clock::now));
    group.bench_function("std_instant_now", |b| b.iter(std::time::Instant::now));
    group.finish();

    let mut group = c.benchmark_group("deadline");
    group.bench_function("current_outside_scope", |b| b.iter(deadline::current));
    let at = clock::now() + Duration::from_secs(3600);
    group.bench_function("current_inside_scope", |b| {
        deadline::sync_scope(at, || b.iter(deadline::current))
    });
    group.bench_function("sync_scope_enter_and_leave", |b| {
        b.iter(|| deadline::sync_scope(black_box(at), || black_box(1)))
    });
    group.finish();

    bench_stacks(c, "timeout/ready", Ready);
    bench_stacks(c, "timeout/pending_once", PendingOnceService);
}

criterion_group! {
    name = timeout;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(timeout);
