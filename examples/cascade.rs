//! The cascade: a dependency fails, and a caller that is not protected fails with it, even
//! for the requests that never touch the dependency. The same scenario runs without
//! protection, with tower's own layers, and with this crate's [`Sla`] stack.
//!
//! A caller serves a request every millisecond with a bounded pool of 64 slots (its threads
//! or connections). Half of the requests, at random, call a dependency; the rest only do
//! local work. The dependency is a remote server with 32 workers and a queue; it keeps
//! working on calls the caller has given up on. It is healthy for 10 s, with 0.5% of calls
//! failing as background noise; then it has a 20 s outage; then it is healthy again for
//! 10 s. Three kinds of outage:
//!
//! - **hang**: every call a worker picks up is answered only when the outage ends;
//! - **hard errors**: every call fails within a millisecond;
//! - **partial**: 30% of calls fail, independently.
//!
//! The stacks around the dependency client:
//!
//! - **no protection**: the raw client;
//! - **tower**: `retry` (at most 3 attempts, a `TpsBudget` of 20% over 10 s plus 10 a
//!   second, shed calls not retried) → `timeout` (50 ms) → `load_shed` →
//!   `concurrency_limit` (32), as tower's docs put them together;
//! - **firebreak Sla**: [`Sla::client_layer`] from the dependency's promise alone: 99.9% of
//!   calls succeed within 50 ms, at most 32 at once.
//!
//! For each kind of outage, a table shows, per stack, what the caller saw during it: whether
//! local-only requests still succeeded, and how fast (did the failure cascade?); whether
//! calls to the dependency failed fast; the load sent to the failing dependency for the load
//! offered; and how long after the dependency healed the calls succeeded again. A chart of
//! the success rate per second is written as an SVG (a copy is in `docs/cascade.svg`).
//!
//! Everything runs on tokio's paused clock with seeded randomness: the nine runs of 40 s of
//! virtual time take about a second in a release build, and every machine prints the same
//! figures.
//!
//! ```text
//! cargo run --release --example cascade            # tables, and target/cascade.svg
//! cargo run --release --example cascade -- my.svg  # the chart elsewhere
//! cargo test --example cascade                     # checks the goals the tables show
//! ```

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};
use tokio::time::{Instant, sleep, sleep_until};
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_firebreak::circuit_breaker::{Handle, State};
use tower_firebreak::sla::Sla;
use tower_firebreak::{BoxError, ErrorKind};

fn main() -> Result<(), BoxError> {
    let chart_path = match std::env::args_os().nth(1) {
        Some(path) => path.into(),
        None => default_chart_path(),
    };
    let schedule = Schedule::DEMO;
    println!(
        "A caller with {CALLER_SLOTS} slots gets a request every {} ms; half of them call a \
         dependency ({DEPENDENCY_WORKERS} workers, {} ms a call, {:.1}% of calls failing as \
         noise),\nthe rest do {} ms of local work. Healthy for {} s, an outage for {} s, healthy \
         again for {} s (virtual time).\n",
        ARRIVAL_INTERVAL.as_millis(),
        SERVICE_TIME.as_millis(),
        NOISE * 100.0,
        LOCAL_WORK.as_millis(),
        schedule.healthy.as_secs(),
        schedule.outage.as_secs(),
        schedule.after.as_secs(),
    );
    let mut panels = Vec::new();
    for outage in Outage::ALL {
        let scenario = Arc::new(Scenario { outage, schedule });
        let results = Stack::ALL
            .iter()
            .map(|&stack| Ok((stack, run(&scenario, stack)?)))
            .collect::<Result<Vec<_>, BoxError>>()?;
        print_table(&scenario, &results);
        panels.push((scenario, results));
    }
    print_legend();
    let svg = chart(&panels)?;
    std::fs::write(&chart_path, svg)?;
    println!(
        "\nChart of the success rate per second: {}",
        chart_path.display()
    );
    Ok(())
}

/// `<target dir>/cascade.svg`: the example runs from `<target dir>/<profile>/examples/`.
fn default_chart_path() -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("cascade.svg")))
        .unwrap_or_else(|| "cascade.svg".into())
}

// ---------------------------------------------------------------------------------------------
// The scenario.

