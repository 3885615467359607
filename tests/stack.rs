//! Compositions: the stack an `Sla` builds, its order, its derived parameters, its overrides.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_firebreak::circuit_breaker::{CircuitBreakerLayer, State};
use tower_firebreak::error::{BoxError, ConfigError, ErrorKind};
use tower_firebreak::load_shed::LoadShedLayer;
use tower_firebreak::retry::{Backoff, Jitter, RetryLayer};
use tower_firebreak::sla::Sla;
use tower_firebreak::timeout::TimeoutLayer;

const OBJECTIVE: Duration = Duration::from_millis(50);

/// "99.9% of calls succeed within 50 ms, at most `concurrency` at once", seeded.
fn sla(concurrency: u64) -> Sla {
    Sla::builder()
        .latency_objective(OBJECTIVE)
        .availability(0.999)
        .max_concurrency(concurrency)
        .seed(7)
        .build()
        .expect("a valid objective")
}

/// A dependency that counts its calls and fails every one at once.
fn failing(
    calls: &Arc<AtomicU32>,
) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send {
    let calls = Arc::clone(calls);
    service_fn(move |_: u32| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Err::<u32, BoxError>("connection refused".into()) }
    })
}

#[tokio::test(start_paused = true)]
async fn derived_parameters_follow_the_objective() {
    let sla = sla(32);
    assert_eq!(sla.latency_objective(), OBJECTIVE);
    assert_eq!(sla.availability(), 0.999);
    assert!((sla.error_budget() - 0.001).abs() < 1e-12);
    assert_eq!(sla.max_concurrency(), 32);
    // The timeout is the objective; three attempts; backoff from the objective.
    assert_eq!(sla.attempt_timeout(), OBJECTIVE);
    assert_eq!(sla.max_attempts(), 3);
    assert_eq!(
        sla.backoff(),
        Backoff::exponential(OBJECTIVE, 2.0, OBJECTIVE * 8).jitter(Jitter::Full)
    );
    // Half the requests may be retried; 14 failures in a row trip; open for 1 s.
    assert_eq!(sla.retry_budget_ratio(), 0.5);
    assert_eq!(sla.trip_after_failures(), 14);
    assert_eq!(sla.open_duration(), Duration::from_secs(1));

    // The layers carry them.
    let layer = sla.client_layer().unwrap();
    assert_eq!(layer.timeout_layer().attempt_timeout(), OBJECTIVE);
    assert_eq!(layer.load_shed_layer().max_concurrency(), 32);
    assert_eq!(layer.retry_layer().max_attempts(), 3);
    // The budget's reserve: 10 retries a second over 10 s.
    assert_eq!(layer.retry_budget().unwrap().balance(), 100.0);
    assert_eq!(layer.breaker().state(), State::Closed);
}

