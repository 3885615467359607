//! The `metrics` feature: the names, labels and values each layer records, read back from a
//! `metrics-util` debugging recorder installed for the test alone.
#![cfg(feature = "metrics")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_firebreak::circuit_breaker::CircuitBreakerLayer;
use tower_firebreak::error::BoxError;
use tower_firebreak::load_shed::{Aimd, LoadShedLayer, ThrottleLayer, Throttled};
use tower_firebreak::observe::metrics::*;
use tower_firebreak::retry::{Backoff, RetryBudget, RetryLayer};
use tower_firebreak::timeout::{DeadlineLayer, TimeoutLayer};

#[path = "support/failing.rs"]
mod failing;
use failing::{Refused, failing_first};

/// A recorder that keeps every value where reads do not reset it (`metrics-util`'s
/// `DebuggingRecorder` zeroes counters and gauges at every snapshot), in `metrics-util`'s
/// atomic registry.
#[derive(Clone)]
struct Kept(Arc<Registry<Key, AtomicStorage>>);

impl Kept {
    fn new() -> Kept {
        Kept(Arc::new(Registry::atomic()))
    }

    fn find<T>(
        handles: impl IntoIterator<Item = (Key, T)>,
        name: &str,
        labels: &[(&str, &str)],
    ) -> Option<T> {
        let mut want = labels.to_vec();
        want.sort();
        handles.into_iter().find_map(|(key, handle)| {
            let mut have: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
            have.sort();
            (key.name() == name && have == want).then_some(handle)
        })
    }

    /// The counter `name` with exactly `labels`; panics if it was never registered.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        Kept::find(self.0.get_counter_handles(), name, labels)
            .unwrap_or_else(|| panic!("no counter {name} {labels:?}"))
            .load(Ordering::SeqCst)
    }

    /// The gauge `name` with exactly `labels`; panics if it was never registered.
    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let bits = Kept::find(self.0.get_gauge_handles(), name, labels)
            .unwrap_or_else(|| panic!("no gauge {name} {labels:?}"))
            .load(Ordering::SeqCst);
        f64::from_bits(bits)
    }
}

impl Recorder for Kept {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(Arc::clone(c)))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(Arc::clone(g)))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0
            .get_or_create_histogram(key, |h| Histogram::from_arc(Arc::clone(h)))
    }
}

/// Builds with a recorder of its own installed (layers register their metrics when built),
/// and returns what was built and the recorder.
fn with_recorder<T>(build: impl FnOnce() -> T) -> (T, Kept) {
    let recorder = Kept::new();
    let built = metrics::with_local_recorder(&recorder, build);
    (built, recorder)
}

#[tokio::test(start_paused = true)]
async fn a_breaker_counts_calls_by_outcome_and_shows_its_state() {
    let (breaker, metrics) = with_recorder(|| {
        CircuitBreakerLayer::builder()
            .name("payments")
            .consecutive_failures(2)
            .open_duration(Duration::from_secs(1))
            .jitter(0.0)
            .build()
            .unwrap()
    });
    let calls =
        |outcome| metrics.counter(BREAKER_CALLS, &[("name", "payments"), ("outcome", outcome)]);
    let state = || metrics.gauge(BREAKER_STATE, &[("name", "payments")]);
    assert_eq!(state(), 0.0, "registered closed at build");

    let failing = Arc::new(AtomicBool::new(false));
    let svc = breaker.layer(service_fn({
        let failing = Arc::clone(&failing);
        move |_: ()| {
            let fail = failing.load(Ordering::SeqCst);
            async move {
                if fail {
                    Err::<(), BoxError>(Box::new(Refused))
                } else {
                    Ok(())
                }
            }
        }
    }));
    for _ in 0..3 {
        svc.clone().oneshot(()).await.unwrap();
    }
    failing.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        svc.clone().oneshot(()).await.unwrap_err(); // two failures, then a rejection
    }
    assert_eq!(calls("success"), 3);
    assert_eq!(calls("failure"), 2);
    assert_eq!(calls("ignored"), 0);
    assert_eq!(calls("rejected"), 1);
    let rejections = |state| {
        metrics.counter(
            BREAKER_REJECTIONS,
            &[("name", "payments"), ("state", state)],
        )
    };
    assert_eq!(rejections("open"), 1);
    assert_eq!(rejections("half_open"), 0);
    assert_eq!(state(), 1.0, "open");
    let entered = |to| metrics.counter(BREAKER_TRANSITIONS, &[("name", "payments"), ("to", to)]);
    assert_eq!(entered("open"), 1);

    tokio::time::sleep(Duration::from_millis(1_001)).await;
    assert_eq!(state(), 2.0, "half-open");
    failing.store(false, Ordering::SeqCst);
    svc.clone().oneshot(()).await.unwrap();
    assert_eq!(state(), 0.0, "closed again");
    assert_eq!(calls("success"), 4, "the probe counts as a call");
    assert_eq!(
        (
            entered("half_open"),
            entered("closed"),
            entered("forced_open")
        ),
        (1, 1, 0)
    );

    breaker.handle().force_open();
    svc.clone().oneshot(()).await.unwrap_err();
    assert_eq!(state(), 3.0, "forced open");
    assert_eq!(rejections("forced_open"), 1);
    breaker.handle().disable();
    assert_eq!(state(), 4.0, "disabled");
}

