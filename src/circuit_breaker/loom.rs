//! Loom models of the breaker's lock-free core: the real [`StateMachine`] and [`Window`],
//! built on loom's atomics (see `crate::sync`), run under every interleaving loom can
//! produce.
//!
//! Run them with `RUSTFLAGS="--cfg loom" cargo test --release --lib` (every other unit test
//! in the crate is `cfg(not(loom))`, so that command runs only loom models). Each model is
//! small on purpose (two to four threads, a few operations each), since loom's work grows
//! combinatorially. Most are explored exhaustively; the three largest up to [`DEEP`]
//! preemptions (see [`check`]).
//!
//! Each model's doc comment states the property it proves. The word-level properties (probe
//! slots, one transition per generation, stale generations) follow from every change of the
//! state word being one compare-and-swap from the exact word the decision was made on; the
//! models check that the code keeps that promise under loom's memory model.

use loom::sync::Arc;
use loom::thread;

use super::state::{Admission, Phase, Snapshot, StateMachine, Transition};
use super::window::{Model, Window};

/// Runs `model` under loom, exploring every interleaving (`preemptions: None`) or those with
/// at most that many preemptions, for the models with three or more threads whose
/// exhaustive run would take minutes. `LOOM_MAX_PREEMPTIONS` (and the other `LOOM_*`
/// variables) override it, e.g. `LOOM_MAX_PREEMPTIONS=5` for a deeper, slower run.
fn check(preemptions: Option<usize>, model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = preemptions;
    }
    builder.check(model);
}

/// The preemption bound of the larger models (four threads, or three with several
/// operations each), whose exhaustive runs take many minutes. Loom's documentation: "in
/// practice, setting the thread pre-emption bound to 2 or 3 is enough to catch most bugs";
/// 4 still keeps each of these models to seconds.
const DEEP: Option<usize> = Some(4);

/// A machine with `probes` slots, half-open at generation 2 (closed 0 → open 1 → half-open
/// 2), set up before any thread is spawned.
fn half_open(probes: u32, probes_to_close: u32) -> Arc<StateMachine> {
    let machine = StateMachine::new(probes, probes_to_close);
    let opened = machine.trip(0).expect("a closed breaker trips");
    let half = machine
        .open_elapsed(opened.generation)
        .expect("the open period ends");
    assert_eq!((half.to, half.generation), (Phase::HalfOpen, 2));
    Arc::new(machine)
}

fn phase_and_generation(machine: &StateMachine) -> (Phase, u32) {
    let now = machine.snapshot();
    (now.phase, now.generation)
}

fn is_probe(admission: Admission) -> bool {
    matches!(admission, Admission::Probe { .. })
}

/// The transitions a set of threads reported, in no particular order.
fn made(transitions: impl IntoIterator<Item = Option<Transition>>) -> Vec<Transition> {
    transitions.into_iter().flatten().collect()
}

/// **N-probe exactness.** Half-open with `probes` slots (1 and 2), three threads each ask to
/// be admitted once: exactly `probes` of them are admitted as probes, never more, the rest
/// are rejected, and the word counts exactly the probes admitted.
#[test]
fn half_open_admits_exactly_the_probe_count() {
    for probes in [1, 2] {
        check(DEEP, move || {
            let machine = half_open(probes, 1);
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let machine = Arc::clone(&machine);
                    thread::spawn(move || machine.admit())
                })
                .collect();
            let admissions: Vec<Admission> =
                threads.into_iter().map(|t| t.join().unwrap()).collect();
            let admitted = admissions.iter().filter(|a| is_probe(**a)).count();
            assert_eq!(admitted, probes as usize, "{admissions:?}");
            for admission in admissions {
                assert!(matches!(
                    admission,
                    Admission::Probe { generation: 2 }
                        | Admission::Rejected {
                            phase: Phase::HalfOpen,
                            generation: 2
                        }
                ));
            }
            let now = machine.snapshot();
            assert_eq!((now.phase, now.generation), (Phase::HalfOpen, 2));
            assert_eq!((now.admitted, now.finished), (probes, 0));
        });
    }
}

