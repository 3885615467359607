//! Timeout and deadline behaviour through the public API, in tokio's virtual time.

use std::future::{Future, pending};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::{Instant, advance, sleep};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_firebreak::ServiceBuilderExt;
use tower_firebreak::clock;
use tower_firebreak::error::{BoxError, ConfigError, ErrorKind};
use tower_firebreak::timeout::{DeadlineExceeded, DeadlineLayer, Elapsed, TimeoutLayer, deadline};

const MS: Duration = Duration::from_millis(1);

/// A service whose responses never come.
fn hanging() -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone {
    service_fn(|_: u32| pending::<Result<u32, BoxError>>())
}

/// A service that answers after `delay`, counting its calls.
fn slow(
    delay: Duration,
    calls: Arc<AtomicUsize>,
) -> impl Service<u32, Response = u32, Error = BoxError> + Clone {
    service_fn(move |x: u32| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            sleep(delay).await;
            Ok::<_, BoxError>(x)
        }
    })
}

fn kind(result: Result<u32, BoxError>) -> ErrorKind {
    ErrorKind::of(&*result.expect_err("the call should have failed"))
}

#[tokio::test(start_paused = true)]
async fn timeout_fires_at_exactly_the_configured_instant() {
    let svc = ServiceBuilder::new()
        .timeout_attempt(300 * MS)
        .unwrap()
        .service(hanging());
    let started = Instant::now();
    let call = tokio::spawn(svc.oneshot(1));
    tokio::task::yield_now().await; // let the call start (and arm its timer) at t = 0

    advance(299 * MS).await;
    assert!(!call.is_finished(), "fired before the timeout");
    advance(MS).await;
    let err = call.await.unwrap().unwrap_err();

    assert_eq!(started.elapsed(), 300 * MS);
    let elapsed = err.downcast_ref::<Elapsed>().expect("an Elapsed error");
    assert_eq!(elapsed.timeout(), 300 * MS);
    assert_eq!(ErrorKind::of(&*err), ErrorKind::TimedOut);
}

#[tokio::test(start_paused = true)]
async fn response_within_the_timeout_passes_through() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = ServiceBuilder::new()
        .timeout_attempt(300 * MS)
        .unwrap()
        .service(slow(299 * MS, calls.clone()));
    assert_eq!(svc.oneshot(7).await.unwrap(), 7);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_unchanged() {
    let svc = ServiceBuilder::new()
        .deadline(Duration::from_secs(1))
        .unwrap()
        .timeout_attempt(300 * MS)
        .unwrap()
        .service(service_fn(|_: u32| async {
            Err::<u32, _>(std::io::Error::other("connection reset"))
        }));
    let err = svc.oneshot(1).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::Inner);
    let io = err
        .downcast_ref::<std::io::Error>()
        .expect("the inner error, boxed as is");
    assert_eq!(io.to_string(), "connection reset");
}

#[tokio::test(start_paused = true)]
async fn deadline_shorter_than_the_timeout_wins() {
    // The timeout alone would fire at 1 s; the deadline is at 100 ms.
    let svc = ServiceBuilder::new()
        .deadline(100 * MS)
        .unwrap()
        .timeout_attempt(Duration::from_secs(1))
        .unwrap()
        .service(hanging());
    let started = Instant::now();
    let result = svc.oneshot(1).await;
    assert_eq!(started.elapsed(), 100 * MS);
    assert_eq!(kind(result), ErrorKind::DeadlineExceeded);
}

#[tokio::test(start_paused = true)]
async fn timeout_alone_uses_the_remaining_explicit_deadline() {
    // No Deadline layer: the Timeout enforces the scoped deadline by itself and reports it
    // as a deadline, not as an attempt timeout.
    let svc = TimeoutLayer::new(Duration::from_secs(1)).unwrap();
    let svc = tower::Layer::layer(&svc, hanging());
    let at = clock::now() + 250 * MS;
    let started = Instant::now();
    let result = deadline::scope(at, svc.oneshot(1)).await;
    assert_eq!(started.elapsed(), 250 * MS);
    let err = result.unwrap_err();
    assert!(err.is::<DeadlineExceeded>());
}

#[tokio::test(start_paused = true)]
async fn timeout_shorter_than_the_deadline_wins() {
    let svc = ServiceBuilder::new()
        .deadline(Duration::from_secs(1))
        .unwrap()
        .timeout_attempt(100 * MS)
        .unwrap()
        .service(hanging());
    let started = Instant::now();
    let result = svc.oneshot(1).await;
    assert_eq!(started.elapsed(), 100 * MS);
    assert_eq!(kind(result), ErrorKind::TimedOut);
}

