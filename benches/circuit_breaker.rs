//! Per-call cost of the circuit breaker, side by side in one run with a bare service and with
//! the breakers a user would otherwise pick: `tower-resilience-circuitbreaker` (a tower layer),
//! `failsafe` (its futures API) and `recloser` (its async API).
//!
//! `cargo bench --bench circuit_breaker`. One call is `poll_ready` (tower's contract, and
//! where `tower-resilience` decides to reject), then `call`, then polls with a no-op waker
//! until the response is ready, inside an entered tokio runtime that is never driven. Unless
//! a group says otherwise, the inner service answers at once and fails exactly the requests
//! `n` with `n % 10 == 9`, with a zero-sized error, so that boxing an error allocates
//! nothing. Services are built once, outside the timed loop.
//!
//! `tower-resilience` is used through its `CircuitBreakerLayer`. failsafe and recloser have
//! no tower layer, so a small `Service` adapter, as a user would write, wraps each response
//! future in the breaker's future (`StateMachine::call`, `AsyncRecloser::call`).
//!
//! - `closed_success`: every call succeeds. Each breaker with its count (or rate) model and,
//!   where it has one, its consecutive-failures model; `failsafe_default` is failsafe's
//!   default policy (EWMA success rate over 30 s, or 5 failures in a row).
//! - `closed_10pct_failures`: every 10th call fails; thresholds (50% of 100 calls after 20,
//!   or 5 in a row) keep every breaker closed, which is checked after each run.
//! - `open_rejection`: the breaker was tripped by failures and stays open for an hour; each
//!   call is rejected. `firebreak_forced_open` is held open by `Handle::force_open`. `bare` is
//!   a successful call to the service itself, for scale. The failure policy plays no part in
//!   a rejection, so failsafe appears once.
//! - `half_open/probe`: a probe that is admitted and succeeds while the breaker stays
//!   half-open (1,000 probe slots; batches of 990 probes, and the breaker is sent back
//!   through open into half-open outside the timer between batches). The admission and
//!   completion cost of one probe, without a state change. failsafe cannot express it: it
//!   admits any number of calls in half-open and closes on the first success.
//! - `half_open/closing_probe`: the probe that closes the breaker. A pool of 100 breakers is
//!   tripped and brought to the end of their open period outside the timer; the timer then
//!   covers one probe per breaker, so this includes the close (and, for firebreak, a read of
//!   the paused clock when it closes). The peers move from open to half-open lazily, in the
//!   first call after the open period (set to zero, so the probe finds it over), so their
//!   figure includes that transition; firebreak makes it in the timer task that ends the
//!   open period, outside the timed call. recloser judges its half-open window only on an
//!   outcome that arrives once the window is already full, so even with a window of one it
//!   closes on the second probe: its iteration is those two calls.
//! - `contended/1_thread` and `contended/2_threads`: all calls succeed; each thread has its
//!   own clone of one shared breaker (`bare`: of the service). The time is wall time over all
//!   threads' calls divided by the number of calls, so `1_thread / 2_threads` is the
//!   throughput gained by the second thread (2 at best, given two idle cores).
//! - `time_window_slow_calls/ready` and `time_window_slow_calls/pending_once`: all calls
//!   succeed through a breaker with a time window (1 s in 10 buckets) and, in the
//!   `_slow_calls` rows, slow-call detection (trip at 50% of calls taking 1 s or more). In
//!   `ready` the response is ready on its first poll; in `pending_once` it is pending once,
//!   so the call has a duration to measure. firebreak's bucket timer task is spawned on the
//!   entered runtime but never runs: the timed path is the call path, not the task's wake per
//!   bucket. Among the peers only `tower-resilience` has a time window and slow calls; it
//!   timestamps every call whatever its settings, keeps one record per call in its window and
//!   rescans them all on every call, so its cost grows with the calls the window holds (here,
//!   whatever one second of this closed loop adds up to).
//!
//! With `--features metrics` (and not otherwise: plain `cargo bench` measures the default
//! build) the layers hold metrics handles; with `FIREBREAK_BENCH_METRICS=1` in the
//! environment as well, a global recorder whose counters and gauges are plain atomics is
//! installed first, so the firebreak rows include the metrics each call records (one
//! increment of `firebreak_circuit_breaker_calls_total` per call that completes).
//!
//! The half-open groups run last, on a runtime with paused time (to end open periods without
//! waiting): once any runtime pauses time, every later read of tokio's clock in the process
//! goes through the paused-clock path, which the other groups must not measure.