/// **A returned slot is reused, never over-granted.** Half-open with `probes` slots (1 and
/// 2). One thread is admitted, gives its slot back (`probe_abandoned`, as a cancelled probe's
/// drop does) and asks again; the other threads (`probes` of them, enough to take every
/// slot) ask once. At every admission the number of probes held at once (admitted and not
/// yet given back) is at most `probes`, and at the end the word's slot count equals the
/// probes still held.
#[test]
fn abandoned_probe_slots_are_reused_never_exceeded() {
    for probes in [1, 2] {
        check(DEEP, move || {
            let machine = half_open(probes, 1);
            // Probes held right now. A std atomic on purpose: loom runs one thread at a time
            // and switches only at loom operations, so updating it right after the admitting
            // compare-and-swap (and right before the releasing one) is atomic with that
            // operation, and adds no interleavings to explore.
            let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let admit = {
                let machine = Arc::clone(&machine);
                let held = std::sync::Arc::clone(&held);
                move || {
                    let admission = machine.admit();
                    if is_probe(admission) {
                        let now_held = held.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        assert!(now_held <= probes as usize, "{now_held} probes in flight");
                    }
                    admission
                }
            };

            let churn = {
                let admit = admit.clone();
                let machine = Arc::clone(&machine);
                let held = std::sync::Arc::clone(&held);
                thread::spawn(move || {
                    if let Admission::Probe { generation } = admit() {
                        held.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                        machine.probe_abandoned(generation);
                    }
                    is_probe(admit())
                })
            };
            let others: Vec<_> = (0..probes)
                .map(|_| {
                    let admit = admit.clone();
                    thread::spawn(move || is_probe(admit()))
                })
                .collect();

            let still_held = usize::from(churn.join().unwrap())
                + others
                    .into_iter()
                    .map(|t| usize::from(t.join().unwrap()))
                    .sum::<usize>();
            assert_eq!(still_held, held.load(std::sync::atomic::Ordering::SeqCst));
            let now = machine.snapshot();
            assert_eq!((now.phase, now.generation), (Phase::HalfOpen, 2));
            assert_eq!(now.admitted as usize, still_held);
        });
    }
}

/// **The open-period timer races a manual override.** Open at generation 1; two threads
/// report that the open period ended (the timer task and the clock check of an untimed
/// breaker can both do so), a third forces the breaker open. Exactly one of the two
/// `open_elapsed` calls moves the state, and only if it ran before the force; the force
/// always does. No transition is lost or made twice: the generation grows by exactly the
/// number of transitions reported, and the final state is the one the sequential order of
/// those transitions gives.
#[test]
fn the_open_timer_and_a_force_make_one_transition_each() {
    check(None, || {
        let machine = StateMachine::new(1, 1);
        assert!(machine.trip(0).is_some());
        let machine = Arc::new(machine);

        let timers: Vec<_> = (0..2)
            .map(|_| {
                let machine = Arc::clone(&machine);
                thread::spawn(move || machine.open_elapsed(1))
            })
            .collect();
        let forced = {
            let machine = Arc::clone(&machine);
            thread::spawn(move || machine.force(Phase::ForcedOpen))
        };

        let elapsed = made(timers.into_iter().map(|t| t.join().unwrap()));
        let forced = forced.join().unwrap();
        assert!(elapsed.len() <= 1, "{elapsed:?}");
        match elapsed.first() {
            // The period ended first: open 1 → half-open 2 → forced open 3.
            Some(half) => {
                assert_eq!(
                    (half.from, half.to, half.generation),
                    (Phase::Open, Phase::HalfOpen, 2)
                );
                assert_eq!((forced.from, forced.generation), (Phase::HalfOpen, 3));
            }
            // Forced first: open 1 → forced open 2, and the timer found nothing to end.
            None => assert_eq!((forced.from, forced.generation), (Phase::Open, 2)),
        }
        assert_eq!(
            phase_and_generation(&machine),
            (Phase::ForcedOpen, 1 + elapsed.len() as u32 + 1)
        );
    });
}

