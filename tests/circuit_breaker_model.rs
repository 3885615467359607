//! The circuit breaker against a sequential reference model, over random operation sequences.
//!
//! Each case builds a breaker with random settings (consecutive failures or a count-window
//! failure rate with `min_calls`; 1 to 3 half-open probes and a probe success ratio; a fixed
//! or exponential open duration with no jitter; a half-open maximum wait; backpressure on or
//! off), two service clones over a dependency whose every response the test controls, and a
//! [`Handle`]. It then applies a random sequence of operations:
//!
//! - **call** through one of the clones (`poll_ready`, then `call`): the breaker admits the
//!   call (it reaches the dependency) or rejects it with [`CircuitOpen`];
//! - **complete** an outstanding call with a success, a failure, or a result the classifier
//!   calls [`Outcome::Ignored`], and poll it to completion;
//! - **cancel** an outstanding call: drop its future, polled once or never;
//! - **advance** tokio's paused clock, stopping at every instant where the model expects a
//!   timer (end of the open period, half-open stall check) and letting the breaker's timer
//!   tasks run there;
//! - **force open**, **disable**, **reset** through the handle.
//!
//! After every operation the test compares the breaker with [`Model`], a plain sequential
//! transcription of the documented behaviour (`circuit_breaker` module docs and the builder
//! docs): the admission decision and the rejection's details, `handle.state()`, and the
//! metrics that follow from the documentation (totals, current window, consecutive trips,
//! time in state, retry-after).
//!
//! # Determinism
//!
//! The crate's tests must not depend on chance or on the machine, so the runner is fixed:
//! ChaCha seeded with the constant [`SEED`], and no failure persistence (a
//! `proptest-regressions` file would make a run depend on earlier runs, and a fixed seed
//! already replays a failure). Every run checks the same [`CASES`] cases, about 12 s in a
//! debug build; a failure shrinks to a minimal case and prints it with the model's state,
//! and each one found so far is a named test at the end of this file. To explore other cases
//! locally, change [`SEED`] or [`CASES`].
//!
//! Time is tokio's paused clock, advanced only by the test, in a current-thread runtime built
//! once per case, so a case's outcome depends on nothing but its operations.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, RngSeed, TestCaseError};
use tokio::time::Instant;
use tower::{Layer, Service, service_fn};
use tower_firebreak::circuit_breaker::{
    CircuitBreakerLayer, CircuitBreakerLayerBuilder, CircuitOpen, Handle, Outcome, State,
};
use tower_firebreak::error::BoxError;

/// Cases checked by every run (`cargo test`, debug): see the module docs.
const CASES: u32 = 10_000;
/// The runner's fixed seed: see the module docs.
const SEED: u64 = 0x0B5E_55ED_F1BE_B4EA;

// ---------------------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------------------

/// The trip model, as configured.
#[derive(Debug, Clone, Copy)]
enum Trip {
    /// `n` failures with no success between them.
    Consecutive(u32),
    /// At least `percent`% of the last `calls` calls failed, once `min_calls` calls were made
    /// in this closed cycle.
    Rate {
        percent: u64,
        calls: u64,
        min_calls: u64,
    },
}

/// How long the breaker stays open after a trip (no jitter).
#[derive(Debug, Clone, Copy)]
enum Open {
    Fixed(Duration),
    /// `initial * multiplier^(trips - 1)`, at most `max`. Whole seconds and whole
    /// multipliers, so the durations are exact.
    Exponential {
        initial_secs: u64,
        multiplier: u32,
        max_secs: u64,
    },
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    trip: Trip,
    probes: u32,
    /// The probe success ratio, in percent.
    ratio_percent: u32,
    open: Open,
    half_open_max_wait: Duration,
    backpressure: bool,
}

impl Settings {
    /// Successful probes needed to close: `ceil(ratio * probes)`, at least 1.
    fn probes_to_close(&self) -> u32 {
        (self.ratio_percent * self.probes).div_ceil(100).max(1)
    }

    fn open_duration(&self, trips: u64) -> Duration {
        match self.open {
            Open::Fixed(duration) => duration,
            Open::Exponential {
                initial_secs,
                multiplier,
                max_secs,
            } => {
                let mut secs = initial_secs;
                for _ in 1..trips {
                    secs = (secs * u64::from(multiplier)).min(max_secs);
                }
                Duration::from_secs(secs.min(max_secs))
            }
        }
    }

