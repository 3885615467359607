//! An axum gateway in front of a flaky upstream, over real HTTP on 127.0.0.1.
//!
//! Two servers start in this process, each on an ephemeral loopback port:
//!
//! - the **upstream**, a price service. As the schedule says, it is healthy, then answers
//!   `500` to every call, then recovers, then hangs (never answers), then recovers again;
//! - the **gateway**, an axum server whose handler asks the upstream for the price through
//!   hyper-util's client, wrapped in the stack an [`Sla`] derives from the upstream's
//!   objective, with this crate's HTTP parts swapped in.
//!
//! ```text
//! load clients ──HTTP──▶ gateway                                   upstream
//!                        HandleErrorLayer: errors → 503 + Retry-After, 504
//!                        AcceptDeadlineLayer: the caller's grpc-timeout, if it sent one
//!                        deadline: 1 s at most
//!                        LoadShedLayer, SlaGuard: shed before p99 passes 300 ms
//!                        handler
//!                          retry: HttpRetryPolicy, IdempotentRequests, the Sla's budget
//!                          circuit breaker: StatusClassifier, trips after 14 failures
//!                          attempt timeout: 100 ms
//!                          load shed: 64 calls in flight
//!                          PropagateDeadlineLayer ──HTTP──▶ HandleErrorLayer
//!                          hyper-util Client                AcceptDeadlineLayer
//!                                                           handler
//! ```
//!
//! Sixteen load clients call the gateway in a loop, 10 ms apart. They do not honour
//! `Retry-After`, so as to show what the gateway answers under pressure. Once a second a line
//! shows what they got, the breaker's state, and the calls that reached the upstream; at the
//! end a table sums up each phase. It runs for 18 s, then stops.
//!
//! ```text
//! cargo run --release --example axum_gateway
//! cargo test --all-features --example axum_gateway   # a 7 s schedule; checks what the table shows
//! ```
//!
//! What to look for (the figures are from one run; see below):
//!
//! - **500s**: the 16 requests in flight fail together, which makes the 14 failures in a row
//!   that open the breaker within milliseconds. Their retries, after a backoff of up to
//!   100 ms (the `max` column), meet the open breaker, so even they get a `503` with
//!   `Retry-After` rather than the upstream's `500` as a `502` (the `502` column would fill
//!   with a slower trip, or fewer requests in flight). From then on every request is
//!   answered `503` in well under a millisecond, and the upstream gets one probe a second:
//!   19 calls in 4 s, against 5,516 requests to the gateway.
//! - **hangs**: the first wave waits its 100 ms attempt timeout and a backoff (the `max`
//!   column) while the breaker opens the same way. No `504`: by the time a timed-out call
//!   would be retried the breaker is open, so the call gets a `503` at once rather than a
//!   second wait.
//! - **healed**: the next probe succeeds, the breaker closes, and `200`s are back within the
//!   breaker's 1 s open period.
//! - **deadline**: every upstream call carries the gateway's time left in `grpc-timeout`, which
//!   the upstream's `AcceptDeadlineLayer` makes its deadline (the summary counts calls that had
//!   none). Here a hung call ends sooner: the gateway's attempt timeout drops the connection,
//!   and hyper then drops the handler, so the upstream's calls in progress stay near zero.
//!   Behind a proxy, or on a connection that stays open, the deadline is what ends them.
//!
//! One run (`cargo run --release`, a 2-core VM):
//!
//! ```text
//! phase           requests    200   502    503   504      p50      p99      max upstream tripped reclosed  breaker
//!  0-3  s healthy     3261   3261     0      0     0   3.5 ms   6.8 ms   8.2 ms     3261       0        0  closed
//!  3-7  s 500s        5516      0     0   5516     0   0.1 ms   0.5 ms  98.2 ms       19       1        0  open
//!  7-10 s healed      3522   2330     0   1192     0   3.4 ms   5.6 ms   7.8 ms     2330       0        1  closed
//! 10-14 s hangs       5328      0     0   5328     0   0.2 ms   0.5 ms 201.3 ms       19       1        0  open
//! 14-18 s healed      4393   3952     0    441     0   3.6 ms   6.8 ms  11.4 ms     3952       0        1  closed
//! ```