/// **Two failure reports race a reset.** Closed at generation 0; two threads report that the
/// trip model says "open" for generation 0 (two calls failing at once can both see the
/// threshold), a third resets the breaker. At most one trip is made, and only before the
/// reset; after the reset both reports are stale and change nothing. The generation counts
/// every transition exactly once.
#[test]
fn concurrent_trips_and_a_reset_make_one_transition_each() {
    check(None, || {
        let machine = Arc::new(StateMachine::new(1, 1));
        let trips: Vec<_> = (0..2)
            .map(|_| {
                let machine = Arc::clone(&machine);
                thread::spawn(move || machine.trip(0))
            })
            .collect();
        let reset = {
            let machine = Arc::clone(&machine);
            thread::spawn(move || machine.force(Phase::Closed))
        };

        let tripped = made(trips.into_iter().map(|t| t.join().unwrap()));
        let reset = reset.join().unwrap();
        assert!(tripped.len() <= 1, "{tripped:?}");
        match tripped.first() {
            Some(trip) => {
                assert_eq!(
                    (trip.from, trip.to, trip.generation),
                    (Phase::Closed, Phase::Open, 1)
                );
                assert_eq!((reset.from, reset.generation), (Phase::Open, 2));
            }
            None => assert_eq!((reset.from, reset.generation), (Phase::Closed, 1)),
        }
        assert_eq!(
            phase_and_generation(&machine),
            (Phase::Closed, tripped.len() as u32 + 1)
        );
    });
}

/// **A probe's verdict races the stalled-half-open check.** Half-open at generation 2 with
/// one probe admitted (1 slot, 1 success to close). One thread reports the probe's outcome
/// (success, then in a second run failure), another runs the half-open watchdog
/// (`half_open_stalled`). Exactly one of them moves the state: the probe closes (or reopens)
/// the breaker, or the watchdog reopens it and the late verdict is ignored. Either way the
/// breaker ends at generation 3 in the state the winner chose.
#[test]
fn a_probe_verdict_and_the_stall_check_make_exactly_one_transition() {
    for success in [true, false] {
        check(None, move || {
            let machine = half_open(1, 1);
            assert_eq!(machine.admit(), Admission::Probe { generation: 2 });

            let verdict = {
                let machine = Arc::clone(&machine);
                thread::spawn(move || machine.probe_finished(2, success))
            };
            let stalled = {
                let machine = Arc::clone(&machine);
                thread::spawn(move || machine.half_open_stalled(2, 0))
            };
            let verdict = verdict.join().unwrap();
            let stalled = stalled.join().unwrap();

            let winner = match (verdict, stalled) {
                (Some(t), None) => {
                    let expected = if success { Phase::Closed } else { Phase::Open };
                    assert_eq!(t.to, expected);
                    t
                }
                (None, Some(t)) => {
                    assert_eq!(t.to, Phase::Open);
                    t
                }
                other => panic!("exactly one transition expected, got {other:?}"),
            };
            assert_eq!((winner.from, winner.generation), (Phase::HalfOpen, 3));
            let now = machine.snapshot();
            assert_eq!((now.phase, now.generation), (winner.to, 3));
            assert_eq!((now.admitted, now.finished, now.succeeded), (0, 0, 0));
        });
    }
}