    fn layer(&self) -> CircuitBreakerLayer<Classifier> {
        let builder = CircuitBreakerLayer::builder();
        let builder = match self.trip {
            Trip::Consecutive(n) => builder.consecutive_failures(n),
            Trip::Rate {
                percent,
                calls,
                min_calls,
            } => builder
                .failure_rate(percent as f64 / 100.0, calls)
                .min_calls(min_calls),
        };
        let builder = match self.open {
            Open::Fixed(duration) => builder.open_duration(duration),
            Open::Exponential {
                initial_secs,
                multiplier,
                max_secs,
            } => builder.open_duration_exponential(
                Duration::from_secs(initial_secs),
                f64::from(multiplier),
                Duration::from_secs(max_secs),
            ),
        };
        builder
            .half_open_probes(self.probes)
            .probe_success_ratio(f64::from(self.ratio_percent) / 100.0)
            .half_open_max_wait(self.half_open_max_wait)
            .jitter(0.0)
            .seed(1)
            .stripes(2)
            .backpressure(self.backpressure)
            .classifier(classify as Classifier)
            .build()
            .expect("valid settings")
    }
}

/// The states, as the handle shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    Disabled,
}

impl Phase {
    fn state(self) -> State {
        match self {
            Phase::Closed => State::Closed,
            Phase::Open => State::Open,
            Phase::HalfOpen => State::HalfOpen,
            Phase::ForcedOpen => State::ForcedOpen,
            Phase::Disabled => State::Disabled,
        }
    }
}

/// What an admitted call was admitted as: in which cycle (generation), and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ticket {
    Closed(u64),
    Probe(u64),
    Untracked,
}

/// How a call ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Success,
    Failure,
    Ignored,
}

/// What the model expects of a call.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Admission {
    Admitted(Ticket),
    /// Rejected with `CircuitOpen`: forced or not, and the retry-after hint.
    Rejected {
        forced: bool,
        retry_after: Option<Duration>,
    },
    /// Backpressure mode, open: `poll_ready` is pending, no call is made.
    NotReady,
}

/// The documented behaviour, one operation at a time. Time is virtual, as a duration since
/// the breaker was built.
#[derive(Debug)]
struct Model {
    settings: Settings,
    now: Duration,
    phase: Phase,
    /// Grows at every transition; an outcome of an earlier generation changes nothing.
    generation: u64,
    /// When the current phase began.
    since: Duration,
    /// The outcomes counted in the current closed cycle, oldest first (`true`: a failure).
    cycle: Vec<bool>,
    /// Open: when the open period ends.
    open_until: Duration,
    /// Trips since the breaker last closed (by probes or reset).
    trips: u64,
    /// Half-open: probes holding a slot, probes finished, probes that succeeded, and the next
    /// stall check (every `half_open_max_wait` from the start of half-open).
    in_flight: u32,
    finished: u32,
    succeeded: u32,
    next_stall_check: Duration,
    /// Probes finished at the previous stall check.
    finished_at_last_check: u32,
    /// Calls admitted while closed that succeeded / failed, since the breaker was built.
    successes: u64,
    failures: u64,
}

impl Model {
    fn new(settings: Settings) -> Model {
        Model {
            settings,
            now: Duration::ZERO,
            phase: Phase::Closed,
            generation: 0,
            since: Duration::ZERO,
            cycle: Vec::new(),
            open_until: Duration::ZERO,
            trips: 0,
            in_flight: 0,
            finished: 0,
            succeeded: 0,
            next_stall_check: Duration::ZERO,
            finished_at_last_check: 0,
            successes: 0,
            failures: 0,
        }
    }

    fn enter(&mut self, phase: Phase) {
        self.phase = phase;
        self.generation += 1;
        self.since = self.now;
        match phase {
            Phase::Closed => {
                self.cycle.clear();
                self.trips = 0;
            }
            Phase::Open => {
                self.trips += 1;
                self.open_until = self.now + self.settings.open_duration(self.trips);
            }
            Phase::HalfOpen => {
                self.in_flight = 0;
                self.finished = 0;
                self.succeeded = 0;
                self.next_stall_check = self.now + self.settings.half_open_max_wait;
                self.finished_at_last_check = 0;
            }
            Phase::ForcedOpen | Phase::Disabled => {}
        }
    }