use std::error::Error;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State as Extract;
use axum::http::header::RETRY_AFTER;
use axum::http::{Request, Response, StatusCode, Uri};
use axum::response::{IntoResponse, Response as AxumResponse};
use axum::routing::get;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_firebreak::circuit_breaker::{Handle, State};
use tower_firebreak::http::{
    AcceptDeadlineLayer, ErrorResponse, PropagateDeadlineLayer, error_response,
};
use tower_firebreak::load_shed::LoadShedLayer;
use tower_firebreak::observe::Event;
use tower_firebreak::sla::Sla;
use tower_firebreak::timeout::deadline;
use tower_firebreak::{BoxError, ErrorKind, ServiceBuilderExt};

/// Load clients, each with one request in flight at a time.
const CLIENTS: usize = 16;
/// The pause between a load client's requests.
const THINK_TIME: Duration = Duration::from_millis(10);
/// How long a load client waits for an answer before counting it as none.
const CLIENT_PATIENCE: Duration = Duration::from_secs(5);
/// The work a healthy upstream call takes.
const UPSTREAM_WORK: Duration = Duration::from_millis(2);
/// The upstream's promise: this share of calls answer within the objective...
const UPSTREAM_AVAILABILITY: f64 = 0.999;
const UPSTREAM_OBJECTIVE: Duration = Duration::from_millis(100);
/// ...with at most this many calls in flight from the gateway.
const UPSTREAM_CONCURRENCY: u64 = 64;
/// The longest the gateway works on a request, whatever its caller allows.
const GATEWAY_DEADLINE: Duration = Duration::from_secs(1);
/// The gateway's own objective: its guard sheds load before its p99 latency passes this.
const GATEWAY_OBJECTIVE: Duration = Duration::from_millis(300);

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let scenario = Scenario::demo();
    println!(
        "{CLIENTS} clients call the gateway, {} ms apart; the gateway calls the upstream (99.9% \
         within {} ms promised).\n",
        THINK_TIME.as_millis(),
        UPSTREAM_OBJECTIVE.as_millis(),
    );
    let report = run(&scenario, true).await?;
    println!();
    print_table(&report);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The schedule.

/// What the upstream does during a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    /// Answers `200` after a couple of milliseconds.
    Healthy,
    /// Answers `500` at once.
    Errors,
    /// Never answers: the call lasts until the caller hangs up or its deadline passes.
    Hangs,
}

/// One stretch of the run.
#[derive(Debug, Clone, Copy)]
struct Phase {
    name: &'static str,
    upstream: Upstream,
    length: Duration,
}

/// The schedule, and the one setting the test shortens with it.
#[derive(Debug, Clone)]
struct Scenario {
    phases: Vec<Phase>,
    /// How long the breaker stays open before it probes (the Sla's default is 1 s).
    open_duration: Duration,
}

impl Scenario {
    fn new(open_duration: Duration, lengths_ms: [u64; 5]) -> Scenario {
        let shape = [
            ("healthy", Upstream::Healthy),
            ("500s", Upstream::Errors),
            ("healed", Upstream::Healthy),
            ("hangs", Upstream::Hangs),
            ("healed", Upstream::Healthy),
        ];
        let phases = shape
            .into_iter()
            .zip(lengths_ms)
            .map(|((name, upstream), ms)| Phase {
                name,
                upstream,
                length: Duration::from_millis(ms),
            })
            .collect();
        Scenario {
            phases,
            open_duration,
        }
    }

