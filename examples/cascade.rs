//! The cascade: a dependency that hangs takes down a caller, even the requests that never
//! touch it, unless every call to it is bounded in time.
//!
//! A caller serves requests with a fixed pool of slots (think threads or connections). Half of
//! its requests call a dependency; the other half only do local work. From 10 s to 20 s the
//! dependency hangs. Without protection, the calls to it keep their slots until the pool is
//! full, and then every request is turned away, local ones included. With this crate's
//! deadline and per-attempt timeout around the dependency client, each hung call gives its
//! slot back after 200 ms and local work carries on as if nothing happened.
//!
//! The simulation runs on tokio's paused clock: 30 s of virtual time take well under a second
//! of wall time and print the same figures on every machine.
//!
//! ```text
//! cargo run --release --example cascade
//! cargo test --example cascade    # checks what the table shows
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};
use tokio::time::{Instant, sleep, sleep_until};
use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_firebreak::{BoxError, ConfigError, ErrorKind, ServiceBuilderExt};

fn main() -> Result<(), BoxError> {
    let scenario = Arc::new(Scenario::hang());
    let mut results = Vec::new();
    for stack in Stack::ALL {
        let records = run(&scenario, stack)?;
        results.push((stack, summarize(&scenario, &records)));
    }
    print_report(&scenario, &results);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The scenario: the caller, the dependency and what happens to it, phase by phase.

/// How the dependency behaves during a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    /// Answers after its usual service time.
    Healthy,
    /// Every request a worker picks up stays stuck until the phase ends (think of a lock held
    /// by a stuck transaction): the worker is tied up and the answer comes very late. Requests
    /// that arrive meanwhile wait in the dependency's queue.
    Hang,
}

/// A span of the run, measured from its start, during which the dependency is in one
/// condition. Phases are contiguous and in order.
#[derive(Debug, Clone)]
struct Phase {
    name: &'static str,
    start: Duration,
    end: Duration,
    condition: Condition,
}

/// Everything that defines a run, apart from the stack around the dependency client.
#[derive(Debug, Clone)]
struct Scenario {
    phases: Vec<Phase>,
    /// Requests arrive at a steady pace; every other one calls the dependency.
    arrival_interval: Duration,
    /// The caller's pool of in-flight work; a request arriving when it is full is rejected.
    caller_slots: usize,
    /// Mean time of a local-only request.
    local_work: Duration,
    /// How many requests the dependency works on at once; the rest wait in an unbounded queue.
    dependency_workers: usize,
    /// Mean time the healthy dependency takes per request.
    service_time: Duration,
}

impl Scenario {
    /// Healthy for 10 s, hung for 10 s, healthy again for 10 s.
    ///
    /// The dependency receives one call every 4 ms (250/s). Healthy, its 16 workers at 20 ms
    /// each could serve 800/s, so it runs at about a third of its capacity and never queues.
    fn hang() -> Self {
        let phase = |name, start, end, condition| Phase {
            name,
            start: Duration::from_secs(start),
            end: Duration::from_secs(end),
            condition,
        };
        Scenario {
            phases: vec![
                phase("healthy", 0, 10, Condition::Healthy),
                phase("hang", 10, 20, Condition::Hang),
                phase("after", 20, 30, Condition::Healthy),
            ],
            arrival_interval: Duration::from_millis(2),
            caller_slots: 64,
            local_work: Duration::from_millis(5),
            dependency_workers: 16,
            service_time: Duration::from_millis(20),
        }
    }

    /// How long requests keep arriving: until the last phase ends.
    fn duration(&self) -> Duration {
        self.phases.last().map_or(Duration::ZERO, |phase| phase.end)
    }

    /// The index of the phase in which the dependency hangs.
    fn hang_index(&self) -> usize {
        self.phases
            .iter()
            .position(|phase| phase.condition == Condition::Hang)
            .expect("the scenario has a hang phase")
    }