#[test]
fn a_lower_availability_needs_a_longer_run_and_a_larger_budget() {
    let with = |availability: f64| {
        Sla::builder()
            .latency_objective(OBJECTIVE)
            .availability(availability)
            .max_concurrency(8)
            .build()
            .unwrap()
    };
    // Down to 77.3%, a run of 14 is rarer than 1e-9 within the error budget.
    assert_eq!(with(0.9999).trip_after_failures(), 14);
    assert_eq!(with(0.8).trip_after_failures(), 14);
    // Below, the run grows: 0.5^30 < 1e-9, 0.8^93 < 1e-9.
    assert_eq!(with(0.5).trip_after_failures(), 30);
    assert_eq!(with(0.2).trip_after_failures(), 93);
    // The budget covers at least the error budget.
    assert_eq!(with(0.5).retry_budget_ratio(), 0.5);
    assert!((with(0.2).retry_budget_ratio() - 0.8).abs() < 1e-12);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_trips_after_the_derived_run_and_a_retry_never_retries_its_rejection() {
    let calls = Arc::new(AtomicU32::new(0));
    let layer = sla(32).client_layer().unwrap();
    let breaker = layer.breaker();
    let budget = layer.retry_budget().unwrap().clone();
    let client = ServiceBuilder::new().layer(layer).service(failing(&calls));

    // Each call makes up to three attempts; the 14th failure in a row opens the breaker.
    while breaker.state() == State::Closed {
        let err = client.clone().oneshot(1).await.unwrap_err();
        let kind = ErrorKind::of(&*err);
        assert!(
            kind == ErrorKind::Inner || kind == ErrorKind::CircuitOpen,
            "{kind:?}"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 14);
    assert_eq!(breaker.metrics().failures, 14);

    // Open: a call fails at once, without reaching the dependency, and is not retried.
    let retries_before = budget.retries();
    let started = Instant::now();
    let err = client.clone().oneshot(2).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::CircuitOpen);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(calls.load(Ordering::SeqCst), 14);
    assert_eq!(budget.retries(), retries_before);

    // After the open period (at most 1 s), one probe reaches the dependency; it fails, the
    // breaker reopens, and the probe's retry is rejected by it, not sent.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let err = client.clone().oneshot(3).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::CircuitOpen);
    assert_eq!(calls.load(Ordering::SeqCst), 15);
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_healed_dependency_is_back_after_one_probe() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dependency = service_fn({
        let healthy = Arc::clone(&healthy);
        move |x: u32| {
            let ok = healthy.load(Ordering::SeqCst);
            async move {
                if ok {
                    Ok(x)
                } else {
                    Err::<u32, BoxError>("down".into())
                }
            }
        }
    });
    let layer = sla(32).client_layer().unwrap();
    let breaker = layer.breaker();
    let client = ServiceBuilder::new().layer(layer).service(dependency);
    while breaker.state() == State::Closed {
        let _ = client.clone().oneshot(1).await;
    }
    healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(client.clone().oneshot(5).await.unwrap(), 5);
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_timeout_bounds_each_attempt_not_the_call() {
    let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let hanging = service_fn({
        let starts = Arc::clone(&starts);
        move |_: u32| {
            starts.lock().unwrap().push(Instant::now());
            std::future::pending::<Result<u32, BoxError>>()
        }
    });
    let client = ServiceBuilder::new()
        .layer(sla(32).client_layer().unwrap())
        .service(hanging);

    let started = Instant::now();
    let err = client.oneshot(1).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::TimedOut);
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts.len(), 3, "three attempts, each cut at the objective");
    // Attempt n starts after attempt n - 1 timed out and a backoff of at most 50 ms × 2^(n-2).
    for (n, pair) in starts.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let max_backoff = OBJECTIVE * 2u32.pow(n as u32);
        assert!(
            gap >= OBJECTIVE && gap <= OBJECTIVE + max_backoff,
            "gap {n}: {gap:?}"
        );
    }
    assert_eq!(started.elapsed(), starts[2] - starts[0] + OBJECTIVE);
}

#[tokio::test(start_paused = true)]
async fn shedding_is_neither_retried_nor_counted_by_the_breaker() {
    let calls = Arc::new(AtomicU32::new(0));
    let slow = service_fn({
        let calls = Arc::clone(&calls);
        move |x: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok::<_, BoxError>(x)
            }
        }
    });
    let layer = sla(1).client_layer().unwrap();
    let breaker = layer.breaker();
    let budget = layer.retry_budget().unwrap().clone();
    let mut client = ServiceBuilder::new().layer(layer).service(slow);

    // The first call takes the one slot; a second one is shed at once.
    let first = client.ready().await.unwrap().call(1);
    for _ in 0..20 {
        let err = client.ready().await.unwrap().call(2).await.unwrap_err();
        assert_eq!(ErrorKind::of(&*err), ErrorKind::Overloaded);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no retry reached the dependency"
    );
    assert_eq!(budget.retries(), 0);
    assert_eq!(first.await.unwrap(), 1);
    // Twenty rejections, more than the run that trips: the breaker ignored them all.
    let metrics = breaker.metrics();
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(metrics.failures, 0);
    assert_eq!(metrics.successes, 1);
}