use std::fmt;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

mod common;
use common::contended;

use criterion::measurement::WallTime;
use criterion::{Bencher, BenchmarkGroup, Criterion, criterion_group, criterion_main};
use failsafe::futures::CircuitBreaker as _;
use failsafe::{FailurePolicy, backoff, failure_policy};
use tokio::runtime::Runtime;
use tower::{Layer, Service};
use tower_firebreak::circuit_breaker::{
    CircuitBreaker, CircuitBreakerLayer, CircuitBreakerLayerBuilder, Handle, State,
};
use tower_firebreak::error::BoxError;
use tower_resilience_circuitbreaker as resilience;

/// A request the inner service answers with success.
const SUCCEEDS: u64 = 1;
/// A request the inner service answers with [`Failed`].
const FAILS: u64 = 9;
/// The open period of every breaker that is tripped to be measured while open.
const AN_HOUR: Duration = Duration::from_secs(3600);

/// The inner service's error: zero-sized, so a breaker that boxes it does not allocate.
#[derive(Debug, Clone, Copy)]
struct Failed;

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the dependency failed")
    }
}

impl std::error::Error for Failed {}

/// Answers at once; fails the requests `n` with `n % 10 == 9`.
#[derive(Debug, Clone, Copy)]
struct Inner;

impl Service<u64> for Inner {
    type Response = u64;
    type Error = Failed;
    type Future = std::future::Ready<Result<u64, Failed>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u64) -> Self::Future {
        std::future::ready(if request % 10 == 9 {
            Err(Failed)
        } else {
            Ok(request)
        })
    }
}

/// failsafe has no tower layer; this is the adapter a user writes: each response future is
/// wrapped in the breaker's future, which asks for admission on its first poll.
struct Failsafe<P> {
    breaker: failsafe::StateMachine<P, ()>,
    inner: Inner,
}

/// Clones share the breaker (the policy need not be `Clone`).
impl<P> Clone for Failsafe<P> {
    fn clone(&self) -> Self {
        Failsafe {
            breaker: self.breaker.clone(),
            inner: self.inner,
        }
    }
}

impl<P: FailurePolicy + Send + Sync> Service<u64> for Failsafe<P> {
    type Response = u64;
    type Error = failsafe::Error<Failed>;
    type Future =
        failsafe::futures::ResponseFuture<<Inner as Service<u64>>::Future, P, (), failsafe::Any>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(failsafe::Error::Inner)
    }

    fn call(&mut self, request: u64) -> Self::Future {
        self.breaker.call(self.inner.call(request))
    }
}

/// The same adapter for recloser's `AsyncRecloser`.
#[derive(Clone)]
struct Recloser {
    breaker: recloser::AsyncRecloser,
    inner: Inner,
}

impl Service<u64> for Recloser {
    type Response = u64;
    type Error = recloser::Error<Failed>;
    type Future = recloser::RecloserFuture<<Inner as Service<u64>>::Future, recloser::AnyError>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(recloser::Error::Inner)
    }

    fn call(&mut self, request: u64) -> Self::Future {
        self.breaker.call(self.inner.call(request))
    }
}

/// One whole call ([`common::one_call`]); whether it succeeded.
#[inline(always)]
fn one_call<S>(svc: &mut S, request: u64) -> bool
where
    S: Service<u64, Response = u64>,
{
    common::one_call(svc, request).is_ok()
}

