//! Per-call cost of the load-shedding layer, side by side in one run with a bare service and
//! with tower's way to reject instead of wait, `ServiceBuilder::new().load_shed()
//! .concurrency_limit(n)`.
//!
//! `cargo bench --bench load_shed`. One call is `poll_ready`, then `call`, then polls with a
//! no-op waker until the response is ready, inside an entered tokio runtime that is never
//! driven. The inner service answers every `u64` request at once and never fails, so every
//! error a layer returns is its rejection. Services are built once, outside the timed loop.
//!
//! tower's stack is `tower::load_shed::LoadShed<tower::limit::ConcurrencyLimit<S>>`:
//! `ConcurrencyLimit` takes a semaphore permit in `poll_ready` (and reports `Pending` when
//! none is left), `call` moves the permit into the response future, which gives it back when
//! dropped; `LoadShed` always reports ready and, when its inner service was not, answers the
//! call with tower's zero-sized `Overloaded` (boxing it allocates nothing). firebreak's is
//! `LoadShedLayer::builder().max_concurrency(n).build()`: `call` takes a slot with one
//! compare-and-swap or answers with its boxed `Overloaded` (one allocation).
//!
//! - `admitted`: every call is admitted and succeeds at once; limit 64, never reached (each
//!   call gives its slot back before the next starts). `firebreak_throttle` is the
//!   client-side `ThrottleLayer` over the same service, which accepts everything: the cost of
//!   counting and checking the rejection probability on a request that is sent.
//! - `rejected`: limit 1, taken by one call whose response future is kept alive, never
//!   polled, outside the timed loop (for tower: a `poll_ready` that took the permit, then a
//!   `call` that moved it into the kept future); every timed call is rejected. The errors are
//!   counted and checked against the number of timed calls after the run, and the first
//!   rejection is checked to be the layer's `Overloaded`. tower's `poll_ready` on a full
//!   semaphore re-polls the one queued acquire future it keeps (boxed on the first miss,
//!   before the timed loop).
//! - `firebreak_aimd`, `firebreak_gradient2`, `firebreak_vegas`, `firebreak_sla_guard` (in
//!   `admitted` and, the first two, in `shed_contended`): the same layer with an adaptive limit
//!   starting at 64, default 100 ms sampling window. Each admitted call reads the clock twice
//!   and adds to the window's counters; about once per 100 ms one call folds the window. The
//!   calls in flight never reach half the limit, so the app-limited guard keeps it at 64
//!   (checked after the run).
//! - `firebreak_queue` (in `admitted`): the fixed limit of 64 with a wait queue (16 places,
//!   LIFO) that nobody waits in: `poll_ready` takes the slot, `call` moves it into the
//!   response future.
//! - `shed_contended/1_thread` and `shed_contended/2_threads`: all calls admitted (limit 64); each
//!   thread has its own clone of one shared service (`bare`: of the inner service), so the
//!   threads share one limit (tower: one semaphore; firebreak: one counter). The time is wall
//!   time over all threads' calls divided by the number of calls, so `1_thread / 2_threads`
//!   is the throughput gained by the second thread (2 at best, given two idle cores).

use std::hint::black_box;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

mod common;
use common::{contended, one_call};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, ServiceBuilder};
use tower_firebreak::error::BoxError;
use tower_firebreak::load_shed::{
    Aimd, Gradient2, Limit, LoadShedLayer, Overloaded, QueueOrder, SlaGuard, ThrottleLayer, Vegas,
};

/// The request every call sends.
const REQUEST: u64 = 1;
/// The concurrency limit of `admitted` and `shed_contended`: never reached.
const ROOMY_LIMIT: usize = 64;

/// Answers every request at once with itself. Zero-sized, so cloning it costs nothing.
#[derive(Debug, Clone, Copy)]
struct Inner;

impl Service<u64> for Inner {
    type Response = u64;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u64, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u64) -> Self::Future {
        std::future::ready(Ok(request))
    }
}

/// `poll_ready` until ready, then `call`; the response future is returned unpolled, so it
/// keeps whatever slot or permit the call took.
fn call_and_hold<S>(svc: &mut S) -> S::Future
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let ready = loop {
        if let Poll::Ready(ready) = svc.poll_ready(&mut cx) {
            break ready;
        }
    };
    ready.expect("the first call is admitted");
    svc.call(REQUEST)
}

// ---- The layers under test ----

/// tower's rejecting limit: `LoadShed` over `ConcurrencyLimit`.
fn tower_load_shed<S>(
    inner: S,
    limit: usize,
) -> tower::load_shed::LoadShed<tower::limit::ConcurrencyLimit<S>> {
    ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(limit)
        .service(inner)
}

fn firebreak_layer(limit: usize) -> LoadShedLayer {
    LoadShedLayer::builder()
        .max_concurrency(limit as u64)
        .build()
        .expect("valid")
}