#[tokio::test(start_paused = true)]
async fn values_and_layers_can_be_overridden() {
    let sla = Sla::builder()
        .latency_objective(OBJECTIVE)
        .availability(0.999)
        .max_concurrency(4)
        .attempt_timeout(Duration::from_millis(80))
        .max_attempts(2)
        .backoff(Backoff::constant(Duration::from_millis(5)))
        .retry_budget_ratio(0.1)
        .trip_after_failures(3)
        .open_duration(Duration::from_secs(2))
        .name("prices")
        .build()
        .unwrap();
    assert_eq!(sla.attempt_timeout(), Duration::from_millis(80));
    assert_eq!(sla.max_attempts(), 2);
    assert_eq!(sla.backoff(), Backoff::constant(Duration::from_millis(5)));
    assert_eq!(sla.retry_budget_ratio(), 0.1);
    assert_eq!(sla.trip_after_failures(), 3);
    assert_eq!(sla.open_duration(), Duration::from_secs(2));

    // The value overrides reach the layers: two attempts per call, three failures trip.
    let calls = Arc::new(AtomicU32::new(0));
    let layer = sla.client_layer().unwrap();
    let breaker = layer.breaker();
    assert_eq!(breaker.name(), Some("prices"));
    let client = ServiceBuilder::new().layer(layer).service(failing(&calls));
    let _ = client.clone().oneshot(1).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let _ = client.clone().oneshot(1).await;
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Whole layers can be replaced.
    let layer = sla
        .client_layer()
        .unwrap()
        .with_retry(RetryLayer::builder().max_attempts(1).build().unwrap())
        .with_circuit_breaker(
            CircuitBreakerLayer::builder()
                .consecutive_failures(1)
                .build()
                .unwrap(),
        )
        .with_timeout(TimeoutLayer::new(Duration::from_millis(10)).unwrap())
        .with_load_shed(LoadShedLayer::builder().max_concurrency(9).build().unwrap());
    assert_eq!(layer.retry_layer().max_attempts(), 1);
    assert_eq!(
        layer.timeout_layer().attempt_timeout(),
        Duration::from_millis(10)
    );
    assert_eq!(layer.load_shed_layer().max_concurrency(), 9);
    let breaker = layer.breaker();
    let calls = Arc::new(AtomicU32::new(0));
    let client = ServiceBuilder::new().layer(layer).service(failing(&calls));
    let _ = client.oneshot(1).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn bad_objectives_are_config_errors() {
    let base = || {
        Sla::builder()
            .latency_objective(OBJECTIVE)
            .availability(0.99)
            .max_concurrency(8)
    };
    let setting_of = |err: ConfigError| match err {
        ConfigError::Missing { setting, .. }
        | ConfigError::ZeroDuration { setting, .. }
        | ConfigError::OutOfRange { setting, .. }
        | ConfigError::Incompatible { setting, .. } => setting,
        ConfigError::MinAboveMax { min_setting, .. } => min_setting,
        other => panic!("unexpected {other:?}"),
    };
    for availability in [0.0, 1.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
        let err = base().availability(availability).build().unwrap_err();
        assert_eq!(setting_of(err), "availability", "{availability}");
    }
    let zero = base()
        .latency_objective(Duration::ZERO)
        .build()
        .unwrap_err();
    assert!(matches!(
        zero,
        ConfigError::ZeroDuration {
            setting: "latency_objective",
            ..
        }
    ));
    let cases: Vec<(_, &str)> = vec![
        (
            Sla::builder()
                .availability(0.9)
                .max_concurrency(1)
                .build()
                .unwrap_err(),
            "latency_objective",
        ),
        (
            Sla::builder()
                .latency_objective(OBJECTIVE)
                .max_concurrency(1)
                .build()
                .unwrap_err(),
            "availability",
        ),
        (
            Sla::builder()
                .latency_objective(OBJECTIVE)
                .availability(0.9)
                .build()
                .unwrap_err(),
            "max_concurrency",
        ),
        (
            base()
                .latency_objective(Duration::from_secs(3601))
                .build()
                .unwrap_err(),
            "latency_objective",
        ),
        (
            base().max_concurrency(0).build().unwrap_err(),
            "max_concurrency",
        ),
        (
            base().max_concurrency(1_000_001).build().unwrap_err(),
            "max_concurrency",
        ),
        (
            base().attempt_timeout(Duration::ZERO).build().unwrap_err(),
            "attempt_timeout",
        ),
        (base().max_attempts(0).build().unwrap_err(), "max_attempts"),
        (
            base().max_attempts(101).build().unwrap_err(),
            "max_attempts",
        ),
        (
            base().trip_after_failures(0).build().unwrap_err(),
            "trip_after_failures",
        ),
        (
            base().retry_budget_ratio(f64::NAN).build().unwrap_err(),
            "retry_budget_ratio",
        ),
        (
            base().open_duration(Duration::ZERO).build().unwrap_err(),
            "open_duration",
        ),
    ];
    for (err, setting) in cases {
        assert_eq!(setting_of(err), setting);
    }
    // An invalid backoff is the retry layer's error, at build time too.
    let err = base()
        .backoff(Backoff::exponential(
            Duration::ZERO,
            2.0,
            Duration::from_secs(1),
        ))
        .build()
        .unwrap_err();
    assert!(matches!(err, ConfigError::ZeroDuration { .. }), "{err:?}");
}

/// `client_layer_with` changes what is retried and what counts as a failure, and keeps every
/// derived value: here only "retryable" errors are retried, and "client" errors do not count
/// against the dependency, yet the derived trip run and attempts still hold.
#[tokio::test(start_paused = true)]
async fn own_rules_keep_the_derived_values() {
    use tower_firebreak::circuit_breaker::Outcome;
    use tower_firebreak::retry::{CloneRequests, Decision};

    let sla = sla(8);
    let policy = |result: &Result<u32, BoxError>| match result {
        Err(err) if err.to_string() == "retryable" => Decision::Retry,
        _ => Decision::Return,
    };
    let classify = |result: &Result<u32, BoxError>| match result {
        Err(err) if err.to_string() == "client" => Outcome::Ignored,
        Err(_) => Outcome::Failure,
        Ok(_) => Outcome::Success,
    };
    let layer = sla
        .client_layer_with(policy, CloneRequests, classify)
        .unwrap();
    assert_eq!(layer.retry_layer().max_attempts(), 3);
    assert_eq!(layer.timeout_layer().attempt_timeout(), OBJECTIVE);
    assert_eq!(layer.load_shed_layer().max_concurrency(), 8);
    assert!(layer.retry_budget().is_some());
    let breaker = layer.breaker();

    let calls = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&calls);
    let mut client = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(move |n: u32| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { Err::<u32, BoxError>(if n == 0 { "client" } else { "retryable" }.into()) }
        }));

    // "client" errors: not retried (one call each), never trip the breaker.
    for _ in 0..30 {
        client.ready().await.unwrap().call(0).await.unwrap_err();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 30);
    assert_eq!(breaker.state(), State::Closed);

    // "retryable" errors: three attempts each; 14 failures in a row trip, as derived: the
    // fifth call's second attempt is the fourteenth failure, and its third meets the open
    // breaker.
    calls.store(0, Ordering::SeqCst);
    for _ in 0..4 {
        client.ready().await.unwrap().call(1).await.unwrap_err();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 12);
    assert_eq!(breaker.state(), State::Closed);
    let err = client.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::CircuitOpen);
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(calls.load(Ordering::SeqCst), 14);
    // An open breaker's rejection ends the call at once, and is not retried.
    let err = client.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::CircuitOpen);
    assert_eq!(calls.load(Ordering::SeqCst), 14);
}