/// A request arrives every millisecond; half of them, at random, need the dependency (500
/// calls/s).
const ARRIVAL_INTERVAL: Duration = Duration::from_millis(1);
/// The caller's pool of in-flight work; a request arriving when it is full is rejected.
const CALLER_SLOTS: usize = 64;
/// Mean time of a local-only request.
const LOCAL_WORK: Duration = Duration::from_millis(5);
/// How many calls the dependency works on at once; the rest wait in its queue, in order.
const DEPENDENCY_WORKERS: usize = 32;
/// Mean time the healthy dependency takes per call. With 32 workers it serves 1,600 calls/s
/// and runs at under a third of that.
const SERVICE_TIME: Duration = Duration::from_millis(20);
/// The share of calls the healthy dependency fails anyway.
const NOISE: f64 = 0.005;
/// The share of calls the dependency fails in a partial outage.
const PARTIAL_FAILURES: f64 = 0.3;
/// How long a call takes to fail in a hard outage (a refused connection).
const HARD_FAILURE_TIME: Duration = Duration::from_millis(1);
/// Seeds the dependency's failures and the stacks' jitter.
const SEED: u64 = 0x5eed;

/// What goes wrong with the dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// Every call a worker picks up is answered when the outage ends.
    Hang,
    /// Every call fails after a millisecond.
    HardErrors,
    /// A share of the calls fail, after the usual service time.
    Partial,
}

impl Outage {
    const ALL: [Outage; 3] = [Outage::Hang, Outage::HardErrors, Outage::Partial];

    fn name(self) -> &'static str {
        match self {
            Outage::Hang => "hang",
            Outage::HardErrors => "hard errors",
            Outage::Partial => "partial (30% of calls fail)",
        }
    }
}

/// How long each phase lasts: healthy, outage, healthy again.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    healthy: Duration,
    outage: Duration,
    after: Duration,
}

impl Schedule {
    /// The demo's: long enough that the figures per phase are steady.
    const DEMO: Schedule = Schedule {
        healthy: Duration::from_secs(10),
        outage: Duration::from_secs(20),
        after: Duration::from_secs(10),
    };
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    outage: Outage,
    schedule: Schedule,
}

/// The dependency's condition at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    Healthy,
    Outage,
}

impl Scenario {
    fn outage_start(&self) -> Duration {
        self.schedule.healthy
    }

    fn outage_end(&self) -> Duration {
        self.schedule.healthy + self.schedule.outage
    }

    fn duration(&self) -> Duration {
        self.outage_end() + self.schedule.after
    }

    fn condition(&self, at: Duration) -> Condition {
        if self.outage_start() <= at && at < self.outage_end() {
            Condition::Outage
        } else {
            Condition::Healthy
        }
    }
}

/// `mean` stretched by a fixed repeating pattern (60% to 140%), so that latencies have a
/// spread while every run stays the same.
fn varied(mean: Duration, id: u64) -> Duration {
    const PER_CENT: [u32; 5] = [60, 80, 100, 120, 140];
    mean * PER_CENT[(id % PER_CENT.len() as u64) as usize] / 100
}

/// Which draws `uniform` makes: one stream per use, so they are unrelated.
#[derive(Debug, Clone, Copy)]
enum Draw {
    /// Whether request `n` needs the dependency.
    Work = 1,
    /// Whether call `n` to the dependency fails.
    Failure = 2,
}

/// A uniform draw in [0, 1) for the `n`th event of a stream: SplitMix64 of the seed, the
/// stream and `n`.
fn uniform(draw: Draw, n: u64) -> f64 {
    let mut x = (SEED ^ ((draw as u64) << 56)).wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

// ---------------------------------------------------------------------------------------------
// The dependency: a remote server with a few workers and an unbounded queue.

/// A request to the dependency.
#[derive(Debug, Clone, Copy)]
struct Query {
    /// The caller's request this call is for.
    request: u64,
}

/// The dependency's answer.
#[derive(Debug, Clone, Copy)]
struct Answer;

/// What the dependency answers when a call fails.
#[derive(Debug)]
struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the dependency failed the call")
    }
}

impl std::error::Error for Failed {}

#[derive(Debug, Clone)]
struct Dependency {
    scenario: Arc<Scenario>,
    workers: Arc<Semaphore>,
    started: Instant,
    /// Calls received, in all, and during the outage.
    received: Arc<AtomicU64>,
    received_in_outage: Arc<AtomicU64>,
    /// The caller's requests that at least one call reached the dependency for.
    reached: Arc<Mutex<HashSet<u64>>>,
}

