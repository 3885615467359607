//! Per-call cost of the retry layer, side by side in one run with a bare service and with
//! `tower::retry::Retry` under tower's `TpsBudget`.
//!
//! `cargo bench --bench retry`. One call is `poll_ready`, then `call`, then polls with a
//! no-op waker until the response is ready, inside an entered tokio runtime that is never
//! driven. The request is a `u64`, so copying it for a retry costs nothing and the figures
//! are the layers' own. The inner service answers at once, with a zero-sized error when it
//! fails (boxing it allocates nothing). Services are built once, outside the timed loop.
//!
//! tower has no ready-made policy; `TowerPolicy` is the one a user writes from the example in
//! `tower::retry::budget`'s docs: deposit into the budget on a success; on an error, retry
//! while retries are left (2, so 3 attempts, as firebreak's default) and the budget allows;
//! the retry future is `std::future::ready(())`. Its budget is `TpsBudget::new(10 s, 10, 0.1)`,
//! the settings of firebreak's default budget (10% of requests plus 10 a second, over 10 s).
//! The `_no_budget` rows drop the budget from each layer, to show what it costs.
//!
//! - `success`: every call succeeds at once. firebreak's default budget, then none.
//! - `retry_once`: every request fails its first attempt and succeeds on the retry. The copy
//!   a retry sends is marked by each layer's request cloner (`clone_requests_with` for
//!   firebreak, `Policy::clone_request` for tower), which is how the inner service tells the
//!   attempts apart. The backoff does not wait (firebreak: `Backoff::constant(Duration::ZERO)`,
//!   which arms no timer; tower: a ready future) and the budgets cannot run out (a ratio and
//!   a `retry_percent` of 1000). This is the failure path: classify, withdraw a token, copy
//!   the request, call again. `bare_two_attempts` is the two calls to the service alone.
//! - `budget_exhausted`: every attempt fails and the budget refuses the retry; the call
//!   fails with firebreak's boxed `BudgetExhausted` (one allocation) or tower's inner error.
//!   firebreak's budget has a ratio of 0.001 and no reserve, the emptiest it accepts: one
//!   request in a thousand earns a token, so that call makes one retry before it too is
//!   refused (with no backoff, so the never-driven runtime is not waited on). Every call ends
//!   in exactly one refusal, which is checked against `RetryBudget::exhausted` after the
//!   run. tower's policy deposits only on success, so its budget (`TpsBudget::new(10 s, 0,
//!   0.001)`) stays at zero and refuses every retry, also checked.
//! - `deposit_contended/1_thread` and `deposit_contended/2_threads`: all calls succeed; each
//!   thread has its own clone of one shared service (`bare`: of the inner service). The time
//!   is wall time over all threads' calls divided by the number of calls, so
//!   `1_thread / 2_threads` is the throughput gained by the second thread (2 at best, given
//!   two idle cores). tower's `TpsBudget` deposits into one shared atomic behind a mutex and a
//!   clock read; firebreak's into a counter per service clone.

use std::fmt;
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

mod common;
use common::{contended, one_call};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};
use tower::{Layer, Service};
use tower_firebreak::retry::{Backoff, BudgetExhausted, RetryBudget, RetryLayer};

/// The request every call sends.
const REQUEST: u64 = 1;
/// The bit a request cloner sets on the copy a retry sends, in `retry_once`.
const RETRY_COPY: u64 = 1 << 63;

/// The inner service's error: zero-sized, so a layer that boxes it does not allocate.
#[derive(Debug, Clone, Copy)]
struct Failed;

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the dependency failed")
    }
}

impl std::error::Error for Failed {}

/// Answers every request at once with `answer(request)`. `answer` is a function item, so the
/// service is zero-sized and cloning it costs nothing.
#[derive(Debug, Clone, Copy)]
struct Inner<F>(F);

impl<F> Service<u64> for Inner<F>
where
    F: Fn(u64) -> Result<u64, Failed>,
{
    type Response = u64;
    type Error = Failed;
    type Future = std::future::Ready<Result<u64, Failed>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Failed>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u64) -> Self::Future {
        std::future::ready((self.0)(request))
    }
}

fn succeeds(request: u64) -> Result<u64, Failed> {
    Ok(request)
}

/// Fails the first attempt; succeeds on the copy a retry sends.
fn fails_first_attempt(request: u64) -> Result<u64, Failed> {
    if request & RETRY_COPY == 0 {
        Err(Failed)
    } else {
        Ok(request)
    }
}