    /// 18 s, with the Sla's own open duration.
    fn demo() -> Scenario {
        Scenario::new(Duration::from_secs(1), [3000, 4000, 3000, 4000, 4000])
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway: the part to copy.

/// The gateway's client for the upstream, boxed because axum's `State` needs a type to name,
/// and the stack's own (five layers deep, around a function item) cannot be written out.
/// `BoxCloneSyncService` is `Clone` and `Sync`, as axum's state must be.
type UpstreamClient = BoxCloneSyncService<Request<String>, Response<Incoming>, BoxError>;

/// hyper-util's client in the stack the upstream's [`Sla`] derives: retry under a budget,
/// circuit breaker, attempt timeout, concurrency limit; with HTTP's view of which results are
/// failures and which requests may be sent twice (`http_client_layer`), and the deadline
/// passed on in `grpc-timeout`. Returns the client and a handle on its breaker.
fn upstream_client(
    open_duration: Duration,
    on_transition: impl Fn(State, State) + Send + Sync + 'static,
) -> Result<(UpstreamClient, Handle), BoxError> {
    // "99.9% of price lookups answer within 100 ms; at most 64 at once."
    let sla = Sla::builder()
        .latency_objective(UPSTREAM_OBJECTIVE)
        .availability(UPSTREAM_AVAILABILITY)
        .max_concurrency(UPSTREAM_CONCURRENCY)
        .open_duration(open_duration)
        .name("upstream")
        .on_event(move |event: &Event<'_>| {
            if let Event::BreakerTransition { from, to, .. } = event {
                on_transition(*from, *to);
            }
        })
        .build()?;
    // Retries what HTTP says may succeed next time (5xx, 408, 429 and 503 after their
    // Retry-After, transport errors), only for requests that are safe to send twice; counts
    // 5xx, 408, 429 and transport errors against the upstream, not other 4xx, nor this
    // gateway's own shedding. Everything else is as the Sla derived it.
    let stack = sla.http_client_layer()?;
    let breaker = stack.breaker();

    let client = ServiceBuilder::new()
        .layer(stack)
        .layer(PropagateDeadlineLayer::new())
        .service(Client::builder(TokioExecutor::new()).build_http::<String>());
    Ok((UpstreamClient::new(client), breaker))
}

/// The gateway's handler state.
#[derive(Clone)]
struct Gateway {
    upstream: UpstreamClient,
    price_uri: Uri,
}

/// `GET /price`: the upstream's price, or why there is none.
async fn price(Extract(gateway): Extract<Gateway>) -> AxumResponse {
    let request = Request::get(gateway.price_uri.clone())
        .body(String::new())
        .expect("a GET with a valid URI");
    // Runs under this request's deadline: retries stop in time, and the upstream is told.
    let response = match gateway.upstream.oneshot(request).await {
        Ok(response) => response,
        Err(err) => return upstream_error(&*err),
    };
    let status = response.status();
    // Read the body whole: only then does the connection go back to the pool.
    let Ok(body) = response.into_body().collect().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    if status.is_success() {
        body.to_bytes().into_response()
    } else {
        // The upstream's own error, after the retries it was worth.
        StatusCode::BAD_GATEWAY.into_response()
    }
}

/// The answer to an upstream call that failed: this crate's errors as [`error_response`]
/// maps them (an open breaker or a full limit: `503` with `Retry-After`; a timeout: `504`),
/// anything else (refused, reset) as `502`, the upstream's failure rather than ours.
fn upstream_error(err: &(dyn Error + 'static)) -> AxumResponse {
    match ErrorKind::of(err) {
        ErrorKind::Inner | ErrorKind::RetryBudgetExhausted => {
            StatusCode::BAD_GATEWAY.into_response()
        }
        // A 503 always carries a Retry-After: the error's hint, or 1 s.
        _ => error_response(err).into_response(),
    }
}

/// The gateway's server: its own deadline, the caller's if tighter, and a guard that sheds
/// load (`503` + `Retry-After`) before its latency breaks its objective.
fn gateway_router(gateway: Gateway, guard: LoadShedLayer) -> Result<Router, BoxError> {
    let server_side = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|err: BoxError| async move {
            ErrorResponse::from(err)
        }))
        .layer(AcceptDeadlineLayer::new())
        .deadline(GATEWAY_DEADLINE)?
        .load_shed_with(guard);
    Ok(Router::new()
        .route("/price", get(price))
        .with_state(gateway)
        .layer(server_side))
}

