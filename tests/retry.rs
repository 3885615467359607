//! Retry behaviour through the public API, in tokio's virtual time.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_firebreak::ServiceBuilderExt;
use tower_firebreak::circuit_breaker::CircuitBreakerLayer;
use tower_firebreak::error::{BoxError, ConfigError, ErrorKind};
use tower_firebreak::retry::{Backoff, BudgetExhausted, Decision, Jitter, RetryBudget, RetryLayer};
use tower_firebreak::timeout::deadline;

const MS: Duration = Duration::from_millis(1);

/// A dependency that fails its first `failures` calls, then succeeds; counts its calls.
#[derive(Clone)]
struct Flaky {
    failures: u32,
    calls: Arc<AtomicU32>,
}

impl Flaky {
    fn new(failures: u32) -> Self {
        Flaky {
            failures,
            calls: Arc::new(AtomicU32::new(0)),
        }
    }
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
    fn service(
        &self,
    ) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static
    {
        let this = self.clone();
        service_fn(move |x: u32| {
            let n = this.calls.fetch_add(1, Ordering::SeqCst);
            let fail = n < this.failures;
            async move {
                if fail {
                    Err::<u32, BoxError>(format!("failure {n}").into())
                } else {
                    Ok(x)
                }
            }
        })
    }
}

fn no_jitter(initial: Duration) -> Backoff {
    Backoff::exponential(initial, 2.0, 10 * initial).jitter(Jitter::None)
}

#[tokio::test(start_paused = true)]
async fn retries_after_each_backoff_delay_until_success() {
    let dep = Flaky::new(2);
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .backoff(no_jitter(100 * MS))
        .build()
        .unwrap();
    let started = Instant::now();
    let response = layer.layer(dep.service()).oneshot(7).await.unwrap();
    assert_eq!(response, 7);
    assert_eq!(dep.calls(), 3);
    assert_eq!(started.elapsed(), 300 * MS, "100 ms, then 200 ms");
}

#[tokio::test(start_paused = true)]
async fn the_last_error_comes_back_unchanged_when_attempts_run_out() {
    let dep = Flaky::new(u32::MAX);
    let layer = RetryLayer::builder()
        .max_attempts(4)
        .backoff(no_jitter(MS))
        .build()
        .unwrap();
    let err = layer.layer(dep.service()).oneshot(1).await.unwrap_err();
    assert_eq!(err.to_string(), "failure 3");
    assert_eq!(ErrorKind::of(&*err), ErrorKind::Inner);
    assert_eq!(dep.calls(), 4);

    // One attempt: never a retry, and no budget token taken.
    let once = RetryLayer::builder().max_attempts(1).build().unwrap();
    let budget = once.budget().unwrap().clone();
    once.layer(dep.service()).oneshot(1).await.unwrap_err();
    assert_eq!((dep.calls(), budget.retries()), (5, 0));
}