    fn call(&mut self) -> Admission {
        let not_ready = self.settings.backpressure;
        match self.phase {
            Phase::Open | Phase::ForcedOpen if not_ready => Admission::NotReady,
            Phase::Closed => Admission::Admitted(Ticket::Closed(self.generation)),
            Phase::Disabled => Admission::Admitted(Ticket::Untracked),
            Phase::HalfOpen if self.in_flight + self.finished < self.settings.probes => {
                self.in_flight += 1;
                Admission::Admitted(Ticket::Probe(self.generation))
            }
            Phase::HalfOpen => Admission::Rejected {
                forced: false,
                retry_after: None,
            },
            Phase::Open => Admission::Rejected {
                forced: false,
                retry_after: Some(self.open_until - self.now),
            },
            Phase::ForcedOpen => Admission::Rejected {
                forced: true,
                retry_after: None,
            },
        }
    }

    fn complete(&mut self, ticket: Ticket, verdict: Verdict) {
        match (ticket, verdict) {
            (Ticket::Untracked, _) | (Ticket::Closed(_), Verdict::Ignored) => {}
            (Ticket::Closed(generation), _) => {
                let failed = verdict == Verdict::Failure;
                if failed {
                    self.failures += 1;
                } else {
                    self.successes += 1;
                }
                // "An outcome from an earlier cycle changes nothing."
                if generation == self.generation {
                    self.cycle.push(failed);
                    if failed && self.trips_now() {
                        self.enter(Phase::Open);
                    }
                }
            }
            (Ticket::Probe(generation), _) if generation != self.generation => {}
            (Ticket::Probe(_), Verdict::Ignored) => self.in_flight -= 1,
            (Ticket::Probe(_), _) => {
                self.in_flight -= 1;
                self.finished += 1;
                self.succeeded += u32::from(verdict == Verdict::Success);
                let to_close = self.settings.probes_to_close();
                let failed = self.finished - self.succeeded;
                if self.succeeded >= to_close {
                    self.enter(Phase::Closed);
                } else if failed > self.settings.probes - to_close {
                    // Too many failed for the remaining probes to reach `to_close`.
                    self.enter(Phase::Open);
                }
            }
        }
    }

    fn cancel(&mut self, ticket: Ticket) {
        // A cancelled call counts as nothing; a probe gives its slot back.
        if ticket == Ticket::Probe(self.generation) {
            self.in_flight -= 1;
        }
    }

    /// Whether the closed cycle's outcomes (the last one a failure) say "open".
    fn trips_now(&self) -> bool {
        match self.settings.trip {
            Trip::Consecutive(n) => self.current_run() >= u64::from(n),
            Trip::Rate {
                percent,
                calls,
                min_calls,
            } => {
                let made = self.cycle.len() as u64;
                let window = made.min(calls);
                made >= min_calls && self.failures_in_window(window) >= needed(percent, window)
            }
        }
    }

    /// Failures at the end of the cycle with no success after them.
    fn current_run(&self) -> u64 {
        self.cycle
            .iter()
            .rev()
            .take_while(|&&failed| failed)
            .count() as u64
    }

    fn failures_in_window(&self, window: u64) -> u64 {
        let start = self.cycle.len() - window as usize;
        self.cycle[start..].iter().filter(|&&failed| failed).count() as u64
    }

    /// The next instant a timer of the current phase fires.
    fn next_timer(&self) -> Option<Duration> {
        match self.phase {
            Phase::Open => Some(self.open_until),
            Phase::HalfOpen => Some(self.next_stall_check),
            Phase::Closed | Phase::ForcedOpen | Phase::Disabled => None,
        }
    }

    /// Runs the timer due now.
    fn fire(&mut self) {
        match self.phase {
            Phase::Open if self.open_until == self.now => self.enter(Phase::HalfOpen),
            Phase::HalfOpen if self.next_stall_check == self.now => {
                // Probes in flight and none finished since the last check: they hang, reopen.
                // Otherwise check again later.
                if self.in_flight > 0 && self.finished == self.finished_at_last_check {
                    self.enter(Phase::Open);
                } else {
                    self.finished_at_last_check = self.finished;
                    self.next_stall_check += self.settings.half_open_max_wait;
                }
            }
            _ => {}
        }
    }