#[tokio::test(start_paused = true)]
async fn an_unnamed_breaker_has_an_empty_name_label() {
    let (breaker, metrics) = with_recorder(|| {
        CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .build()
            .unwrap()
    });
    let svc = breaker.layer(service_fn(|_: ()| async { Ok::<_, BoxError>(()) }));
    svc.oneshot(()).await.unwrap();
    assert_eq!(
        metrics.counter(BREAKER_CALLS, &[("name", ""), ("outcome", "success")]),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_layer_counts_attempts_retries_and_refusals_and_shows_its_budget() {
    let (retry, metrics) = with_recorder(|| {
        let budget = RetryBudget::builder()
            .ratio(0.0)
            .min_per_second(2)
            .ttl(Duration::from_secs(1))
            .build()
            .unwrap();
        RetryLayer::builder()
            .name("inventory")
            .max_attempts(3)
            .backoff(Backoff::constant(Duration::from_millis(10)))
            .budget(budget)
            .build()
            .unwrap()
    });
    let labels = [("name", "inventory")];
    assert_eq!(metrics.gauge(RETRY_BUDGET_BALANCE, &labels), 2.0);

    retry.layer(failing_first(0)).oneshot(()).await.unwrap();
    assert_eq!(metrics.counter(RETRY_ATTEMPTS, &labels), 1);
    assert_eq!(metrics.counter(RETRY_RETRIES, &labels), 0);

    // Two retries allowed, the third refused: attempts 1 + 3, retries 2, one refusal.
    retry.layer(failing_first(1)).oneshot(()).await.unwrap();
    retry
        .layer(failing_first(u32::MAX))
        .oneshot(())
        .await
        .unwrap_err();
    assert_eq!(metrics.counter(RETRY_ATTEMPTS, &labels), 1 + 2 + 2);
    assert_eq!(metrics.counter(RETRY_RETRIES, &labels), 2);
    assert_eq!(metrics.counter(RETRY_BUDGET_EXHAUSTED, &labels), 1);
    assert_eq!(metrics.gauge(RETRY_BUDGET_BALANCE, &labels), 0.0);

    // The retries expire with the budget's window, and its ticks show the reserve again.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(metrics.gauge(RETRY_BUDGET_BALANCE, &labels), 2.0);
}

#[tokio::test(start_paused = true)]
async fn a_throttle_counts_its_local_rejections() {
    let (throttle, metrics) = with_recorder(|| {
        ThrottleLayer::builder()
            .name("recommendations")
            .seed(7)
            .classifier(|result: &Result<(), BoxError>| result.is_err())
            .build()
            .unwrap()
    });
    let labels = [("name", "recommendations")];
    assert_eq!(metrics.gauge(THROTTLE_PROBABILITY, &labels), 0.0);
    let mut svc = throttle.layer(failing_first(u32::MAX));
    let mut throttled = 0;
    let mut last = 0.0;
    for _ in 0..50 {
        let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
        if let Some(t) = err.downcast_ref::<Throttled>() {
            throttled += 1;
            last = t.probability();
        }
    }
    assert!(throttled > 0);
    assert_eq!(metrics.counter(THROTTLE_REJECTIONS, &labels), throttled);
    assert_eq!(metrics.gauge(THROTTLE_PROBABILITY, &labels), last);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_layer_counts_timeouts_by_the_limit_that_ended_them() {
    let (timeout, metrics) = with_recorder(|| {
        TimeoutLayer::builder()
            .name("search")
            .attempt_timeout(Duration::from_millis(300))
            .build()
            .unwrap()
    });
    let hanging = service_fn(|_: ()| std::future::pending::<Result<(), BoxError>>());
    timeout.layer(hanging).oneshot(()).await.unwrap_err();
    let svc = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_millis(100)).unwrap())
        .layer(timeout.clone())
        .service(hanging);
    svc.oneshot(()).await.unwrap_err();
    let timeouts = |kind| metrics.counter(TIMEOUTS, &[("name", "search"), ("kind", kind)]);
    assert_eq!((timeouts("attempt"), timeouts("deadline")), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_load_shedder_counts_its_rejections_and_shows_its_limit() {
    let (shed, metrics) = with_recorder(|| {
        LoadShedLayer::builder()
            .limit(
                Aimd::default()
                    .initial(2)
                    .backoff_ratio(0.5)
                    .drop_latency(Duration::from_millis(5)),
            )
            .sample_window(Duration::from_millis(1), 1)
            .name("api")
            .build()
            .unwrap()
    });
    let labels = [("name", "api")];
    assert_eq!(metrics.gauge(CONCURRENCY_LIMIT, &labels), 2.0);
    let slow = service_fn(|(): ()| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok::<_, BoxError>(())
    });
    let mut svc = shed.layer(slow);
    let first = svc.ready().await.unwrap().call(());
    let second = svc.ready().await.unwrap().call(());
    for _ in 0..3 {
        svc.ready().await.unwrap().call(()).await.unwrap_err();
    }
    assert_eq!(metrics.counter(LOAD_SHED_REJECTIONS, &labels), 3);
    first.await.unwrap();
    second.await.unwrap();
    assert_eq!(metrics.gauge(CONCURRENCY_LIMIT, &labels), 1.0);
}