/// The adaptive limits, each starting at `limit` (never reached: the calls in flight never
/// reach half of it, so the app-limited guard keeps it there), with the default 100 ms
/// sampling window.
fn adaptive_layers(limit: usize) -> [(&'static str, LoadShedLayer); 4] {
    let limit = limit as u64;
    let layers: [(&'static str, Limit); 4] = [
        ("firebreak_aimd", Aimd::default().initial(limit).into()),
        (
            "firebreak_gradient2",
            Gradient2::default().initial(limit).into(),
        ),
        ("firebreak_vegas", Vegas::default().initial(limit).into()),
        (
            "firebreak_sla_guard",
            SlaGuard::new(Duration::from_millis(100))
                .initial(limit)
                .into(),
        ),
    ];
    layers.map(|(name, limit)| {
        (
            name,
            LoadShedLayer::builder()
                .limit(limit)
                .build()
                .expect("valid"),
        )
    })
}

// ---- Groups ----

/// Times `svc` with `b.iter` after checking that a call succeeds.
fn calls<S>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut svc: S)
where
    S: Service<u64, Response = u64>,
{
    assert!(one_call(&mut svc, REQUEST).is_ok(), "{name}");
    group.bench_function(name, |b| b.iter(|| one_call(&mut svc, REQUEST)));
}

fn bench_admitted(c: &mut Criterion) {
    let mut group = c.benchmark_group("admitted");
    calls(&mut group, "bare", Inner);
    calls(
        &mut group,
        "tower_load_shed_concurrency_limit",
        tower_load_shed(Inner, ROOMY_LIMIT),
    );
    let layer = firebreak_layer(ROOMY_LIMIT);
    calls(&mut group, "firebreak", layer.layer(Inner));
    // With a wait queue nobody waits in: `poll_ready` reserves the slot, `call` uses it.
    let queued = LoadShedLayer::builder()
        .max_concurrency(ROOMY_LIMIT as u64)
        .queue(16, Duration::from_millis(10), QueueOrder::Lifo)
        .build()
        .expect("valid");
    calls(&mut group, "firebreak_queue", queued.layer(Inner));
    // Adaptive limits: two clock reads and the window's counters per call.
    let adaptive = adaptive_layers(ROOMY_LIMIT);
    for (name, adaptive) in &adaptive {
        calls(&mut group, name, adaptive.layer(Inner));
    }
    // Client-side throttling over a dependency that accepts everything: the cost of the
    // counting and the probability check on a request that is sent.
    let throttle = ThrottleLayer::builder()
        .seed(1)
        .build()
        .expect("valid settings");
    calls(&mut group, "firebreak_throttle", throttle.layer(Inner));
    group.finish();
    assert_eq!(layer.in_flight(), 0, "every slot came back");
    for (name, adaptive) in &adaptive {
        assert_eq!(adaptive.in_flight(), 0, "{name}: every slot came back");
        assert_eq!(
            adaptive.limit(),
            ROOMY_LIMIT as u64,
            "{name}: the limit held"
        );
    }
    assert_eq!(throttle.rejection_probability(), 0.0);
}

/// Times calls to `svc`, whose limit is full, counting the errors. Checks first that a call
/// is rejected with an `E`, and after the run that every timed call was rejected.
fn rejections<S, E>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, svc: &mut S)
where
    S: Service<u64, Response = u64, Error = BoxError>,
    E: std::error::Error + 'static,
{
    let err = one_call(svc, REQUEST).expect_err("the limit is full");
    assert!(err.is::<E>(), "{name}: {err}");
    let (mut timed_calls, mut rejected) = (0_u64, 0_u64);
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            timed_calls += iters;
            let start = Instant::now();
            for _ in 0..iters {
                rejected += u64::from(black_box(one_call(svc, REQUEST)).is_err());
            }
            start.elapsed()
        })
    });
    assert_eq!(
        rejected, timed_calls,
        "{name}: every timed call is rejected"
    );
}

fn bench_rejected(c: &mut Criterion) {
    let mut group = c.benchmark_group("rejected");

    let mut tower_svc = tower_load_shed(Inner, 1);
    let tower_held = call_and_hold(&mut tower_svc);
    rejections::<_, tower::load_shed::error::Overloaded>(
        &mut group,
        "tower_load_shed_concurrency_limit",
        &mut tower_svc,
    );

    let layer = firebreak_layer(1);
    let mut firebreak_svc = layer.layer(Inner);
    let firebreak_held = call_and_hold(&mut firebreak_svc);
    assert_eq!(layer.in_flight(), 1, "the held call has the one slot");
    rejections::<_, Overloaded>(&mut group, "firebreak", &mut firebreak_svc);
    group.finish();

    drop((tower_held, firebreak_held));
    assert_eq!(layer.in_flight(), 0, "the held slot came back");
    assert!(
        one_call(&mut tower_svc, REQUEST).is_ok(),
        "tower's permit came back"
    );
}

fn bench_contended(c: &mut Criterion, runtime: &tokio::runtime::Handle) {
    for (group_name, threads) in [
        ("shed_contended/1_thread", 1),
        ("shed_contended/2_threads", 2),
    ] {
        let mut group = c.benchmark_group(group_name);
        contended(&mut group, "bare", &Inner, REQUEST, threads, runtime);
        contended(
            &mut group,
            "tower_load_shed_concurrency_limit",
            &tower_load_shed(Inner, ROOMY_LIMIT),
            REQUEST,
            threads,
            runtime,
        );
        let layer = firebreak_layer(ROOMY_LIMIT);
        contended(
            &mut group,
            "firebreak",
            &layer.layer(Inner),
            REQUEST,
            threads,
            runtime,
        );
        let [(name, aimd), (gradient_name, gradient), ..] = adaptive_layers(ROOMY_LIMIT);
        contended(
            &mut group,
            name,
            &aimd.layer(Inner),
            REQUEST,
            threads,
            runtime,
        );
        contended(
            &mut group,
            gradient_name,
            &gradient.layer(Inner),
            REQUEST,
            threads,
            runtime,
        );
        group.finish();
        assert_eq!(layer.in_flight(), 0, "every slot came back");
        assert_eq!(
            aimd.in_flight() + gradient.in_flight(),
            0,
            "every slot came back"
        );
    }
}

fn benches(c: &mut Criterion) {
    // Entered, never driven: no call here waits, and neither layer needs a timer.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _context = runtime.enter();
    bench_admitted(c);
    bench_rejected(c);
    bench_contended(c, runtime.handle());
}

criterion_group! {
    name = load_shed;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(load_shed);