    /// The metrics the handle should report.
    fn metrics(&self) -> ExpectedMetrics {
        let (window_calls, window_failures) = match (self.phase, self.settings.trip) {
            (Phase::Closed, Trip::Consecutive(_)) => (self.current_run(), self.current_run()),
            (Phase::Closed, Trip::Rate { percent, calls, .. }) => {
                let window = (self.cycle.len() as u64).min(calls);
                // "Counted up to the number that trips the breaker."
                let remembered = needed(percent, calls);
                (window, self.failures_in_window(window).min(remembered))
            }
            _ => (0, 0),
        };
        ExpectedMetrics {
            state: self.phase.state(),
            time_in_state: self.now - self.since,
            successes: self.successes,
            failures: self.failures,
            window_calls,
            window_failures,
            consecutive_trips: self.trips,
            retry_after: (self.phase == Phase::Open).then(|| self.open_until - self.now),
        }
    }
}

/// `ceil(percent% of calls)`, at least 1: failures among `calls` calls that reach the rate.
fn needed(percent: u64, calls: u64) -> u64 {
    (percent * calls).div_ceil(100).max(1)
}

#[derive(Debug, PartialEq)]
struct ExpectedMetrics {
    state: State,
    time_in_state: Duration,
    successes: u64,
    failures: u64,
    window_calls: u64,
    window_failures: u64,
    consecutive_trips: u64,
    retry_after: Option<Duration>,
}

fn observed_metrics(handle: &Handle) -> ExpectedMetrics {
    let m = handle.metrics();
    ExpectedMetrics {
        state: m.state,
        time_in_state: m.time_in_state,
        successes: m.successes,
        failures: m.failures,
        window_calls: m.window_calls,
        window_failures: m.window_failures,
        consecutive_trips: m.consecutive_trips,
        retry_after: m.retry_after,
    }
}

// ---------------------------------------------------------------------------------------
// The system under test
// ---------------------------------------------------------------------------------------

/// A response the test hands to a call when it decides the call completes.
type Reply = Result<u32, BoxError>;
type Slot = Arc<Mutex<Option<Reply>>>;

/// The dependency's response future: pending until the test puts the reply in its slot.
/// (Polled only by the test, with a no-op waker, so it registers no waker.)
struct Answer(Slot);

impl Future for Answer {
    type Output = Reply;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Reply> {
        match self.0.lock().unwrap().take() {
            Some(reply) => Poll::Ready(reply),
            None => Poll::Pending,
        }
    }
}

/// The reply the classifier calls ignored (a "404").
const IGNORED: u32 = 404;

type Classifier = fn(&Reply) -> Outcome;

fn classify(reply: &Reply) -> Outcome {
    match reply {
        Ok(IGNORED) => Outcome::Ignored,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    }
}

fn reply(verdict: Verdict) -> Reply {
    match verdict {
        Verdict::Success => Ok(200),
        Verdict::Ignored => Ok(IGNORED),
        Verdict::Failure => Err("the dependency failed".into()),
    }
}

type CallFuture = Pin<Box<dyn Future<Output = Reply>>>;

/// An admitted call the test has not completed or cancelled yet.
struct Outstanding {
    future: CallFuture,
    slot: Slot,
    ticket: Ticket,
}

fn poll_once(future: &mut CallFuture) -> Poll<Reply> {
    future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
}

/// Lets the breaker's timer tasks (and any task they spawn) run at the current instant.
async fn settle() {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// A call through service clone `clone` (0 or 1).
    Call {
        clone: usize,
    },
    /// Outstanding call number `call` (modulo how many there are) completes.
    Complete {
        call: usize,
        verdict: Verdict,
    },
    /// Outstanding call number `call` is dropped, after one poll or none.
    Cancel {
        call: usize,
        polled: bool,
    },
    /// Virtual time moves on.
    Advance {
        by: Duration,
    },
    ForceOpen,
    Disable,
    Reset,
}

