//! Load shedding through the public API.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::oneshot;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_firebreak::error::{BoxError, ConfigError, ErrorKind};
use tower_firebreak::load_shed::{LoadShedLayer, Overloaded, ThrottleLayer, Throttled};
use tower_firebreak::retry::{RetryBudget, RetryLayer};

fn layer(limit: u64) -> LoadShedLayer {
    LoadShedLayer::builder()
        .max_concurrency(limit)
        .build()
        .unwrap()
}

/// A service whose calls finish when the test says so; counts the calls it received.
fn controlled(
    calls: &Arc<AtomicUsize>,
) -> impl Service<oneshot::Receiver<u32>, Response = u32, Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    let calls = Arc::clone(calls);
    service_fn(move |done: oneshot::Receiver<u32>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move { done.await.map_err(BoxError::from) }
    })
}

#[tokio::test(start_paused = true)]
async fn calls_beyond_the_limit_are_rejected_at_once_and_slots_come_back() {
    let calls = Arc::new(AtomicUsize::new(0));
    let shed = layer(2);
    let mut svc = shed.layer(controlled(&calls));

    let (finish_a, a) = oneshot::channel();
    let (_finish_b, b) = oneshot::channel();
    let first = svc.ready().await.unwrap().call(a);
    let second = svc.ready().await.unwrap().call(b);
    let (_, c) = oneshot::channel();
    let err = svc.ready().await.unwrap().call(c).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::Overloaded);
    let overloaded = err.downcast_ref::<Overloaded>().unwrap();
    assert_eq!(
        (overloaded.limit(), overloaded.retry_after()),
        (2, Duration::from_secs(1))
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the rejected call never reached it"
    );
    assert_eq!(shed.in_flight(), 2);

    // Completion gives a slot back...
    finish_a.send(7).unwrap();
    assert_eq!(first.await.unwrap(), 7);
    assert_eq!(shed.in_flight(), 1);
    // ...and so does cancellation.
    drop(second);
    assert_eq!(shed.in_flight(), 0);
    let (finish, d) = oneshot::channel();
    finish.send(8).unwrap();
    assert_eq!(svc.ready().await.unwrap().call(d).await.unwrap(), 8);
}

/// Panics in `call`, or in the first poll of its response, as chosen per request.
#[derive(Clone)]
struct Panicky;

struct PanicOnPoll;
impl Future for PanicOnPoll {
    type Output = Result<(), BoxError>;
    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        panic!("the inner future panicked")
    }
}

impl Service<bool> for Panicky {
    type Response = ();
    type Error = BoxError;
    type Future = PanicOnPoll;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, in_call: bool) -> PanicOnPoll {
        assert!(!in_call, "the inner service panicked in call");
        PanicOnPoll
    }
}

#[tokio::test]
async fn a_panic_in_the_inner_service_gives_the_slot_back() {
    let shed = layer(1);
    let mut svc = shed.layer(Panicky);
    for in_call in [true, false] {
        let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut response = Box::pin(svc.call(in_call));
            let waker = std::task::Waker::noop();
            let _ = response.as_mut().poll(&mut Context::from_waker(waker));
        }));
        assert!(caught.is_err());
        assert_eq!(shed.in_flight(), 0, "in_call = {in_call}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_retry_layer_never_retries_an_overloaded_rejection() {
    let calls = Arc::new(AtomicUsize::new(0));
    let shed = layer(1);
    let below = shed.layer(controlled(&calls));
    let (_hold, held) = oneshot::channel();
    let mut blocker = below.clone();
    let _occupied = blocker.ready().await.unwrap().call(held);
    let budget = RetryBudget::default();
    let (_, request) = oneshot::channel();
    // A one-shot receiver cannot be cloned: give retries a fresh one each time.
    let svc = RetryLayer::builder()
        .max_attempts(5)
        .budget(budget.clone())
        .clone_requests_with(|_: &oneshot::Receiver<u32>| Some(oneshot::channel().1))
        .build()
        .unwrap()
        .layer(below);
    let err = svc.oneshot(request).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::Overloaded);
    assert_eq!(budget.retries(), 0);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the blocker got through"
    );
}