#[tokio::test(start_paused = true)]
async fn expired_deadline_never_calls_the_inner_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let timeout = ServiceBuilder::new()
        .timeout_attempt(Duration::from_secs(1))
        .unwrap()
        .service(slow(MS, calls.clone()));
    let deadline_layer = ServiceBuilder::new()
        .deadline(Duration::from_secs(1))
        .unwrap()
        .service(slow(MS, calls.clone()));

    let at = clock::now() + 10 * MS;
    advance(10 * MS).await; // the deadline is now, so nothing is left of it
    let started = Instant::now();
    let by_timeout = deadline::scope(at, timeout.oneshot(1)).await;
    let by_deadline = deadline::scope(at, deadline_layer.oneshot(1)).await;

    assert_eq!(kind(by_timeout), ErrorKind::DeadlineExceeded);
    assert_eq!(kind(by_deadline), ErrorKind::DeadlineExceeded);
    assert_eq!(started.elapsed(), Duration::ZERO, "failed at once");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn deadline_layer_enforces_the_whole_request_without_a_timeout() {
    let svc = ServiceBuilder::new()
        .deadline(500 * MS)
        .unwrap()
        .service(hanging());
    let started = Instant::now();
    let result = svc.oneshot(1).await;
    assert_eq!(started.elapsed(), 500 * MS);
    assert_eq!(kind(result), ErrorKind::DeadlineExceeded);
}

#[tokio::test(start_paused = true)]
async fn deadline_spans_several_attempts() {
    // A hand-written two-attempt loop stands in for the retry layer: each attempt gets
    // 300 ms, but the request has 500 ms in all, so the second attempt is cut at 200 ms.
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let attempt = ServiceBuilder::new()
        .timeout_attempt(300 * MS)
        .unwrap()
        .service(hanging());
    let twice = service_fn(move |x: u32| {
        let attempt = attempt.clone();
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let first = attempt.clone().oneshot(x).await;
            assert_eq!(kind(first), ErrorKind::TimedOut);
            assert_eq!(deadline::remaining(), Some(200 * MS));
            counter.fetch_add(1, Ordering::SeqCst);
            attempt.oneshot(x).await
        }
    });
    let svc = ServiceBuilder::new()
        .deadline(500 * MS)
        .unwrap()
        .service(twice);
    let started = Instant::now();
    let result = svc.oneshot(1).await;
    assert_eq!(started.elapsed(), 500 * MS);
    assert_eq!(kind(result), ErrorKind::DeadlineExceeded);
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn remaining_deadline_is_visible_in_call_and_in_poll_for_any_request_type() {
    #[derive(Debug)]
    struct Query {
        id: u64,
    }
    let inner = service_fn(|q: Query| {
        let in_call = deadline::remaining();
        async move {
            sleep(30 * MS).await;
            Ok::<_, BoxError>((q.id, in_call, deadline::remaining()))
        }
    });
    let svc = ServiceBuilder::new()
        .deadline(Duration::from_secs(2))
        .unwrap()
        .service(inner);
    let (id, in_call, in_poll) = svc.oneshot(Query { id: 9 }).await.unwrap();
    assert_eq!(id, 9);
    assert_eq!(in_call, Some(Duration::from_secs(2)));
    assert_eq!(in_poll, Some(Duration::from_secs(2) - 30 * MS));
    assert_eq!(
        deadline::current(),
        None,
        "the deadline does not leak out of the request"
    );
}