fn settings() -> impl Strategy<Value = Settings> {
    let trip = prop_oneof![
        (1u32..=4).prop_map(Trip::Consecutive),
        (
            prop::sample::select(vec![25u64, 30, 50, 60, 75, 100]),
            1u64..=6,
            1u64..=7
        )
            .prop_map(|(percent, calls, min_calls)| Trip::Rate {
                percent,
                calls,
                min_calls,
            }),
    ];
    let open = prop_oneof![
        (1u64..=3).prop_map(|secs| Open::Fixed(Duration::from_secs(secs))),
        (1u64..=2, 1u32..=3, 1u64..=3).prop_map(|(initial_secs, multiplier, extra)| {
            Open::Exponential {
                initial_secs,
                multiplier,
                max_secs: initial_secs + extra,
            }
        }),
    ];
    (
        trip,
        1u32..=3,
        prop::sample::select(vec![30u32, 50, 67, 100]),
        open,
        1u64..=4,
        prop::bool::weighted(0.25),
    )
        .prop_map(
            |(trip, probes, ratio_percent, open, wait_secs, backpressure)| Settings {
                trip,
                probes,
                ratio_percent,
                open,
                half_open_max_wait: Duration::from_secs(wait_secs),
                backpressure,
            },
        )
}

fn verdict() -> impl Strategy<Value = Verdict> {
    prop_oneof![
        4 => Just(Verdict::Success),
        4 => Just(Verdict::Failure),
        1 => Just(Verdict::Ignored),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (0usize..2).prop_map(|clone| Op::Call { clone }),
        30 => (any::<usize>(), verdict()).prop_map(|(call, verdict)| Op::Complete { call, verdict }),
        6 => (any::<usize>(), any::<bool>()).prop_map(|(call, polled)| Op::Cancel { call, polled }),
        // Mostly short steps, sometimes past an open period or a half-open wait.
        16 => prop_oneof![3 => 1u64..=1_200, 1 => 1_000u64..=9_000]
            .prop_map(|ms| Op::Advance { by: Duration::from_millis(ms) }),
        1 => Just(Op::ForceOpen),
        1 => Just(Op::Disable),
        1 => Just(Op::Reset),
    ]
}

// ---------------------------------------------------------------------------------------
// The comparison
// ---------------------------------------------------------------------------------------

/// Makes one call through `svc` and checks the breaker's decision against `expected`.
fn call<S>(
    svc: &mut S,
    reached: &AtomicUsize,
    expected: Admission,
    outstanding: &mut Vec<Outstanding>,
) -> Result<(), String>
where
    S: Service<Slot, Response = u32, Error = BoxError>,
    S::Future: 'static,
{
    let slot = Slot::default();
    let before = reached.load(Ordering::SeqCst);
    let mut future: CallFuture = Box::pin(svc.call(Arc::clone(&slot)));
    let admitted = reached.load(Ordering::SeqCst) > before;
    match expected {
        Admission::Admitted(ticket) if admitted => {
            outstanding.push(Outstanding {
                future,
                slot,
                ticket,
            });
            Ok(())
        }
        Admission::Admitted(_) => Err("admission expected, the call was rejected".into()),
        Admission::Rejected { .. } if admitted => {
            Err("rejection expected, the call reached the dependency".into())
        }
        Admission::Rejected {
            forced,
            retry_after,
        } => {
            let Poll::Ready(Err(error)) = poll_once(&mut future) else {
                return Err("a rejected call must fail at once".into());
            };
            let Some(open) = error.downcast_ref::<CircuitOpen>() else {
                return Err(format!("rejected with {error}, not CircuitOpen"));
            };
            if (open.is_forced(), open.retry_after()) != (forced, retry_after) {
                return Err(format!(
                    "rejected with (forced, retry_after) = {:?}, expected {:?}",
                    (open.is_forced(), open.retry_after()),
                    (forced, retry_after)
                ));
            }
            Ok(())
        }
        Admission::NotReady => unreachable!("no call is made"),
    }
}

/// Runs one case in a fresh current-thread runtime with a paused clock.
fn run(settings: Settings, ops: &[Op]) -> Result<(), TestCaseError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(compare(settings, ops))
}