impl Dependency {
    fn new(scenario: Arc<Scenario>, started: Instant) -> Self {
        Dependency {
            scenario,
            workers: Arc::new(Semaphore::new(DEPENDENCY_WORKERS)),
            started,
            received: Arc::new(AtomicU64::new(0)),
            received_in_outage: Arc::new(AtomicU64::new(0)),
            reached: Arc::default(),
        }
    }

    /// Hands a call to the dependency and returns where its answer will arrive. The work runs
    /// on a task of its own, as on a remote server: a caller that stops waiting drops only the
    /// receiver, and the dependency still spends a worker on the call.
    fn submit(&self, query: Query) -> oneshot::Receiver<Result<Answer, Failed>> {
        let number = self.received.fetch_add(1, Ordering::Relaxed);
        self.reached
            .lock()
            .expect("no thread panics holding it")
            .insert(query.request);
        if self.scenario.condition(self.started.elapsed()) == Condition::Outage {
            self.received_in_outage.fetch_add(1, Ordering::Relaxed);
        }
        let (answer_tx, answer_rx) = oneshot::channel();
        let dependency = self.clone();
        tokio::spawn(async move {
            // Tokio's semaphore is fair: waiting for a worker is a FIFO queue.
            let Ok(_worker) = dependency.workers.acquire().await else {
                return;
            };
            let answer = dependency.work_on(number).await;
            // The caller may have given up long ago; the work was done all the same.
            let _ = answer_tx.send(answer);
        });
        answer_rx
    }

    async fn work_on(&self, number: u64) -> Result<Answer, Failed> {
        let scenario = &self.scenario;
        let failing = |share: f64| {
            if uniform(Draw::Failure, number) < share {
                Err(Failed)
            } else {
                Ok(Answer)
            }
        };
        match (scenario.condition(self.started.elapsed()), scenario.outage) {
            (Condition::Healthy, _) => {
                sleep(varied(SERVICE_TIME, number)).await;
                failing(NOISE)
            }
            (Condition::Outage, Outage::Hang) => {
                sleep_until(self.started + scenario.outage_end()).await;
                Ok(Answer)
            }
            (Condition::Outage, Outage::HardErrors) => {
                sleep(HARD_FAILURE_TIME).await;
                Err(Failed)
            }
            (Condition::Outage, Outage::Partial) => {
                sleep(varied(SERVICE_TIME, number)).await;
                failing(PARTIAL_FAILURES)
            }
        }
    }
}

