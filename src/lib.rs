//! Resilience middleware for [tower] services: keep one failing dependency from taking the
//! rest of a system down.
//!
//! Each protection is a tower `Layer` that wraps any `Service` (axum handlers, hyper and
//! tonic clients, `service_fn`): per-attempt **timeouts** and whole-request **deadlines**
//! ([`timeout`]), **retries** under a budget ([`retry`]), a lock-free **circuit breaker**
//! ([`circuit_breaker`]), **load shedding** with fixed or adaptive concurrency limits and
//! client-side **throttling** ([`load_shed`]), and the stack a dependency's objective calls
//! for, derived from it ([`sla`]). With the `http` feature, HTTP's rules (status classes,
//! `Retry-After`, idempotency, deadline headers, 503/504 answers) come ready-made (`http`).
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_firebreak::ServiceBuilderExt;
//! use tower_firebreak::error::{BoxError, ErrorKind};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let hanging_dependency = service_fn(|_: &str| std::future::pending::<Result<String, BoxError>>());
//! let svc = ServiceBuilder::new()
//!     .deadline(Duration::from_secs(2))?             // the whole request, every attempt
//!     .timeout_attempt(Duration::from_millis(300))?  // one attempt
//!     .service(hanging_dependency);
//!
//! let err = svc.oneshot("GET /price").await.unwrap_err();
//! assert_eq!(ErrorKind::of(&*err), ErrorKind::TimedOut); // after 300 ms, not never
//! # Ok(())
//! # }
//! ```
//!
//! # Layer order
//!
//! Order changes meaning, so stacks are built outermost first, in this order:
//!
//! 1. **deadline** — the time the whole request has, set once on arrival;
//! 2. **retry with a budget** — repeats failed attempts while the deadline allows;
//! 3. **circuit breaker** — stops calling a dependency that keeps failing;
//! 4. **per-attempt timeout** — a timeout inside retry limits each attempt, outside it the
//!    whole call;
//! 5. **load shed** — rejects work that cannot be served in time;
//! 6. the service.
//!
//! [`sla::Sla`] builds steps 2 to 5 for calls to a dependency from what it promises (a
//! latency objective, an availability, a maximum concurrency), in this order, with every
//! parameter derived from the promise and the reason for each documented.
//!
//! Layers of this crate that can fail return [`error::BoxError`]; [`error::ErrorKind`] tells
//! the failures apart. Invalid settings are a [`error::ConfigError`] from the builder.
//!
//! What the layers do besides succeeding (breaker transitions, rejections, retries, timeouts)
//! is logged with `tracing`, passed to a listener set with a builder's `on_event`, and, with
//! the `metrics` feature, counted through the `metrics` facade: see [`observe`].
//!
//! # Time
//!
//! Every layer reads time through [`clock`], which follows tokio's paused clock, so tests and
//! simulations of failures run in virtual time, deterministically.
//!
//! [tower]: https://docs.rs/tower

// docs.rs builds with nightly and `--cfg docsrs`: label feature-gated items there.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

/// `get_ref`, `get_mut` and `into_inner`, as tower's own middleware has them, for a service
/// generic over `S` that keeps the service it wraps in a field named `inner`. Defined before
/// the modules, so that every one of them can use it.
macro_rules! inner_service_accessors {
    () => {
        /// The inner service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The inner service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Unwraps the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}

pub mod builder;
pub mod circuit_breaker;
pub mod clock;
pub mod error;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
pub mod load_shed;
pub mod observe;
pub mod retry;
pub mod sla;
pub mod timeout;

mod sync;
mod ticker;

pub use builder::ServiceBuilderExt;
pub use error::{BoxError, ConfigError, ErrorKind};
pub use timeout::{DeadlineLayer, TimeoutLayer};

/// Compiles and runs the README's code, so the quick start cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