/// The gateway's guard: a concurrency limit that adapts to keep 99% of its answers within
/// [`GATEWAY_OBJECTIVE`] (an `SlaGuard`), and rejects what it cannot admit with `Overloaded`.
fn gateway_guard() -> Result<LoadShedLayer, BoxError> {
    Ok(LoadShedLayer::builder()
        .latency_objective(GATEWAY_OBJECTIVE)
        .build()?)
}

// ---------------------------------------------------------------------------------------------
// The upstream.

/// `GET /price` on the upstream: healthy, failing or hanging, as the phase says.
async fn upstream_price(Extract(run): Extract<Arc<Run>>) -> AxumResponse {
    let phase = run.phase();
    let tally = &run.tallies[phase];
    tally.upstream_calls.fetch_add(1, Ordering::Relaxed);
    // `AcceptDeadlineLayer` made the gateway's `grpc-timeout` this call's deadline.
    if deadline::remaining().is_none() {
        tally
            .upstream_without_deadline
            .fetch_add(1, Ordering::Relaxed);
    }
    let _in_progress = InProgress::enter(&run);
    match run.phases[phase].upstream {
        Upstream::Healthy => {
            sleep(UPSTREAM_WORK).await;
            "42.00".into_response()
        }
        Upstream::Errors => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        // Until the gateway hangs up, or its deadline passes and `AcceptDeadlineLayer` ends it.
        Upstream::Hangs => std::future::pending().await,
    }
}

fn upstream_router(run: Arc<Run>) -> Router {
    Router::new()
        .route("/price", get(upstream_price))
        .with_state(run)
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|err: BoxError| async move {
                    ErrorResponse::from(err)
                }))
                .layer(AcceptDeadlineLayer::new()),
        )
}

/// Counts an upstream call as in progress until it ends, answered or dropped.
struct InProgress(Arc<Run>);