/// The dependency as the caller sees it: a tower service, with no protection of its own.
fn raw_client(
    dependency: Dependency,
) -> impl Service<Query, Response = Answer, Error = BoxError, Future: Send> + Clone + Send + 'static
{
    service_fn(move |query: Query| {
        // Submitted in `call`, not when the future is first polled: the request is on the wire.
        let answer = dependency.submit(query);
        async move {
            match answer.await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(failed)) => Err(BoxError::from(failed)),
                Err(dropped) => Err(BoxError::from(dropped)),
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The stacks compared.

/// The dependency client after a stack wrapped it. Boxed before it is used in spawned tasks:
/// a spawned future that names a layer's `Service` impl with an `Into<BoxError>` bound trips
/// a known rustc limitation ("implementation of `From` is not general enough").
type Client = BoxCloneService<Query, Answer, BoxError>;

/// What the dependency promises: 99.9% of calls succeed within 50 ms (healthy, they take 12
/// to 28 ms), and this caller may have up to 32 calls in flight (its workers).
const LATENCY_OBJECTIVE: Duration = Duration::from_millis(50);
const AVAILABILITY: f64 = 0.999;
const MAX_CONCURRENCY: u64 = DEPENDENCY_WORKERS as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stack {
    /// The raw client: the caller waits as long as the dependency takes.
    NoProtection,
    /// tower's layers, set up as their docs suggest, with the same timeout and limit.
    Tower,
    /// `Sla::client_layer`, from the objective alone.
    Sla,
}

impl Stack {
    const ALL: [Stack; 3] = [Stack::NoProtection, Stack::Tower, Stack::Sla];

    fn name(self) -> &'static str {
        match self {
            Stack::NoProtection => "no protection",
            Stack::Tower => "tower",
            Stack::Sla => "firebreak Sla",
        }
    }

    /// The client wrapped in this stack, and the handle of its breaker if it has one.
    fn client<S>(self, raw: S) -> Result<(Client, Option<Handle>), BoxError>
    where
        S: Service<Query, Response = Answer, Error = BoxError> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        Ok(match self {
            Stack::NoProtection => (BoxCloneService::new(raw), None),
            // Outermost first: retry (3 attempts, a TpsBudget of 20% over 10 s plus 10 a
            // second), a per-attempt timeout, shedding beyond the concurrency limit.
            Stack::Tower => (
                BoxCloneService::new(
                    ServiceBuilder::new()
                        .retry(TowerRetry::new())
                        .timeout(LATENCY_OBJECTIVE)
                        .load_shed()
                        .concurrency_limit(MAX_CONCURRENCY as usize)
                        .service(raw),
                ),
                None,
            ),
            Stack::Sla => {
                let sla = Sla::builder()
                    .latency_objective(LATENCY_OBJECTIVE)
                    .availability(AVAILABILITY)
                    .max_concurrency(MAX_CONCURRENCY)
                    .name("dependency")
                    .seed(SEED)
                    .build()?;
                let layer = sla.client_layer()?;
                let breaker = layer.breaker();
                (
                    BoxCloneService::new(ServiceBuilder::new().layer(layer).service(raw)),
                    Some(breaker),
                )
            }
        })
    }
}

/// tower's retry policy as its budget docs show it, with three attempts at most and no retry
/// of a shed call.
#[derive(Debug, Clone)]
struct TowerRetry {
    budget: Arc<TpsBudget>,
    attempts_left: u32,
}

impl TowerRetry {
    fn new() -> Self {
        TowerRetry {
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
            attempts_left: 2,
        }
    }
}

impl Policy<Query, Answer, BoxError> for TowerRetry {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _: &mut Query,
        result: &mut Result<Answer, BoxError>,
    ) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.budget.deposit();
                None
            }
            Err(err) if err.is::<tower::load_shed::error::Overloaded>() => None,
            Err(_) if self.attempts_left == 0 || !self.budget.withdraw() => None,
            Err(_) => {
                self.attempts_left -= 1;
                Some(std::future::ready(()))
            }
        }
    }

    fn clone_request(&mut self, query: &Query) -> Option<Query> {
        Some(*query)
    }
}

// ---------------------------------------------------------------------------------------------
// The caller, and one run.

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Local,
    Dependency,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Turned away on arrival: every slot of the caller's pool was busy.
    Rejected,
    /// The dependency call failed.
    Failed(ErrorKind),
}

/// One request, as the caller saw it.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// When it arrived, from the start of the run.
    arrival: Duration,
    work: Work,
    outcome: Outcome,
    /// From arrival to completion; zero for a rejected request.
    latency: Duration,
    /// Whether the stack's breaker was open when the request arrived.
    breaker_open: bool,
    /// Whether a call for it reached the dependency.
    reached: bool,
}

/// Every request of a run, and the calls the dependency received during the outage.
#[derive(Debug)]
struct Run {
    records: Vec<Record>,
    received_in_outage: u64,
}

/// Runs `scenario` once with `stack`, on a fresh runtime whose clock starts paused.
fn run(scenario: &Arc<Scenario>, stack: Stack) -> Result<Run, BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    // On return, dropping the runtime cancels the work the dependency still has queued.
    runtime.block_on(simulate(Arc::clone(scenario), stack))
}