    /// The index of the phase that `at` (from the start of the run) falls in.
    fn phase_index(&self, at: Duration) -> Option<usize> {
        self.phases
            .iter()
            .position(|phase| phase.start <= at && at < phase.end)
    }
}

/// `mean` stretched by a fixed repeating pattern, so latencies have a spread (and a p99 that
/// means something) while every run stays identical. The pattern averages to `mean`.
fn varied(mean: Duration, id: u32) -> Duration {
    const PER_CENT: [u32; 5] = [60, 80, 100, 120, 140];
    mean * PER_CENT[id as usize % PER_CENT.len()] / 100
}

// ---------------------------------------------------------------------------------------------
// The dependency: a remote server with a few workers and an unbounded queue.

/// A request to the dependency.
#[derive(Debug, Clone, Copy)]
struct Query {
    id: u32,
}

/// The dependency's answer.
#[derive(Debug, Clone, Copy)]
struct Answer;

#[derive(Debug, Clone)]
struct Dependency {
    scenario: Arc<Scenario>,
    workers: Arc<Semaphore>,
    /// The start of the run, to tell which phase the dependency is in.
    started: Instant,
}

impl Dependency {
    fn new(scenario: Arc<Scenario>, started: Instant) -> Self {
        let workers = Arc::new(Semaphore::new(scenario.dependency_workers));
        Dependency {
            scenario,
            workers,
            started,
        }
    }

    /// Hands `query` to the dependency and returns where its answer will arrive.
    ///
    /// The work runs on a task of its own, as on a remote server: a caller that stops waiting
    /// drops only the receiver, and the dependency still spends a worker on the request.
    fn submit(&self, query: Query) -> oneshot::Receiver<Answer> {
        let (answer_tx, answer_rx) = oneshot::channel();
        let dependency = self.clone();
        tokio::spawn(async move {
            // Tokio's semaphore is fair, so waiting for a permit is a FIFO queue.
            let _worker = dependency
                .workers
                .acquire()
                .await
                .expect("the workers' semaphore is never closed");
            dependency.work_on(query).await;
            // The caller may have given up long ago; the work was done all the same.
            let _ = answer_tx.send(Answer);
        });
        answer_rx
    }

    async fn work_on(&self, query: Query) {
        let now = self.started.elapsed();
        let phase = self
            .scenario
            .phase_index(now)
            .map(|index| &self.scenario.phases[index]);
        match phase.map(|phase| (phase.condition, phase.end)) {
            Some((Condition::Hang, end)) => sleep_until(self.started + end).await,
            // Healthy, or a request still queued when the scenario is over.
            Some((Condition::Healthy, _)) | None => {
                sleep(varied(self.scenario.service_time, query.id)).await;
            }
        }
    }
}

/// The dependency as the caller sees it: a tower service, with no protection of its own.
fn raw_client(
    dependency: Dependency,
) -> impl Service<Query, Response = Answer, Error = BoxError, Future: Send> + Clone + Send + 'static
{
    service_fn(move |query| {
        // Submitted in `call`, not when the future is first polled: the request is on the wire.
        let answer = dependency.submit(query);
        async move { answer.await.map_err(BoxError::from) }
    })
}

// ---------------------------------------------------------------------------------------------
// The stacks compared: what sits between the caller and the dependency client.

/// The dependency client after a stack wrapped it.
type Client = BoxCloneService<Query, Answer, BoxError>;

/// The per-attempt timeout: 10× the dependency's healthy mean service time, so healthy calls
/// (28 ms at worst) never reach it, yet short enough that at 250 calls/s hung calls hold at
/// most 250/s × 0.2 s = 50 of the caller's 64 slots, leaving room for local work.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(200);