/// The server-side guard: derived from the promise, it sheds with `Overloaded` once admitted
/// calls stop completing within the objective, and keeps the limit within the promised
/// concurrency.
#[tokio::test(start_paused = true)]
async fn the_server_guard_sheds_when_admitted_calls_breach_the_objective() {
    let sla = sla(64);
    let guard = sla.server_layer().unwrap();
    assert_eq!(guard.limit(), 20);
    assert_eq!(sla_with_concurrency(4).server_layer().unwrap().limit(), 4);

    // One worker, 20 ms a call: more than two calls in flight breach 50 ms.
    let worker = Arc::new(tokio::sync::Semaphore::new(1));
    let handler = service_fn(move |_: u32| {
        let worker = Arc::clone(&worker);
        async move {
            let _permit = worker.acquire_owned().await.expect("never closed");
            tokio::time::sleep(Duration::from_millis(20)).await;
            // Not `BoxError`: rustc cannot yet prove the boxed error `'static` across this
            // async block and `tokio::spawn` ("implementation of `From` is not general
            // enough"); an error type without a trait object avoids it.
            Ok::<_, std::convert::Infallible>(())
        }
    });
    let server = ServiceBuilder::new().layer(guard.clone()).service(handler);

    // 200 calls a second against a capacity of 50, for 5 s.
    let started = Instant::now();
    let mut calls = Vec::new();
    while started.elapsed() < Duration::from_secs(5) {
        let call = server.clone().oneshot(0);
        calls.push(tokio::spawn(async move {
            let sent = Instant::now();
            (call.await, sent.duration_since(started), sent.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (mut shed, mut late, mut ok) = (0, 0, 0);
    for call in calls {
        let (result, sent_at, latency) = call.await.unwrap();
        match result {
            // The first second is the guard learning (it starts at 20 calls in flight, 400 ms
            // of queue here); after it, admitted calls should meet the objective.
            Ok(()) if latency > OBJECTIVE * 2 && sent_at >= Duration::from_secs(1) => late += 1,
            Ok(()) => ok += 1,
            Err(err) => {
                assert_eq!(ErrorKind::of(&*err), ErrorKind::Overloaded);
                shed += 1;
            }
        }
    }
    assert!(
        shed > 500,
        "sheds the excess: {shed} shed, {ok} ok, {late} late"
    );
    assert!(ok > 150, "serves near capacity: {ok} ok");
    // Without the guard every admitted call would queue for seconds; with it, once it has
    // learned, at most 1% of admitted calls take more than twice the objective.
    assert!(late * 100 <= ok, "{late} late against {ok} ok");
    assert!(guard.limit() < 20, "the limit came down: {}", guard.limit());
}

fn sla_with_concurrency(concurrency: u64) -> Sla {
    sla(concurrency)
}