#[tokio::test(start_paused = true)]
async fn errors_that_say_back_off_are_never_retried() {
    let started = Instant::now();
    let attempts = Arc::new(AtomicU32::new(0));
    let counting = |inner: tower::util::BoxCloneService<u32, u32, BoxError>| {
        let attempts = Arc::clone(&attempts);
        service_fn(move |x: u32| {
            attempts.fetch_add(1, Ordering::SeqCst);
            inner.clone().oneshot(x)
        })
    };
    let retry = || {
        RetryLayer::builder()
            .max_attempts(5)
            .policy(|_: &Result<u32, BoxError>| Decision::Retry) // would retry anything
            .build()
            .unwrap()
    };

    // An open circuit breaker.
    let breaker = CircuitBreakerLayer::builder().build().unwrap();
    breaker.handle().force_open();
    let below = tower::util::BoxCloneService::new(breaker.layer(Flaky::new(0).service()));
    let err = retry().layer(counting(below)).oneshot(1).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::CircuitOpen);

    // A passed deadline (the timeout below refuses the attempt).
    let below = tower::util::BoxCloneService::new(
        ServiceBuilder::new()
            .timeout_attempt(Duration::from_secs(1))
            .unwrap()
            .service(Flaky::new(0).service()),
    );
    let svc = retry().layer(counting(below));
    let err = deadline::scope(Instant::now(), svc.oneshot(1))
        .await
        .unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::DeadlineExceeded);

    // An inner retry layer that ran out of budget.
    let empty = RetryBudget::builder()
        .ratio(0.001)
        .min_per_second(0)
        .build()
        .unwrap();
    let inner_retry = RetryLayer::builder().budget(empty).build().unwrap();
    let below = tower::util::BoxCloneService::new(inner_retry.layer(Flaky::new(1).service()));
    let err = retry().layer(counting(below)).oneshot(1).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::RetryBudgetExhausted);

    assert_eq!(attempts.load(Ordering::SeqCst), 3, "one attempt each");
    assert_eq!(started.elapsed(), Duration::ZERO, "and no backoff");
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_copied_is_not_retried() {
    let dep = Flaky::new(1);
    // Only even requests may be sent twice.
    let layer = RetryLayer::builder()
        .clone_requests_with(|x: &u32| x.is_multiple_of(2).then_some(*x))
        .build()
        .unwrap();
    let svc = layer.layer(dep.service());
    svc.clone().oneshot(1).await.unwrap_err();
    assert_eq!(dep.calls(), 1);
    let dep = Flaky::new(1);
    layer.layer(dep.service()).oneshot(2).await.unwrap();
    assert_eq!(dep.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_policy_decides_and_retry_after_sets_the_delay_up_to_its_maximum() {
    // Responses carry a status; 503 asks to come back after 5 s.
    let statuses = Arc::new(Mutex::new(vec![200, 503, 503]));
    let svc = {
        let statuses = Arc::clone(&statuses);
        service_fn(move |_: ()| {
            let status = statuses.lock().unwrap().pop().unwrap();
            async move { Ok::<u16, BoxError>(status) }
        })
    };
    let layer = RetryLayer::builder()
        .policy(|result: &Result<u16, BoxError>| match result {
            Ok(503) => Decision::RetryAfter(Duration::from_secs(5)),
            _ => Decision::Return,
        })
        .max_retry_after(Duration::from_secs(2))
        .build()
        .unwrap();
    let started = Instant::now();
    assert_eq!(layer.layer(svc).oneshot(()).await.unwrap(), 200);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(4),
        "two retries, each 5 s asked, 2 s allowed"
    );
}

#[tokio::test(start_paused = true)]
async fn no_attempt_starts_that_the_deadline_would_cut_short() {
    let dep = Flaky::new(u32::MAX);
    let layer = RetryLayer::builder()
        .max_attempts(10)
        .backoff(Backoff::constant(100 * MS))
        .without_budget()
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .deadline(250 * MS)
        .unwrap()
        .retry_with(layer)
        .service(dep.service());
    let started = Instant::now();
    let err = svc.oneshot(1).await.unwrap_err();
    // Attempts at 0, 100 and 200 ms; at 200 ms only 50 ms are left, less than the delay.
    assert_eq!(dep.calls(), 3);
    assert_eq!(started.elapsed(), 200 * MS);
    assert_eq!(
        ErrorKind::of(&*err),
        ErrorKind::Inner,
        "the last attempt's error"
    );
}

#[tokio::test(start_paused = true)]
async fn an_attempt_is_cut_at_the_deadline_and_then_not_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let hanging = {
        let calls = Arc::clone(&calls);
        service_fn(move |_: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<u32, BoxError>>()
        })
    };
    let svc = ServiceBuilder::new()
        .deadline(250 * MS)
        .unwrap()
        .retry_with(RetryLayer::builder().build().unwrap())
        .timeout_attempt(Duration::from_secs(1))
        .unwrap()
        .service(hanging);
    let started = Instant::now();
    let err = svc.oneshot(1).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::DeadlineExceeded);
    assert_eq!(started.elapsed(), 250 * MS, "not the 1 s attempt timeout");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_fails_with_its_own_error_around_the_last_one() {
    // Half a token per request, no reserve: every second request pays for one retry.
    let budget = RetryBudget::builder()
        .ratio(0.5)
        .min_per_second(0)
        .build()
        .unwrap();
    let layer = RetryLayer::builder()
        .budget(budget.clone())
        .backoff(no_jitter(MS))
        .build()
        .unwrap();
    let dep = Flaky::new(1);
    let err = layer.layer(dep.service()).oneshot(1).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::RetryBudgetExhausted);
    let exhausted = err.downcast::<BudgetExhausted>().unwrap();
    assert_eq!(exhausted.last_error().to_string(), "failure 0");
    assert_eq!(exhausted.into_last_error().to_string(), "failure 0");
    assert_eq!(budget.exhausted(), 1);

    let dep = Flaky::new(1);
    assert_eq!(layer.layer(dep.service()).oneshot(2).await.unwrap(), 2);
    assert_eq!((budget.requests(), budget.retries()), (2, 1));
}

/// Sends `requests` requests, one every `gap`, through `svc`; returns (successes, the time
/// the last one finished).
async fn steady_load<S>(svc: S, requests: u32, gap: Duration) -> usize
where
    S: Service<u32, Response = u32, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let successes = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..requests {
        let svc = svc.clone();
        let successes = Arc::clone(&successes);
        tasks.push(tokio::spawn(async move {
            if svc.oneshot(i).await.is_ok() {
                successes.fetch_add(1, Ordering::SeqCst);
            }
        }));
        tokio::time::sleep(gap).await;
    }
    for task in tasks {
        task.await.unwrap();
    }
    successes.load(Ordering::SeqCst)
}

/// A dependency failing each call with probability `p`, seeded; counts its calls.
fn failing_at(
    p: f64,
    seed: u64,
) -> (
    impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static,
    Arc<AtomicU32>,
) {
    let calls = Arc::new(AtomicU32::new(0));
    let rng = Arc::new(Mutex::new(SmallRng::seed_from_u64(seed)));
    let svc = {
        let calls = Arc::clone(&calls);
        service_fn(move |x: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            let fail = rng.lock().unwrap().random_bool(p);
            async move {
                if fail {
                    Err::<u32, BoxError>("failed".into())
                } else {
                    Ok(x)
                }
            }
        })
    };
    (svc, calls)
}