#[tokio::test(start_paused = true)]
async fn a_deadline_can_be_tightened_but_never_extended() {
    let outer = clock::now() + 100 * MS;
    deadline::scope(outer, async move {
        let later = clock::now() + Duration::from_secs(5);
        let seen = deadline::scope(later, async { deadline::current() }).await;
        assert_eq!(seen, Some(outer));

        let sooner = clock::now() + 40 * MS;
        let seen = deadline::sync_scope(sooner, deadline::current);
        assert_eq!(seen, Some(sooner));

        // A Deadline layer with a longer budget keeps the outer deadline too.
        let svc = ServiceBuilder::new()
            .deadline(Duration::from_secs(10))
            .unwrap()
            .service(service_fn(|()| async {
                Ok::<_, BoxError>(deadline::current())
            }));
        assert_eq!(svc.oneshot(()).await.unwrap(), Some(outer));
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn spawned_tasks_need_inherit_to_keep_the_deadline() {
    let at = clock::now() + Duration::from_secs(1);
    let (lost, kept) = deadline::scope(at, async {
        let lost = tokio::spawn(async { deadline::current() });
        let kept = tokio::spawn(deadline::inherit(async { deadline::current() }));
        (lost.await.unwrap(), kept.await.unwrap())
    })
    .await;
    assert_eq!(lost, None);
    assert_eq!(kept, Some(at));
    // With no deadline in force, `inherit` carries none.
    assert_eq!(deadline::inherit(async { deadline::current() }).await, None);
}

#[tokio::test(start_paused = true)]
async fn across_tower_buffer_the_deadline_still_bounds_the_attempt() {
    // Deadline -> Buffer -> Timeout -> service. The buffer's worker task calls the Timeout,
    // so its `call` sees no deadline, but the response is polled by the caller's task under
    // the deadline: the attempt stops at the deadline, not at its own 1 s timeout.
    let seen_in_call = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen_in_call.clone();
    let inner = service_fn(move |_: u32| {
        record.lock().unwrap().push(deadline::current());
        pending::<Result<u32, BoxError>>()
    });
    let below_buffer = ServiceBuilder::new()
        .timeout_attempt(Duration::from_secs(1))
        .unwrap()
        .service(inner);
    let buffered = tower::buffer::Buffer::new(below_buffer, 8);
    let svc = ServiceBuilder::new()
        .deadline(150 * MS)
        .unwrap()
        .service(buffered);

    let started = Instant::now();
    let err = svc.oneshot(1).await.unwrap_err();
    assert_eq!(started.elapsed(), 150 * MS);
    assert_eq!(ErrorKind::of(&*err), ErrorKind::DeadlineExceeded);
    assert_eq!(*seen_in_call.lock().unwrap(), vec![None]);
}

/// Sets a flag when dropped, to observe that a cancelled call drops its inner future.
struct DropFlag(Arc<AtomicUsize>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn cancellation_drops_the_inner_future_and_leaves_nothing_behind() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let flag = dropped.clone();
    let inner = service_fn(move |_: u32| {
        let guard = DropFlag(flag.clone());
        async move {
            let _guard = guard;
            pending::<()>().await;
            Ok::<u32, BoxError>(0)
        }
    });
    let mut svc = ServiceBuilder::new()
        .deadline(Duration::from_secs(2))
        .unwrap()
        .timeout_attempt(Duration::from_secs(1))
        .unwrap()
        .service(inner);

    for round in 1..=3 {
        let call = svc.ready().await.unwrap().call(1);
        // Cancel the call part-way, after its timers are armed.
        let cancelled = tokio::time::timeout(100 * MS, call).await;
        assert!(
            cancelled.is_err(),
            "the call should still have been pending"
        );
        assert_eq!(dropped.load(Ordering::SeqCst), round);
        assert_eq!(deadline::current(), None, "no deadline left in force");
    }

    // The service still works after cancellations, with fresh timers.
    let started = Instant::now();
    let result = svc.ready().await.unwrap().call(1).await;
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(kind(result), ErrorKind::TimedOut);
}

#[tokio::test(start_paused = true)]
async fn huge_durations_do_not_overflow() {
    let svc = ServiceBuilder::new()
        .deadline(Duration::MAX)
        .unwrap()
        .timeout_attempt(Duration::MAX)
        .unwrap()
        .service(slow(Duration::from_secs(3600), Arc::default()));
    assert_eq!(svc.oneshot(5).await.unwrap(), 5);
}

fn assert_send<F: Future + Send>(_: &F) {}

#[tokio::test(start_paused = true)]
async fn services_and_futures_are_send_and_clones_work() {
    let svc = ServiceBuilder::new()
        .deadline(Duration::from_secs(1))
        .unwrap()
        .timeout_attempt(MS)
        .unwrap()
        .service(hanging());
    let mut copy = svc.clone();
    let fut = copy.call(1);
    assert_send(&fut);
    drop(fut);
}

#[test]
fn every_invalid_setting_is_a_config_error() {
    assert_eq!(
        TimeoutLayer::builder().build().unwrap_err(),
        ConfigError::Missing {
            layer: "TimeoutLayer",
            setting: "attempt_timeout"
        }
    );
    assert_eq!(
        TimeoutLayer::new(Duration::ZERO).unwrap_err(),
        ConfigError::ZeroDuration {
            layer: "TimeoutLayer",
            setting: "attempt_timeout"
        }
    );
    assert_eq!(
        DeadlineLayer::builder().build().unwrap_err(),
        ConfigError::Missing {
            layer: "DeadlineLayer",
            setting: "budget"
        }
    );
    assert_eq!(
        DeadlineLayer::new(Duration::ZERO).unwrap_err(),
        ConfigError::ZeroDuration {
            layer: "DeadlineLayer",
            setting: "budget"
        }
    );
    assert!(
        ServiceBuilder::new()
            .timeout_attempt(Duration::ZERO)
            .is_err()
    );
    assert!(ServiceBuilder::new().deadline(Duration::ZERO).is_err());

    let message = TimeoutLayer::new(Duration::ZERO).unwrap_err().to_string();
    assert_eq!(
        message,
        "TimeoutLayer: `attempt_timeout` must be greater than zero"
    );
}

#[test]
fn a_panic_inside_a_scope_leaves_no_deadline_behind() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let at = runtime.block_on(async { clock::now() + Duration::from_secs(1) });

    let panicked = std::panic::catch_unwind(|| {
        deadline::sync_scope(at, || panic!("the inner service panicked"));
    });
    assert!(panicked.is_err());
    assert_eq!(deadline::current(), None);

    let panicked = std::panic::catch_unwind(|| {
        runtime.block_on(deadline::scope(at, async {
            panic!("the response panicked")
        }))
    });
    assert!(panicked.is_err());
    assert_eq!(deadline::current(), None);
}
