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
use tower_firebreak::load_shed::{
    Aimd, Fixed, Gradient2, Limit, LoadShedLayer, Overloaded, QueueOrder, SlaGuard, ThrottleLayer,
    Throttled, Vegas,
};
use tower_firebreak::retry::{RetryBudget, RetryLayer};
use tower_firebreak::timeout::TimeoutLayer;

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
    racing_callers(layer(4), 4);
}

#[test]
fn under_many_racing_callers_a_moving_adaptive_limit_holds() {
    // Gradient2 between 1 and 4, folding a window every 10 calls at most: the limit moves
    // with the noise of real time while calls race for it.
    let shed = LoadShedLayer::builder()
        .limit(Gradient2::default().initial(4).min(1).max(4).tolerance(1.0))
        .sample_window(Duration::from_millis(1), 10)
        .build()
        .unwrap();
    racing_callers(shed, 4);
}

/// Two worker threads, 16 tasks, 100,000 calls between them; a quarter of the responses are
/// dropped before they finish. Outcomes are checked, not timings: never more than `most`
/// calls in the inner service at once, and no slot leaked.
fn racing_callers(shed: LoadShedLayer, most: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let watched = Watched::default();
    let admitted = Arc::new(AtomicUsize::new(0));
    runtime.block_on(async {
        let tasks: Vec<_> = (0..16_u64)
            .map(|task| {
                let mut svc = shed.layer(watched.clone());
                let admitted = Arc::clone(&admitted);
                let shed = shed.clone();
                let watched = watched.clone();
                tokio::spawn(async move {
                    let mut rng = SmallRng::seed_from_u64(task);
                    for _ in 0..6_250 {
                        let yields = rng.random_range(0..4);
                        if shed.queued() > 0 || rng.random_bool(0.5) {
                            // Through `poll_ready`, which may wait in the queue; one wait in
                            // ten is cut short and its clone dropped (the caller gave up).
                            let wait = std::time::Duration::from_micros(rng.random_range(1..50));
                            let give_up = rng.random_bool(0.1);
                            match tokio::time::timeout(wait, svc.ready()).await {
                                Ok(ready) => {
                                    ready.unwrap();
                                }
                                Err(_) if give_up => {
                                    svc = shed.layer(watched.clone());
                                    continue;
                                }
                                Err(_) => {
                                    svc.ready().await.unwrap();
                                }
                            }
                        }
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
        watched.most.load(Ordering::SeqCst) <= most,
        "the limit was exceeded"
    );
    assert_eq!(watched.in_flight.load(Ordering::SeqCst), 0);
    assert_eq!(shed.in_flight(), 0, "a slot leaked");
    assert_eq!(shed.queued(), 0, "a waiter was left behind");
    assert!(admitted.load(Ordering::Relaxed) > 0);
}

#[test]
fn under_many_racing_callers_waiting_in_a_queue_the_limit_holds() {
    for order in [QueueOrder::Fifo, QueueOrder::Lifo] {
        let shed = LoadShedLayer::builder()
            .max_concurrency(4)
            .queue(8, Duration::from_micros(200), order)
            .build()
            .unwrap();
        racing_callers(shed, 4);
    }
}

fn queued(limit: u64, capacity: usize, max_wait: Duration, order: QueueOrder) -> LoadShedLayer {
    LoadShedLayer::builder()
        .max_concurrency(limit)
        .queue(capacity, max_wait, order)
        .build()
        .unwrap()
}

/// Records the id of each call it receives; a call ends when its receiver does.
fn recording(
    calls: &Arc<std::sync::Mutex<Vec<u32>>>,
) -> impl Service<(u32, oneshot::Receiver<()>), Response = (), Error = BoxError, Future: Send>
+ Clone
+ Send
+ 'static {
    let calls = Arc::clone(calls);
    service_fn(move |(id, done): (u32, oneshot::Receiver<()>)| {
        calls.lock().unwrap().push(id);
        async move { done.await.map_err(BoxError::from) }
    })
}

/// Limit 1, held by call 0; callers 1, 2 and 3 queue in that order; the order they are
/// served in once call 0 ends.
async fn served_order(order: QueueOrder) -> Vec<u32> {
    let calls = Arc::default();
    let shed = queued(1, 3, Duration::from_secs(10), order);
    let mut svc = shed.layer(recording(&calls));
    let (finish, done) = oneshot::channel();
    let first = svc.ready().await.unwrap().call((0, done));
    let mut waiters = Vec::new();
    for id in 1..=3 {
        let (now, done) = oneshot::channel();
        now.send(()).unwrap();
        waiters.push(tokio::spawn(svc.clone().oneshot((id, done))));
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        assert_eq!(shed.queued(), u64::from(id));
    }
    finish.send(()).unwrap();
    first.await.unwrap();
    for waiter in waiters {
        waiter.await.unwrap().unwrap();
    }
    assert_eq!((shed.in_flight(), shed.queued()), (0, 0));
    calls.lock().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn a_fifo_queue_serves_the_longest_waiting_first() {
    assert_eq!(served_order(QueueOrder::Fifo).await, [0, 1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn a_lifo_queue_serves_the_newest_first() {
    assert_eq!(served_order(QueueOrder::Lifo).await, [0, 3, 2, 1]);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_rejected_after_max_wait_and_a_full_queue_rejects_at_once() {
    let calls = Arc::default();
    let shed = queued(1, 1, Duration::from_millis(100), QueueOrder::Fifo);
    let mut svc = shed.layer(recording(&calls));
    let (_hold, done) = oneshot::channel();
    let _first = svc.ready().await.unwrap().call((0, done));
    let start = tokio::time::Instant::now();
    let waiter = tokio::spawn(svc.clone().oneshot((1, oneshot::channel().1)));
    tokio::task::yield_now().await;
    assert_eq!(shed.queued(), 1);
    // The queue (capacity 1) is full: the next caller is rejected without waiting.
    let err = svc
        .clone()
        .oneshot((2, oneshot::channel().1))
        .await
        .unwrap_err();
    assert!(err.is::<Overloaded>());
    assert_eq!(start.elapsed(), Duration::ZERO);
    // The waiter gives up after 100 ms, with `Overloaded`, never having reached the service.
    let err = waiter.await.unwrap().unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::Overloaded);
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!((shed.in_flight(), shed.queued()), (1, 0));
    assert_eq!(*calls.lock().unwrap(), [0]);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_gives_up_leaves_the_queue_and_holds_no_slot() {
    let calls = Arc::default();
    let shed = queued(1, 4, Duration::from_secs(10), QueueOrder::Fifo);
    let mut svc = shed.layer(recording(&calls));
    let (finish, done) = oneshot::channel();
    let first = svc.ready().await.unwrap().call((0, done));
    // A waiter whose task is cancelled while it waits.
    let waiter = tokio::spawn(svc.clone().oneshot((1, oneshot::channel().1)));
    tokio::task::yield_now().await;
    assert_eq!(shed.queued(), 1);
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    assert_eq!(shed.queued(), 0);
    // A waiter handed a slot, then dropped before using it: the slot comes back.
    let mut late = svc.clone();
    let pending = std::future::poll_fn(|cx| Poll::Ready(late.poll_ready(cx).is_pending())).await;
    assert!(pending);
    assert_eq!(shed.queued(), 1);
    finish.send(()).unwrap();
    first.await.unwrap();
    assert_eq!(
        (shed.in_flight(), shed.queued()),
        (1, 0),
        "handed to the waiter"
    );
    drop(late);
    assert_eq!(shed.in_flight(), 0, "given back");
    assert_eq!(*calls.lock().unwrap(), [0]);
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

#[test]
fn every_invalid_adaptive_setting_is_a_config_error() {
    let build = |limit: Limit| LoadShedLayer::builder().limit(limit).build().unwrap_err();
    let ms = Duration::from_millis;
    for err in [
        build(Fixed::new(0).into()),
        build(Aimd::default().backoff_ratio(f64::NAN).into()),
        build(Aimd::default().backoff_ratio(1.0).into()),
        build(Aimd::default().initial(0).into()),
        build(Aimd::default().max(2_000_000).into()),
        build(Aimd::default().initial(5).min(10).into()),
        build(Gradient2::default().tolerance(f64::INFINITY).into()),
        build(Gradient2::default().smoothing(0.0).into()),
        build(Gradient2::default().queue_size(-1.0).into()),
        build(Gradient2::default().long_window(0).into()),
        build(Vegas::default().alpha(0.0).into()),
        build(Vegas::default().probe_interval(ms(10)).into()),
        build(SlaGuard::new(ms(10)).percentile(1.0).into()),
        build(SlaGuard::new(ms(10)).percentile(f64::NAN).into()),
        build(SlaGuard::new(Duration::from_secs(7200)).into()),
    ] {
        assert!(matches!(err, ConfigError::OutOfRange { .. }), "{err}");
    }
    for err in [
        build(Aimd::default().min(10).max(5).into()),
        build(Vegas::default().alpha(6.0).beta(3.0).into()),
    ] {
        assert!(matches!(err, ConfigError::MinAboveMax { .. }), "{err}");
    }
    for err in [
        build(SlaGuard::new(Duration::ZERO).into()),
        build(Aimd::default().drop_latency(Duration::ZERO).into()),
    ] {
        assert!(matches!(err, ConfigError::ZeroDuration { .. }), "{err}");
    }
    let b = LoadShedLayer::builder;
    for err in [
        b().max_concurrency(5)
            .limit(Aimd::default())
            .build()
            .unwrap_err(),
        b().max_concurrency(5)
            .sample_window(ms(100), 10)
            .build()
            .unwrap_err(),
    ] {
        assert!(matches!(err, ConfigError::Incompatible { .. }), "{err}");
    }
    for (window, samples) in [
        (Duration::ZERO, 10),
        (Duration::from_secs(61), 10),
        (ms(100), 0),
    ] {
        let err = b()
            .limit(Aimd::default())
            .sample_window(window, samples)
            .build()
            .unwrap_err();
        assert!(matches!(err, ConfigError::OutOfRange { .. }), "{err}");
    }
}

/// A service that never answers: with a timeout inside the shedding layer, every call ends
/// as a timeout, a drop.
fn hanging_behind_a_timeout(
    timeout: Duration,
) -> impl Service<(), Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static {
    TimeoutLayer::new(timeout)
        .unwrap()
        .layer(service_fn(|(): ()| {
            std::future::pending::<Result<(), BoxError>>()
        }))
}

#[tokio::test(start_paused = true)]
async fn drops_lower_an_adaptive_limit_and_a_rejection_reports_the_limit_it_met() {
    // AIMD from 4, halving after a window with a drop; a window of 1 ms and 1 sample.
    let shed = LoadShedLayer::builder()
        .limit(Aimd::default().initial(4).backoff_ratio(0.5))
        .sample_window(Duration::from_millis(1), 1)
        .build()
        .unwrap();
    let mut svc = shed.layer(hanging_behind_a_timeout(Duration::from_millis(10)));
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(())))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!((shed.in_flight(), shed.limit()), (4, 4));
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(err.downcast_ref::<Overloaded>().unwrap().limit(), 4);
    // All four time out (drops): the first to complete folds a window and halves the limit.
    for call in calls {
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(ErrorKind::of(&*err), ErrorKind::TimedOut);
    }
    assert_eq!(svc.current_limit(), 2);
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(svc.clone().oneshot(())))
        .collect();
    tokio::task::yield_now().await;
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    assert_eq!(err.downcast_ref::<Overloaded>().unwrap().limit(), 2);
    drop(held);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_call_is_not_sampled() {
    // Any call slower than 5 ms counts as a drop; every sample folds a window.
    let shed = LoadShedLayer::builder()
        .limit(
            Aimd::default()
                .initial(10)
                .drop_latency(Duration::from_millis(5)),
        )
        .sample_window(Duration::from_millis(1), 1)
        .build()
        .unwrap();
    let slow = service_fn(|(): ()| async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok::<_, BoxError>(())
    });
    let mut svc = shed.layer(slow);
    let cancelled = svc.ready().await.unwrap().call(());
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(cancelled);
    assert_eq!((shed.in_flight(), shed.limit()), (0, 10), "not sampled");
    // The same call completed is sampled: 50 ms is slow, the limit backs off.
    svc.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(shed.limit(), 9);
}

/// One worker taking `service_time` per call, with a FIFO queue in front of it.
fn one_worker(
    service_time: Duration,
) -> impl Service<(), Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static {
    let worker = Arc::new(tokio::sync::Semaphore::new(1));
    service_fn(move |(): ()| {
        let worker = Arc::clone(&worker);
        async move {
            let _worker = worker.acquire().await.map_err(BoxError::from)?;
            tokio::time::sleep(service_time).await;
            Ok::<_, BoxError>(())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_latency_objective_sheds_once_admitted_calls_breach_it() {
    // One worker, 10 ms a call: 100 calls a second at most, and with `n` calls in it the
    // last waits `n × 10 ms`. The objective, 35 ms, allows 3.
    let shed = LoadShedLayer::builder()
        .latency_objective(Duration::from_millis(35))
        .sample_window(Duration::from_millis(50), 5)
        .build()
        .unwrap();
    let svc = shed.layer(one_worker(Duration::from_millis(10)));
    assert_eq!(shed.limit(), 20);
    // 4 calls every 10 ms for 3 s: 4 times what it can serve.
    let mut calls = Vec::new();
    for tick in 0..300 {
        for _ in 0..4 {
            let call = svc.clone().oneshot(());
            calls.push(tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                let admitted = call.await.is_ok();
                (tick, admitted, start.elapsed())
            }));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut settled = Vec::new();
    for call in calls {
        let (tick, admitted, latency) = call.await.unwrap();
        if admitted && tick >= 100 {
            settled.push(latency);
        }
    }
    let over = |bound: u64| {
        settled
            .iter()
            .filter(|latency| **latency > Duration::from_millis(bound))
            .count()
    };
    let (late, very_late) = (over(35), over(45));
    println!(
        "latency objective: limit {}, {} admitted in the last 2 s, {late} over 35 ms, \
         {very_late} over 45 ms",
        shed.limit(),
        settled.len()
    );
    assert!(
        shed.limit() <= 4,
        "the guard cut the limit: {}",
        shed.limit()
    );
    // The worker stays busy: at least 95% of its 200 calls in 2 s.
    assert!(settled.len() >= 190, "{}", settled.len());
    // The p99 is within one service time of the objective (see `SlaGuard`: each probe of
    // one more call costs a step of 10 ms here), and most calls are within the objective.
    assert!(very_late * 100 <= settled.len(), "{very_late} over 45 ms");
    assert!(late * 10 <= settled.len(), "{late} over 35 ms");
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

/// A wait that timed out leaves a rejection for the next `call`, but only while the overload
/// lasts: polled again once the limit has room, the clone is served.
#[tokio::test(start_paused = true)]
async fn a_rejection_verdict_does_not_outlive_the_overload() {
    let calls = Arc::default();
    let shed = queued(1, 1, Duration::from_millis(10), QueueOrder::Fifo);
    let mut svc = shed.layer(recording(&calls));
    let (finish, done) = oneshot::channel();
    let first = svc.ready().await.unwrap().call((0, done));
    let mut late = svc.clone();
    // Waits in the queue, then times out: ready, with a rejection pending.
    late.ready().await.unwrap();
    // The overload ends.
    finish.send(()).unwrap();
    first.await.unwrap();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!((shed.in_flight(), shed.queued()), (0, 0));
    // An hour later, with nothing in flight, the same clone is served.
    let (finish, done) = oneshot::channel();
    finish.send(()).unwrap();
    let result = late.ready().await.unwrap().call((1, done)).await;
    assert!(
        result.is_ok(),
        "rejected although 0 of 1 slots are in flight: {result:?}"
    );
}

/// A waiter whose `ready()` future is dropped (an outer timeout) while its service is kept
/// does not keep its place past `max_wait`: the next caller to queue removes it.
#[tokio::test(start_paused = true)]
async fn an_abandoned_waiter_leaves_the_queue_at_its_deadline() {
    let calls = Arc::default();
    let shed = queued(1, 1, Duration::from_millis(50), QueueOrder::Fifo);
    let mut svc = shed.layer(recording(&calls));
    let (finish, done) = oneshot::channel();
    let first = svc.ready().await.unwrap().call((0, done));
    let mut kept = svc.clone();
    assert!(
        tokio::time::timeout(Duration::from_millis(10), kept.ready())
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(shed.queued(), 1, "nobody has looked yet");
    // Another caller queues: the overdue entry goes, and this one takes the place.
    let mut next = svc.clone();
    assert!(
        tokio::time::timeout(Duration::from_millis(10), next.ready())
            .await
            .is_err()
    );
    assert_eq!(shed.queued(), 1, "only the new waiter");
    let _ = (finish, first, kept);
}

/// Same, when a slot frees up after the abandoned waiter's deadline: it is not handed to the
/// idle clone, so a live caller gets it.
#[tokio::test(start_paused = true)]
async fn a_slot_freed_after_an_abandoned_waiters_deadline_goes_to_a_live_caller() {
    let calls = Arc::default();
    let shed = queued(1, 1, Duration::from_millis(50), QueueOrder::Fifo);
    let mut svc = shed.layer(recording(&calls));
    let (finish, done) = oneshot::channel();
    let first = svc.ready().await.unwrap().call((0, done));
    let mut kept = svc.clone();
    let _ = tokio::time::timeout(Duration::from_millis(10), kept.ready()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    finish.send(()).unwrap();
    first.await.unwrap();
    // The idle clone's deadline passed long ago: the slot is free for this caller.
    let (now, done) = oneshot::channel();
    now.send(()).unwrap();
    let result = svc.clone().oneshot((1, done)).await;
    assert!(
        result.is_ok(),
        "shed with in_flight={} (the slot went to the idle clone): {result:?}",
        shed.in_flight()
    );
    drop(kept);
}

/// A queue rejection reports the limit the wait failed against, not the one at `call` time.
#[tokio::test(start_paused = true)]
async fn a_queue_rejection_reports_the_limit_it_waited_against() {
    let shed = LoadShedLayer::builder()
        .limit(Aimd::default().initial(4).backoff_ratio(0.5))
        .sample_window(Duration::from_millis(1), 1)
        .queue(1, Duration::from_millis(5), QueueOrder::Fifo)
        .build()
        .unwrap();
    let mut svc = shed.layer(hanging_behind_a_timeout(Duration::from_millis(10)));
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(())))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!((shed.in_flight(), shed.limit()), (4, 4));
    // Waits 5 ms against a full limit of 4, then gives up: the next call is rejected.
    svc.ready().await.unwrap();
    for call in calls {
        call.await.unwrap().unwrap_err();
    }
    assert_eq!((shed.in_flight(), shed.limit()), (0, 2));
    let err = svc.call(()).await.unwrap_err();
    let overloaded = err.downcast_ref::<Overloaded>().unwrap();
    assert_eq!(overloaded.limit(), 4, "{overloaded}");
}