// ---- The breakers under test ----

fn firebreak(builder: CircuitBreakerLayerBuilder) -> CircuitBreaker<Inner> {
    firebreak_over(builder, Inner)
}

fn firebreak_over<S>(builder: CircuitBreakerLayerBuilder, inner: S) -> CircuitBreaker<S> {
    builder.jitter(0.0).build().expect("valid").layer(inner)
}

/// Trips at 50% failures over the last 100 calls, after 20 calls (firebreak's defaults).
fn firebreak_rate() -> CircuitBreaker<Inner> {
    firebreak(
        CircuitBreakerLayer::builder()
            .failure_rate(0.5, 100)
            .min_calls(20)
            .open_duration(AN_HOUR),
    )
}

fn firebreak_consecutive() -> CircuitBreaker<Inner> {
    firebreak(
        CircuitBreakerLayer::builder()
            .consecutive_failures(5)
            .open_duration(AN_HOUR),
    )
}

type Resilience = resilience::CircuitBreaker<Inner, resilience::DefaultClassifier>;

fn resilience(builder: resilience::CircuitBreakerConfigBuilder) -> Resilience {
    resilience_over(builder, Inner)
}

fn resilience_over<S>(
    builder: resilience::CircuitBreakerConfigBuilder,
    inner: S,
) -> resilience::CircuitBreaker<S, resilience::DefaultClassifier> {
    builder.build().expect("valid").layer(inner)
}

/// Trips at 50% failures once 100 calls were seen (its window must be full), the nearest
/// setting to firebreak's; it counts every call since it last closed.
fn resilience_rate() -> Resilience {
    resilience(
        resilience::CircuitBreakerLayer::builder()
            .failure_rate_threshold(0.5)
            .sliding_window_size(100)
            .minimum_number_of_calls(20)
            .wait_duration_in_open(AN_HOUR),
    )
}

fn resilience_consecutive() -> Resilience {
    resilience(
        resilience::CircuitBreakerLayer::builder()
            .consecutive_failures(5)
            .wait_duration_in_open(AN_HOUR),
    )
}

type FailsafeConsecutive = Failsafe<failure_policy::ConsecutiveFailures<backoff::Constant>>;

fn failsafe_consecutive(failures: u32, open: Duration) -> FailsafeConsecutive {
    let policy = failure_policy::consecutive_failures(failures, backoff::constant(open));
    Failsafe {
        breaker: failsafe::Config::new().failure_policy(policy).build(),
        inner: Inner,
    }
}

/// failsafe's default policy: an EWMA success rate of 80% over 30 s (after 5 requests), or 5
/// failures in a row; jittered open periods from 10 s up to 300 s.
fn failsafe_default() -> impl Service<u64, Response = u64> + Clone + Send {
    Failsafe {
        breaker: failsafe::Config::new().build(),
        inner: Inner,
    }
}

fn recloser(builder: recloser::RecloserBuilder) -> Recloser {
    Recloser {
        breaker: recloser::AsyncRecloser::from(builder.build()),
        inner: Inner,
    }
}

/// Trips at 50% failures over the last 100 calls (it waits for 100 calls, like a full window).
fn recloser_rate() -> Recloser {
    recloser(
        recloser::Recloser::custom()
            .error_rate(0.5)
            .closed_len(100)
            .open_wait(AN_HOUR),
    )
}

// ---- Closed and open ----

#[derive(Clone, Copy)]
enum Traffic {
    AllSucceed,
    EveryTenthFails,
}