/// **Stale generations never move a newer state.** Half-open at generation 2 with one probe
/// admitted. One thread reports the probe's success, which closes the breaker (generation 3)
/// and starts the window's new closed cycle, then reports a failure of that new cycle.
/// Meanwhile another thread reports what earlier cycles' calls and timers would: a success
/// and a failure of closed cycle 0 (window, then `trip(0)` if the window says so), the end
/// of open cycle 1, a stalled check of cycle 1, and a probe result and abandonment tagged
/// with cycle 1. None of them ever makes a transition, whichever side of the close they land
/// on; the close is made exactly once; and the stale outcomes never touch the new cycle's
/// run (with a threshold of 2, the new cycle's first failure never trips, and its run is 1).
#[test]
fn stale_generations_never_move_the_new_state() {
    check(None, || {
        let machine = half_open(1, 1);
        assert_eq!(machine.admit(), Admission::Probe { generation: 2 });
        let window = Window::new(Model::consecutive(2), 1);
        // Cycle 0 saw one failure before the trip: its run stands at 1.
        assert!(!window.record_failure(0));
        let window = Arc::new(window);

        let closer = {
            let machine = Arc::clone(&machine);
            let window = Arc::clone(&window);
            thread::spawn(move || {
                let closed = machine.probe_finished(2, true).expect("the probe closes");
                window.start_cycle(closed.generation);
                let trips = window.record_failure(closed.generation);
                (closed, trips)
            })
        };
        let stale = {
            let machine = Arc::clone(&machine);
            let window = Arc::clone(&window);
            thread::spawn(move || {
                let mut moved = Vec::new();
                window.record_success(0, 0);
                if window.record_failure(0) {
                    moved.push(machine.trip(0));
                }
                moved.push(machine.open_elapsed(1));
                moved.push(machine.half_open_stalled(1, 0));
                moved.push(machine.probe_finished(1, false));
                machine.probe_abandoned(1);
                made(moved)
            })
        };

        let (closed, new_cycle_trips) = closer.join().unwrap();
        let stale_moves = stale.join().unwrap();
        assert_eq!(stale_moves, Vec::new(), "a stale report moved the state");
        assert_eq!(
            (closed.from, closed.to, closed.generation),
            (Phase::HalfOpen, Phase::Closed, 3)
        );
        assert!(!new_cycle_trips, "a stale failure counted in the new cycle");
        assert_eq!(window.in_window(3).failures, 1, "the new cycle's run");
        assert_eq!(
            machine.snapshot(),
            Snapshot {
                phase: Phase::Closed,
                generation: 3,
                admitted: 0,
                finished: 0,
                succeeded: 0,
            }
        );
    });
}

/// **Consecutive failures: two at once trip exactly once.** Threshold 2, a fresh closed
/// cycle, two threads each record a failure. The run is one compare-and-swap on one word,
/// so the two failures get run lengths 1 and 2 in some order: exactly one of them reports
/// "trip" (and so `trip` is asked once, not twice), and the run ends at 2.
///
/// With more failures than the threshold, every failure from the threshold-th on reports
/// "trip"; the state machine turns those into one transition
/// (`concurrent_trips_and_a_reset_make_one_transition_each`).
#[test]
fn consecutive_two_concurrent_failures_trip_exactly_once() {
    check(None, || {
        let window = Arc::new(Window::new(Model::consecutive(2), 2));
        let failures: Vec<_> = (0..2)
            .map(|_| {
                let window = Arc::clone(&window);
                thread::spawn(move || window.record_failure(0))
            })
            .collect();
        let trips = failures
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&trips| trips)
            .count();
        assert_eq!(trips, 1);
        assert_eq!(window.in_window(0).failures, 2, "the run");
    });
}

/// **Consecutive failures: a success racing two failures.** Threshold 2, a fresh closed
/// cycle; two threads record a failure, a third a success (on its own stripe); once all
/// three are done, a fourth failure is recorded. The three sequential orders of the racing
/// outcomes give: F F S (one trip, and the success breaks the run: the fourth failure does
/// not trip), S F F (one trip, the fourth failure extends the run and trips), F S F (no trip,
/// the fourth failure makes a run of 2 and trips). Every interleaving must give one of these:
/// never two trips, and never "no trip" followed by a fourth failure that does not trip
/// either (which would mean the success was counted twice, or a failure lost).
#[test]
fn consecutive_a_success_racing_two_failures_is_linearizable() {
    check(DEEP, || {
        let window = Arc::new(Window::new(Model::consecutive(2), 2));
        let failures: Vec<_> = (0..2)
            .map(|_| {
                let window = Arc::clone(&window);
                thread::spawn(move || window.record_failure(0))
            })
            .collect();
        let success = {
            let window = Arc::clone(&window);
            thread::spawn(move || window.record_success(1, 0))
        };
        let trips = failures
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&trips| trips)
            .count();
        success.join().unwrap();
        let fourth_trips = window.record_failure(0);
        assert!(
            trips == 1 || (trips == 0 && fourth_trips),
            "{trips} trips, then the fourth failure tripped: {fourth_trips}"
        );
    });
}

