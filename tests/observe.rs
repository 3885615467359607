//! The `on_event` listeners: which events each layer reports, in which order, and that calls
//! that succeed report nothing.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_firebreak::circuit_breaker::{CircuitBreakerLayer, State, TransitionReason};
use tower_firebreak::error::{BoxError, ErrorKind};
use tower_firebreak::load_shed::{Aimd, LoadShedLayer, ThrottleLayer, Throttled};
use tower_firebreak::observe::Event;
use tower_firebreak::retry::{Backoff, RetryBudget, RetryLayer};
use tower_firebreak::timeout::{DeadlineLayer, TimeoutLayer};

#[path = "support/failing.rs"]
mod failing;
use failing::{Refused, failing_first};

/// An event, owned, so a test can keep it.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Transition(String, State, State, TransitionReason),
    Rejected(String, State),
    Retry(String, u32, Duration),
    Exhausted(String, u32),
    Throttled(String, f64),
    TimedOut(String, Duration),
    Deadline(String),
    Shed(String, u64),
    LimitChanged(String, u64, u64),
    Other(&'static str),
}

impl Seen {
    fn of(event: &Event<'_>) -> Seen {
        match *event {
            Event::BreakerTransition {
                name,
                from,
                to,
                reason,
                ..
            } => Seen::Transition(name.into(), from, to, reason),
            Event::BreakerRejected { name, state, .. } => Seen::Rejected(name.into(), state),
            Event::RetryScheduled {
                name,
                attempt,
                delay,
                ..
            } => Seen::Retry(name.into(), attempt, delay),
            Event::RetryBudgetExhausted { name, attempt, .. } => {
                Seen::Exhausted(name.into(), attempt)
            }
            Event::Throttled {
                name, probability, ..
            } => Seen::Throttled(name.into(), probability),
            Event::TimedOut { name, timeout, .. } => Seen::TimedOut(name.into(), timeout),
            Event::DeadlineExceeded { name, .. } => Seen::Deadline(name.into()),
            Event::LoadShed { name, limit, .. } => Seen::Shed(name.into(), limit),
            Event::LimitChanged {
                name,
                previous,
                limit,
                ..
            } => Seen::LimitChanged(name.into(), previous, limit),
            _ => Seen::Other(event.kind()),
        }
    }
}

/// A listener that keeps what it is told, and the list it keeps it in.
fn recorder() -> (
    Arc<Mutex<Vec<Seen>>>,
    impl Fn(&Event<'_>) + Send + Sync + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = {
        let seen = Arc::clone(&seen);
        move |event: &Event<'_>| seen.lock().unwrap().push(Seen::of(event))
    };
    (seen, listener)
}

fn take(seen: &Mutex<Vec<Seen>>) -> Vec<Seen> {
    std::mem::take(&mut *seen.lock().unwrap())
}