fn closed<S>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut svc: S, traffic: Traffic)
where
    S: Service<u64, Response = u64>,
{
    match traffic {
        Traffic::AllSucceed => group.bench_function(name, |b| {
            b.iter(|| one_call(&mut svc, SUCCEEDS));
        }),
        Traffic::EveryTenthFails => {
            // Starts at 1, so the first call succeeds (failsafe's EWMA starts from it).
            let mut request = 0_u64;
            group.bench_function(name, |b| {
                b.iter(|| {
                    request += 1;
                    one_call(&mut svc, request)
                });
            })
        }
    };
    assert!(
        one_call(&mut svc, SUCCEEDS),
        "{name}: the breaker must still be closed"
    );
}

fn bench_closed(c: &mut Criterion, group_name: &str, traffic: Traffic) {
    let mut group = c.benchmark_group(group_name);
    closed(&mut group, "bare", Inner, traffic);
    closed(&mut group, "firebreak_rate", firebreak_rate(), traffic);
    closed(
        &mut group,
        "firebreak_consecutive",
        firebreak_consecutive(),
        traffic,
    );
    closed(
        &mut group,
        "tower_resilience_rate",
        resilience_rate(),
        traffic,
    );
    closed(
        &mut group,
        "tower_resilience_consecutive",
        resilience_consecutive(),
        traffic,
    );
    closed(
        &mut group,
        "failsafe_consecutive",
        failsafe_consecutive(5, AN_HOUR),
        traffic,
    );
    // Built here, not earlier: its success-rate half only ever trips once 30 s have passed
    // since it was built, which a slow run of the earlier rows could otherwise reach.
    closed(&mut group, "failsafe_default", failsafe_default(), traffic);
    closed(&mut group, "recloser_rate", recloser_rate(), traffic);
    group.finish();
}

fn rejected<S>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut svc: S)
where
    S: Service<u64, Response = u64>,
{
    assert!(!one_call(&mut svc, SUCCEEDS), "{name}: must be open");
    group.bench_function(name, |b| b.iter(|| one_call(&mut svc, SUCCEEDS)));
    assert!(!one_call(&mut svc, SUCCEEDS), "{name}: must still be open");
}

/// Enough failures in a row to trip any of the breakers above (recloser needs 101).
fn trip<S: Service<u64, Response = u64>>(mut svc: S) -> S {
    for _ in 0..200 {
        one_call(&mut svc, FAILS);
    }
    svc
}

fn bench_open(c: &mut Criterion) {
    let mut group = c.benchmark_group("open_rejection");
    group.bench_function("bare", |b| b.iter(|| one_call(&mut Inner, SUCCEEDS)));
    // Tripping arms a one-hour timer on the entered runtime, which is never driven.
    rejected(&mut group, "firebreak_tripped", trip(firebreak_rate()));
    let forced = firebreak_rate();
    forced.handle().force_open();
    rejected(&mut group, "firebreak_forced_open", forced);
    rejected(&mut group, "tower_resilience", trip(resilience_rate()));
    rejected(
        &mut group,
        "failsafe",
        trip(failsafe_consecutive(5, AN_HOUR)),
    );
    rejected(&mut group, "recloser", trip(recloser_rate()));
    // The floor of a rejection that returns a boxed error: allocating and freeing a 24-byte
    // error (the size of `CircuitOpen`), nothing else.
    group.bench_function("box_24_byte_error_alone", |b| {
        b.iter(|| {
            let error: BoxError = Box::new(TwentyFourBytes(black_box([1, 2, 3])));
            drop(black_box(error));
        })
    });
    group.finish();
}

/// An error the size of `CircuitOpen`, for the allocation floor in `open_rejection`.
#[derive(Debug)]
struct TwentyFourBytes([u64; 3]);

impl fmt::Display for TwentyFourBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::error::Error for TwentyFourBytes {}

// ---- Contended ----

