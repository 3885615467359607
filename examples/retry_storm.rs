//! Why retries need jitter: many clients contending for one resource, retrying with each
//! kind of backoff.
//!
//! A hundred clients each need one write to a shared resource at the same moment. The
//! resource takes one write at a time (10 ms each) and turns away, at once, a write that
//! arrives while another is in progress, as optimistic concurrency control or a lock does.
//! Every client retries through this crate's `RetryLayer` until it gets through (at most 100
//! attempts), with one of five backoffs:
//!
//! - no backoff: retry at once;
//! - exponential (10 ms, doubling, at most 1 s) with no jitter, then with full, equal and
//!   decorrelated jitter (AWS's definitions; see `Jitter`).
//!
//! Without jitter the clients that collided retry together and collide again: each round lets
//! one through. Jitter spreads them over the delay, so most find the resource free. The table
//! shows the calls the resource received (its load) and the time until the last client was
//! done. It runs in tokio's paused clock, seeded: the same figures on every machine, in well
//! under a second.
//!
//! ```text
//! cargo run --release --example retry_storm
//! cargo test --example retry_storm    # checks what the table shows
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{Instant, sleep};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt, service_fn};
use tower_firebreak::BoxError;
use tower_firebreak::retry::{Backoff, Jitter, RetryLayer};

const CLIENTS: u32 = 100;
const WRITE_TIME: Duration = Duration::from_millis(10);
const MAX_ATTEMPTS: u32 = 100;

fn main() -> Result<(), BoxError> {
    println!(
        "{CLIENTS} clients, one write each, to a resource that takes one 10 ms write at a time\n"
    );
    println!(
        "{:<28} {:>8} {:>14} {:>10} {:>14}",
        "backoff", "calls", "calls/client", "done", "all done at"
    );
    for strategy in Strategy::ALL {
        let outcome = simulate(strategy, 1)?;
        let done_at = match outcome.all_done_at {
            Some(at) => format!("{:.2} s", at.as_secs_f64()),
            None => "never".to_owned(),
        };
        println!(
            "{:<28} {:>8} {:>14.1} {:>7}/{CLIENTS} {:>14}",
            strategy.name(),
            outcome.calls,
            f64::from(outcome.calls) / f64::from(CLIENTS),
            outcome.done,
            done_at
        );
    }
    println!(
        "\nNo backoff spends every attempt at once and almost nobody gets through. Without \
         jitter,\nclients that collided retry together: one gets through per round. Jitter \
         spreads them out."
    );
    Ok(())
}

/// The backoffs compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    NoBackoff,
    Exponential(Jitter),
}

impl Strategy {
    const ALL: [Strategy; 5] = [
        Strategy::NoBackoff,
        Strategy::Exponential(Jitter::None),
        Strategy::Exponential(Jitter::Full),
        Strategy::Exponential(Jitter::Equal),
        Strategy::Exponential(Jitter::Decorrelated),
    ];

    fn name(self) -> &'static str {
        match self {
            Strategy::NoBackoff => "no backoff",
            Strategy::Exponential(Jitter::None) => "exponential, no jitter",
            Strategy::Exponential(Jitter::Full) => "exponential, full jitter",
            Strategy::Exponential(Jitter::Equal) => "exponential, equal jitter",
            Strategy::Exponential(Jitter::Decorrelated) => "exponential, decorrelated",
            Strategy::Exponential(_) => "exponential, other jitter",
        }
    }

    fn backoff(self) -> Backoff {
        match self {
            Strategy::NoBackoff => Backoff::constant(Duration::ZERO),
            Strategy::Exponential(jitter) => {
                Backoff::exponential(Duration::from_millis(10), 2.0, Duration::from_secs(1))
                    .jitter(jitter)
            }
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    /// Calls the resource received, retries included.
    calls: u32,
    /// Clients whose write got through.
    done: u32,
    /// When the last client got through, if all did.
    all_done_at: Option<Duration>,
}

/// Runs the contention scenario with `strategy`, its jitter seeded with `seed`, in virtual
/// time.
fn simulate(strategy: Strategy, seed: u64) -> Result<Outcome, BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    runtime.block_on(async move {
        let start = Instant::now();
        let calls = Arc::new(AtomicU32::new(0));
        // The instant the write in progress ends.
        let busy_until = Arc::new(Mutex::new(start));
        let resource = service_fn({
            let calls = Arc::clone(&calls);
            move |_: u32| {
                calls.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                let accepted = {
                    let mut busy_until = busy_until.lock().expect("never poisoned");
                    let free = now >= *busy_until;
                    if free {
                        *busy_until = now + WRITE_TIME;
                    }
                    free
                };
                async move {
                    if !accepted {
                        return Err::<(), BoxError>(
                            "conflict: another write is in progress".into(),
                        );
                    }
                    sleep(WRITE_TIME).await;
                    Ok(())
                }
            }
        });
        let retry = RetryLayer::builder()
            .max_attempts(MAX_ATTEMPTS)
            .backoff(strategy.backoff())
            // Budgets are another defence; this compares backoffs alone.
            .without_budget()
            .seed(seed)
            .build()?;
        // Boxed before spawning: a spawned future that names a layer's `Service` impl with
        // an `Into<BoxError>` bound trips a known rustc limitation ("implementation of `From`
        // is not general enough"), as with tower's own layers.
        let client = BoxCloneService::new(retry.layer(resource));

        let clients: Vec<_> = (0..CLIENTS)
            .map(|id| {
                let client = client.clone();
                tokio::spawn(async move {
                    let result = client.oneshot(id).await;
                    (result.is_ok(), Instant::now())
                })
            })
            .collect();
        let mut done = 0;
        let mut last_done = start;
        for client in clients {
            let (ok, at) = client.await?;
            if ok {
                done += 1;
                last_done = last_done.max(at);
            }
        }
        Ok(Outcome {
            calls: calls.load(Ordering::Relaxed),
            done,
            all_done_at: (done == CLIENTS).then(|| last_done - start),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(strategy: Strategy) -> Outcome {
        simulate(strategy, 1).expect("the simulation runs")
    }

    #[test]
    fn full_jitter_makes_at_least_40_percent_fewer_calls_than_no_jitter() {
        let plain = run(Strategy::Exponential(Jitter::None));
        let full = run(Strategy::Exponential(Jitter::Full));
        assert_eq!((plain.done, full.done), (CLIENTS, CLIENTS));
        assert!(
            f64::from(full.calls) <= 0.6 * f64::from(plain.calls),
            "full jitter {} calls, no jitter {}",
            full.calls,
            plain.calls
        );
    }

    #[test]
    fn every_jitter_beats_lockstep_and_no_backoff_is_a_storm() {
        let plain = run(Strategy::Exponential(Jitter::None));
        for jitter in [Jitter::Equal, Jitter::Decorrelated] {
            let jittered = run(Strategy::Exponential(jitter));
            assert_eq!(jittered.done, CLIENTS, "{jitter:?}");
            assert!(jittered.calls < plain.calls, "{jitter:?}");
            assert!(jittered.all_done_at < plain.all_done_at, "{jitter:?}");
        }
        // Retrying at once spends every attempt while the first write is in progress.
        let storm = run(Strategy::NoBackoff);
        assert_eq!(storm.done, 1);
        assert_eq!(storm.calls, 1 + (CLIENTS - 1) * MAX_ATTEMPTS);
    }

    #[test]
    fn the_simulation_is_deterministic() {
        let strategy = Strategy::Exponential(Jitter::Full);
        assert_eq!(run(strategy), run(strategy));
    }
}