/// Counts calls in flight inside the inner service and remembers the most seen at once.
#[derive(Clone, Default)]
struct Watched {
    in_flight: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

/// One call in progress: from `call` until it completes, or until it is dropped unfinished
/// (the layer frees the slot as soon as the response is ready, before the caller drops it).
struct Watch {
    in_flight: Arc<AtomicUsize>,
    yields: u32,
    done: bool,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.done {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Future for Watch {
    type Output = Result<(), BoxError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.yields == 0 {
            self.done = true;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Poll::Ready(Ok(()));
        }
        self.yields -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Service<u32> for Watched {
    type Response = ();
    type Error = BoxError;
    type Future = Watch;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, yields: u32) -> Watch {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        Watch {
            in_flight: Arc::clone(&self.in_flight),
            yields,
            done: false,
        }
    }
}

#[test]
fn under_many_racing_callers_and_random_cancellations_the_limit_holds() {
    // Two worker threads, 16 tasks, 100,000 calls between them; a quarter of the responses
    // are dropped before they finish. Outcomes are checked, not timings.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let watched = Watched::default();
    let shed = layer(4);
    let admitted = Arc::new(AtomicUsize::new(0));
    runtime.block_on(async {
        let tasks: Vec<_> = (0..16_u64)
            .map(|task| {
                let mut svc = shed.layer(watched.clone());
                let admitted = Arc::clone(&admitted);
                tokio::spawn(async move {
                    let mut rng = SmallRng::seed_from_u64(task);
                    for _ in 0..6_250 {
                        let yields = rng.random_range(0..4);
                        let mut response = Box::pin(svc.call(yields));
                        if rng.random_bool(0.25) {
                            // Poll once, then cancel.
                            let _ = futures_poll_once(response.as_mut()).await;
                            drop(response);
                        } else if response.await.is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    assert!(
        watched.most.load(Ordering::SeqCst) <= 4,
        "the limit was exceeded"
    );
    assert_eq!(watched.in_flight.load(Ordering::SeqCst), 0);
    assert_eq!(shed.in_flight(), 0, "a slot leaked");
    assert!(admitted.load(Ordering::Relaxed) > 0);
}

/// Polls a future once and reports whether it was ready.
async fn futures_poll_once<F: Future + Unpin>(mut future: F) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut future).poll(cx).is_ready())).await
}

#[test]
fn every_invalid_setting_is_a_config_error() {
    let b = LoadShedLayer::builder;
    assert_eq!(
        b().build().unwrap_err(),
        ConfigError::Missing {
            layer: "LoadShedLayer",
            setting: "max_concurrency"
        }
    );
    for (limit, hint) in [
        (0, Duration::from_secs(1)),
        (1_000_001, Duration::from_secs(1)),
        (1, Duration::ZERO),
        (1, Duration::from_secs(3601)),
    ] {
        let err = b().max_concurrency(limit).retry_after(hint).build();
        assert!(
            matches!(
                err,
                Err(ConfigError::OutOfRange { .. } | ConfigError::ZeroDuration { .. })
            ),
            "{limit} {hint:?}"
        );
    }
}

/// A dependency that accepts at most `capacity` calls per second of virtual time and
/// rejects the rest at once; counts what it was sent and what it accepted.
#[derive(Clone)]
struct Capacity {
    capacity: u64,
    sent: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    slot: Arc<std::sync::Mutex<(u64, u64)>>,
    start: tokio::time::Instant,
}

impl Capacity {
    fn new(capacity: u64) -> Self {
        Capacity {
            capacity,
            sent: Arc::default(),
            accepted: Arc::default(),
            slot: Arc::default(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Service<()> for Capacity {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, (): ()) -> Self::Future {
        self.sent.fetch_add(1, Ordering::SeqCst);
        let second = self.start.elapsed().as_secs();
        let mut slot = self.slot.lock().unwrap();
        if slot.0 != second {
            *slot = (second, 0);
        }
        if slot.1 < self.capacity {
            slot.1 += 1;
            self.accepted.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(()))
        } else {
            std::future::ready(Err("busy: try later".into()))
        }
    }
}

/// 1,000 requests a second for 60 s through a throttle with `k` to a dependency that can
/// accept `capacity` a second; returns (sent, accepted) over the last 30 s.
async fn throttled_run(k: f64, capacity: u64) -> (usize, usize) {
    let dependency = Capacity::new(capacity);
    let layer = ThrottleLayer::builder()
        .k(k)
        .window(Duration::from_secs(10))
        .seed(7)
        .classifier(|result: &Result<(), BoxError>| result.is_err())
        .build()
        .unwrap();
    let mut svc = layer.layer(dependency.clone());
    let mut throttled = 0;
    let mut at_half = (0, 0);
    for ms in 0..60_000 {
        if ms == 30_000 {
            at_half = (
                dependency.sent.load(Ordering::SeqCst),
                dependency.accepted.load(Ordering::SeqCst),
            );
        }
        if let Err(err) = svc.ready().await.unwrap().call(()).await
            && err.is::<Throttled>()
        {
            assert_eq!(ErrorKind::of(&*err), ErrorKind::Overloaded);
            throttled += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(throttled > 0 || k * capacity as f64 >= 1000.0);
    (
        dependency.sent.load(Ordering::SeqCst) - at_half.0,
        dependency.accepted.load(Ordering::SeqCst) - at_half.1,
    )
}

#[tokio::test(start_paused = true)]
async fn a_throttled_client_sends_about_k_times_what_is_accepted() {
    // A dependency that can take half the offered load (it would reject half the calls),
    // and one that can take a tenth.
    for (k, capacity) in [(2.0, 500), (1.5, 500), (2.0, 100), (1.5, 100)] {
        let (sent, accepted) = throttled_run(k, capacity).await;
        let ratio = sent as f64 / accepted as f64;
        println!(
            "k = {k}, capacity {capacity}/s: sent {sent}, accepted {accepted}, ratio {ratio:.3}"
        );
        // The dependency accepts all it can, 30 s worth...
        assert!(
            accepted as f64 >= 0.97 * 30.0 * capacity as f64,
            "{accepted}"
        );
        // ...and is sent about k times that (never more than the 1,000 a second offered).
        let expected = k.min(1000.0 / capacity as f64);
        assert!(
            (ratio - expected).abs() < 0.1 * expected,
            "k = {k}: ratio {ratio}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_dependency_that_accepts_everything_is_never_throttled() {
    let dependency = Capacity::new(u64::MAX);
    let layer = ThrottleLayer::builder().seed(1).build().unwrap();
    let mut svc = layer.layer(dependency.clone());
    for _ in 0..10_000 {
        svc.ready().await.unwrap().call(()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(dependency.sent.load(Ordering::SeqCst), 10_000);
    assert_eq!(layer.rejection_probability(), 0.0);
}

#[test]
fn every_invalid_throttle_setting_is_a_config_error() {
    let b = ThrottleLayer::builder;
    for err in [
        b().k(0.5).build().unwrap_err(),
        b().k(f64::NAN).build().unwrap_err(),
        b().k(1001.0).build().unwrap_err(),
        b().window(Duration::ZERO).build().unwrap_err(),
        b().window(Duration::from_secs(7200)).build().unwrap_err(),
    ] {
        assert!(matches!(err, ConfigError::OutOfRange { .. }), "{err}");
    }
}