fn bench_contended(c: &mut Criterion, runtime: &tokio::runtime::Handle) {
    for (group_name, threads) in [("contended/1_thread", 1), ("contended/2_threads", 2)] {
        let mut group = c.benchmark_group(group_name);
        contended(&mut group, "bare", &Inner, SUCCEEDS, threads, runtime);
        contended(
            &mut group,
            "firebreak_rate",
            &firebreak_rate(),
            SUCCEEDS,
            threads,
            runtime,
        );
        contended(
            &mut group,
            "firebreak_consecutive",
            &firebreak_consecutive(),
            SUCCEEDS,
            threads,
            runtime,
        );
        contended(
            &mut group,
            "tower_resilience_rate",
            &resilience_rate(),
            SUCCEEDS,
            threads,
            runtime,
        );
        contended(
            &mut group,
            "failsafe_consecutive",
            &failsafe_consecutive(5, AN_HOUR),
            SUCCEEDS,
            threads,
            runtime,
        );
        contended(
            &mut group,
            "failsafe_default",
            &failsafe_default(),
            SUCCEEDS,
            threads,
            runtime,
        );
        contended(
            &mut group,
            "recloser_rate",
            &recloser_rate(),
            SUCCEEDS,
            threads,
            runtime,
        );
        group.finish();
    }
}

// ---- Time window and slow calls ----

/// Pending on its first poll (waking itself), then a success: a response that waited.
struct PendingOnce(u64, bool);

impl Future for PendingOnce {
    type Output = Result<u64, Failed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.1 {
            return Poll::Ready(Ok(self.0));
        }
        self.1 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[derive(Debug, Clone, Copy)]
struct PendingOnceService;

impl Service<u64> for PendingOnceService {
    type Response = u64;
    type Error = Failed;
    type Future = PendingOnce;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u64) -> PendingOnce {
        PendingOnce(request, false)
    }
}

fn bench_time_window<S>(c: &mut Criterion, group_name: &str, inner: S)
where
    S: Service<u64, Response = u64, Error = Failed> + Clone + Send + 'static,
    S::Future: Send,
{
    const WINDOW: Duration = Duration::from_secs(1);
    const BUCKETS: u32 = 10;
    const SLOW: Duration = Duration::from_secs(1);
    let mut group = c.benchmark_group(group_name);
    closed(&mut group, "bare", inner.clone(), Traffic::AllSucceed);

    // The bucket timer task is spawned on the entered runtime, which never runs it: what is
    // timed is the call path (one load finds the bucket), not the task's wake per bucket.
    let time_window = || {
        CircuitBreakerLayer::builder()
            .time_window(0.5, WINDOW, BUCKETS)
            .min_calls(20)
            .open_duration(AN_HOUR)
    };
    closed(
        &mut group,
        "firebreak_time_window",
        firebreak_over(time_window(), inner.clone()),
        Traffic::AllSucceed,
    );
    closed(
        &mut group,
        "firebreak_time_window_slow_calls",
        firebreak_over(time_window().slow_calls(SLOW, 0.5), inner.clone()),
        Traffic::AllSucceed,
    );

    let time_window = || {
        resilience::CircuitBreakerLayer::builder()
            .failure_rate_threshold(0.5)
            .sliding_window_type(resilience::SlidingWindowType::TimeBased)
            .sliding_window_duration(WINDOW)
            .minimum_number_of_calls(20)
            .wait_duration_in_open(AN_HOUR)
    };
    closed(
        &mut group,
        "tower_resilience_time_window",
        resilience_over(time_window(), inner.clone()),
        Traffic::AllSucceed,
    );
    closed(
        &mut group,
        "tower_resilience_time_window_slow_calls",
        resilience_over(
            time_window()
                .slow_call_duration_threshold(SLOW)
                .slow_call_rate_threshold(0.5),
            inner,
        ),
        Traffic::AllSucceed,
    );
    group.finish();
}

// ---- Half-open ----

/// Probe slots of the breakers measured in `half_open/probe`, and the probes timed per visit
/// to half-open: fewer than the slots, so that no timed probe closes the breaker (the peers
/// spend one untimed call on entering half-open).
const PROBE_SLOTS: u32 = 1000;
const PROBES_PER_VISIT: u64 = 990;
/// Breakers in the `half_open/closing_probe` pool.
const POOL: usize = 100;
/// The open period of firebreak in the half-open groups, ended by advancing paused time.
const OPEN: Duration = Duration::from_secs(1);

