//! HTTP glue for this crate's layers: which responses are failures, when and how soon to retry
//! them, which requests may be sent twice, deadlines in headers, and error responses.
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_firebreak::ServiceBuilderExt;
//! use tower_firebreak::circuit_breaker::CircuitBreakerLayer;
//! use tower_firebreak::error::BoxError;
//! use tower_firebreak::http::{
//!     HttpRetryPolicy, IdempotentRequests, PropagateDeadlineLayer, StatusClassifier,
//! };
//! use tower_firebreak::retry::RetryLayer;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // Stands in for an HTTP client such as hyper-util's legacy `Client`.
//! let upstream = service_fn(|req: Request<String>| async move {
//!     let timeout = req.headers().get("grpc-timeout").cloned();
//!     Ok::<_, BoxError>(Response::builder().status(StatusCode::OK).body(format!("{timeout:?}"))?)
//! });
//!
//! let client = ServiceBuilder::new()
//!     .deadline(Duration::from_secs(2))?
//!     .retry_with(
//!         RetryLayer::builder()
//!             .policy(HttpRetryPolicy::default())           // 5xx, 408, 429, transport errors
//!             .clone_requests_with(IdempotentRequests::default()) // never a bare POST
//!             .build()?,
//!     )
//!     .circuit_breaker(
//!         CircuitBreakerLayer::builder()
//!             .classifier(StatusClassifier::default())    // 4xx is the caller's fault
//!             .build()?,
//!     )
//!     .layer(PropagateDeadlineLayer::new())             // tell the server the time left
//!     .service(upstream);
//!
//! let response = client.oneshot(Request::get("/price").body(String::new())?).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.body(), r#"Some("2S")"#);
//! # Ok(())
//! # }
//! ```
//!
//! What each part does, and where it goes in a stack:
//!
//! | part | for | what it decides |
//! | --- | --- | --- |
//! | [`StatusClassifier`] | circuit breaker ([`classifier`](crate::circuit_breaker::CircuitBreakerLayerBuilder::classifier)) | 5xx, 408, 429 and transport errors fail; other 4xx are ignored; a failure's `Retry-After` keeps an opened breaker open at least that long |
//! | [`HttpRetryPolicy`] | retry ([`policy`](crate::retry::RetryLayerBuilder::policy)) | the same failures are retried, after the server's `Retry-After` if it sent one |
//! | [`IdempotentRequests`] | retry ([`clone_requests_with`](crate::retry::RetryLayerBuilder::clone_requests_with)) | only idempotent requests are sent twice |
//! | [`PropagateDeadlineLayer`] | client, below the deadline | writes the time left into `grpc-timeout` |
//! | [`AcceptDeadlineLayer`] | server, first below axum's `HandleErrorLayer` | reads `grpc-timeout` into [`deadline`](crate::timeout::deadline) and enforces it |
//! | [`error_response`] | server, in axum's `HandleErrorLayer` | 503 + `Retry-After`, 504 or 500 |
//!
//! # With axum and hyper
//!
//! A gateway: an axum server that takes the caller's deadline from `grpc-timeout`, sheds load,
//! and answers this crate's errors as 503 or 504; its handler calls an upstream through
//! hyper-util's client with retries, a breaker and the deadline passed on.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Router, error_handling::HandleErrorLayer, extract::State, routing::get};
//! use http::{HeaderMap, Request, Response, StatusCode};
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use tower::{ServiceBuilder, ServiceExt, util::BoxCloneSyncService};
//! use tower_firebreak::ServiceBuilderExt;
//! use tower_firebreak::circuit_breaker::CircuitBreakerLayer;
//! use tower_firebreak::error::BoxError;
//! use tower_firebreak::http::{
//!     AcceptDeadlineLayer, HttpRetryPolicy, IdempotentRequests, PropagateDeadlineLayer,
//!     StatusClassifier, error_response,
//! };
//! use tower_firebreak::load_shed::LoadShedLayer;
//! use tower_firebreak::retry::RetryLayer;
//!
//! type Upstream = BoxCloneSyncService<Request<String>, Response<hyper::body::Incoming>, BoxError>;
//!
//! async fn price(State(upstream): State<Upstream>) -> Result<String, (StatusCode, HeaderMap)> {
//!     let request = Request::get("http://127.0.0.1:8081/price").body(String::new()).unwrap();
//!     // Runs under the caller's deadline: retries stop in time, and the upstream is told.
//!     let response = upstream.oneshot(request).await.map_err(|err| error_response(&*err))?;
//!     Ok(format!("upstream said {}", response.status()))
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), BoxError> {
//!     let client = Client::builder(TokioExecutor::new()).build_http::<String>();
//!     let upstream = ServiceBuilder::new()
//!         .retry_with(
//!             RetryLayer::builder()
//!                 .policy(HttpRetryPolicy::default())
//!                 .clone_requests_with(IdempotentRequests::default())
//!                 .build()?,
//!         )
//!         .circuit_breaker(
//!             CircuitBreakerLayer::builder().classifier(StatusClassifier::default()).build()?,
//!         )
//!         .timeout_attempt(Duration::from_millis(500))?
//!         .layer(PropagateDeadlineLayer::new())
//!         .service(client);
//!
//!     let app = Router::new()
//!         .route("/price", get(price))
//!         .with_state(Upstream::new(upstream))
//!         .layer(
//!             ServiceBuilder::new()
//!                 .layer(HandleErrorLayer::new(|err: BoxError| async move { error_response(&*err) }))
//!                 .layer(AcceptDeadlineLayer::new()) // the caller's deadline, if it sent one
//!                 .deadline(Duration::from_secs(2))? // ours: an inbound one can only tighten it
//!                 .layer(LoadShedLayer::builder().max_concurrency(256).build()?),
//!         );
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! With the `axum` feature, `ErrorResponse` wraps a `BoxError` as an axum `IntoResponse`, for
//! handlers that return `Result<_, ErrorResponse>` or error handlers that prefer a type.
//!
//! # Retrying an overloaded server
//!
//! This crate never retries its own [`Overloaded`](crate::load_shed::Overloaded) or
//! [`CircuitOpen`](crate::circuit_breaker::CircuitOpen): they ask for less load. A server's
//! `429 Too Many Requests` or `503 Service Unavailable` asks the same, so [`HttpRetryPolicy`]
//! retries one only when the response says when: with a valid `Retry-After`, it waits exactly
//! that long (never less), provided the wait is within its
//! [`max_wait`](HttpRetryPolicyBuilder::max_wait), the retry budget has a token and the
//! request's deadline leaves time for it. Without a `Retry-After`, the 429 or 503 is returned
//! to the caller at once. The retry layer's own
//! [`max_retry_after`](crate::retry::RetryLayerBuilder::max_retry_after) shortens any hint
//! longer than it, so keep it at least as long as the policy's `max_wait` (both default to
//! 30 s).
//!
//! # Malformed headers
//!
//! Headers come from the network, so every parser here is total: a `Retry-After` or
//! `grpc-timeout` that is malformed, negative, out of range or repeated is ignored, as if it
//! were absent, and never panics. The parsers are property-tested on arbitrary bytes, and
//! fuzzed (`fuzz/` in the repository).

mod classify;
mod deadline_header;
mod idempotent;
mod policy;
mod response;
mod retry_after;

pub use self::classify::{StatusClassifier, StatusClassifierBuilder};
pub use self::deadline_header::{
    AcceptDeadline, AcceptDeadlineLayer, AcceptDeadlineLayerBuilder, GRPC_TIMEOUT,
    PropagateDeadline, PropagateDeadlineLayer, format_grpc_timeout, parse_grpc_timeout,
};
pub use self::idempotent::{IDEMPOTENCY_KEY, IdempotentRequests, IdempotentRequestsBuilder};
pub use self::policy::{HttpRetryPolicy, HttpRetryPolicyBuilder};
#[cfg(feature = "axum")]
pub use self::response::ErrorResponse;
pub use self::response::{error_response, error_status};
pub use self::retry_after::{MAX_RETRY_AFTER, WallClock, parse_retry_after, retry_after};