#[tokio::test(start_paused = true)]
async fn a_breaker_reports_its_trip_probes_and_close_in_order() {
    let (seen, listener) = recorder();
    let breaker = CircuitBreakerLayer::builder()
        .name("payments")
        .consecutive_failures(2)
        .open_duration(Duration::from_secs(1))
        .jitter(0.0)
        .on_event(listener)
        .build()
        .unwrap();
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

    for _ in 0..5 {
        svc.clone().oneshot(()).await.unwrap();
    }
    assert_eq!(take(&seen), [], "successes report nothing");

    failing.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        svc.clone().oneshot(()).await.unwrap_err();
    }
    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::CircuitOpen);
    let name = || "payments".to_string();
    assert_eq!(
        take(&seen),
        [
            Seen::Transition(
                name(),
                State::Closed,
                State::Open,
                TransitionReason::FailureThreshold
            ),
            Seen::Rejected(name(), State::Open),
        ]
    );

    // The open period ends; the probe fails and the breaker opens again.
    tokio::time::sleep(Duration::from_millis(1_001)).await;
    svc.clone().oneshot(()).await.unwrap_err();
    // It ends again; this probe succeeds and closes it.
    tokio::time::sleep(Duration::from_millis(1_001)).await;
    failing.store(false, Ordering::SeqCst);
    svc.clone().oneshot(()).await.unwrap();
    svc.clone().oneshot(()).await.unwrap();
    assert_eq!(
        take(&seen),
        [
            Seen::Transition(
                name(),
                State::Open,
                State::HalfOpen,
                TransitionReason::OpenElapsed
            ),
            Seen::Transition(
                name(),
                State::HalfOpen,
                State::Open,
                TransitionReason::ProbesFailed
            ),
            Seen::Transition(
                name(),
                State::Open,
                State::HalfOpen,
                TransitionReason::OpenElapsed
            ),
            Seen::Transition(
                name(),
                State::HalfOpen,
                State::Closed,
                TransitionReason::ProbesSucceeded
            ),
        ]
    );

    // The handle's overrides are transitions too, and a forced-open breaker's rejections say so.
    let handle = breaker.handle();
    handle.force_open();
    svc.clone().oneshot(()).await.unwrap_err();
    handle.reset();
    assert_eq!(
        take(&seen),
        [
            Seen::Transition(
                name(),
                State::Closed,
                State::ForcedOpen,
                TransitionReason::ForcedOpen
            ),
            Seen::Rejected(name(), State::ForcedOpen),
            Seen::Transition(
                name(),
                State::ForcedOpen,
                State::Closed,
                TransitionReason::Reset
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_transition_listener_and_the_event_listener_both_hear_a_trip() {
    let (seen, listener) = recorder();
    let transitions = Arc::new(AtomicU32::new(0));
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .on_transition({
            let transitions = Arc::clone(&transitions);
            move |_| {
                transitions.fetch_add(1, Ordering::SeqCst);
            }
        })
        .on_event(listener)
        .build()
        .unwrap();
    let svc = breaker.layer(service_fn(|_: ()| async {
        Err::<(), BoxError>(Box::new(Refused))
    }));
    svc.oneshot(()).await.unwrap_err();
    assert_eq!(transitions.load(Ordering::SeqCst), 1);
    assert_eq!(
        take(&seen),
        [Seen::Transition(
            String::new(), // no name given
            State::Closed,
            State::Open,
            TransitionReason::FailureThreshold
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_sequence_reports_each_retry_with_its_delay() {
    let (seen, listener) = recorder();
    let retry = RetryLayer::builder()
        .name("inventory")
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(20)))
        .on_event(listener)
        .build()
        .unwrap();

    retry.layer(failing_first(0)).oneshot(()).await.unwrap();
    assert_eq!(
        take(&seen),
        [],
        "a first attempt that succeeds reports nothing"
    );

    retry.layer(failing_first(2)).oneshot(()).await.unwrap();
    let name = || "inventory".to_string();
    assert_eq!(
        take(&seen),
        [
            Seen::Retry(name(), 1, Duration::from_millis(20)),
            Seen::Retry(name(), 2, Duration::from_millis(20)),
        ]
    );

    // Attempts used up: the last failure is returned, and is no event of its own.
    retry.layer(failing_first(5)).oneshot(()).await.unwrap_err();
    assert_eq!(
        take(&seen),
        [
            Seen::Retry(name(), 1, Duration::from_millis(20)),
            Seen::Retry(name(), 2, Duration::from_millis(20)),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_empty_retry_budget_is_reported_once_per_refused_retry() {
    let (seen, listener) = recorder();
    // One retry in reserve, and requests earn nothing.
    let budget = RetryBudget::builder()
        .ratio(0.0)
        .min_per_second(1)
        .ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    let retry = RetryLayer::builder()
        .name("search")
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .budget(budget)
        .on_event(listener)
        .build()
        .unwrap();
    let err = retry
        .layer(failing_first(u32::MAX))
        .oneshot(())
        .await
        .unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::RetryBudgetExhausted);
    assert_eq!(
        take(&seen),
        [
            Seen::Retry("search".into(), 1, Duration::from_millis(10)),
            Seen::Exhausted("search".into(), 2),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_throttle_reports_each_local_rejection_with_its_probability() {
    let (seen, listener) = recorder();
    let throttle = ThrottleLayer::builder()
        .name("recommendations")
        .seed(7)
        // Every error counts as the dependency rejecting the call.
        .classifier(|result: &Result<(), BoxError>| result.is_err())
        .on_event(listener)
        .build()
        .unwrap();
    let mut svc = throttle.layer(failing_first(u32::MAX));

    let mut throttled = Vec::new();
    for _ in 0..50 {
        let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
        if let Some(t) = err.downcast_ref::<Throttled>() {
            throttled.push(t.probability());
        }
    }
    assert!(
        !throttled.is_empty(),
        "a dependency that rejects everything"
    );
    let expected: Vec<Seen> = throttled
        .into_iter()
        .map(|p| Seen::Throttled("recommendations".into(), p))
        .collect();
    assert_eq!(
        take(&seen),
        expected,
        "one event per local rejection, nothing else"
    );
}

#[tokio::test(start_paused = true)]
async fn a_timeout_reports_the_attempt_it_ended_and_a_deadline_it_enforced() {
    let (seen, listener) = recorder();
    let timeout = TimeoutLayer::builder()
        .name("search")
        .attempt_timeout(Duration::from_millis(300))
        .on_event(listener)
        .build()
        .unwrap();
    let hanging = service_fn(|_: ()| std::future::pending::<Result<(), BoxError>>());
    let quick = service_fn(|_: ()| async { Ok::<_, BoxError>(()) });

    timeout.layer(quick).oneshot(()).await.unwrap();
    assert_eq!(take(&seen), [], "a call in time reports nothing");

    let err = timeout.layer(hanging).oneshot(()).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::TimedOut);
    assert_eq!(
        take(&seen),
        [Seen::TimedOut("search".into(), Duration::from_millis(300))]
    );

    // A deadline sooner than the attempt's timeout is the limit.
    let svc = ServiceBuilder::new()
        .layer(DeadlineLayer::new(Duration::from_millis(100)).unwrap())
        .layer(timeout.clone())
        .service(hanging);
    let err = svc.oneshot(()).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::DeadlineExceeded);
    assert_eq!(take(&seen), [Seen::Deadline("search".into())]);
}

#[tokio::test(start_paused = true)]
async fn a_load_shedder_reports_each_shed_call_and_each_limit_it_moves() {
    let (seen, listener) = recorder();
    // AIMD from 2, halving after a window with a drop; every call slower than 5 ms is one,
    // and a window is 1 ms and 1 sample.
    let shed = LoadShedLayer::builder()
        .limit(
            Aimd::default()
                .initial(2)
                .backoff_ratio(0.5)
                .drop_latency(Duration::from_millis(5)),
        )
        .sample_window(Duration::from_millis(1), 1)
        .name("api")
        .on_event(listener)
        .build()
        .unwrap();
    let slow = service_fn(|(): ()| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok::<_, BoxError>(())
    });
    let mut svc = shed.layer(slow);
    let first = svc.ready().await.unwrap().call(());
    let second = svc.ready().await.unwrap().call(());
    assert!(take(&seen).is_empty(), "admitted calls report nothing");

    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::Overloaded);
    assert_eq!(take(&seen), [Seen::Shed("api".into(), 2)]);

    // Both complete late: the first folds a window and halves the limit; the second finds
    // it at the floor of what it can cut.
    first.await.unwrap();
    second.await.unwrap();
    assert_eq!(shed.limit(), 1);
    assert_eq!(take(&seen), [Seen::LimitChanged("api".into(), 2, 1)]);
}