/// The request's deadline: the most a call to the dependency may take in all, whatever the
/// layers below it do. With a single attempt the 200 ms timeout always comes first, so here
/// the deadline is the outer bound, and every layer below can read the time left.
const DEADLINE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stack {
    /// The raw client: the caller waits as long as the dependency takes.
    NoProtection,
    /// This crate's deadline and per-attempt timeout.
    Firebreak,
}

impl Stack {
    const ALL: [Stack; 2] = [Stack::NoProtection, Stack::Firebreak];

    fn name(self) -> &'static str {
        match self {
            Stack::NoProtection => "no protection",
            Stack::Firebreak => "tower-firebreak",
        }
    }

    /// Wraps the raw dependency client in this stack's layers.
    fn client<S>(self, raw: S) -> Result<Client, ConfigError>
    where
        S: Service<Query, Response = Answer, Error = BoxError> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        Ok(match self {
            Stack::NoProtection => BoxCloneService::new(raw),
            Stack::Firebreak => BoxCloneService::new(
                ServiceBuilder::new()
                    .deadline(DEADLINE)?
                    .timeout_attempt(ATTEMPT_TIMEOUT)?
                    .service(raw),
            ),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The caller, and one run of the simulation.

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
    /// From arrival to completion, in virtual time; zero for a rejected request.
    latency: Duration,
    /// Slots in use once this request had its own (all of them if it was rejected).
    pool_in_use: usize,
}

/// Runs `scenario` once with `stack` around the dependency client, on a fresh runtime whose
/// clock starts paused, and returns a record of every request.
fn run(scenario: &Arc<Scenario>, stack: Stack) -> Result<Vec<Record>, BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    // On return, dropping the runtime cancels the work the dependency still has queued.
    runtime.block_on(simulate(Arc::clone(scenario), stack))
}