/// Ends the open period of every breaker in `handles`: advances paused time past it and lets
/// the runtime run the timer tasks that move them to half-open.
fn end_open_period(runtime: &Runtime, handles: &[Handle]) {
    runtime.block_on(async {
        // Timers fire on millisecond ticks, so go a tick past the end.
        tokio::time::advance(OPEN + Duration::from_millis(1)).await;
        for _ in 0..10_000 {
            if handles.iter().all(|h| h.state() == State::HalfOpen) {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the open timers did not fire");
    });
}

/// Times successful probes in batches of [`PROBES_PER_VISIT`]; before each batch,
/// `enter_half_open` (untimed) brings `svc` to half-open with enough slots left.
fn probes<S>(b: &mut Bencher<'_>, svc: &mut S, mut enter_half_open: impl FnMut(&mut S))
where
    S: Service<u64, Response = u64>,
{
    b.iter_custom(|iters| {
        let mut elapsed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let batch = left.min(PROBES_PER_VISIT);
            enter_half_open(svc);
            let mut admitted = 0_u64;
            let start = Instant::now();
            for _ in 0..batch {
                admitted += u64::from(one_call(svc, SUCCEEDS));
            }
            elapsed += start.elapsed();
            assert_eq!(admitted, batch, "every probe is admitted and succeeds");
            left -= batch;
        }
        elapsed
    });
}

/// Times the probes that close each breaker of `pool` (`probes_to_close` calls each); before
/// each pass, `reopen` (untimed) trips the breakers and brings them to the end of their open
/// period.
fn closing_probes<S>(
    b: &mut Bencher<'_>,
    pool: &mut [S],
    probes_to_close: u64,
    mut reopen: impl FnMut(&mut [S]),
) where
    S: Service<u64, Response = u64>,
{
    b.iter_custom(|iters| {
        let mut elapsed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let breakers = &mut pool[..left.min(POOL as u64) as usize];
            reopen(breakers);
            let mut admitted = 0_u64;
            let start = Instant::now();
            for svc in breakers.iter_mut() {
                for _ in 0..probes_to_close {
                    admitted += u64::from(one_call(svc, SUCCEEDS));
                }
            }
            elapsed += start.elapsed();
            let calls = breakers.len() as u64 * probes_to_close;
            assert_eq!(admitted, calls, "every probe is admitted and succeeds");
            left -= breakers.len() as u64;
        }
        elapsed
    });
}

fn firebreak_half_open(probes: u32) -> CircuitBreaker<Inner> {
    firebreak(
        CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .open_duration(OPEN)
            .half_open_max_wait(OPEN)
            .half_open_probes(probes),
    )
}

fn resilience_half_open(probes: usize) -> Resilience {
    resilience(
        resilience::CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .wait_duration_in_open(Duration::ZERO)
            .permitted_calls_in_half_open(probes),
    )
}

/// Trips on a full window of one failure (2 calls); half-open after no wait.
fn recloser_half_open(probes: usize) -> Recloser {
    recloser(
        recloser::Recloser::custom()
            .error_rate(0.5)
            .closed_len(1)
            .half_open_len(probes)
            .open_wait(Duration::ZERO),
    )
}

fn bench_half_open(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let _context = runtime.enter();

    let mut group = c.benchmark_group("half_open/probe");
    let mut svc = firebreak_half_open(PROBE_SLOTS);
    let handle = [svc.handle()];
    group.bench_function("firebreak", |b| {
        probes(b, &mut svc, |svc| {
            // Trips a closed breaker; a failed probe reopens a half-open one.
            assert!(!one_call(svc, FAILS));
            end_open_period(&runtime, &handle);
        })
    });
    let mut svc = resilience_half_open(PROBE_SLOTS as usize);
    group.bench_function("tower_resilience", |b| {
        probes(b, &mut svc, |svc| {
            assert!(!one_call(svc, FAILS));
            // Enters half-open, as the first probe.
            assert!(one_call(svc, SUCCEEDS));
            assert_eq!(svc.state_sync(), resilience::CircuitState::HalfOpen);
        })
    });
    // A half-open recloser reopens only once its window is full: build a fresh one instead.
    let mut svc = recloser_half_open(PROBE_SLOTS as usize);
    group.bench_function("recloser", |b| {
        probes(b, &mut svc, |svc| {
            *svc = recloser_half_open(PROBE_SLOTS as usize);
            assert!(!one_call(svc, FAILS));
            assert!(!one_call(svc, FAILS));
            assert!(one_call(svc, SUCCEEDS));
        })
    });
    group.finish();

    let mut group = c.benchmark_group("half_open/closing_probe");
    let mut pool: Vec<_> = (0..POOL).map(|_| firebreak_half_open(1)).collect();
    let handles: Vec<Handle> = pool.iter().map(CircuitBreaker::handle).collect();
    group.bench_function("firebreak", |b| {
        closing_probes(b, &mut pool, 1, |breakers| {
            let handles = &handles[..breakers.len()];
            for (svc, handle) in breakers.iter_mut().zip(handles) {
                assert_eq!(handle.state(), State::Closed);
                assert!(!one_call(svc, FAILS));
            }
            end_open_period(&runtime, handles);
        })
    });
    let mut pool: Vec<_> = (0..POOL).map(|_| resilience_half_open(1)).collect();
    group.bench_function("tower_resilience", |b| {
        closing_probes(b, &mut pool, 1, |breakers| {
            for svc in breakers {
                assert_eq!(svc.state_sync(), resilience::CircuitState::Closed);
                assert!(!one_call(svc, FAILS));
            }
        })
    });
    // An open period of zero: the probe, at least a microsecond later, finds it over.
    let mut pool: Vec<_> = (0..POOL)
        .map(|_| failsafe_consecutive(1, Duration::ZERO))
        .collect();
    group.bench_function("failsafe", |b| {
        closing_probes(b, &mut pool, 1, |breakers| {
            for svc in breakers {
                assert!(!one_call(svc, FAILS));
            }
        })
    });
    let mut pool: Vec<_> = (0..POOL).map(|_| recloser_half_open(1)).collect();
    group.bench_function("recloser", |b| {
        closing_probes(b, &mut pool, 2, |breakers| {
            for svc in breakers {
                assert!(!one_call(svc, FAILS));
                assert!(!one_call(svc, FAILS));
            }
        })
    });
    group.finish();
}

#[cfg(feature = "metrics")]
#[path = "../tests/support/atomics.rs"]
mod atomics;
#[cfg(feature = "metrics")]
use atomics::Atomics;

fn benches(c: &mut Criterion) {
    #[cfg(feature = "metrics")]
    if std::env::var_os("FIREBREAK_BENCH_METRICS").is_some() {
        metrics::set_global_recorder(Atomics).expect("the only recorder");
    }
    // Entered, never driven: nothing here waits for a timer (a tripped breaker's timer is
    // armed for an hour). The half-open groups use their own runtime, with paused time.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    {
        let _context = runtime.enter();
        bench_closed(c, "closed_success", Traffic::AllSucceed);
        bench_closed(c, "closed_10pct_failures", Traffic::EveryTenthFails);
        bench_open(c);
        bench_contended(c, runtime.handle());
        bench_time_window(c, "time_window_slow_calls/ready", Inner);
        bench_time_window(c, "time_window_slow_calls/pending_once", PendingOnceService);
    }
    bench_half_open(c);
}

criterion_group! {
    name = circuit_breaker;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(circuit_breaker);
