//! The breaker's state machine over a single `AtomicU64`: no locks, no tower, no tokio, no
//! clock. It takes an event (a call asks to be admitted, a probe finished, the open period
//! ended, ...) and answers with a decision and, when the state moved, the transition.
//!
//! # The word
//!
//! ```text
//!  63            36 35       25 24       14 13        3 2     0
//! +----------------+-----------+-----------+-----------+-------+
//! |  generation    | succeeded |  finished |  admitted | phase |
//! +----------------+-----------+-----------+-----------+-------+
//!       28 bits       11 bits     11 bits     11 bits    3 bits
//! ```
//!
//! - `phase`: closed, open, half-open, forced open, disabled (and "open, no timer": see
//!   [`Phase::OpenUntimed`]).
//! - The three counters are used in half-open only: probes admitted, probes finished, probes
//!   that succeeded. Keeping them in the same word as the phase is what makes "exactly `N`
//!   probes" hold under any interleaving: admitting a probe is one compare-and-swap that also
//!   proves the phase and generation have not changed.
//! - `generation` grows by one at every transition. A call is admitted under a generation and
//!   reports its outcome with it; an outcome whose generation is not the current one belongs
//!   to an earlier cycle and is ignored.
//!
//! Every transition is a compare-and-swap from the exact word the decision was made on, so
//! two threads can never both make the same transition, and none is lost.

use crate::sync::{AtomicU64, Ordering};

const PHASE_BITS: u32 = 3;
const COUNT_BITS: u32 = 11;
const ADMITTED_SHIFT: u32 = PHASE_BITS;
const FINISHED_SHIFT: u32 = ADMITTED_SHIFT + COUNT_BITS;
const SUCCEEDED_SHIFT: u32 = FINISHED_SHIFT + COUNT_BITS;
const GENERATION_SHIFT: u32 = SUCCEEDED_SHIFT + COUNT_BITS;
const PHASE_MASK: u64 = (1 << PHASE_BITS) - 1;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
pub(crate) const GENERATION_BITS: u32 = 64 - GENERATION_SHIFT;

/// The most half-open probes a breaker can be configured with (the counters hold up to 2047;
/// the margin keeps "admitted + 1" from overflowing even if a bug ever let it pass the limit).
pub(crate) const MAX_PROBES: u32 = 1024;

/// Generations are compared for equality, or for "newer than" within half their range.
pub(crate) const GENERATION_MASK: u32 = (1 << GENERATION_BITS) - 1;

/// Where the breaker is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Calls flow; outcomes feed the trip model.
    Closed = 0,
    /// Calls are rejected; a timer moves the breaker to half-open when the open period ends.
    Open = 1,
    /// Open, but no timer could be armed (the trip happened outside a tokio runtime, or the
    /// runtime that held the timer shut down): admission checks the clock instead.
    OpenUntimed = 2,
    /// A bounded number of probe calls are let through to test the dependency.
    HalfOpen = 3,
    /// Held open by the handle until reset.
    ForcedOpen = 4,
    /// Held closed by the handle, recording nothing, until reset.
    Disabled = 5,
}

impl Phase {
    fn from_bits(bits: u64) -> Phase {
        match bits {
            0 => Phase::Closed,
            1 => Phase::Open,
            2 => Phase::OpenUntimed,
            3 => Phase::HalfOpen,
            4 => Phase::ForcedOpen,
            // Only the six values above are ever stored.
            _ => Phase::Disabled,
        }
    }
}

/// The decoded word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) phase: Phase,
    pub(crate) generation: u32,
    pub(crate) admitted: u32,
    pub(crate) finished: u32,
    pub(crate) succeeded: u32,
}

impl Snapshot {
    fn decode(word: u64) -> Snapshot {
        Snapshot {
            phase: Phase::from_bits(word & PHASE_MASK),
            admitted: ((word >> ADMITTED_SHIFT) & COUNT_MASK) as u32,
            finished: ((word >> FINISHED_SHIFT) & COUNT_MASK) as u32,
            succeeded: ((word >> SUCCEEDED_SHIFT) & COUNT_MASK) as u32,
            generation: (word >> GENERATION_SHIFT) as u32,
        }
    }

