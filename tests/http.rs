//! The `http` feature over real HTTP on 127.0.0.1: an axum server and hyper-util's legacy
//! client (a tower `Service`), with this crate's layers on either side.
//!
//! Loopback sockets are real I/O, so no test here asserts how long something took in real
//! time. Tests that need a delay run in tokio's paused time, where a timer fires as soon as
//! the runtime is idle; since the clock may also jump ahead while a socket is being read, they
//! assert only lower bounds on virtual time, and the decisions the policy took.

#![cfg(feature = "http")]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header::RETRY_AFTER};
use axum::routing::any as any_method;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use proptest::prelude::*;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_firebreak::ServiceBuilderExt;
use tower_firebreak::circuit_breaker::{CircuitBreakerLayer, State as BreakerState};
use tower_firebreak::error::{BoxError, ConfigError, ErrorKind};
use tower_firebreak::http::{
    AcceptDeadlineLayer, HttpRetryPolicy, IdempotentRequests, MAX_RETRY_AFTER,
    PropagateDeadlineLayer, StatusClassifier, WallClock, error_response, format_grpc_timeout,
    parse_grpc_timeout, parse_retry_after, retry_after,
};
use tower_firebreak::load_shed::LoadShedLayer;
use tower_firebreak::retry::{Backoff, Decision, Jitter, RetryLayer, RetryPolicy};
use tower_firebreak::timeout::deadline;

const MS: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------------------------
// A scripted upstream and a client.

/// A status and a `Retry-After` value to answer with.
type Reply = (u16, Option<&'static str>);

/// What the upstream answers, in order; 200 once the script runs out.
#[derive(Clone, Default)]
struct Upstream {
    script: Arc<Mutex<VecDeque<Reply>>>,
    hits: Arc<AtomicU32>,
}

impl Upstream {
    fn hits(&self) -> u32 {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn scripted(State(upstream): State<Upstream>) -> Response<String> {
    upstream.hits.fetch_add(1, Ordering::SeqCst);
    let (status, retry_after) = upstream
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or((200, None));
    let mut response = Response::builder().status(status);
    if let Some(value) = retry_after {
        response = response.header(RETRY_AFTER, value);
    }
    response.body(String::new()).unwrap()
}

/// Serves `router` on an ephemeral loopback port until the runtime ends.
async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

async fn start_upstream(script: &[Reply]) -> (Upstream, SocketAddr) {
    let upstream = Upstream::default();
    upstream
        .script
        .lock()
        .unwrap()
        .extend(script.iter().copied());
    let router = Router::new()
        .route("/", any_method(scripted))
        .with_state(upstream.clone());
    (upstream.clone(), serve(router).await)
}

fn client() -> Client<HttpConnector, String> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn get(addr: SocketAddr) -> Request<String> {
    Request::get(format!("http://{addr}/"))
        .body(String::new())
        .unwrap()
}

/// A breaker that never trips (the window needs 1000 calls), to read its counters.
fn counting_breaker() -> CircuitBreakerLayer<StatusClassifier> {
    CircuitBreakerLayer::builder()
        .failure_rate(1.0, 1000)
        .min_calls(1000)
        .classifier(StatusClassifier::default())
        .build()
        .unwrap()
}

/// A retry policy that records each decision of `policy`.
fn recording<P: RetryPolicy<R> + Clone, R>(
    policy: P,
) -> (impl RetryPolicy<R> + Clone, Arc<Mutex<Vec<Decision>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let decisions = Arc::clone(&log);
    let recorder = move |result: &Result<R, BoxError>| {
        let decision = policy.decide(result);
        log.lock().unwrap().push(decision);
        decision
    };
    (recorder, decisions)
}

fn retry_layer<P: Clone>(policy: P) -> RetryLayer<P, IdempotentRequests> {
    RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::exponential(10 * MS, 2.0, 100 * MS).jitter(Jitter::None))
        .policy(policy)
        .clone_requests_with(IdempotentRequests::default())
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. The classifier through a breaker.

#[tokio::test]
async fn the_breaker_counts_5xx_408_429_as_failures_ignores_other_4xx() {
    let cases = [
        (200, "success"),
        (204, "success"),
        (301, "success"),
        (500, "failure"),
        (502, "failure"),
        (503, "failure"),
        (408, "failure"),
        (429, "failure"),
        (400, "ignored"),
        (404, "ignored"),
        (409, "ignored"),
    ];
    for (status, expected) in cases {
        let (upstream, addr) = start_upstream(&[(status, None)]).await;
        let breaker = counting_breaker();
        let handle = breaker.handle();
        let response = breaker.layer(client()).oneshot(get(addr)).await.unwrap();
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(upstream.hits(), 1);
        let metrics = handle.metrics();
        let seen = match (metrics.successes, metrics.failures) {
            (1, 0) => "success",
            (0, 1) => "failure",
            (0, 0) => "ignored",
            other => panic!("status {status}: counted {other:?}"),
        };
        assert_eq!(seen, expected, "status {status}");
    }
}

#[tokio::test]
async fn a_refused_connection_is_a_failure_and_trips_the_breaker() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }; // dropped: nothing listens there now
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .classifier(StatusClassifier::default())
        .build()
        .unwrap();
    let handle = breaker.handle();
    let svc = breaker.layer(client());
    let err = svc.clone().oneshot(get(closed)).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::Inner, "{err}");
    assert_eq!(handle.state(), BreakerState::Open);
    let err = svc.oneshot(get(closed)).await.unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::CircuitOpen);
}