impl InProgress {
    fn enter(run: &Arc<Run>) -> InProgress {
        run.upstream_in_progress.fetch_add(1, Ordering::Relaxed);
        InProgress(Arc::clone(run))
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.upstream_in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// The run: servers, load clients, progress.

/// What one run shares between the servers, the load clients and the driver.
struct Run {
    phases: Vec<Phase>,
    current: AtomicUsize,
    stopped: AtomicBool,
    tallies: Vec<Tally>,
    upstream_in_progress: AtomicU64,
}

impl Run {
    fn phase(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// The phase the schedule is in `elapsed` after the start.
    fn phase_at(&self, elapsed: Duration) -> &Phase {
        let mut end = Duration::ZERO;
        for phase in &self.phases {
            end += phase.length;
            if elapsed < end {
                return phase;
            }
        }
        self.phases.last().expect("a schedule has phases")
    }

    /// Counts the breaker's transitions in the phase they happen in.
    fn record_transition(&self, from: State, to: State) {
        let tally = &self.tallies[self.phase()];
        match (from, to) {
            (State::Closed, State::Open) => tally.tripped.fetch_add(1, Ordering::Relaxed),
            (_, State::Closed) => tally.reclosed.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }
}

/// Counts for one phase.
#[derive(Default)]
struct Tally {
    /// Gateway answers, by the phase their request was sent in.
    requests: AtomicU64,
    ok: AtomicU64,
    bad_gateway: AtomicU64,
    unavailable: AtomicU64,
    unavailable_without_retry_after: AtomicU64,
    gateway_timeout: AtomicU64,
    other: AtomicU64,
    /// A lock per answer is fine here, in the load clients; the gateway takes none.
    latencies: Mutex<Vec<Duration>>,
    /// Calls that reached the upstream's handler, and those of them that had no deadline.
    upstream_calls: AtomicU64,
    upstream_without_deadline: AtomicU64,
    /// Breaker transitions from closed to open, and to closed.
    tripped: AtomicU64,
    reclosed: AtomicU64,
}

impl Tally {
    fn record(&self, answer: Option<(StatusCode, bool)>, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let counter = match answer {
            Some((StatusCode::OK, _)) => &self.ok,
            Some((StatusCode::BAD_GATEWAY, _)) => &self.bad_gateway,
            Some((StatusCode::SERVICE_UNAVAILABLE, has_retry_after)) => {
                if !has_retry_after {
                    self.unavailable_without_retry_after
                        .fetch_add(1, Ordering::Relaxed);
                }
                &self.unavailable
            }
            Some((StatusCode::GATEWAY_TIMEOUT, _)) => &self.gateway_timeout,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.latencies.lock().expect("never poisoned").push(latency);
    }
}

/// Runs `scenario` on loopback, printing a progress line a second if `progress`; returns what
/// each phase saw.
async fn run(scenario: &Scenario, progress: bool) -> Result<Vec<PhaseReport>, BoxError> {
    let run = Arc::new(Run {
        phases: scenario.phases.clone(),
        current: AtomicUsize::new(0),
        stopped: AtomicBool::new(false),
        tallies: scenario.phases.iter().map(|_| Tally::default()).collect(),
        upstream_in_progress: AtomicU64::new(0),
    });
    let (upstream_addr, upstream_server) = serve(upstream_router(Arc::clone(&run))).await?;

    let (upstream, breaker) = upstream_client(scenario.open_duration, {
        let run = Arc::clone(&run);
        move |from, to| run.record_transition(from, to)
    })?;
    let gateway = Gateway {
        upstream,
        price_uri: format!("http://{upstream_addr}/price").parse()?,
    };
    let guard = gateway_guard()?;
    let (gateway_addr, gateway_server) = serve(gateway_router(gateway, guard.clone())?).await?;
    let gateway_uri: Uri = format!("http://{gateway_addr}/price").parse()?;

    let http = Client::builder(TokioExecutor::new()).build_http::<String>();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(load_client(
                Arc::clone(&run),
                http.clone(),
                gateway_uri.clone(),
            ))
        })
        .collect();

    let start = Instant::now();
    let ticker = progress.then(|| {
        tokio::spawn(print_progress(
            Arc::clone(&run),
            breaker.clone(),
            guard.clone(),
            start,
        ))
    });
    let mut phase_end = start;
    let mut breaker_at_end = Vec::new();
    for (index, phase) in scenario.phases.iter().enumerate() {
        run.current.store(index, Ordering::Relaxed);
        phase_end += phase.length;
        sleep_until(phase_end).await;
        breaker_at_end.push(breaker.state());
    }
    run.stopped.store(true, Ordering::Relaxed);
    for client in clients {
        client.await?;
    }
    upstream_server.abort();
    gateway_server.abort();
    if let Some(ticker) = ticker {
        ticker.abort();
    }

    let mut from = Duration::ZERO;
    Ok(scenario
        .phases
        .iter()
        .zip(&run.tallies)
        .zip(breaker_at_end)
        .map(|((phase, tally), breaker)| {
            let report = PhaseReport::new(phase, from, tally, breaker);
            from += phase.length;
            report
        })
        .collect())
}

/// Serves `router` on an ephemeral loopback port until aborted.
async fn serve(router: Router) -> Result<(SocketAddr, JoinHandle<()>), BoxError> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .await
            .expect("the server runs until aborted");
    });
    Ok((addr, server))
}

/// One load client: a request, its answer, a pause, until the run stops.
async fn load_client(run: Arc<Run>, http: Client<HttpConnector, String>, uri: Uri) {
    while !run.stopped.load(Ordering::Relaxed) {
        let phase = run.phase();
        let sent = Instant::now();
        let answer = timeout(CLIENT_PATIENCE, call_gateway(&http, &uri))
            .await
            .ok()
            .flatten();
        run.tallies[phase].record(answer, sent.elapsed());
        sleep(THINK_TIME).await;
    }
}