fn always_fails(_: u64) -> Result<u64, Failed> {
    Err(Failed)
}

/// A request cloner: a plain copy.
fn copy_request(request: &u64) -> Option<u64> {
    Some(*request)
}

/// A request cloner: a copy marked as a retry's.
fn mark_retry_copy(request: &u64) -> Option<u64> {
    Some(*request | RETRY_COPY)
}

// ---- The retry layers under test ----

/// tower's retry policy as its budget docs write one (see the module docs). Cloned by
/// `tower::retry::Retry` for each request, so `retries_left` counts that request's retries.
#[derive(Clone)]
struct TowerPolicy<C> {
    budget: Option<Arc<TpsBudget>>,
    retries_left: u32,
    clone_request: C,
}

impl<C, E> Policy<u64, u64, E> for TowerPolicy<C>
where
    C: Fn(&u64) -> Option<u64>,
{
    type Future = std::future::Ready<()>;

    fn retry(&mut self, _: &mut u64, result: &mut Result<u64, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                if let Some(budget) = &self.budget {
                    budget.deposit();
                }
                None
            }
            Err(_) => {
                if self.retries_left == 0 {
                    return None;
                }
                if let Some(budget) = &self.budget
                    && !budget.withdraw()
                {
                    return None;
                }
                self.retries_left -= 1;
                Some(std::future::ready(()))
            }
        }
    }

    fn clone_request(&mut self, request: &u64) -> Option<u64> {
        (self.clone_request)(request)
    }
}

/// `TpsBudget::new(10 s, min_per_sec, retry_percent)`, firebreak's default ttl.
fn tps_budget(min_per_sec: u32, retry_percent: f32) -> Arc<TpsBudget> {
    Arc::new(TpsBudget::new(
        Duration::from_secs(10),
        min_per_sec,
        retry_percent,
    ))
}

/// The budget matching firebreak's default: 10% of requests plus 10 a second, over 10 s.
fn tps_default() -> Arc<TpsBudget> {
    tps_budget(10, 0.1)
}

fn tower_retry<S, C>(
    inner: S,
    budget: Option<Arc<TpsBudget>>,
    clone_request: C,
) -> tower::retry::Retry<TowerPolicy<C>, S> {
    let policy = TowerPolicy {
        budget,
        retries_left: 2,
        clone_request,
    };
    tower::retry::Retry::new(policy, inner)
}

/// The balance of a `TpsBudget`, read from its `Debug` (its only view).
fn tps_balance(budget: &TpsBudget) -> String {
    let debug = format!("{budget:?}");
    let balance = debug
        .split("balance: ")
        .nth(1)
        .expect("TpsBudget's Debug shows its balance");
    balance.trim_end_matches(" }").to_owned()
}

// ---- Groups ----

/// Times `svc` with `b.iter` after checking that a call ends as `expect_ok` says.
fn calls<S>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut svc: S, expect_ok: bool)
where
    S: Service<u64, Response = u64>,
{
    assert_eq!(one_call(&mut svc, REQUEST).is_ok(), expect_ok, "{name}");
    group.bench_function(name, |b| b.iter(|| one_call(&mut svc, REQUEST)));
}

fn bench_success(c: &mut Criterion) {
    let mut group = c.benchmark_group("success");
    let inner = Inner(succeeds);
    calls(&mut group, "bare", inner, true);
    calls(
        &mut group,
        "tower_retry",
        tower_retry(inner, Some(tps_default()), copy_request),
        true,
    );
    calls(
        &mut group,
        "tower_retry_no_budget",
        tower_retry(inner, None, copy_request),
        true,
    );
    let layer = RetryLayer::builder().build().expect("valid");
    calls(&mut group, "firebreak_default", layer.layer(inner), true);
    let layer = RetryLayer::builder()
        .without_budget()
        .build()
        .expect("valid");
    calls(&mut group, "firebreak_no_budget", layer.layer(inner), true);
    group.finish();
}