async fn simulate(scenario: Arc<Scenario>, stack: Stack) -> Result<Run, BoxError> {
    let started = Instant::now();
    let dependency = Dependency::new(Arc::clone(&scenario), started);
    let (client, breaker) = stack.client(raw_client(dependency.clone()))?;
    let pool = Arc::new(Semaphore::new(CALLER_SLOTS));

    let mut records = Vec::new();
    let mut in_flight = Vec::new();
    let arrivals = (0u64..)
        .map(|id| (id, ARRIVAL_INTERVAL * id as u32))
        .take_while(|&(_, arrival)| arrival < scenario.duration());
    for (id, arrival) in arrivals {
        sleep_until(started + arrival).await;
        let arrived = Instant::now();
        let work = if uniform(Draw::Work, id) < 0.5 {
            Work::Dependency
        } else {
            Work::Local
        };
        let breaker_open = breaker
            .as_ref()
            .is_some_and(|breaker| breaker.state() == State::Open);
        let Ok(slot) = Arc::clone(&pool).try_acquire_owned() else {
            records.push(Record {
                arrival,
                work,
                outcome: Outcome::Rejected,
                latency: Duration::ZERO,
                breaker_open,
                reached: false,
            });
            continue;
        };
        let client = client.clone();
        let local_work = varied(LOCAL_WORK, id);
        in_flight.push(tokio::spawn(async move {
            let outcome = match work {
                Work::Local => {
                    sleep(local_work).await;
                    Outcome::Ok
                }
                Work::Dependency => match client.oneshot(Query { request: id }).await {
                    Ok(Answer) => Outcome::Ok,
                    Err(err) => Outcome::Failed(ErrorKind::of(&*err)),
                },
            };
            // The slot is held for as long as the request runs, dependency call included.
            drop(slot);
            Record {
                arrival,
                work,
                outcome,
                latency: arrived.elapsed(),
                breaker_open,
                reached: false,
            }
        }));
    }
    for request in in_flight {
        records.push(request.await?);
    }
    records.sort_by_key(|record| record.arrival);
    // Request `id` arrived at `id` ms, so it is the `id`th record.
    let reached = dependency
        .reached
        .lock()
        .expect("no thread panics holding it");
    for (id, record) in (0u64..).zip(&mut records) {
        record.reached = reached.contains(&id);
    }
    Ok(Run {
        records,
        received_in_outage: dependency.received_in_outage.load(Ordering::Relaxed),
    })
}

// ---------------------------------------------------------------------------------------------
// Figures.

/// Requests of one kind over some span.
#[derive(Debug, Default)]
struct Tally {
    requests: usize,
    ok: usize,
    /// Latencies of the requests that got a slot, sorted.
    latencies: Vec<Duration>,
}

impl Tally {
    fn of<'a>(records: impl Iterator<Item = &'a Record>) -> Tally {
        let mut tally = Tally::default();
        for record in records {
            tally.requests += 1;
            if record.outcome == Outcome::Ok {
                tally.ok += 1;
            }
            if record.outcome != Outcome::Rejected {
                tally.latencies.push(record.latency);
            }
        }
        tally.latencies.sort_unstable();
        tally
    }

    /// The share of requests that succeeded, in per cent.
    fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        self.ok as f64 * 100.0 / self.requests as f64
    }

    /// The nearest-rank percentile of the latencies, if any request got a slot.
    fn percentile(&self, per_cent: usize) -> Option<Duration> {
        let rank = (self.latencies.len() * per_cent).div_ceil(100).max(1);
        self.latencies.get(rank - 1).copied()
    }
}

/// Width of the buckets recovery is judged on.
const RECOVERY_BUCKET: Duration = Duration::from_millis(100);
/// A bucket in which at least this share of the calls to the dependency succeeded is healthy.
const RECOVERED_RATE: f64 = 90.0;

/// What one stack did in one scenario.
#[derive(Debug)]
struct Summary {
    healthy_local: Tally,
    local: Tally,
    dependency: Tally,
    /// Calls the dependency received during the outage, for each request that needed it.
    load: f64,
    /// The longest a dependency request took that arrived while the breaker was open and
    /// never reached the dependency (that is, all but the probes).
    open_rejection_max: Option<Duration>,
    /// Dependency requests that an open breaker rejected before the outage.
    healthy_rejections: usize,
    /// From the start of the outage to the first request that found the breaker open.
    tripped: Option<Duration>,
    /// From the end of the outage to the start of the first bucket from which every bucket
    /// has healthy calls to the dependency; `None` if the run ends first.
    recovery: Option<Duration>,
    /// Per second of the run: the share of all requests that succeeded, in per cent.
    per_second: Vec<f64>,
}

