//! The one time source every layer in this crate reads.
//!
//! ```
//! use std::time::Duration;
//! use tower_firebreak::clock;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let before = clock::now();
//! tokio::time::sleep(Duration::from_millis(250)).await;
//! // With tokio's paused clock the sleep is virtual, and so is the crate's notion of time.
//! assert_eq!(clock::now() - before, Duration::from_millis(250));
//! # }
//! ```
//!
//! # Why tokio's clock
//!
//! Layers read time through [`now`], which is [`tokio::time::Instant::now`]. When tokio's
//! clock is paused (`#[tokio::test(start_paused = true)]`, or a runtime built with
//! `start_paused(true)`), time stands still until the runtime has nothing else to do or the
//! test advances it. Timeouts, deadlines, open-circuit durations and retry backoffs all follow
//! that virtual time, so tests and simulations are deterministic and take no wall time.
//!
//! # Cost per read, and how hot paths use it
//!
//! In a program that never pauses the clock, a read is one `clock_gettime` through the vDSO
//! plus one atomic load: 24 ns on the 2-vCPU machine this crate is benchmarked on
//! (`cargo bench --bench timeout -- clock`; see `BENCHMARKS.md`). That is more than the whole
//! budget some layers have per call, so a hot path reads the clock only when the answer can
//! change what it does:
//!
//! - the timeout layer reads it only when the inner future is still pending after its first
//!   poll, because a future that completes at once cannot time out;
//! - the deadline check reads it only for requests that carry a deadline;
//! - a layer that must timestamp every call reads the clock once and passes the instant along
//!   rather than reading it again.
//!
//! While the clock is paused, a read also takes a lock inside tokio's clock. That applies
//! only to programs built with tokio's `test-util` feature, normally only tests.

/// A point in time on the crate's clock.
///
/// This is [`tokio::time::Instant`], so it can be passed straight to `tokio::time::sleep_until`
/// and compared with instants from the rest of a tokio program.
pub use tokio::time::Instant;

/// Reads the crate's clock.
///
/// See the [module docs](self) for what it costs and when layers call it.
#[inline]
pub fn now() -> Instant {
    Instant::now()
}