fn bench_retry_once(c: &mut Criterion) {
    let mut group = c.benchmark_group("retry_once");
    let inner = Inner(fails_first_attempt);

    let mut bare = inner;
    group.bench_function("bare_two_attempts", |b| {
        b.iter(|| {
            let first = one_call(&mut bare, REQUEST);
            let second = one_call(&mut bare, REQUEST | RETRY_COPY);
            (first, second)
        })
    });

    let budget = tps_budget(10, 1000.0);
    calls(
        &mut group,
        "tower_retry",
        tower_retry(inner, Some(Arc::clone(&budget)), mark_retry_copy),
        true,
    );
    calls(
        &mut group,
        "tower_retry_no_budget",
        tower_retry(inner, None, mark_retry_copy),
        true,
    );

    let budget = RetryBudget::builder().ratio(1000.0).build().expect("valid");
    let layer = RetryLayer::builder()
        .backoff(Backoff::constant(Duration::ZERO))
        .budget(budget.clone())
        .clone_requests_with(mark_retry_copy)
        .build()
        .expect("valid");
    let retries_before = budget.retries();
    calls(&mut group, "firebreak", layer.layer(inner), true);
    let layer = RetryLayer::builder()
        .backoff(Backoff::constant(Duration::ZERO))
        .without_budget()
        .clone_requests_with(mark_retry_copy)
        .build()
        .expect("valid");
    calls(&mut group, "firebreak_no_budget", layer.layer(inner), true);
    group.finish();
    assert_eq!(
        budget.exhausted(),
        0,
        "firebreak's budget never refused a retry"
    );
    assert!(budget.retries() > retries_before);
}

fn bench_budget_exhausted(c: &mut Criterion) {
    let mut group = c.benchmark_group("budget_exhausted");
    let inner = Inner(always_fails);
    calls(&mut group, "bare", inner, false);

    let budget = tps_budget(0, 0.001);
    calls(
        &mut group,
        "tower_retry",
        tower_retry(inner, Some(Arc::clone(&budget)), copy_request),
        false,
    );
    assert_eq!(
        tps_balance(&budget),
        "0",
        "tower's budget never had a token"
    );

    let budget = RetryBudget::builder()
        .ratio(0.001)
        .min_per_second(0)
        .build()
        .expect("valid");
    let mut svc = RetryLayer::builder()
        .backoff(Backoff::constant(Duration::ZERO))
        .budget(budget.clone())
        .build()
        .expect("valid")
        .layer(inner);
    let err = one_call(&mut svc, REQUEST).expect_err("every attempt fails");
    assert!(err.is::<BudgetExhausted>(), "{err}");
    let (exhausted_before, retries_before) = (budget.exhausted(), budget.retries());
    let mut timed_calls = 0_u64;
    group.bench_function("firebreak", |b| {
        b.iter_custom(|iters| {
            timed_calls += iters;
            let start = Instant::now();
            for _ in 0..iters {
                let _ = black_box(one_call(&mut svc, REQUEST));
            }
            start.elapsed()
        })
    });
    group.finish();
    assert_eq!(
        budget.exhausted() - exhausted_before,
        timed_calls,
        "every call ends in exactly one refusal"
    );
    let retries = budget.retries() - retries_before;
    assert!(
        retries <= timed_calls / 1000 + 1,
        "{retries} retries in {timed_calls} calls"
    );
}

fn bench_contended(c: &mut Criterion, runtime: &tokio::runtime::Handle) {
    let inner = Inner(succeeds);
    for (group_name, threads) in [
        ("deposit_contended/1_thread", 1),
        ("deposit_contended/2_threads", 2),
    ] {
        let mut group = c.benchmark_group(group_name);
        contended(&mut group, "bare", &inner, REQUEST, threads, runtime);
        contended(
            &mut group,
            "tower_retry",
            &tower_retry(inner, Some(tps_default()), copy_request),
            REQUEST,
            threads,
            runtime,
        );
        let layer = RetryLayer::builder().build().expect("valid");
        contended(
            &mut group,
            "firebreak_default",
            &layer.layer(inner),
            REQUEST,
            threads,
            runtime,
        );
        let layer = RetryLayer::builder()
            .without_budget()
            .build()
            .expect("valid");
        contended(
            &mut group,
            "firebreak_no_budget",
            &layer.layer(inner),
            REQUEST,
            threads,
            runtime,
        );
        group.finish();
    }
}

fn benches(c: &mut Criterion) {
    // Entered, never driven: no call here waits (no backoff sleeps); the budget's bucket
    // timer task is spawned on first use and never runs, so the budget's window stands still.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let _context = runtime.enter();
    bench_success(c);
    bench_retry_once(c);
    bench_budget_exhausted(c);
    bench_contended(c, runtime.handle());
}

criterion_group! {
    name = retry;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(retry);