#[tokio::test(start_paused = true)]
async fn the_default_budget_keeps_a_total_outage_under_one_point_two_attempts_per_request() {
    // 1,000 requests a second for 20 s against a dependency that fails every call. Three
    // naive retries would send 4 attempts per request.
    let (dep, calls) = failing_at(1.0, 1);
    let layer = RetryLayer::builder().seed(1).build().unwrap();
    let budget = layer.budget().unwrap().clone();
    let requests = 20_000;
    let successes = steady_load(layer.layer(dep), requests, MS).await;
    assert_eq!(successes, 0);
    let amplification = f64::from(calls.load(Ordering::SeqCst)) / f64::from(requests);
    println!("total outage: {amplification:.3} attempts per request");
    assert!(amplification <= 1.2, "{amplification}");
    // It is the budget that stops them: 10% plus 10 a second, 1.11 at this rate.
    assert!(amplification > 1.1, "{amplification}");
    assert!(budget.exhausted() > 10_000);
}

#[tokio::test(start_paused = true)]
async fn with_random_failures_the_budget_is_spent_on_retries_that_succeed() {
    // 30% of calls fail at random. Every request wants a retry 30% of the time, more than
    // the budget's 11%: success climbs from 70% by what the budget allows.
    let (dep, calls) = failing_at(0.3, 2);
    let layer = RetryLayer::builder().seed(2).build().unwrap();
    let budget = layer.budget().unwrap().clone();
    let requests = 20_000;
    let successes = steady_load(layer.layer(dep), requests, MS).await;
    let success = successes as f64 / f64::from(requests);
    let retries = f64::from(calls.load(Ordering::SeqCst) - requests) / f64::from(requests);
    // The budget allows 10% of requests plus 10 a second (1% here), less the first window.
    assert!((0.10..=0.111).contains(&retries), "retries {retries}");
    // Each retry succeeds 70% of the time, so success = 0.7 + 0.7 × retries, give or take
    // the randomness of 20,000 draws.
    let expected = 0.7 + 0.7 * retries;
    println!("30% failures: {retries:.4} retries per request, success {success:.4}");
    assert!(
        (success - expected).abs() < 0.015,
        "{success} vs {expected}"
    );
    assert!(budget.exhausted() > 0);
}

#[test]
fn every_invalid_setting_is_a_config_error() {
    let setting = |err: ConfigError| match err {
        ConfigError::OutOfRange { setting, .. } => setting,
        ConfigError::ZeroDuration { setting, .. } => setting,
        ConfigError::MinAboveMax { min_setting, .. } => min_setting,
        other => panic!("unexpected {other:?}"),
    };
    let layer = RetryLayer::builder;
    let budget = RetryBudget::builder;
    let cases: Vec<(&str, ConfigError)> = vec![
        ("max_attempts", layer().max_attempts(0).build().unwrap_err()),
        (
            "max_attempts",
            layer().max_attempts(101).build().unwrap_err(),
        ),
        (
            "backoff (initial)",
            layer()
                .backoff(Backoff::exponential(Duration::ZERO, 2.0, MS))
                .build()
                .unwrap_err(),
        ),
        (
            "backoff (multiplier)",
            layer()
                .backoff(Backoff::exponential(MS, 0.9, MS))
                .build()
                .unwrap_err(),
        ),
        (
            "backoff (multiplier)",
            layer()
                .backoff(Backoff::exponential(MS, f64::NAN, MS))
                .build()
                .unwrap_err(),
        ),
        (
            "backoff (initial)",
            layer()
                .backoff(Backoff::exponential(2 * MS, 2.0, MS))
                .build()
                .unwrap_err(),
        ),
        (
            "backoff (max)",
            layer()
                .backoff(Backoff::exponential(MS, 2.0, Duration::MAX))
                .build()
                .unwrap_err(),
        ),
        (
            "backoff (constant)",
            layer()
                .backoff(Backoff::constant(Duration::MAX))
                .build()
                .unwrap_err(),
        ),
        (
            "max_retry_after",
            layer().max_retry_after(Duration::ZERO).build().unwrap_err(),
        ),
        (
            "max_retry_after",
            layer().max_retry_after(Duration::MAX).build().unwrap_err(),
        ),
        ("ratio", budget().ratio(-0.1).build().unwrap_err()),
        ("ratio", budget().ratio(1000.5).build().unwrap_err()),
        ("ratio", budget().ratio(f64::NAN).build().unwrap_err()),
        (
            "ratio",
            budget().ratio(0.0).min_per_second(0).build().unwrap_err(),
        ),
        (
            "min_per_second",
            budget().min_per_second(2_000_000).build().unwrap_err(),
        ),
        ("ttl", budget().ttl(MS).build().unwrap_err()),
        (
            "ttl",
            budget().ttl(Duration::from_secs(61)).build().unwrap_err(),
        ),
        ("stripes", budget().stripes(0).build().unwrap_err()),
    ];
    for (expected, err) in cases {
        assert_eq!(setting(err.clone()), expected, "{err}");
    }
}