/// **Failure rate: two failures at once never miss the trip.** A window over the last 2
/// calls, rate 1.0, at least 2 calls; a fresh closed cycle; two threads each record a
/// failure. In every sequential order the first failure is under `min_calls` and the second
/// sees 2 failures in the last 2 calls and trips. The window's docs promise that concurrent
/// calls are "ordered as they reach the counters", so under every interleaving at least one
/// of the two must report "trip". (Both may: the state machine turns reports for one
/// generation into one transition, `concurrent_trips_and_a_reset_make_one_transition_each`.)
///
/// What breaks it: failure 2 can read the ring slot of failure 1 after failure 1 took its
/// number and its slot but before it stored its entry, and find nothing there. A trip missed
/// that way is made by the next failure at the earliest
/// (`rate_three_failures_in_a_row_always_trip`); if none comes, the breaker stays closed
/// with its window over the threshold.
#[test]
fn rate_two_concurrent_failures_never_miss_the_trip() {
    check(None, || {
        let window = Arc::new(Window::new(Model::rate(2, 1.0, 2), 1));
        let failures: Vec<_> = (0..2)
            .map(|_| {
                let window = Arc::clone(&window);
                thread::spawn(move || window.record_failure(0))
            })
            .collect();
        let trips = failures
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&trips| trips)
            .count();
        assert_eq!(window.total_failures(), 2);
        assert!(
            trips >= 1,
            "two failures in the last two calls did not trip"
        );
    });
}

/// **Failure rate: no trip that no order would make.** The same window (last 2 calls, rate
/// 1.0, at least 2 calls); one thread records a failure while another records a success. In
/// either order the window never holds 2 failures, so neither may report "trip".
#[test]
fn rate_a_failure_racing_a_success_never_trips() {
    check(None, || {
        let window = Arc::new(Window::new(Model::rate(2, 1.0, 2), 1));
        let failure = {
            let window = Arc::clone(&window);
            thread::spawn(move || window.record_failure(0))
        };
        let success = {
            let window = Arc::clone(&window);
            thread::spawn(move || window.record_success(0, 0))
        };
        success.join().unwrap();
        assert!(!failure.join().unwrap(), "1 failure in 2 calls tripped");
    });
}

/// **Failure rate: a failure that comes after concurrent ones sees them all.** The same
/// window (last 2 calls, rate 1.0, at least 2 calls); two threads record a failure at once,
/// then, once both are done, a third failure is recorded. Three failures in a row fill a
/// 2-call window whatever happened between the first two: at least one of the three must
/// trip. (This is the weakest form of the rate promise: a trip missed while failures race
/// is made by the next failure, since by then every entry is written.)
///
/// What breaks it: a failure's call number comes from the failure counter and its ring slot
/// from a second counter (`writes`), each with its own `fetch_add`, so two racing failures
/// can take them in opposite orders. Failure 1 then sits in the ring where failure 2 should
/// be, and the third failure, looking for "the 2nd most recent failure", finds call 1, which
/// is outside its window of calls 2 and 3.
#[test]
fn rate_three_failures_in_a_row_always_trip() {
    check(None, || {
        let window = Arc::new(Window::new(Model::rate(2, 1.0, 2), 1));
        let failures: Vec<_> = (0..2)
            .map(|_| {
                let window = Arc::clone(&window);
                thread::spawn(move || window.record_failure(0))
            })
            .collect();
        let racing_trips = failures
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&trips| trips)
            .count();
        let third_trips = window.record_failure(0);
        assert!(
            racing_trips > 0 || third_trips,
            "three failures in a row never tripped a 2-call window at rate 1.0"
        );
    });
}