#[tokio::test]
async fn a_custom_table_changes_what_trips() {
    let (_, addr) = start_upstream(&[(409, None), (503, None)]).await;
    let classifier = StatusClassifier::builder()
        .failures(409..=409)
        .successes(503..=503)
        .build()
        .unwrap();
    let breaker = CircuitBreakerLayer::builder()
        .failure_rate(1.0, 1000)
        .min_calls(1000)
        .classifier(classifier)
        .build()
        .unwrap();
    let handle = breaker.handle();
    let svc = breaker.layer(client());
    svc.clone().oneshot(get(addr)).await.unwrap();
    svc.oneshot(get(addr)).await.unwrap();
    let metrics = handle.metrics();
    assert_eq!((metrics.failures, metrics.successes), (1, 1));
}

/// A server that says when it will be back is not probed before then: a 503 with
/// `Retry-After: 5` that trips a breaker with a 1 s open duration keeps it open 5 s; an
/// absurd value is held to the breaker's `max_retry_after`.
#[tokio::test(start_paused = true)]
async fn a_retry_after_keeps_the_breaker_open_at_least_that_long() {
    for (header, max, open_for) in [
        ("5", Duration::from_secs(60), Duration::from_secs(5)),
        ("86400", Duration::from_secs(10), Duration::from_secs(10)),
        ("soon", Duration::from_secs(60), Duration::from_secs(1)),
    ] {
        let breaker = CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(1))
            .jitter(0.0)
            .max_retry_after(max)
            .classifier(StatusClassifier::default())
            .build()
            .unwrap();
        let handle = breaker.handle();
        let upstream = tower::service_fn(move |_: ()| async move {
            let response = Response::builder()
                .status(503)
                .header(RETRY_AFTER, header)
                .body(())
                .unwrap();
            Ok::<_, BoxError>(response)
        });
        let svc = breaker.layer(upstream);
        let started = tokio::time::Instant::now();
        svc.clone().oneshot(()).await.unwrap();
        assert_eq!(handle.state(), BreakerState::Open, "Retry-After: {header}");
        // Just before the end of the open period it still rejects, and says how long is left.
        tokio::time::sleep_until(started + open_for - MS).await;
        let err = svc.clone().oneshot(()).await.unwrap_err();
        assert_eq!(ErrorKind::of(&*err), ErrorKind::CircuitOpen);
        assert_eq!(
            ErrorKind::retry_after(&*err),
            Some(MS),
            "Retry-After: {header}"
        );
        // Then it probes.
        tokio::time::sleep(2 * MS).await;
        svc.clone().oneshot(()).await.unwrap();
        assert_eq!(handle.state(), BreakerState::Open, "the probe failed again");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Retry-After and the retry policy.

#[tokio::test(start_paused = true)]
async fn a_503_with_retry_after_is_retried_after_exactly_that_delay_or_later() {
    let (upstream, addr) = start_upstream(&[(503, Some("2"))]).await;
    let (policy, decisions) = recording(HttpRetryPolicy::default());
    let svc = retry_layer(policy).layer(client());
    let started = tokio::time::Instant::now();
    let response = svc.oneshot(get(addr)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.hits(), 2);
    assert_eq!(
        *decisions.lock().unwrap(),
        [Decision::RetryAfter(2000 * MS), Decision::Return]
    );
    // Virtual time; the clock may have jumped further while sockets were read, never less.
    assert!(started.elapsed() >= 2000 * MS, "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_429_or_503_without_retry_after_is_returned_not_retried() {
    for status in [429, 503] {
        for header in [None, Some("soon"), Some("-1"), Some("99999999")] {
            let (upstream, addr) = start_upstream(&[(status, header)]).await;
            let (policy, decisions) = recording(HttpRetryPolicy::default());
            let response = retry_layer(policy)
                .layer(client())
                .oneshot(get(addr))
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(upstream.hits(), 1, "{status} {header:?}");
            assert_eq!(*decisions.lock().unwrap(), [Decision::Return]);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_longer_than_max_wait_is_returned_to_the_caller() {
    let (upstream, addr) = start_upstream(&[(429, Some("120"))]).await;
    let response = retry_layer(HttpRetryPolicy::default())
        .layer(client())
        .oneshot(get(addr))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(upstream.hits(), 1);
    // The caller still sees how long the server asked for.
    let wait = retry_after(response.headers(), SystemTime::now());
    assert_eq!(wait, Some(Duration::from_secs(120)));
}

#[tokio::test(start_paused = true)]
async fn other_failures_are_retried_with_backoff_and_4xx_is_not() {
    let (upstream, addr) = start_upstream(&[(502, None), (500, None)]).await;
    let (policy, decisions) = recording(HttpRetryPolicy::default());
    let svc = retry_layer(policy).layer(client());
    assert_eq!(
        svc.oneshot(get(addr)).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(upstream.hits(), 3);
    assert_eq!(
        *decisions.lock().unwrap(),
        [Decision::Retry, Decision::Retry, Decision::Return]
    );

    let (upstream, addr) = start_upstream(&[(404, None)]).await;
    let svc = retry_layer(HttpRetryPolicy::default()).layer(client());
    assert_eq!(
        svc.oneshot(get(addr)).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(upstream.hits(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_is_retried() {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let (policy, decisions) = recording(HttpRetryPolicy::default());
    let err = retry_layer(policy)
        .layer(client())
        .oneshot(get(closed))
        .await
        .unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::Inner);
    assert_eq!(*decisions.lock().unwrap(), [Decision::Retry; 3]);
}

#[tokio::test(start_paused = true)]
async fn an_http_date_is_read_against_the_injected_wall_clock() {
    let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let policy = HttpRetryPolicy::builder()
        .wall_clock(WallClock::anchored(start))
        .build()
        .unwrap();
    let date = httpdate::fmt_http_date(start + Duration::from_secs(5));
    let response = || -> Result<Response<()>, BoxError> {
        Ok(Response::builder()
            .status(503)
            .header(RETRY_AFTER, date.as_str())
            .body(())
            .unwrap())
    };
    assert_eq!(policy.decide(&response()), Decision::RetryAfter(5000 * MS));
    tokio::time::advance(Duration::from_millis(1500)).await;
    assert_eq!(policy.decide(&response()), Decision::RetryAfter(3500 * MS));
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        policy.decide(&response()),
        Decision::RetryAfter(Duration::ZERO),
        "a date now past: retry at once"
    );
}

#[test]
fn two_retry_after_values_are_ignored() {
    let mut headers = HeaderMap::new();
    headers.append(RETRY_AFTER, HeaderValue::from_static("1"));
    headers.append(RETRY_AFTER, HeaderValue::from_static("1"));
    assert_eq!(retry_after(&headers, SystemTime::now()), None);
    let response = Response::builder().status(503).body(()).unwrap();
    let (mut parts, body) = response.into_parts();
    parts.headers = headers;
    let response = Response::from_parts(parts, body);
    assert_eq!(
        HttpRetryPolicy::default().decide_response(&response),
        Decision::Return
    );
}

#[test]
fn bad_policy_settings_are_config_errors() {
    let zero = HttpRetryPolicy::builder().max_wait(Duration::ZERO).build();
    assert!(matches!(zero, Err(ConfigError::ZeroDuration { .. })));
    let huge = HttpRetryPolicy::builder()
        .max_wait(MAX_RETRY_AFTER + MS)
        .build();
    assert!(matches!(huge, Err(ConfigError::OutOfRange { .. })));
    let max = AcceptDeadlineLayer::builder().max(Duration::ZERO).build();
    assert!(matches!(max, Err(ConfigError::ZeroDuration { .. })));
}

// ---------------------------------------------------------------------------------------------
// 3. Idempotency.

#[tokio::test(start_paused = true)]
async fn a_post_is_not_retried_unless_it_has_an_idempotency_key() {
    let (upstream, addr) = start_upstream(&[(500, None)]).await;
    let svc = retry_layer(HttpRetryPolicy::default()).layer(client());
    let post = Request::post(format!("http://{addr}/"))
        .body("order".to_string())
        .unwrap();
    let response = svc.clone().oneshot(post).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(upstream.hits(), 1, "sent once");

    let (upstream, addr) = start_upstream(&[(500, None)]).await;
    let keyed = Request::post(format!("http://{addr}/"))
        .header("idempotency-key", "order-41")
        .body("order".to_string())
        .unwrap();
    let response = svc.oneshot(keyed).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.hits(), 2, "retried once");
}

// ---------------------------------------------------------------------------------------------
// 4. Deadline propagation.

/// Answers with the `grpc-timeout` it received and the deadline its handler saw, in ns.
async fn deadline_echo(request: Request<axum::body::Body>) -> String {
    let header = request
        .headers()
        .get("grpc-timeout")
        .map(|value| value.to_str().unwrap().to_string());
    let left = deadline::remaining().map(|left| left.as_nanos());
    format!("{header:?} {left:?}")
}

fn deadline_server(hits: Arc<AtomicU32>) -> Router {
    Router::new()
        .route(
            "/",
            any_method(move |request: Request<axum::body::Body>| {
                hits.fetch_add(1, Ordering::SeqCst);
                deadline_echo(request)
            }),
        )
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|err: BoxError| async move {
                    error_response(&*err)
                }))
                .layer(AcceptDeadlineLayer::new()),
        )
}

async fn body_text(response: Response<hyper::body::Incoming>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn the_client_deadline_reaches_the_server_handler() {
    let hits = Arc::new(AtomicU32::new(0));
    let addr = serve(deadline_server(Arc::clone(&hits))).await;
    let svc = ServiceBuilder::new()
        .deadline(Duration::from_secs(60))
        .unwrap()
        .layer(PropagateDeadlineLayer::new())
        .service(client());
    let response = svc.oneshot(get(addr)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = body_text(response).await;
    let (header, left) = text.split_once(' ').unwrap();
    let header = header
        .strip_prefix("Some(\"")
        .and_then(|h| h.strip_suffix("\")"))
        .unwrap_or_else(|| panic!("no header in {text}"));
    let sent = parse_grpc_timeout(header.as_bytes()).unwrap();
    assert!(
        sent > Duration::ZERO && sent <= Duration::from_secs(60),
        "{sent:?}"
    );
    let left: u128 = left
        .strip_prefix("Some(")
        .and_then(|l| l.strip_suffix(')'))
        .unwrap_or_else(|| panic!("the handler saw no deadline: {text}"))
        .parse()
        .unwrap();
    assert!(left > 0 && left <= sent.as_nanos(), "{left} ns of {sent:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn without_a_deadline_no_header_is_sent_and_none_is_seen() {
    let addr = serve(deadline_server(Arc::default())).await;
    let svc = PropagateDeadlineLayer::new().layer(client());
    let response = svc.oneshot(get(addr)).await.unwrap();
    assert_eq!(body_text(response).await, "None None");
}

#[tokio::test]
async fn an_expired_inbound_request_is_rejected_with_504_before_the_handler() {
    let hits = Arc::new(AtomicU32::new(0));
    let addr = serve(deadline_server(Arc::clone(&hits))).await;
    for expired in ["0n", "0S", "00000000H"] {
        let request = Request::get(format!("http://{addr}/"))
            .header("grpc-timeout", expired)
            .body(String::new())
            .unwrap();
        let response = client().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT, "{expired}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);

    for malformed in ["-1S", "1.5S", "123456789m", "soon"] {
        let request = Request::get(format!("http://{addr}/"))
            .header("grpc-timeout", malformed)
            .body(String::new())
            .unwrap();
        let response = client().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{malformed} is ignored");
        assert!(body_text(response).await.ends_with(" None"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_tighter_header_already_on_the_request_is_kept() {
    let echo = tower::service_fn(|request: Request<()>| async move {
        Ok::<_, BoxError>(request.headers()["grpc-timeout"].clone())
    });
    let svc = ServiceBuilder::new()
        .deadline(Duration::from_secs(10))
        .unwrap()
        .layer(PropagateDeadlineLayer::new())
        .service(echo);
    for (set, sent) in [("1S", "1S"), ("20S", "10S"), ("junk", "10S")] {
        let request = Request::get("/")
            .header("grpc-timeout", set)
            .body(())
            .unwrap();
        assert_eq!(svc.clone().oneshot(request).await.unwrap(), sent, "{set}");
    }
}

#[tokio::test(start_paused = true)]
async fn the_server_bounds_what_a_client_asks_for_and_keeps_its_own_deadline() {
    let handler =
        tower::service_fn(|_: Request<()>| async { Ok::<_, BoxError>(deadline::remaining()) });
    let bounded = AcceptDeadlineLayer::builder()
        .max(Duration::from_secs(10))
        .build()
        .unwrap()
        .layer(handler);
    let asks_an_hour = || {
        Request::get("/")
            .header("grpc-timeout", "1H")
            .body(())
            .unwrap()
    };
    let left = bounded.clone().oneshot(asks_an_hour()).await.unwrap();
    assert_eq!(left, Some(Duration::from_secs(10)));

    // A deadline already in force (the server's own) is only ever tightened.
    let own = tokio::time::Instant::now() + Duration::from_secs(3);
    let left = deadline::scope(own, bounded.oneshot(asks_an_hour()))
        .await
        .unwrap();
    assert_eq!(left, Some(Duration::from_secs(3)));
}

#[tokio::test(start_paused = true)]
async fn the_server_enforces_the_inbound_deadline() {
    let slow = tower::service_fn(|_: Request<()>| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok::<_, BoxError>("late")
    });
    let request = Request::get("/")
        .header("grpc-timeout", "200m")
        .body(())
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = AcceptDeadlineLayer::new()
        .layer(slow)
        .oneshot(request)
        .await
        .unwrap_err();
    assert_eq!(ErrorKind::of(&*err), ErrorKind::DeadlineExceeded);
    assert_eq!(
        started.elapsed(),
        200 * MS,
        "no sockets here: virtual time is exact"
    );
    assert_eq!(error_response(&*err).0, StatusCode::GATEWAY_TIMEOUT);
}

// ---------------------------------------------------------------------------------------------
// 5. Errors as responses.

#[tokio::test]
async fn an_open_breaker_answers_503_with_retry_after() {
    let upstream = Upstream::default();
    upstream.script.lock().unwrap().push_back((500, None));
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(5))
        .jitter(0.0)
        .classifier(StatusClassifier::default())
        .build()
        .unwrap();
    let router = Router::new()
        .route("/", any_method(scripted))
        .with_state(upstream.clone())
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|err: BoxError| async move {
                    error_response(&*err)
                }))
                .circuit_breaker(breaker),
        );
    let addr = serve(router).await;
    let first = client().oneshot(get(addr)).await.unwrap();
    assert_eq!(first.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let second = client().oneshot(get(addr)).await.unwrap();
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    let seconds: u64 = second.headers()[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&seconds), "Retry-After: {seconds}");
    assert_eq!(
        upstream.hits(),
        1,
        "the open breaker did not call the handler"
    );
}

#[tokio::test]
async fn an_overloaded_server_answers_503_with_its_retry_after() {
    let (entered_tx, mut entered) = mpsc::unbounded_channel::<()>();
    let release = Arc::new(Notify::new());
    let handler = {
        let release = Arc::clone(&release);
        move || {
            let release = Arc::clone(&release);
            let entered_tx = entered_tx.clone();
            async move {
                entered_tx.send(()).unwrap();
                release.notified().await;
                "done"
            }
        }
    };
    let router = Router::new().route("/", any_method(handler)).layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(error_handler))
            .layer(
                LoadShedLayer::builder()
                    .max_concurrency(1)
                    .retry_after(Duration::from_secs(2))
                    .build()
                    .unwrap(),
            ),
    );
    let addr = serve(router).await;
    let first = tokio::spawn(client().oneshot(get(addr)));
    entered.recv().await.unwrap(); // the first request holds the only slot
    let second = client().oneshot(get(addr)).await.unwrap();
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second.headers()[RETRY_AFTER], "2");
    release.notify_one();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::OK);
}

/// With the `axum` feature, the `IntoResponse` wrapper; without it, the plain function.
#[cfg(feature = "axum")]
async fn error_handler(err: BoxError) -> tower_firebreak::http::ErrorResponse {
    err.into()
}

#[cfg(not(feature = "axum"))]
async fn error_handler(err: BoxError) -> (StatusCode, HeaderMap) {
    error_response(&*err)
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_handler_answers_504_without_retry_after() {
    let router = Router::new()
        .route("/", any_method(std::future::pending::<&'static str>))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(error_handler))
                .timeout_attempt(Duration::from_secs(1))
                .unwrap(),
        );
    let addr = serve(router).await;
    let started = tokio::time::Instant::now();
    let response = client().oneshot(get(addr)).await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(!response.headers().contains_key(RETRY_AFTER));
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[test]
fn kinds_map_to_statuses() {
    let inner: BoxError = std::io::Error::other("boom").into();
    assert_eq!(error_response(&*inner).0, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(error_response(&*inner).1.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Parsers: never a panic, and valid values round-trip.

proptest! {
    #[test]
    fn retry_after_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64), now in 0u64..=u64::from(u32::MAX)) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now);
        if let Some(wait) = parse_retry_after(&bytes, now) {
            prop_assert!(wait <= MAX_RETRY_AFTER);
        }
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            let mut headers = HeaderMap::new();
            headers.insert(RETRY_AFTER, value.clone());
            prop_assert_eq!(retry_after(&headers, now), parse_retry_after(&bytes, now));
            headers.append(RETRY_AFTER, value);
            prop_assert_eq!(retry_after(&headers, now), None);
        }
    }

    #[test]
    fn retry_after_never_panics_on_near_misses(text in "[ \t]?[-+]?[0-9]{0,25}[ .,sS]?[0-9]{0,3}") {
        let _ = parse_retry_after(text.as_bytes(), SystemTime::now());
    }

    #[test]
    fn retry_after_dates_never_panic(text in "[A-Za-z]{3}, [0-9]{1,2} [A-Za-z]{3} [0-9]{1,5} [0-9]{2}:[0-9]{2}:[0-9]{2} [A-Z]{3}") {
        let _ = parse_retry_after(text.as_bytes(), SystemTime::now());
    }

    #[test]
    fn delta_seconds_round_trip(seconds in 0u64..=MAX_RETRY_AFTER.as_secs(), zeros in 0usize..5) {
        let text = format!("{}{seconds}", "0".repeat(zeros));
        prop_assert_eq!(
            parse_retry_after(text.as_bytes(), SystemTime::now()),
            Some(Duration::from_secs(seconds))
        );
        let over = MAX_RETRY_AFTER.as_secs() + 1 + seconds;
        prop_assert_eq!(parse_retry_after(over.to_string().as_bytes(), SystemTime::now()), None);
    }

    #[test]
    fn http_dates_round_trip(now in 0u64..=4_000_000_000, ahead in 0u64..=MAX_RETRY_AFTER.as_secs()) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now);
        let date = httpdate::fmt_http_date(now + Duration::from_secs(ahead));
        prop_assert_eq!(
            parse_retry_after(date.as_bytes(), now),
            Some(Duration::from_secs(ahead))
        );
    }

    #[test]
    fn grpc_timeout_never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
        let _ = parse_grpc_timeout(&bytes);
    }

    #[test]
    fn grpc_timeout_values_round_trip(count in 0u64..=99_999_999, unit in proptest::sample::select(&b"HMSmun"[..])) {
        let text = format!("{count}{}", unit as char);
        let parsed = parse_grpc_timeout(text.as_bytes()).unwrap();
        prop_assert_eq!(parse_grpc_timeout(format_grpc_timeout(parsed).as_bytes()), Some(parsed));
    }

    #[test]
    fn formatted_timeouts_never_grow(nanos in any::<u64>(), seconds in any::<u64>()) {
        for timeout in [Duration::from_nanos(nanos), Duration::new(seconds, 0)] {
            let value = format_grpc_timeout(timeout);
            prop_assert!(value.len() <= 9);
            let parsed = parse_grpc_timeout(value.as_bytes()).unwrap();
            prop_assert!(parsed <= timeout);
            if timeout < Duration::from_nanos(100_000_000) {
                prop_assert_eq!(parsed, timeout, "exact below 0.1 s");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The breaker and a server's Retry-After, and status mapping through wrappers (found in
// review).
mod retry_after_and_the_breaker {
    use super::*;
    use tower::Service;
    use tower_firebreak::http::error_status;
    use tower_firebreak::retry::RetryBudget;
    use tower_firebreak::timeout::TimeoutLayer;

    fn reply(code: u16, retry_after: Option<&'static str>) -> Response<()> {
        let mut b = Response::builder().status(code);
        if let Some(v) = retry_after {
            b = b.header(RETRY_AFTER, v);
        }
        b.body(()).unwrap()
    }

    /// A 503 + `Retry-After: 30` that lands just after another failure tripped the breaker
    /// still counts: the breaker does not probe after its 1 s open duration.
    #[tokio::test(start_paused = true)]
    async fn a_retry_after_arriving_after_the_trip_still_lengthens_the_open_period() {
        let breaker = CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(1))
            .jitter(0.0)
            .classifier(StatusClassifier::default())
            .build()
            .unwrap();
        let handle = breaker.handle();
        let upstream = tower::service_fn(|slow: bool| async move {
            if slow {
                tokio::time::sleep(10 * MS).await;
                Ok::<_, BoxError>(reply(503, Some("30")))
            } else {
                Ok(reply(500, None))
            }
        });
        let mut svc = breaker.layer(upstream);
        // Admitted while closed, answers 10 ms later.
        let slow = svc.ready().await.unwrap().call(true);
        svc.clone().oneshot(false).await.unwrap(); // trips now
        assert_eq!(handle.state(), BreakerState::Open);
        let r = slow.await.unwrap(); // "come back in 30 s"
        assert_eq!(r.status(), 503);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            handle.state(),
            BreakerState::Open,
            "server said 30 s; breaker state after 1.1 s"
        );
    }

    /// `Handle::reset` leaves no trip history: a Retry-After seen before the reset does not
    /// stretch the next trip.
    #[tokio::test(start_paused = true)]
    async fn a_reset_forgets_an_earlier_retry_after() {
        let breaker = CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(1))
            .jitter(0.0)
            .classifier(StatusClassifier::default())
            .build()
            .unwrap();
        let handle = breaker.handle();
        let upstream = tower::service_fn(|hint: bool| async move {
            Ok::<_, BoxError>(if hint {
                reply(503, Some("30"))
            } else {
                reply(500, None)
            })
        });
        let svc = breaker.layer(upstream);
        svc.clone().oneshot(true).await.unwrap();
        assert_eq!(handle.state(), BreakerState::Open);
        handle.reset();
        assert_eq!(handle.state(), BreakerState::Closed);
        svc.clone().oneshot(false).await.unwrap(); // a fresh trip, no hint
        let left = handle.metrics().retry_after.unwrap();
        assert!(
            left <= Duration::from_secs(1),
            "open for {left:?} after a hint-less trip"
        );
    }

    #[derive(Debug)]
    struct Wrapped(BoxError);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    /// A budget exhausted after a timeout is 504, bare or wrapped (as `tower::buffer` wraps
    /// errors).
    #[tokio::test(start_paused = true)]
    async fn an_exhausted_budget_after_a_timeout_is_504_even_wrapped() {
        let budget = RetryBudget::builder()
            .ratio(0.001)
            .min_per_second(0)
            .build()
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(RetryLayer::builder().budget(budget).build().unwrap())
            .layer(TimeoutLayer::new(Duration::from_millis(10)).unwrap())
            .service(tower::service_fn(|_: ()| {
                std::future::pending::<Result<(), BoxError>>()
            }));
        let err = svc.oneshot(()).await.unwrap_err();
        assert_eq!(ErrorKind::of(&*err), ErrorKind::RetryBudgetExhausted);
        assert_eq!(error_status(&*err), StatusCode::GATEWAY_TIMEOUT);
        let wrapped = Wrapped(err);
        assert_eq!(
            error_status(&wrapped),
            StatusCode::GATEWAY_TIMEOUT,
            "wrapped"
        );
    }

    /// `HttpRetryPolicy` waits exactly the `Retry-After`, and the breaker the same 503 tripped
    /// is open exactly that long: the retry must reach the dependency, not meet the breaker
    /// still open because its timer has not run yet.
    #[tokio::test(start_paused = true)]
    async fn a_retry_after_the_servers_retry_after_is_not_refused_by_the_breaker_it_opened() {
        let breaker = CircuitBreakerLayer::builder()
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(1))
            .jitter(0.0)
            .classifier(StatusClassifier::default())
            .build()
            .unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&calls);
        let upstream = tower::service_fn(move |_: Request<String>| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let r = if n == 0 {
                    Response::builder()
                        .status(503)
                        .header(RETRY_AFTER, "2")
                        .body(())
                        .unwrap()
                } else {
                    Response::builder().status(200).body(()).unwrap()
                };
                Ok::<_, BoxError>(r)
            }
        });
        let svc = ServiceBuilder::new()
            .layer(
                RetryLayer::builder()
                    .policy(HttpRetryPolicy::default())
                    .clone_requests_with(IdempotentRequests::default())
                    .build()
                    .unwrap(),
            )
            .layer(breaker)
            .service(upstream);
        let result = svc
            .oneshot(Request::get("/").body(String::new()).unwrap())
            .await;
        match result {
            Ok(r) => assert_eq!(r.status(), 200),
            Err(e) => panic!(
                "retry after Retry-After got {e} ({:?}); upstream calls {}",
                ErrorKind::of(&*e),
                calls.load(Ordering::SeqCst)
            ),
        }
    }
}