    fn encode(self) -> u64 {
        (self.phase as u64)
            | (u64::from(self.admitted) << ADMITTED_SHIFT)
            | (u64::from(self.finished) << FINISHED_SHIFT)
            | (u64::from(self.succeeded) << SUCCEEDED_SHIFT)
            | (u64::from(self.generation & GENERATION_MASK) << GENERATION_SHIFT)
    }

    /// The first word of a new phase: next generation, counters cleared.
    fn next(self, phase: Phase) -> Snapshot {
        Snapshot {
            phase,
            generation: next_generation(self.generation),
            admitted: 0,
            finished: 0,
            succeeded: 0,
        }
    }
}

/// The generation after `generation`.
pub(crate) fn next_generation(generation: u32) -> u32 {
    generation.wrapping_add(1) & GENERATION_MASK
}

/// Whether `generation` is older than `current` (wrapping: within half the range).
pub(crate) fn is_older(generation: u32, current: u32) -> bool {
    let distance = current.wrapping_sub(generation) & GENERATION_MASK;
    distance != 0 && distance < (1 << (GENERATION_BITS - 1))
}

/// A move from one phase to another, made by exactly one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: Phase,
    pub(crate) to: Phase,
    /// The generation of the new phase.
    pub(crate) generation: u32,
}

/// The answer to "may this call go through?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Closed: go; report the outcome with this generation.
    Closed { generation: u32 },
    /// Half-open: go as a probe holding one of the probe slots of this generation. The slot
    /// must be given back ([`StateMachine::probe_finished`] or
    /// [`StateMachine::probe_abandoned`]), which the response future does on drop.
    Probe { generation: u32 },
    /// Disabled: go, and report nothing.
    Untracked,
    /// Rejected: open, forced open, or half-open with every probe slot taken.
    Rejected { phase: Phase, generation: u32 },
}

/// The state machine. See the module docs for the word it keeps.
#[derive(Debug)]
pub(crate) struct StateMachine {
    word: AtomicU64,
    /// Probe slots in half-open, in `1..=MAX_PROBES`.
    probes: u32,
    /// Successful probes needed to close, in `1..=probes`.
    probes_to_close: u32,
}

impl StateMachine {
    /// A closed breaker at generation 0. `probes` and `probes_to_close` were validated by the
    /// builder: `1 <= probes_to_close <= probes <= MAX_PROBES`.
    pub(crate) fn new(probes: u32, probes_to_close: u32) -> StateMachine {
        debug_assert!(1 <= probes_to_close && probes_to_close <= probes && probes <= MAX_PROBES);
        StateMachine {
            word: AtomicU64::new(
                Snapshot {
                    phase: Phase::Closed,
                    generation: 0,
                    admitted: 0,
                    finished: 0,
                    succeeded: 0,
                }
                .encode(),
            ),
            probes,
            probes_to_close,
        }
    }

    /// The current word, decoded.
    pub(crate) fn snapshot(&self) -> Snapshot {
        // Acquire: whoever published this word wrote what belongs to the phase before it
        // (the open-until instant, the window's new cycle), and the reader may rely on it.
        Snapshot::decode(self.word.load(Ordering::Acquire))
    }