fn summarize(scenario: &Scenario, run: &Run) -> Summary {
    let (start, end) = (scenario.outage_start(), scenario.outage_end());
    let during = |record: &&Record| start <= record.arrival && record.arrival < end;
    let of = |work| move |record: &&Record| record.work == work;
    let records = &run.records;
    let dependency = Tally::of(records.iter().filter(during).filter(of(Work::Dependency)));

    let mut buckets = vec![
        (0usize, 0usize);
        scenario
            .schedule
            .after
            .div_duration_f64(RECOVERY_BUCKET)
            .ceil() as usize
    ];
    for record in records
        .iter()
        .filter(|r| r.arrival >= end && r.work == Work::Dependency)
    {
        let index = ((record.arrival - end).as_nanos() / RECOVERY_BUCKET.as_nanos()) as usize;
        if let Some(bucket) = buckets.get_mut(index) {
            bucket.0 += 1;
            bucket.1 += usize::from(record.outcome == Outcome::Ok);
        }
    }
    let healthy = |&(requests, ok): &(usize, usize)| {
        requests == 0 || ok as f64 * 100.0 >= RECOVERED_RATE * requests as f64
    };
    let first_healthy = buckets
        .iter()
        .rposition(|bucket| !healthy(bucket))
        .map_or(0, |last| last + 1);
    let recovery = (first_healthy < buckets.len()).then(|| RECOVERY_BUCKET * first_healthy as u32);

    let seconds = scenario.duration().as_secs() as usize;
    let mut per_second = vec![(0usize, 0usize); seconds];
    for record in records {
        if let Some(second) = per_second.get_mut(record.arrival.as_secs() as usize) {
            second.0 += 1;
            second.1 += usize::from(record.outcome == Outcome::Ok);
        }
    }
    Summary {
        healthy_local: Tally::of(
            records
                .iter()
                .filter(|r| r.arrival < start)
                .filter(of(Work::Local)),
        ),
        local: Tally::of(records.iter().filter(during).filter(of(Work::Local))),
        load: run.received_in_outage as f64 / dependency.requests.max(1) as f64,
        dependency,
        open_rejection_max: records
            .iter()
            .filter(|r| r.work == Work::Dependency && r.breaker_open && !r.reached)
            .map(|r| r.latency)
            .max(),
        tripped: records
            .iter()
            .find(|r| r.arrival >= start && r.breaker_open)
            .map(|r| r.arrival - start),
        healthy_rejections: records
            .iter()
            .filter(|r| r.arrival < start && r.outcome == Outcome::Failed(ErrorKind::CircuitOpen))
            .count(),
        recovery,
        per_second: per_second
            .iter()
            .map(|&(requests, ok)| ok as f64 * 100.0 / requests.max(1) as f64)
            .collect(),
    }
}

// ---------------------------------------------------------------------------------------------
// The report.

/// A success rate rounded down to 0.1 %, so that anything short of every request reads below
/// 100.0 %.
fn format_rate(rate: f64) -> String {
    format!("{:.1}%", (rate * 10.0).floor() / 10.0)
}

fn format_latency(latency: Option<Duration>) -> String {
    match latency {
        None => "-".to_owned(),
        Some(latency) if latency < Duration::from_millis(10) => {
            format!("{:.1} ms", latency.as_secs_f64() * 1000.0)
        }
        Some(latency) if latency < Duration::from_secs(1) => {
            format!("{} ms", latency.as_millis())
        }
        Some(latency) => format!("{:.1} s", latency.as_secs_f64()),
    }
}

fn print_table(scenario: &Scenario, results: &[(Stack, Run)]) {
    let summaries: Vec<_> = results
        .iter()
        .map(|(stack, run)| (*stack, summarize(scenario, run)))
        .collect();
    println!(
        "Outage: {} ({}-{} s)",
        scenario.outage.name(),
        scenario.outage_start().as_secs(),
        scenario.outage_end().as_secs()
    );
    let row = |cells: [&str; 10]| {
        let [
            stack,
            local_ok,
            local_p99,
            dep_ok,
            dep_p50,
            open_max,
            load,
            tripped,
            recovery,
            noise,
        ] = cells;
        println!(
            "  {stack:<14} {local_ok:>8} {local_p99:>15} {dep_ok:>7} {dep_p50:>7} {open_max:>9} \
             {load:>6} {tripped:>7} {recovery:>8} {noise:>10}"
        );
    };
    row([
        "stack",
        "local ok",
        "local p99 (hty)",
        "dep ok",
        "dep p50",
        "open fail",
        "load",
        "tripped",
        "recovery",
        "noise trip",
    ]);
    for (stack, summary) in &summaries {
        row([
            stack.name(),
            &format_rate(summary.local.success_rate()),
            &format!(
                "{} ({})",
                format_latency(summary.local.percentile(99)),
                format_latency(summary.healthy_local.percentile(99)),
            ),
            &format_rate(summary.dependency.success_rate()),
            &format_latency(summary.dependency.percentile(50)),
            &format_latency(summary.open_rejection_max),
            &format!("{:.3}x", summary.load),
            &format_latency(summary.tripped),
            &summary.recovery.map_or_else(
                || format!("> {} s", scenario.schedule.after.as_secs()),
                |recovery| format_latency(Some(recovery)),
            ),
            if summary.healthy_rejections == 0 {
                "no"
            } else {
                "YES"
            },
        ]);
    }
    if scenario.outage == Outage::Partial
        && let Some((_, none)) = summaries
            .iter()
            .find(|(stack, _)| *stack == Stack::NoProtection)
    {
        let base = none.dependency.success_rate();
        let gains: Vec<String> = summaries
            .iter()
            .filter(|(_, summary)| summary.load > 1.0)
            .map(|(stack, summary)| {
                let gain = (summary.dependency.success_rate() - base) / (summary.load - 1.0);
                format!("{} {gain:.1}", stack.name())
            })
            .collect();
        println!(
            "  Points of success per 1x of extra load: {} (a retry succeeds as often as a \
             first call: {base:.1}%).",
            gains.join(", ")
        );
    }
    println!();
}

