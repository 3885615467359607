//! Circuit breaker behaviour through the public API, in tokio's virtual time.

use std::future::pending;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_firebreak::circuit_breaker::{
    CircuitBreakerLayer, CircuitOpen, Outcome, State, StateTransition, TransitionReason,
};
use tower_firebreak::error::{BoxError, ConfigError, ErrorKind};

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);

/// A dependency whose behaviour the test switches: each call succeeds, fails, or hangs.
#[derive(Clone, Default)]
struct Dependency {
    mode: Arc<Mutex<Mode>>,
    calls: Arc<AtomicUsize>,
}

#[derive(Clone, Copy, Default, PartialEq)]
enum Mode {
    #[default]
    Succeed,
    Fail,
    Hang,
    /// Succeeds after two (virtual) seconds.
    Slow,
}

impl Dependency {
    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn service(
        &self,
    ) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send + 'static>
    + Clone
    + Send
    + 'static {
        let this = self.clone();
        service_fn(move |x: u32| {
            this.calls.fetch_add(1, Ordering::SeqCst);
            let mode = *this.mode.lock().unwrap();
            async move {
                match mode {
                    Mode::Succeed => Ok(x),
                    Mode::Fail => Err::<u32, BoxError>("dependency failed".into()),
                    Mode::Hang => pending().await,
                    Mode::Slow => {
                        tokio::time::sleep(2 * SECOND).await;
                        Ok(x)
                    }
                }
            }
        })
    }
}

/// Lets spawned timer tasks run at the current virtual instant.
async fn settle() {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

fn consecutive(failures: u32, open: Duration) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .consecutive_failures(failures)
        .open_duration(open)
        .jitter(0.0)
        .build()
        .unwrap()
}

async fn call<S>(svc: &mut S, x: u32) -> Result<u32, BoxError>
where
    S: Service<u32, Response = u32, Error = BoxError>,
{
    svc.ready().await?.call(x).await
}

#[tokio::test(start_paused = true)]
async fn trips_fails_fast_and_tells_when_to_come_back() {
    let dep = Dependency::default();
    let layer = consecutive(3, 10 * SECOND);
    let handle = layer.handle();
    let mut svc = layer.layer(dep.service());

    dep.set(Mode::Fail);
    for _ in 0..3 {
        let err = call(&mut svc, 1).await.unwrap_err();
        assert_eq!(ErrorKind::of(&*err), ErrorKind::Inner);
    }
    assert_eq!(handle.state(), State::Open);
    assert_eq!(dep.calls(), 3);

    advance(4 * SECOND).await;
    let err = call(&mut svc, 1).await.unwrap_err();
    assert_eq!(
        dep.calls(),
        3,
        "an open breaker does not call the dependency"
    );
    assert_eq!(ErrorKind::of(&*err), ErrorKind::CircuitOpen);
    assert_eq!(ErrorKind::retry_after(&*err), Some(6 * SECOND));
    let open = err.downcast_ref::<CircuitOpen>().unwrap();
    assert!(!open.is_forced());
    assert_eq!(open.to_string(), "circuit open: the dependency is failing");
}