    /// Decides whether a call may go through. Closed, open and disabled cost one load; only
    /// half-open takes a compare-and-swap, to claim a probe slot.
    pub(crate) fn admit(&self) -> Admission {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            let now = Snapshot::decode(word);
            match now.phase {
                Phase::Closed => {
                    return Admission::Closed {
                        generation: now.generation,
                    };
                }
                Phase::Disabled => return Admission::Untracked,
                Phase::Open | Phase::OpenUntimed | Phase::ForcedOpen => {
                    return Admission::Rejected {
                        phase: now.phase,
                        generation: now.generation,
                    };
                }
                Phase::HalfOpen => {
                    if now.admitted >= self.probes {
                        return Admission::Rejected {
                            phase: now.phase,
                            generation: now.generation,
                        };
                    }
                    let claimed = Snapshot {
                        admitted: now.admitted + 1,
                        ..now
                    };
                    // AcqRel on success: the probe's outcome, reported later, is ordered after
                    // the claim. On failure, re-read (Acquire) and decide again.
                    match self.word.compare_exchange_weak(
                        word,
                        claimed.encode(),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => {
                            return Admission::Probe {
                                generation: now.generation,
                            };
                        }
                        Err(actual) => word = actual,
                    }
                }
            }
        }
    }

    /// Applies `decide` to the current word until the compare-and-swap of its answer
    /// succeeds or it declines (`None`). Returns the word it replaced and the new one.
    fn update(
        &self,
        mut decide: impl FnMut(Snapshot) -> Option<Snapshot>,
    ) -> Option<(Snapshot, Snapshot)> {
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            let before = Snapshot::decode(word);
            let after = decide(before)?;
            // AcqRel: a transition publishes what its thread prepared for the new phase
            // (Release) and is ordered after every earlier transition it replaces (Acquire).
            match self.word.compare_exchange_weak(
                word,
                after.encode(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some((before, after)),
                Err(actual) => word = actual,
            }
        }
    }

    fn transition(&self, decide: impl FnMut(Snapshot) -> Option<Snapshot>) -> Option<Transition> {
        let (before, after) = self.update(decide)?;
        (before.phase != after.phase || before.generation != after.generation).then_some(
            Transition {
                from: before.phase,
                to: after.phase,
                generation: after.generation,
            },
        )
    }

    /// The trip model says the closed cycle `generation` should open. Only the first such
    /// report for a generation moves the state.
    pub(crate) fn trip(&self, generation: u32) -> Option<Transition> {
        self.transition(|now| {
            (now.phase == Phase::Closed && now.generation == generation)
                .then(|| now.next(Phase::Open))
        })
    }

    /// A probe of half-open cycle `generation` finished with a success or a failure. Closes
    /// the breaker once enough probes succeeded, reopens it once too many failed for the rest
    /// to be enough; otherwise records the result. Stale reports change nothing.
    pub(crate) fn probe_finished(&self, generation: u32, success: bool) -> Option<Transition> {
        let allowed_failures = self.probes - self.probes_to_close;
        self.transition(|now| {
            if now.phase != Phase::HalfOpen || now.generation != generation {
                return None;
            }
            let finished = now.finished + 1;
            let succeeded = now.succeeded + u32::from(success);
            if succeeded >= self.probes_to_close {
                Some(now.next(Phase::Closed))
            } else if finished - succeeded > allowed_failures {
                Some(now.next(Phase::Open))
            } else {
                Some(Snapshot {
                    finished,
                    succeeded,
                    ..now
                })
            }
        })
    }

    /// A probe of half-open cycle `generation` ended without a verdict (its future was
    /// dropped, its inner service panicked, or its outcome was classified as ignored): its
    /// slot goes back, so another call can probe.
    pub(crate) fn probe_abandoned(&self, generation: u32) {
        self.update(|now| {
            // The slot is only counted while the cycle that granted it lasts, and it is still
            // in flight, so `admitted > finished`.
            (now.phase == Phase::HalfOpen
                && now.generation == generation
                && now.admitted > now.finished)
                .then(|| Snapshot {
                    admitted: now.admitted - 1,
                    ..now
                })
        });
    }

    /// The open period of cycle `generation` is over: start probing.
    pub(crate) fn open_elapsed(&self, generation: u32) -> Option<Transition> {
        self.transition(|now| {
            (matches!(now.phase, Phase::Open | Phase::OpenUntimed) && now.generation == generation)
                .then(|| now.next(Phase::HalfOpen))
        })
    }

    /// The half-open stall check of cycle `generation`, run every maximum wait: if probes are
    /// in flight and no probe finished since the previous check (when `finished_before` had
    /// finished; 0 at the first check), they hang: go back to open. A half-open breaker that
    /// admitted nothing (no traffic) stays, and so does one whose probes make progress.
    pub(crate) fn half_open_stalled(
        &self,
        generation: u32,
        finished_before: u32,
    ) -> Option<Transition> {
        self.transition(|now| {
            (now.phase == Phase::HalfOpen
                && now.generation == generation
                && now.admitted > now.finished
                && now.finished == finished_before)
                .then(|| now.next(Phase::Open))
        })
    }

    /// No timer will end open cycle `generation`: admission must check the clock.
    pub(crate) fn mark_untimed(&self, generation: u32) {
        self.update(|now| {
            (now.phase == Phase::Open && now.generation == generation).then_some(Snapshot {
                phase: Phase::OpenUntimed,
                ..now
            })
        });
    }

    /// Moves to `phase` whatever the current state (the handle's force-open, disable and
    /// reset). Always a new generation, so outcomes of calls admitted before are ignored.
    pub(crate) fn force(&self, phase: Phase) -> Transition {
        self.transition(|now| Some(now.next(phase)))
            .expect("a forced move always changes the generation")
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn machine(probes: u32, to_close: u32) -> StateMachine {
        StateMachine::new(probes, to_close)
    }

    fn open_then_half_open(m: &StateMachine) -> u32 {
        let closed = m.snapshot().generation;
        let opened = m.trip(closed).expect("trips");
        let half = m.open_elapsed(opened.generation).expect("half-opens");
        assert_eq!(half.to, Phase::HalfOpen);
        half.generation
    }

    #[test]
    fn the_word_round_trips() {
        let s = Snapshot {
            phase: Phase::HalfOpen,
            generation: GENERATION_MASK,
            admitted: 2047,
            finished: 1024,
            succeeded: 1,
        };
        assert_eq!(Snapshot::decode(s.encode()), s);
        assert_eq!(next_generation(GENERATION_MASK), 0);
        assert!(is_older(GENERATION_MASK, 0));
        assert!(is_older(4, 5));
        assert!(!is_older(5, 5));
        assert!(!is_older(6, 5));
    }

    #[test]
    fn a_trip_is_made_once_per_generation() {
        let m = machine(1, 1);
        assert_eq!(m.admit(), Admission::Closed { generation: 0 });
        let t = m.trip(0).unwrap();
        assert_eq!(
            (t.from, t.to, t.generation),
            (Phase::Closed, Phase::Open, 1)
        );
        assert_eq!(m.trip(0), None);
        assert_eq!(
            m.admit(),
            Admission::Rejected {
                phase: Phase::Open,
                generation: 1
            }
        );
    }

    #[test]
    fn half_open_admits_exactly_the_probe_count() {
        let m = machine(3, 2);
        let g = open_then_half_open(&m);
        for _ in 0..3 {
            assert_eq!(m.admit(), Admission::Probe { generation: g });
        }
        assert!(matches!(
            m.admit(),
            Admission::Rejected {
                phase: Phase::HalfOpen,
                ..
            }
        ));
        m.probe_abandoned(g);
        assert_eq!(m.admit(), Admission::Probe { generation: g });
        assert!(matches!(m.admit(), Admission::Rejected { .. }));
    }

    #[test]
    fn enough_successes_close_too_many_failures_reopen() {
        let m = machine(3, 2);
        let g = open_then_half_open(&m);
        for _ in 0..3 {
            m.admit();
        }
        assert_eq!(m.probe_finished(g, true), None);
        let closed = m.probe_finished(g, true).unwrap();
        assert_eq!(closed.to, Phase::Closed);
        // The third probe reports late: stale, ignored.
        assert_eq!(m.probe_finished(g, false), None);
        assert_eq!(m.snapshot().phase, Phase::Closed);

        let g = open_then_half_open(&m);
        for _ in 0..3 {
            m.admit();
        }
        // With 2 of 3 needed, a second failure makes closing impossible.
        assert_eq!(m.probe_finished(g, false), None);
        let reopened = m.probe_finished(g, false).unwrap();
        assert_eq!(reopened.to, Phase::Open);
    }

    #[test]
    fn a_stalled_half_open_reopens_only_if_probes_were_admitted() {
        let m = machine(2, 1);
        let g = open_then_half_open(&m);
        assert_eq!(m.half_open_stalled(g, 0), None, "no traffic: keep waiting");
        m.admit();
        let t = m.half_open_stalled(g, 0).unwrap();
        assert_eq!(t.to, Phase::Open);
        // The hung probe reports long after: a different cycle now.
        assert_eq!(m.probe_finished(g, true), None);
        assert_eq!(m.snapshot().phase, Phase::Open);
    }

    #[test]
    fn forced_phases_hold_until_reset() {
        let m = machine(1, 1);
        m.force(Phase::ForcedOpen);
        assert!(matches!(
            m.admit(),
            Admission::Rejected {
                phase: Phase::ForcedOpen,
                ..
            }
        ));
        let g = m.snapshot().generation;
        assert_eq!(m.open_elapsed(g), None, "a timer cannot end a forced open");
        m.force(Phase::Disabled);
        assert_eq!(m.admit(), Admission::Untracked);
        assert_eq!(
            m.trip(m.snapshot().generation),
            None,
            "disabled never trips"
        );
        m.force(Phase::Closed);
        assert!(matches!(m.admit(), Admission::Closed { .. }));
    }
}