async fn compare(settings: Settings, ops: &[Op]) -> Result<(), TestCaseError> {
    let layer = settings.layer();
    let handle = layer.handle();
    let reached = Arc::new(AtomicUsize::new(0));
    let dependency = {
        let reached = Arc::clone(&reached);
        service_fn(move |slot: Slot| {
            reached.fetch_add(1, Ordering::SeqCst);
            Answer(slot)
        })
    };
    let mut clones = [layer.layer(dependency.clone()), layer.layer(dependency)];
    let started = Instant::now();
    let mut model = Model::new(settings);
    let mut outstanding: Vec<Outstanding> = Vec::new();

    for (step, op) in ops.iter().enumerate() {
        // What a failure message shows: the operation and the model's state after it.
        macro_rules! context {
            () => {
                format!("step {step}: {op:?}\nmodel: {model:#?}")
            };
        }
        match *op {
            Op::Call { clone } => {
                let expected = model.call();
                let svc = &mut clones[clone];
                let ready = svc.poll_ready(&mut Context::from_waker(Waker::noop()));
                if expected == Admission::NotReady {
                    // Backpressure: no call while open.
                    prop_assert!(ready.is_pending(), "{}", context!());
                } else {
                    prop_assert!(matches!(ready, Poll::Ready(Ok(()))), "{}", context!());
                    call(svc, &reached, expected, &mut outstanding)
                        .map_err(|e| TestCaseError::fail(format!("{e}\n{}", context!())))?;
                }
            }
            Op::Complete { call, verdict } => {
                if outstanding.is_empty() {
                    continue;
                }
                let mut done = outstanding.remove(call % outstanding.len());
                *done.slot.lock().unwrap() = Some(reply(verdict));
                let Poll::Ready(result) = poll_once(&mut done.future) else {
                    return Err(TestCaseError::fail(format!(
                        "a completed call must be ready\n{}",
                        context!()
                    )));
                };
                // The dependency's own result passes through, whatever the breaker did.
                prop_assert_eq!(
                    result.map_err(|e| e.to_string()),
                    reply(verdict).map_err(|e| e.to_string()),
                    "{}",
                    context!()
                );
                model.complete(done.ticket, verdict);
            }
            Op::Cancel { call, polled } => {
                if outstanding.is_empty() {
                    continue;
                }
                let mut cancelled = outstanding.remove(call % outstanding.len());
                if polled {
                    prop_assert!(poll_once(&mut cancelled.future).is_pending());
                }
                drop(cancelled.future);
                model.cancel(cancelled.ticket);
            }
            Op::Advance { by } => {
                let target = model.now + by;
                // Stop at every timer the model expects before `target`, so that each fires
                // at its own instant, as it would in a runtime that is not starved.
                loop {
                    let next = model
                        .next_timer()
                        .filter(|&t| t <= target)
                        .unwrap_or(target);
                    tokio::time::advance(next - model.now).await;
                    settle().await;
                    model.now = next;
                    prop_assert_eq!(started.elapsed(), model.now);
                    model.fire();
                    prop_assert_eq!(handle.state(), model.phase.state(), "{}", context!());
                    if next == target {
                        break;
                    }
                }
            }
            Op::ForceOpen => {
                handle.force_open();
                model.enter(Phase::ForcedOpen);
            }
            Op::Disable => {
                handle.disable();
                model.enter(Phase::Disabled);
            }
            Op::Reset => {
                handle.reset();
                model.enter(Phase::Closed);
            }
        }
        prop_assert_eq!(handle.state(), model.phase.state(), "{}", context!());
        prop_assert_eq!(observed_metrics(&handle), model.metrics(), "{}", context!());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(SEED),
        ..ProptestConfig::default()
    })]

    /// The breaker behaves as the sequential model after every operation.
    #[test]
    fn the_breaker_matches_the_sequential_model(
        settings in settings(),
        ops in prop::collection::vec(op(), 1..64),
    ) {
        run(settings, &ops)?;
    }
}

// ---------------------------------------------------------------------------------------
// Minimal cases the model found, as named tests
// ---------------------------------------------------------------------------------------