#[tokio::test(start_paused = true)]
async fn half_opens_exactly_when_the_open_period_ends() {
    let dep = Dependency::default();
    let layer = consecutive(1, 5 * SECOND);
    let handle = layer.handle();
    let mut svc = layer.layer(dep.service());
    dep.set(Mode::Fail);
    call(&mut svc, 1).await.unwrap_err();
    assert_eq!(handle.state(), State::Open);

    advance(5 * SECOND - MS).await;
    settle().await;
    assert_eq!(handle.state(), State::Open);
    advance(MS).await;
    settle().await;
    assert_eq!(handle.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn a_successful_probe_closes_a_failed_one_reopens_for_longer() {
    let dep = Dependency::default();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration_exponential(SECOND, 2.0, 3 * SECOND)
        .jitter(0.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dep.service());

    dep.set(Mode::Fail);
    call(&mut svc, 1).await.unwrap_err();
    // Trip 1: 1 s. The probe fails: trip 2, 2 s. Again: trip 3, 3 s (the cap).
    for expected in [SECOND, 2 * SECOND, 3 * SECOND] {
        assert_eq!(handle.metrics().retry_after, Some(expected));
        advance(expected).await;
        settle().await;
        assert_eq!(handle.state(), State::HalfOpen);
        call(&mut svc, 1).await.unwrap_err();
        assert_eq!(handle.state(), State::Open);
    }
    assert_eq!(handle.metrics().consecutive_trips, 4);

    // The probe succeeds: closed, and the backoff starts over.
    advance(3 * SECOND).await;
    settle().await;
    dep.set(Mode::Succeed);
    assert_eq!(call(&mut svc, 7).await.unwrap(), 7);
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.metrics().consecutive_trips, 0);
    dep.set(Mode::Fail);
    call(&mut svc, 1).await.unwrap_err();
    assert_eq!(handle.metrics().retry_after, Some(SECOND));
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_the_probe_count() {
    let dep = Dependency::default();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .half_open_probes(3)
        .open_duration(SECOND)
        .jitter(0.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(dep.service());
    dep.set(Mode::Fail);
    svc.clone().oneshot(1).await.unwrap_err();
    advance(SECOND).await;
    settle().await;

    dep.set(Mode::Hang);
    let probes: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(1)))
        .collect();
    settle().await;
    assert_eq!(dep.calls(), 4);
    let err = svc.clone().oneshot(1).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().expect("rejected");
    assert_eq!(
        open.retry_after(),
        None,
        "probes in flight decide what comes next"
    );
    assert_eq!(
        dep.calls(),
        4,
        "the fourth call never reached the dependency"
    );

    // A cancelled probe gives its slot back.
    probes[0].abort();
    settle().await;
    let replacement = tokio::spawn(svc.clone().oneshot(1));
    settle().await;
    assert_eq!(dep.calls(), 5);
    assert!(svc.clone().oneshot(1).await.is_err());
    assert_eq!(dep.calls(), 5);
    drop((probes, replacement));
    assert_eq!(handle.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn cancelled_probes_never_leak_slots() {
    // 100,000 probe calls, each cancelled at a random point (before its first poll, while
    // pending, or after completing as ignored): the one probe slot is always free afterwards.
    let mut rng = SmallRng::seed_from_u64(7);
    let dep = Dependency::default();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .half_open_probes(1)
        .open_duration(SECOND)
        .jitter(0.0)
        .classifier(|result: &Result<u32, BoxError>| match result {
            Ok(_) => Outcome::Ignored,
            Err(_) => Outcome::Failure,
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dep.service());
    dep.set(Mode::Fail);
    call(&mut svc, 1).await.unwrap_err();
    advance(SECOND).await;
    settle().await;
    assert_eq!(handle.state(), State::HalfOpen);

    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    for _ in 0..100_000 {
        let hang = rng.random_bool(0.5);
        dep.set(if hang { Mode::Hang } else { Mode::Succeed });
        let mut future = Box::pin(svc.call(1));
        match rng.random_range(0..3) {
            0 => drop(future),
            _ => {
                let polled = future.as_mut().poll(&mut cx);
                assert_eq!(polled.is_ready(), !hang);
                drop(future);
            }
        }
        // The slot is free again: the next call is admitted as a probe.
        dep.set(Mode::Succeed);
        let before = dep.calls();
        let mut probe = Box::pin(svc.call(2));
        assert!(probe.as_mut().poll(&mut cx).is_ready());
        assert_eq!(dep.calls(), before + 1, "a probe slot leaked");
    }
    assert_eq!(handle.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_probe_gives_its_slot_back() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(SECOND)
        .jitter(0.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let panics = Arc::new(AtomicUsize::new(0));
    let counter = panics.clone();
    let svc = layer.layer(service_fn(move |fail: bool| {
        let counter = counter.clone();
        async move {
            if fail {
                return Err::<(), BoxError>("failed".into());
            }
            counter.fetch_add(1, Ordering::SeqCst);
            panic!("the dependency client panicked");
        }
    }));
    svc.clone().oneshot(true).await.unwrap_err();
    advance(SECOND).await;
    settle().await;

    let crashed = tokio::spawn(svc.clone().oneshot(false)).await;
    assert!(crashed.unwrap_err().is_panic());
    assert_eq!(handle.state(), State::HalfOpen);
    // The slot came back, so the next call is let through as a probe (and panics too).
    let crashed = tokio::spawn(svc.clone().oneshot(false)).await;
    assert!(crashed.unwrap_err().is_panic());
    assert_eq!(panics.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn an_outcome_from_an_earlier_cycle_never_moves_the_state() {
    // A call admitted while closed hangs; the breaker trips and goes half-open; then the old
    // call succeeds. It must not close the circuit (tower-resilience lets it).
    let dep = Dependency::default();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .half_open_probes(1)
        .open_duration(SECOND)
        .jitter(0.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(dep.service());

    // A second service behind the same breaker (one layer, one breaker), answering when told.
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let released = Arc::new(Mutex::new(Some(released)));
    let waiting = layer.layer(service_fn(move |_: u32| {
        let released = released.lock().unwrap().take().expect("called once");
        async move {
            released.await.ok();
            Ok::<u32, BoxError>(0)
        }
    }));
    let slow = tokio::spawn(waiting.oneshot(0));
    settle().await;

    dep.set(Mode::Fail);
    svc.clone().oneshot(1).await.unwrap_err();
    advance(SECOND).await;
    settle().await;
    assert_eq!(handle.state(), State::HalfOpen);

    release.send(()).unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), 0, "the old call succeeded...");
    assert_eq!(
        handle.state(),
        State::HalfOpen,
        "...but did not close the circuit"
    );
    // And the probe slot it never held is still free for a real probe.
    dep.set(Mode::Succeed);
    svc.clone().oneshot(2).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn hanging_probes_send_the_breaker_back_to_open() {
    let dep = Dependency::default();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(SECOND)
        .half_open_max_wait(2 * SECOND)
        .jitter(0.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(dep.service());
    dep.set(Mode::Fail);
    svc.clone().oneshot(1).await.unwrap_err();
    advance(SECOND).await;
    settle().await;

    dep.set(Mode::Hang);
    let _probe = tokio::spawn(svc.clone().oneshot(1));
    advance(2 * SECOND - MS).await;
    settle().await;
    assert_eq!(handle.state(), State::HalfOpen);
    advance(MS).await;
    settle().await;
    assert_eq!(handle.state(), State::Open);
    // ...and half-opens again after the next open period.
    advance(SECOND).await;
    settle().await;
    assert_eq!(handle.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn an_idle_half_open_breaker_waits_for_traffic() {
    let dep = Dependency::default();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(SECOND)
        .half_open_max_wait(SECOND)
        .jitter(0.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(dep.service());
    dep.set(Mode::Fail);
    svc.clone().oneshot(1).await.unwrap_err();
    advance(10 * SECOND).await;
    settle().await;
    assert_eq!(
        handle.state(),
        State::HalfOpen,
        "no probe was sent, so none is overdue"
    );
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_do_not_count() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .classifier(|result: &Result<u32, BoxError>| match result {
            Ok(404) => Outcome::Ignored,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|x: u32| async move {
        if x == 500 {
            Err::<u32, BoxError>("server error".into())
        } else {
            Ok(x)
        }
    }));
    call(&mut svc, 500).await.unwrap_err();
    assert_eq!(call(&mut svc, 404).await.unwrap(), 404);
    call(&mut svc, 500).await.unwrap_err();
    assert_eq!(
        handle.state(),
        State::Open,
        "the 404 between the failures did not count"
    );
    let metrics = handle.metrics();
    assert_eq!((metrics.successes, metrics.failures), (0, 2));
}

#[tokio::test(start_paused = true)]
async fn the_failure_rate_window_slides_call_by_call() {
    let dep = Dependency::default();
    let layer = CircuitBreakerLayer::builder()
        .failure_rate(0.5, 10)
        .min_calls(10)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dep.service());

    // 9 calls, all failing: below min_calls, closed.
    dep.set(Mode::Fail);
    for _ in 0..9 {
        call(&mut svc, 1).await.unwrap_err();
    }
    assert_eq!(handle.state(), State::Closed);
    // Ten successes push those failures out of the last-10 window...
    dep.set(Mode::Succeed);
    for _ in 0..10 {
        call(&mut svc, 1).await.unwrap();
    }
    let metrics = handle.metrics();
    assert_eq!((metrics.window_calls, metrics.window_failures), (10, 0));
    // ...so it takes 5 new failures in the last 10 calls to trip.
    dep.set(Mode::Fail);
    for _ in 0..4 {
        call(&mut svc, 1).await.unwrap_err();
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.metrics().failure_rate(), Some(0.4));
    call(&mut svc, 1).await.unwrap_err();
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn clones_and_services_of_one_layer_share_one_breaker() {
    let dep = Dependency::default();
    let layer = consecutive(2, SECOND);
    let mut first = layer.layer(dep.service());
    let mut second = first.clone();
    let mut third = layer.layer(dep.service());
    dep.set(Mode::Fail);
    call(&mut first, 1).await.unwrap_err();
    call(&mut second, 1).await.unwrap_err();
    let err = call(&mut third, 1).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::CircuitOpen);
}

#[tokio::test(start_paused = true)]
async fn the_handle_forces_disables_resets_and_reports() {
    let dep = Dependency::default();
    let events = Arc::new(Mutex::new(Vec::<StateTransition>::new()));
    let seen = events.clone();
    let layer = CircuitBreakerLayer::builder()
        .name("inventory")
        .consecutive_failures(1)
        .on_transition(move |event| seen.lock().unwrap().push(*event))
        .build()
        .unwrap();
    let handle = layer.handle();
    assert_eq!(handle.name(), Some("inventory"));
    let mut svc = layer.layer(dep.service());

    handle.force_open();
    let err = call(&mut svc, 1).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().unwrap();
    assert!(open.is_forced());
    assert_eq!(open.retry_after(), None);
    advance(Duration::from_secs(3600)).await;
    settle().await;
    assert_eq!(
        handle.state(),
        State::ForcedOpen,
        "no timer ends a forced open"
    );

    handle.disable();
    dep.set(Mode::Fail);
    for _ in 0..5 {
        call(&mut svc, 1).await.unwrap_err();
    }
    assert_eq!(
        handle.state(),
        State::Disabled,
        "a disabled breaker never trips"
    );
    assert_eq!(dep.calls(), 5);

    handle.reset();
    assert_eq!(handle.state(), State::Closed);
    advance(SECOND).await;
    let metrics = handle.metrics();
    assert_eq!(metrics.time_in_state, SECOND);
    call(&mut svc, 1).await.unwrap_err();
    assert_eq!(handle.state(), State::Open);

    let events = events.lock().unwrap();
    let summary: Vec<_> = events.iter().map(|e| (e.from, e.to, e.reason)).collect();
    assert_eq!(
        summary,
        vec![
            (
                State::Closed,
                State::ForcedOpen,
                TransitionReason::ForcedOpen
            ),
            (
                State::ForcedOpen,
                State::Disabled,
                TransitionReason::Disabled
            ),
            (State::Disabled, State::Closed, TransitionReason::Reset),
            (
                State::Closed,
                State::Open,
                TransitionReason::FailureThreshold
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn default_poll_ready_is_ready_while_open() {
    let dep = Dependency::default();
    let layer = consecutive(1, SECOND);
    let mut svc = layer.layer(dep.service());
    dep.set(Mode::Fail);
    call(&mut svc, 1).await.unwrap_err();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    assert!(svc.poll_ready(&mut cx).is_ready());
}

#[tokio::test(start_paused = true)]
async fn backpressure_mode_waits_in_poll_ready_until_probing_may_start() {
    let dep = Dependency::default();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(5 * SECOND)
        .jitter(0.0)
        .backpressure(true)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dep.service());
    dep.set(Mode::Fail);
    call(&mut svc, 1).await.unwrap_err();
    assert_eq!(handle.state(), State::Open);

    dep.set(Mode::Succeed);
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        svc.ready().await.unwrap();
        let ready_at = Instant::now();
        (ready_at, svc.call(9).await.unwrap())
    });
    advance(5 * SECOND - MS).await;
    settle().await;
    assert!(
        !waiting.is_finished(),
        "still open: poll_ready keeps waiting"
    );
    advance(MS).await;
    let (ready_at, answer) = waiting.await.unwrap();
    assert_eq!(ready_at - started, 5 * SECOND);
    assert_eq!(answer, 9);
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn backpressure_mode_wakes_on_reset() {
    let dep = Dependency::default();
    dep.set(Mode::Succeed);
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .backpressure(true)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dep.service());
    handle.force_open();
    let waiting = tokio::spawn(async move { svc.ready().await.map(|_| ()) });
    settle().await;
    assert!(!waiting.is_finished());
    handle.reset();
    waiting.await.unwrap().unwrap();
}

#[test]
fn a_breaker_tripped_outside_a_runtime_half_opens_by_the_clock() {
    // Trip inside runtime A, then shut A down: the open timer dies with it, and the breaker
    // falls back to checking the clock when calls arrive.
    let dep = Dependency::default();
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let (layer, handle) = paused().block_on(async {
        let layer = consecutive(1, 5 * SECOND);
        let handle = layer.handle();
        let mut svc = layer.layer(dep.service());
        dep.set(Mode::Fail);
        call(&mut svc, 1).await.unwrap_err();
        (layer, handle)
    });
    assert_eq!(handle.state(), State::Open);

    // Runtime B's paused clock starts no earlier than A's did.
    paused().block_on(async {
        let mut svc = layer.layer(dep.service());
        dep.set(Mode::Succeed);
        assert_eq!(
            ErrorKind::of(&*call(&mut svc, 1).await.unwrap_err()),
            ErrorKind::CircuitOpen
        );
        advance(5 * SECOND).await;
        assert_eq!(
            call(&mut svc, 3).await.unwrap(),
            3,
            "probed by the clock, and closed"
        );
        assert_eq!(handle.state(), State::Closed);
    });
}

#[tokio::test(start_paused = true)]
async fn jitter_is_seeded_and_never_exceeds_the_configured_duration() {
    async fn open_durations(seed: u64) -> Vec<Duration> {
        let dep = Dependency::default();
        let layer = CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .open_duration(10 * SECOND)
            .jitter(0.5)
            .seed(seed)
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut svc = layer.layer(dep.service());
        let mut durations = Vec::new();
        for _ in 0..20 {
            handle.reset();
            dep.set(Mode::Fail);
            call(&mut svc, 1).await.unwrap_err();
            durations.push(handle.metrics().retry_after.unwrap());
        }
        durations
    }
    let first = open_durations(42).await;
    assert_eq!(first, open_durations(42).await, "same seed, same jitter");
    assert_ne!(first, open_durations(43).await);
    assert!(first.iter().all(|d| *d > 5 * SECOND && *d <= 10 * SECOND));
    assert!(
        first.iter().any(|d| *d < 9 * SECOND),
        "jitter spreads the durations"
    );
}

#[test]
fn every_invalid_setting_is_a_config_error() {
    let b = CircuitBreakerLayer::builder;
    let range = |err: ConfigError| match err {
        ConfigError::OutOfRange { setting, .. } => setting,
        ConfigError::ZeroDuration { setting, .. } => setting,
        ConfigError::MinAboveMax { min_setting, .. } => min_setting,
        other => panic!("unexpected {other:?}"),
    };
    let cases: Vec<(&str, ConfigError)> = vec![
        (
            "consecutive_failures",
            b().consecutive_failures(0).build().unwrap_err(),
        ),
        (
            "failure_rate",
            b().failure_rate(0.5, 0).build().unwrap_err(),
        ),
        (
            "failure_rate",
            b().failure_rate(0.5, 2_000_000).build().unwrap_err(),
        ),
        (
            "failure_rate",
            b().failure_rate(0.0, 10).build().unwrap_err(),
        ),
        (
            "failure_rate",
            b().failure_rate(1.5, 10).build().unwrap_err(),
        ),
        (
            "failure_rate",
            b().failure_rate(f64::NAN, 10).build().unwrap_err(),
        ),
        ("min_calls", b().min_calls(0).build().unwrap_err()),
        (
            "half_open_probes",
            b().half_open_probes(0).build().unwrap_err(),
        ),
        (
            "half_open_probes",
            b().half_open_probes(1025).build().unwrap_err(),
        ),
        (
            "probe_success_ratio",
            b().probe_success_ratio(0.0).build().unwrap_err(),
        ),
        (
            "probe_success_ratio",
            b().probe_success_ratio(f64::NAN).build().unwrap_err(),
        ),
        (
            "open_duration",
            b().open_duration(Duration::ZERO).build().unwrap_err(),
        ),
        (
            "open_duration",
            b().open_duration(Duration::MAX).build().unwrap_err(),
        ),
        (
            "open_duration_exponential",
            b().open_duration_exponential(Duration::ZERO, 2.0, SECOND)
                .build()
                .unwrap_err(),
        ),
        (
            "open_duration_exponential",
            b().open_duration_exponential(SECOND, 0.5, SECOND)
                .build()
                .unwrap_err(),
        ),
        (
            "open_duration_exponential",
            b().open_duration_exponential(SECOND, f64::NAN, SECOND)
                .build()
                .unwrap_err(),
        ),
        (
            "open_duration_exponential (initial)",
            b().open_duration_exponential(2 * SECOND, 2.0, SECOND)
                .build()
                .unwrap_err(),
        ),
        ("jitter", b().jitter(1.0).build().unwrap_err()),
        ("jitter", b().jitter(-0.1).build().unwrap_err()),
        ("jitter", b().jitter(f64::NAN).build().unwrap_err()),
        (
            "half_open_max_wait",
            b().half_open_max_wait(Duration::ZERO).build().unwrap_err(),
        ),
        ("stripes", b().stripes(0).build().unwrap_err()),
        (
            "time_window",
            b().time_window(0.0, SECOND, 10).build().unwrap_err(),
        ),
        (
            "time_window",
            b().time_window(f64::NAN, SECOND, 10).build().unwrap_err(),
        ),
        (
            "time_window",
            b().time_window(0.5, Duration::ZERO, 10)
                .build()
                .unwrap_err(),
        ),
        (
            "time_window",
            b().time_window(0.5, SECOND, 0).build().unwrap_err(),
        ),
        (
            "time_window",
            b().time_window(0.5, 10 * SECOND, 1025).build().unwrap_err(),
        ),
        (
            "time_window",
            b().time_window(0.5, 5 * MS, 10).build().unwrap_err(),
        ),
        (
            "min_calls",
            b().time_window(0.5, SECOND, 10)
                .min_calls(0)
                .build()
                .unwrap_err(),
        ),
        (
            "slow_calls",
            b().slow_calls(Duration::ZERO, 0.5).build().unwrap_err(),
        ),
        (
            "slow_calls",
            b().slow_calls(SECOND, 0.0).build().unwrap_err(),
        ),
        (
            "slow_calls",
            b().slow_calls(SECOND, f64::NAN).build().unwrap_err(),
        ),
    ];
    for (setting, err) in cases {
        assert_eq!(range(err.clone()), setting, "{err}");
    }
    assert_eq!(
        b().consecutive_failures(3)
            .slow_calls(SECOND, 0.5)
            .build()
            .unwrap_err(),
        ConfigError::Incompatible {
            layer: "CircuitBreakerLayer",
            setting: "slow_calls",
            other: "consecutive_failures",
        }
    );
    assert_eq!(
        b().failure_rate(1.5, 10).build().unwrap_err().to_string(),
        "CircuitBreakerLayer: `failure_rate` is 1.5, but must be in (0, 1]"
    );
}

/// A time window of 10 s in 1 s buckets: 50% of its calls, at least `min_calls` of them.
fn time_window(min_calls: u64) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .time_window(0.5, 10 * SECOND, 10)
        .min_calls(min_calls)
        .open_duration(SECOND)
        .jitter(0.0)
        .build()
        .unwrap()
}

/// Moves virtual time forward and lets the window's timer task catch up.
async fn pass(duration: Duration) {
    advance(duration).await;
    settle().await;
}

#[tokio::test(start_paused = true)]
async fn the_time_window_forgets_calls_older_than_the_window() {
    let dep = Dependency::default();
    let layer = time_window(10);
    let handle = layer.handle();
    let mut svc = layer.layer(dep.service());

    // t = 0: 6 failures (under min_calls). t = 5 s: 10 successes, 6 of 16 failed.
    dep.set(Mode::Fail);
    for _ in 0..6 {
        call(&mut svc, 1).await.unwrap_err();
    }
    pass(5 * SECOND).await;
    dep.set(Mode::Succeed);
    for _ in 0..10 {
        call(&mut svc, 1).await.unwrap();
    }
    assert_eq!(handle.metrics().window_failures, 6);

    // t = 10.5 s: the first bucket has left the window, the 6 failures with it.
    pass(5 * SECOND + 500 * MS).await;
    let metrics = handle.metrics();
    assert_eq!((metrics.window_calls, metrics.window_failures), (10, 0));
    assert_eq!(
        (metrics.successes, metrics.failures),
        (10, 6),
        "totals are kept"
    );

    // Had they stayed, 4 more failures would make 10 of 20. Only 10 of 20 new ones trip.
    dep.set(Mode::Fail);
    for _ in 0..9 {
        call(&mut svc, 1).await.unwrap_err();
    }
    assert_eq!(handle.state(), State::Closed);
    call(&mut svc, 1).await.unwrap_err();
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_time_window_keeps_a_call_between_nine_tenths_of_its_length_and_all_of_it() {
    let dep = Dependency::default();
    let layer = time_window(1_000);
    let handle = layer.handle();
    let mut svc = layer.layer(dep.service());
    dep.set(Mode::Fail);

    // A failure at the very start of a bucket stays for the whole window...
    call(&mut svc, 1).await.unwrap_err();
    pass(10 * SECOND - MS).await;
    assert_eq!(handle.metrics().window_failures, 1);
    pass(MS).await;
    assert_eq!(handle.metrics().window_failures, 0);

    // ...and one at the very end of a bucket for nine tenths of it (the documented bound).
    pass(SECOND - MS).await;
    call(&mut svc, 1).await.unwrap_err();
    pass(9 * SECOND).await;
    assert_eq!(handle.metrics().window_failures, 1);
    pass(MS).await;
    assert_eq!(handle.metrics().window_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn a_time_window_starts_clean_after_a_long_idle_period_and_after_a_close() {
    let dep = Dependency::default();
    let layer = time_window(4);
    let handle = layer.handle();
    let mut svc = layer.layer(dep.service());

    dep.set(Mode::Fail);
    call(&mut svc, 1).await.unwrap_err();
    dep.set(Mode::Succeed);
    call(&mut svc, 1).await.unwrap();
    // An hour with no calls: the window's timer stops once the window is empty...
    pass(Duration::from_secs(3600)).await;
    assert_eq!(handle.metrics().window_calls, 0);
    // ...and the next call starts it again, counting in the bucket of now.
    dep.set(Mode::Fail);
    for _ in 0..3 {
        call(&mut svc, 1).await.unwrap_err();
    }
    assert_eq!(handle.metrics().window_calls, 3);
    call(&mut svc, 1).await.unwrap_err();
    assert_eq!(handle.state(), State::Open);

    // Probe succeeds: closed, with an empty window although the failures are 1 s old.
    pass(SECOND).await;
    dep.set(Mode::Succeed);
    call(&mut svc, 1).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
    let metrics = handle.metrics();
    assert_eq!((metrics.window_calls, metrics.window_failures), (0, 0));
    assert_eq!(metrics.failures, 5);
}

fn transitions_into(
    log: &Arc<Mutex<Vec<TransitionReason>>>,
) -> impl Fn(&StateTransition) + Send + Sync + 'static {
    let log = Arc::clone(log);
    move |event: &StateTransition| log.lock().unwrap().push(event.reason)
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_a_time_window() {
    let dep = Dependency::default();
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let layer = CircuitBreakerLayer::builder()
        .time_window(0.5, 60 * SECOND, 6)
        .slow_calls(SECOND, 0.5)
        .min_calls(4)
        .jitter(0.0)
        .on_transition(transitions_into(&reasons))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dep.service());

    for _ in 0..4 {
        call(&mut svc, 1).await.unwrap();
    }
    dep.set(Mode::Slow);
    for _ in 0..3 {
        call(&mut svc, 1).await.unwrap(); // slow, but a success
    }
    let metrics = handle.metrics();
    assert_eq!((metrics.window_calls, metrics.window_slow_calls), (7, 3));
    assert_eq!(metrics.slow_call_rate(), Some(3.0 / 7.0));
    assert_eq!(handle.state(), State::Closed);
    call(&mut svc, 1).await.unwrap(); // 4 of 8
    assert_eq!(handle.state(), State::Open);
    assert_eq!(
        *reasons.lock().unwrap(),
        [TransitionReason::SlowCallThreshold]
    );
    assert_eq!(handle.metrics().slow_calls, 4);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_trip_a_count_window() {
    let dep = Dependency::default();
    let layer = CircuitBreakerLayer::builder()
        .failure_rate(0.5, 10)
        .slow_calls(SECOND, 0.5)
        .min_calls(4)
        .jitter(0.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dep.service());

    for _ in 0..3 {
        call(&mut svc, 1).await.unwrap();
    }
    dep.set(Mode::Slow);
    for _ in 0..2 {
        call(&mut svc, 1).await.unwrap();
    }
    assert_eq!(handle.state(), State::Closed, "2 of 5 slow");
    call(&mut svc, 1).await.unwrap();
    assert_eq!(handle.state(), State::Open, "3 of 6 slow");
}

#[tokio::test(start_paused = true)]
async fn a_response_ready_at_once_is_never_slow_and_a_slow_probe_fails() {
    let dep = Dependency::default();
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let layer = CircuitBreakerLayer::builder()
        .failure_rate(0.5, 2)
        .min_calls(2)
        .slow_calls(Duration::from_nanos(1), 1.0)
        .open_duration(SECOND)
        .jitter(0.0)
        .on_transition(transitions_into(&reasons))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dep.service());

    // Ready on the first poll: not slow, however small the threshold.
    for _ in 0..10 {
        call(&mut svc, 1).await.unwrap();
    }
    assert_eq!(handle.metrics().slow_calls, 0);

    dep.set(Mode::Fail);
    call(&mut svc, 1).await.unwrap_err();
    call(&mut svc, 1).await.unwrap_err();
    assert_eq!(handle.state(), State::Open);
    pass(SECOND).await;
    assert_eq!(handle.state(), State::HalfOpen);
    // The probe succeeds, slowly: the dependency has not recovered.
    dep.set(Mode::Slow);
    call(&mut svc, 1).await.unwrap();
    assert_eq!(handle.state(), State::Open);
    assert_eq!(
        *reasons.lock().unwrap(),
        [
            TransitionReason::FailureThreshold,
            TransitionReason::OpenElapsed,
            TransitionReason::ProbesFailed
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_hangs_after_others_finished_still_reopens_the_breaker() {
    // 3 probes, 2 successes to close: one succeeds, two hang. Without a stall check that
    // looks at progress, half-open would reject every call forever.
    let dep = Dependency::default();
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .half_open_probes(3)
        .probe_success_ratio(0.67)
        .open_duration(SECOND)
        .half_open_max_wait(2 * SECOND)
        .jitter(0.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(dep.service());
    dep.set(Mode::Fail);
    svc.clone().oneshot(1).await.unwrap_err();
    pass(SECOND).await;
    assert_eq!(handle.state(), State::HalfOpen);

    dep.set(Mode::Succeed);
    svc.clone().oneshot(1).await.unwrap();
    dep.set(Mode::Hang);
    let _hung = [
        tokio::spawn(svc.clone().oneshot(2)),
        tokio::spawn(svc.clone().oneshot(3)),
    ];
    settle().await;
    // The first check (2 s into half-open) sees a probe finished: progress, keep waiting.
    pass(2 * SECOND).await;
    assert_eq!(handle.state(), State::HalfOpen);
    // The next sees none finished since: the other two hang.
    pass(2 * SECOND).await;
    assert_eq!(handle.state(), State::Open);
}