async fn simulate(scenario: Arc<Scenario>, stack: Stack) -> Result<Vec<Record>, BoxError> {
    let started = Instant::now();
    let dependency = Dependency::new(Arc::clone(&scenario), started);
    let client = stack.client(raw_client(dependency))?;
    let pool = Arc::new(Semaphore::new(scenario.caller_slots));

    let mut records = Vec::new();
    let mut in_flight = Vec::new();
    let arrivals = (0..)
        .map(|id| (id, scenario.arrival_interval * id))
        .take_while(|&(_, arrival)| arrival < scenario.duration());
    for (id, arrival) in arrivals {
        sleep_until(started + arrival).await;
        let arrived = Instant::now();
        let work = if id % 2 == 0 {
            Work::Dependency
        } else {
            Work::Local
        };
        // Fails only when the pool is full: the semaphore is never closed.
        let Ok(slot) = Arc::clone(&pool).try_acquire_owned() else {
            records.push(Record {
                arrival,
                work,
                outcome: Outcome::Rejected,
                latency: Duration::ZERO,
                pool_in_use: scenario.caller_slots,
            });
            continue;
        };
        let pool_in_use = scenario.caller_slots - pool.available_permits();
        let client = client.clone();
        let local_work = varied(scenario.local_work, id);
        in_flight.push(tokio::spawn(async move {
            let outcome = match work {
                Work::Local => {
                    sleep(local_work).await;
                    Outcome::Ok
                }
                Work::Dependency => match client.oneshot(Query { id }).await {
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
                pool_in_use,
            }
        }));
    }
    for request in in_flight {
        records.push(request.await?);
    }
    Ok(records)
}

// ---------------------------------------------------------------------------------------------
// Figures per phase, and the report.

/// Requests of one kind during one phase.
#[derive(Debug, Default)]
struct Tally {
    requests: usize,
    ok: usize,
    /// Latencies of the requests that got a slot, whatever their outcome; `summarize` sorts
    /// them once all are in, for `percentile`.
    latencies: Vec<Duration>,
}

impl Tally {
    fn add(&mut self, record: &Record) {
        self.requests += 1;
        if record.outcome == Outcome::Ok {
            self.ok += 1;
        }
        if record.outcome != Outcome::Rejected {
            self.latencies.push(record.latency);
        }
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

/// What the caller saw during one phase, by the arrival time of requests.
#[derive(Debug, Default)]
struct PhaseStats {
    local: Tally,
    dependency: Tally,
    pool_peak: usize,
    rejected: usize,
}

fn summarize(scenario: &Scenario, records: &[Record]) -> Vec<PhaseStats> {
    let mut phases: Vec<PhaseStats> = scenario
        .phases
        .iter()
        .map(|_| PhaseStats::default())
        .collect();
    for record in records {
        let index = scenario
            .phase_index(record.arrival)
            .expect("requests arrive only while the scenario lasts");
        let stats = &mut phases[index];
        match record.work {
            Work::Local => stats.local.add(record),
            Work::Dependency => stats.dependency.add(record),
        }
        stats.pool_peak = stats.pool_peak.max(record.pool_in_use);
        if record.outcome == Outcome::Rejected {
            stats.rejected += 1;
        }
    }
    for stats in &mut phases {
        stats.local.latencies.sort_unstable();
        stats.dependency.latencies.sort_unstable();
    }
    phases
}

/// A success rate rounded down to 0.1 %, so that anything short of every request reads below
/// 100.0 %.
fn format_rate(tally: &Tally) -> String {
    format!("{:.1}%", (tally.success_rate() * 10.0).floor() / 10.0)
}

fn format_latency(latency: Option<Duration>) -> String {
    match latency {
        None => "-".to_owned(),
        Some(latency) if latency < Duration::from_secs(1) => {
            format!("{} ms", latency.as_millis())
        }
        Some(latency) => format!("{:.1} s", latency.as_secs_f64()),
    }
}

fn print_report(scenario: &Scenario, results: &[(Stack, Vec<PhaseStats>)]) {
    let hang = scenario.hang_index();
    let hang_phase = &scenario.phases[hang];
    println!(
        "A caller with {} slots gets a request every {} ms; every other one calls a dependency \
         ({} workers,\n{} ms a call), the rest do {} ms of local work. {} s of virtual time; the \
         dependency hangs in {}-{} s.\n",
        scenario.caller_slots,
        scenario.arrival_interval.as_millis(),
        scenario.dependency_workers,
        scenario.service_time.as_millis(),
        scenario.local_work.as_millis(),
        scenario.duration().as_secs(),
        hang_phase.start.as_secs(),
        hang_phase.end.as_secs(),
    );
    let row = |cells: [&str; 8]| {
        let [
            stack,
            phase,
            local_ok,
            local_p99,
            dep_ok,
            dep_p50,
            pool_peak,
            rejected,
        ] = cells;
        println!(
            "{stack:<15} {phase:<15} {local_ok:>8} {local_p99:>9} {dep_ok:>7} {dep_p50:>7} \
             {pool_peak:>9} {rejected:>8}"
        );
    };
    row([
        "stack",
        "phase",
        "local ok",
        "local p99",
        "dep ok",
        "dep p50",
        "pool peak",
        "rejected",
    ]);
    for (stack, phases) in results {
        for (index, (phase, stats)) in scenario.phases.iter().zip(phases).enumerate() {
            let span = format!(
                "{:>2}-{:<2} s {}",
                phase.start.as_secs(),
                phase.end.as_secs(),
                phase.name
            );
            row([
                if index == 0 { stack.name() } else { "" },
                &span,
                &format_rate(&stats.local),
                &format_latency(stats.local.percentile(99)),
                &format_rate(&stats.dependency),
                &format_latency(stats.dependency.percentile(50)),
                &format!("{}/{}", stats.pool_peak, scenario.caller_slots),
                &stats.rejected.to_string(),
            ]);
        }
    }

    let during_hang = |wanted: Stack| {
        let (_, phases) = results
            .iter()
            .find(|(stack, _)| *stack == wanted)
            .expect("every stack was run");
        &phases[hang]
    };
    println!(
        "\nok = succeeded; latencies = requests that got a slot, virtual time; rejected = arrived to \
         a full pool.\n\
         No protection: hung calls hold the caller's slots, so local-only requests fail too ({} \
         ok): a cascade.\n\
         tower-firebreak: each hung call frees its slot after {} ms, so local work is unaffected \
         ({} ok).\n\
         Afterwards the dependency works off the calls abandoned meanwhile: the timeout shields \
         the caller only.",
        format_rate(&during_hang(Stack::NoProtection).local),
        ATTEMPT_TIMEOUT.as_millis(),
        format_rate(&during_hang(Stack::Firebreak).local),
    );
}

// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// One run of the demo's scenario with `stack`: the scenario, every request, the figures
    /// per phase.
    fn simulate_with(stack: Stack) -> (Arc<Scenario>, Vec<Record>, Vec<PhaseStats>) {
        let scenario = Arc::new(Scenario::hang());
        let records = run(&scenario, stack).expect("the simulation runs");
        let phases = summarize(&scenario, &records);
        (scenario, records, phases)
    }

    #[test]
    fn without_protection_the_hang_cascades_to_local_work() {
        let (scenario, _, phases) = simulate_with(Stack::NoProtection);
        let hang = &phases[scenario.hang_index()];

        // Local-only requests never call the dependency, yet almost all of them fail: the
        // pool is full of hung calls (2.5% get through, in the first ~250 ms of the hang).
        assert!(
            hang.local.success_rate() < 10.0,
            "local-only success during the hang: {:.1}%",
            hang.local.success_rate()
        );
        assert_eq!(hang.pool_peak, scenario.caller_slots);
        assert!(hang.rejected > hang.local.requests);
    }

    #[test]
    fn with_firebreak_local_work_is_unaffected_and_hung_calls_time_out() {
        let (scenario, records, phases) = simulate_with(Stack::Firebreak);
        let hang_phase = &scenario.phases[scenario.hang_index()];
        let healthy = &phases[0];
        let hang = &phases[scenario.hang_index()];

        assert!(
            hang.local.success_rate() >= 99.9,
            "local-only success during the hang: {:.2}%",
            hang.local.success_rate()
        );
        let healthy_p99 = healthy
            .local
            .percentile(99)
            .expect("healthy local requests");
        let hang_p99 = hang
            .local
            .percentile(99)
            .expect("local requests in the hang");
        assert!(
            hang_p99.as_secs_f64() <= 1.5 * healthy_p99.as_secs_f64(),
            "local p99: {hang_p99:?} in the hang, {healthy_p99:?} healthy"
        );
        assert_eq!(hang.rejected, 0);
        assert!(hang.pool_peak < scenario.caller_slots);

        // Every dependency call during the hang fails, and at the attempt timeout.
        let median = hang.dependency.percentile(50).expect("dependency calls");
        assert!(
            median >= ATTEMPT_TIMEOUT && median <= ATTEMPT_TIMEOUT + Duration::from_millis(5),
            "median dependency latency in the hang: {median:?}"
        );
        let calls_in_hang = records.iter().filter(|record| {
            record.work == Work::Dependency
                && hang_phase.start <= record.arrival
                && record.arrival < hang_phase.end
        });
        for record in calls_in_hang {
            assert_eq!(
                record.outcome,
                Outcome::Failed(ErrorKind::TimedOut),
                "{record:?}"
            );
        }
    }

    #[test]
    fn healthy_dependency_calls_succeed_with_both_stacks() {
        for stack in Stack::ALL {
            let (_, _, phases) = simulate_with(stack);
            assert_eq!(phases[0].local.success_rate(), 100.0, "{}", stack.name());
            assert_eq!(
                phases[0].dependency.success_rate(),
                100.0,
                "{}",
                stack.name()
            );
            assert_eq!(phases[0].rejected, 0, "{}", stack.name());
        }
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