/// The gateway's status and whether it sent a `Retry-After`; `None` if the call failed.
async fn call_gateway(
    http: &Client<HttpConnector, String>,
    uri: &Uri,
) -> Option<(StatusCode, bool)> {
    let request = Request::get(uri.clone())
        .body(String::new())
        .expect("a GET with a valid URI");
    let response = http.request(request).await.ok()?;
    let status = response.status();
    let has_retry_after = response.headers().contains_key(RETRY_AFTER);
    response.into_body().collect().await.ok()?;
    Some((status, has_retry_after))
}

/// Once a second: the last second's answers, the breaker's state, the upstream's load.
async fn print_progress(run: Arc<Run>, breaker: Handle, guard: LoadShedLayer, start: Instant) {
    let mut previous = Totals::of(&run);
    for second in 1.. {
        sleep_until(start + Duration::from_secs(second)).await;
        let now = Totals::of(&run);
        // The second that just ended, named by the phase it was mostly in.
        let phase = run.phase_at(Duration::from_secs(second) - Duration::from_millis(500));
        println!(
            "{:>2}-{:<2} s {:<7} | 200 {:>5}  502 {:>4}  503 {:>5}  504 {:>4} | breaker {:<9} | \
             upstream {:>4} calls/s, {:>2} in progress | guard limit {}",
            second - 1,
            second,
            phase.name,
            now.ok - previous.ok,
            now.bad_gateway - previous.bad_gateway,
            now.unavailable - previous.unavailable,
            now.gateway_timeout - previous.gateway_timeout,
            breaker.state().as_str(),
            now.upstream_calls - previous.upstream_calls,
            run.upstream_in_progress.load(Ordering::Relaxed),
            guard.limit(),
        );
        previous = now;
    }
}

/// Counts summed over every phase, for the progress line.
struct Totals {
    ok: u64,
    bad_gateway: u64,
    unavailable: u64,
    gateway_timeout: u64,
    upstream_calls: u64,
}