/// A breaker built by `configure` (plus this file's classifier) over the controllable
/// dependency: a function that starts a call, and the handle.
fn breaker(
    configure: impl FnOnce(CircuitBreakerLayerBuilder) -> CircuitBreakerLayerBuilder,
) -> (impl FnMut() -> (CallFuture, Slot), Handle) {
    let layer = configure(CircuitBreakerLayer::builder())
        .classifier(classify as Classifier)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|slot: Slot| Answer(slot)));
    let start = move || {
        let ready = svc.poll_ready(&mut Context::from_waker(Waker::noop()));
        assert!(matches!(ready, Poll::Ready(Ok(()))));
        let slot = Slot::default();
        let future: CallFuture = Box::pin(svc.call(Arc::clone(&slot)));
        (future, slot)
    };
    (start, handle)
}

/// Completes a started call with `verdict`.
fn finish((mut future, slot): (CallFuture, Slot), verdict: Verdict) {
    *slot.lock().unwrap() = Some(reply(verdict));
    assert!(poll_once(&mut future).is_ready());
}

/// A success of a call admitted before a reset must not break the new cycle's run of
/// failures ("outcomes of calls admitted before the reset are ignored").
#[tokio::test(start_paused = true)]
async fn a_stale_success_does_not_break_a_consecutive_run() {
    let (mut start, handle) = breaker(|b| b.consecutive_failures(2));
    let before_reset = start();
    handle.reset();
    finish(start(), Verdict::Failure);
    finish(before_reset, Verdict::Success);
    finish(start(), Verdict::Failure);
    assert_eq!(handle.state(), State::Open, "two failures in a row");
}

/// A failure of a call admitted before a reset must not erase the success between two
/// failures of the new cycle: without it, those two failures are not in a row.
#[tokio::test(start_paused = true)]
async fn a_stale_failure_does_not_erase_a_success_between_failures() {
    let (mut start, handle) = breaker(|b| b.consecutive_failures(2));
    let before_reset = start();
    handle.reset();
    finish(start(), Verdict::Failure);
    finish(start(), Verdict::Success);
    finish(before_reset, Verdict::Failure);
    finish(start(), Verdict::Failure);
    assert_eq!(
        handle.state(),
        State::Closed,
        "failure, success, failure: no two failures in a row"
    );
}

/// A failure of a call admitted before a reset takes no place in the count window: the last
/// 2 calls of the new cycle both failed.
#[tokio::test(start_paused = true)]
async fn a_stale_failure_takes_no_place_in_the_count_window() {
    let (mut start, handle) = breaker(|b| b.failure_rate(1.0, 2).min_calls(2));
    let before_reset = start();
    handle.reset();
    finish(start(), Verdict::Failure);
    finish(before_reset, Verdict::Failure);
    finish(start(), Verdict::Failure);
    assert_eq!(handle.state(), State::Open, "2 of the last 2 calls failed");
}

/// Likewise for a success of a call admitted before the reset.
#[tokio::test(start_paused = true)]
async fn a_stale_success_takes_no_place_in_the_count_window() {
    let (mut start, handle) = breaker(|b| b.failure_rate(1.0, 2).min_calls(2));
    let before_reset = start();
    handle.reset();
    finish(start(), Verdict::Failure);
    finish(before_reset, Verdict::Success);
    finish(start(), Verdict::Failure);
    assert_eq!(handle.state(), State::Open, "2 of the last 2 calls failed");
}

/// `Metrics::window_failures` is "the current run" for consecutive failures: a success
/// ends it.
#[tokio::test(start_paused = true)]
async fn a_success_ends_the_run_the_metrics_show() {
    let (mut start, handle) = breaker(|b| b.consecutive_failures(3));
    finish(start(), Verdict::Failure);
    assert_eq!(handle.metrics().window_failures, 1);
    finish(start(), Verdict::Success);
    let metrics = handle.metrics();
    assert_eq!((metrics.window_calls, metrics.window_failures), (0, 0));
}

/// Generations are 28 bits wide in the state word; the trip models must keep working past
/// 2^24 transitions (here, 2^24 resets: about 6 s in a debug build), where a generation no
/// longer fits in 24 bits.
#[tokio::test(start_paused = true)]
async fn the_trip_model_still_trips_after_2_pow_24_transitions() {
    let (mut start, handle) = breaker(|b| b.consecutive_failures(2));
    for _ in 0..1u32 << 24 {
        handle.reset();
    }
    finish(start(), Verdict::Failure);
    finish(start(), Verdict::Failure);
    assert_eq!(handle.state(), State::Open, "two failures in a row");
}