fn print_legend() {
    println!(
        "During the outage, by arrival time:\n\
         - local ok, local p99: local-only requests that succeeded, and their p99 (the healthy \
         phase's in brackets):\n  did the failure cascade?\n\
         - dep ok, dep p50: requests that needed the dependency: do they fail fast?\n\
         - open fail: the slowest request that arrived while the breaker was open (probes \
         aside).\n\
         - load: calls the failing dependency received per request that needed it, retries \
         included.\n\
         - tripped: from the start of the outage until requests found the breaker open.\n\
         - recovery: from the end of the outage until every {} ms of dependency requests has at \
         least {}% success.\n\
         - noise trip: whether the breaker opened on the noise of the healthy phase.",
        RECOVERY_BUCKET.as_millis(),
        RECOVERED_RATE,
    );
}

// ---------------------------------------------------------------------------------------------
// The chart.

/// One panel per outage, one line per stack: the share of all requests that succeeded, per
/// second; the outage shaded. Returns the SVG.
/// One scenario and each stack's run of it: a panel of the chart.
type Panel = (Arc<Scenario>, Vec<(Stack, Run)>);

fn chart(panels: &[Panel]) -> Result<String, BoxError> {
    use plotters::prelude::*;

    const COLOURS: [RGBColor; 3] = [
        RGBColor(214, 39, 40),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
    ];
    let mut svg = String::new();
    {
        let root =
            SVGBackend::with_string(&mut svg, (900, 300 * panels.len() as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        for (area, (scenario, results)) in root.split_evenly((panels.len(), 1)).iter().zip(panels) {
            let seconds = scenario.duration().as_secs_f64();
            let mut chart = ChartBuilder::on(area)
                .caption(
                    format!("Dependency outage: {}", scenario.outage.name()),
                    ("sans-serif", 18),
                )
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(50)
                .build_cartesian_2d(0.0..seconds, 0.0..100.0)?;
            chart
                .configure_mesh()
                .light_line_style(RGBColor(240, 240, 240))
                .x_desc("time (s, virtual)")
                .y_desc("requests ok per second (%)")
                .draw()?;
            chart.draw_series(std::iter::once(Rectangle::new(
                [
                    (scenario.outage_start().as_secs_f64(), 0.0),
                    (scenario.outage_end().as_secs_f64(), 100.0),
                ],
                RGBColor(0, 0, 0).mix(0.08).filled(),
            )))?;
            for ((stack, run), colour) in results.iter().zip(COLOURS) {
                let summary = summarize(scenario, run);
                chart
                    .draw_series(LineSeries::new(
                        summary
                            .per_second
                            .iter()
                            .enumerate()
                            .map(|(second, &rate)| (second as f64 + 0.5, rate)),
                        colour.stroke_width(2),
                    ))?
                    .label(stack.name())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerLeft)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
    }
    Ok(svg)
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference points of the partial outage: (load, success %) of tower's stack with a
    /// 20% budget and of tower-resilience's with one token per success, from the issue.
    const TRADE_OFF: [(f64, f64); 2] = [(1.21, 84.0), (1.39, 97.0)];

    fn summary(outage: Outage, stack: Stack) -> (Scenario, Summary) {
        let scenario = Arc::new(Scenario {
            outage,
            schedule: Schedule::DEMO,
        });
        let run = run(&scenario, stack).expect("the simulation runs");
        let summary = summarize(&scenario, &run);
        (*scenario, summary)
    }

    /// The issue's goals for the `Sla` stack in an outage that takes the dependency down.
    fn assert_contained(outage: Outage) {
        let (_, s) = summary(outage, Stack::Sla);
        let name = outage.name();
        assert!(
            s.local.success_rate() >= 99.9,
            "{name}: local ok {:.2}%",
            s.local.success_rate()
        );
        let healthy_p99 = s.healthy_local.percentile(99).unwrap();
        let p99 = s.local.percentile(99).unwrap();
        assert!(
            p99.as_secs_f64() <= 1.5 * healthy_p99.as_secs_f64(),
            "{name}: local p99 {p99:?}, healthy {healthy_p99:?}"
        );
        let open_max = s.open_rejection_max.expect("the breaker opened");
        assert!(open_max <= Duration::from_millis(1), "{name}: {open_max:?}");
        assert!(s.load <= 0.01, "{name}: load {:.4}", s.load);
        let recovery = s.recovery.expect("it recovered");
        assert!(recovery <= Duration::from_secs(1), "{name}: {recovery:?}");
        assert_eq!(s.healthy_rejections, 0, "{name}: tripped on noise");
    }

    #[test]
    fn the_sla_stack_contains_a_hang() {
        assert_contained(Outage::Hang);
    }

    #[test]
    fn the_sla_stack_contains_hard_errors() {
        assert_contained(Outage::HardErrors);
    }

    /// Success (%) at `load` on the line through two (load, success) points.
    fn on_line([(load_a, ok_a), (load_b, ok_b)]: [(f64, f64); 2], load: f64) -> f64 {
        ok_a + (load - load_a) * (ok_b - ok_a) / (load_b - load_a)
    }

    #[test]
    fn in_a_partial_outage_the_sla_stack_is_on_the_trade_off_line() {
        let point = |stack| {
            let (_, s) = summary(Outage::Partial, stack);
            (s.load, s.dependency.success_rate(), s)
        };
        let (none_load, none_ok, _) = point(Stack::NoProtection);
        let (tower_load, tower_ok, _) = point(Stack::Tower);
        let (load, ok, s) = point(Stack::Sla);
        // A retry succeeds as often as a first attempt, so success rises with load along one
        // line, through no retries and tower's retries in this very run. Half a point of slack
        // for the draws each stack's calls happen to get.
        let line = on_line([(none_load, none_ok), (tower_load, tower_ok)], load);
        assert!(
            ok >= line - 0.5,
            "{ok:.2}% at {load:.3}x; this run's line is at {line:.2}%"
        );
        // The issue's reference points come from another run (a dependency failing exactly
        // 30%); here it failed a little more, hence a point of slack.
        let reference = on_line(TRADE_OFF, load);
        assert!(
            ok >= reference - 1.0,
            "{ok:.2}% at {load:.3}x; the reference line is at {reference:.2}%"
        );
        // At the high end of the line: every failure could be retried.
        assert!(ok >= 96.0 && load <= 1.45, "{ok:.2}% at {load:.3}x");
        assert_eq!(s.healthy_rejections, 0);
        assert!(s.local.success_rate() >= 99.9);
    }

    #[test]
    fn without_protection_a_hang_cascades_to_local_work() {
        let (_, s) = summary(Outage::Hang, Stack::NoProtection);
        assert!(
            s.local.success_rate() < 10.0,
            "{:.1}%",
            s.local.success_rate()
        );
    }

    #[test]
    fn the_chart_has_a_line_per_stack_and_outage() {
        let scenario = Arc::new(Scenario {
            outage: Outage::HardErrors,
            schedule: Schedule {
                healthy: Duration::from_secs(1),
                outage: Duration::from_secs(1),
                after: Duration::from_secs(1),
            },
        });
        let results = Stack::ALL
            .iter()
            .map(|&stack| (stack, run(&scenario, stack).unwrap()))
            .collect();
        let svg = chart(&[(scenario, results)]).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("Dependency outage: hard errors"));
        for stack in Stack::ALL {
            assert!(svg.contains(stack.name()), "{}", stack.name());
        }
        // A line per stack, and its mark in the legend.
        assert!(svg.matches("<polyline").count() >= 2 * Stack::ALL.len());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let tally = Tally {
            requests: 4,
            ok: 4,
            latencies: [1, 2, 3, 4].map(Duration::from_millis).to_vec(),
        };
        assert_eq!(tally.percentile(50), Some(Duration::from_millis(2)));
        assert_eq!(tally.percentile(99), Some(Duration::from_millis(4)));
        assert_eq!(Tally::default().percentile(50), None);
    }
}