impl Totals {
    fn of(run: &Run) -> Totals {
        let sum = |field: fn(&Tally) -> &AtomicU64| -> u64 {
            run.tallies
                .iter()
                .map(|tally| field(tally).load(Ordering::Relaxed))
                .sum()
        };
        Totals {
            ok: sum(|t| &t.ok),
            bad_gateway: sum(|t| &t.bad_gateway),
            unavailable: sum(|t| &t.unavailable),
            gateway_timeout: sum(|t| &t.gateway_timeout),
            upstream_calls: sum(|t| &t.upstream_calls),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The summary.

/// What one phase saw, once it is over.
#[derive(Debug, Clone)]
struct PhaseReport {
    name: &'static str,
    from: Duration,
    to: Duration,
    requests: u64,
    ok: u64,
    bad_gateway: u64,
    unavailable: u64,
    unavailable_without_retry_after: u64,
    gateway_timeout: u64,
    other: u64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    upstream_calls: u64,
    upstream_without_deadline: u64,
    tripped: u64,
    reclosed: u64,
    breaker_at_end: State,
}

impl PhaseReport {
    fn new(phase: &Phase, from: Duration, tally: &Tally, breaker_at_end: State) -> PhaseReport {
        let mut latencies = tally.latencies.lock().expect("never poisoned").clone();
        latencies.sort_unstable();
        let quantile = |q: f64| {
            let index = ((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1);
            latencies.get(index).copied().unwrap_or_default()
        };
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        PhaseReport {
            name: phase.name,
            from,
            to: from + phase.length,
            requests: load(&tally.requests),
            ok: load(&tally.ok),
            bad_gateway: load(&tally.bad_gateway),
            unavailable: load(&tally.unavailable),
            unavailable_without_retry_after: load(&tally.unavailable_without_retry_after),
            gateway_timeout: load(&tally.gateway_timeout),
            other: load(&tally.other),
            p50: quantile(0.5),
            p99: quantile(0.99),
            max: latencies.last().copied().unwrap_or_default(),
            upstream_calls: load(&tally.upstream_calls),
            upstream_without_deadline: load(&tally.upstream_without_deadline),
            tripped: load(&tally.tripped),
            reclosed: load(&tally.reclosed),
            breaker_at_end,
        }
    }
}

fn print_table(report: &[PhaseReport]) {
    println!(
        "{:<15} {:>8} {:>6} {:>5} {:>6} {:>5} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8}  breaker",
        "phase",
        "requests",
        "200",
        "502",
        "503",
        "504",
        "p50",
        "p99",
        "max",
        "upstream",
        "tripped",
        "reclosed",
    );
    for phase in report {
        println!(
            "{:<15} {:>8} {:>6} {:>5} {:>6} {:>5} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8}  {}",
            format!(
                "{:>2}-{:<2} s {}",
                phase.from.as_secs(),
                phase.to.as_secs(),
                phase.name
            ),
            phase.requests,
            phase.ok,
            phase.bad_gateway,
            phase.unavailable,
            phase.gateway_timeout,
            millis(phase.p50),
            millis(phase.p99),
            millis(phase.max),
            phase.upstream_calls,
            phase.tripped,
            phase.reclosed,
            phase.breaker_at_end.as_str(),
        );
    }
    let total = |field: fn(&PhaseReport) -> u64| -> u64 { report.iter().map(field).sum() };
    println!(
        "\nrequests: sent by the load clients in the phase; their answers by status, and latency.\n\
         upstream: calls that reached the upstream. tripped: the breaker opened from closed; \
         reclosed: it closed again;\nbreaker: its state at the end of the phase.\n\
         503s without Retry-After: {}. Other answers, or none: {}. Upstream calls without a \
         deadline: {}.",
        total(|p| p.unavailable_without_retry_after),
        total(|p| p.other),
        total(|p| p.upstream_without_deadline),
    );
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo's shape in 7 s, with a 300 ms open duration so each phase outlasts it several
    /// times over; real sockets, real time, so only counts are asserted, never durations.
    fn quick() -> Scenario {
        Scenario::new(Duration::from_millis(300), [1000, 1500, 1500, 1500, 1500])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_breaker_sheds_the_outages_and_the_gateway_recovers() {
        let report = run(&quick(), true).await.expect("the run completes");
        print_table(&report);
        let [healthy, errors, healed, hangs, healed_again] = &report[..] else {
            panic!("five phases: {report:?}");
        };

        // Healthy: (almost) every request answered 200, and the breaker stayed closed.
        assert!(healthy.ok * 10 >= healthy.requests * 9, "{healthy:?}");
        assert_eq!(healthy.tripped, 0, "{healthy:?}");

        for outage in [errors, hangs] {
            // The breaker opened, and the gateway answered most requests 503 at once...
            assert!(outage.tripped >= 1, "{outage:?}");
            assert!(outage.unavailable * 2 > outage.requests, "{outage:?}");
            // ...while the upstream got a small share of them: the trip, then one probe per
            // open period.
            assert!(outage.upstream_calls * 5 < outage.requests, "{outage:?}");
        }

        for after in [healed, healed_again] {
            // The next probe succeeded, the breaker closed, and 200s came back.
            assert!(after.reclosed >= 1, "{after:?}");
            assert_eq!(after.breaker_at_end, State::Closed, "{after:?}");
            assert!(after.ok * 2 > after.requests, "{after:?}");
        }

        // Every 503 told the client when to come back, and every request got an answer.
        for phase in &report {
            assert_eq!(phase.unavailable_without_retry_after, 0, "{phase:?}");
            assert_eq!(phase.other, 0, "{phase:?}");
            // The gateway's deadline reached the upstream with every call.
            assert_eq!(phase.upstream_without_deadline, 0, "{phase:?}");
        }
    }
}
