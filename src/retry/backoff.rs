//! How long to wait before each retry: constant or exponential, with the jitter kinds of
//! AWS's "Exponential Backoff and Jitter".

use std::time::Duration;

use rand::RngExt;
use rand::rngs::SmallRng;

use crate::error::ConfigError;

/// How a backoff delay is randomised, so that clients that failed together do not retry
/// together.
///
/// With `base` the un-jittered delay of retry `n` (`initial × multiplier^(n-1)`, at most
/// `max`; for a constant backoff, the constant), and `U(a, b)` a uniform draw:
///
/// | kind | delay of retry `n` |
/// | --- | --- |
/// | [`None`](Jitter::None) | `base` |
/// | [`Full`](Jitter::Full) | `U(0, base)` |
/// | [`Equal`](Jitter::Equal) | `base / 2 + U(0, base / 2)` |
/// | [`Decorrelated`](Jitter::Decorrelated) | `min(max, U(initial, 3 × previous delay))`, the first `previous` being `initial` |
///
/// No kind ever returns more than `max` (or the constant). Full jitter spreads retries the
/// most and, in AWS's and this crate's simulations (`examples/retry_storm.rs`), makes the
/// fewest calls; decorrelated jitter does not use the multiplier, as in AWS's definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// The delay as computed: clients retry in lockstep.
    None,
    /// Anywhere between zero and the delay. The default.
    #[default]
    Full,
    /// At least half the delay, the rest at random.
    Equal,
    /// Grows from the previous delay, at random.
    Decorrelated,
}

/// The delays between attempts. Built with [`Backoff::constant`] or
/// [`Backoff::exponential`], randomised with [`jitter`](Backoff::jitter), checked when the
/// retry layer is built.
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::retry::{Backoff, Jitter};
///
/// // 100 ms, 200 ms, 400 ms, ... at most 5 s, each drawn between zero and that.
/// let backoff = Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(5))
///     .jitter(Jitter::Full);
/// # let _ = backoff;
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    shape: Shape,
    jitter: Jitter,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Constant(Duration),
    Exponential {
        initial: Duration,
        multiplier: f64,
        max: Duration,
    },
}

/// The longest delay accepted: far beyond any sensible setting, and small enough that adding
/// it to the current instant can never overflow.
const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

const LAYER: &str = "RetryLayer";

impl Default for Backoff {
    /// Exponential from 50 ms, doubling, at most 2 s, with full jitter.
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(50), 2.0, Duration::from_secs(2))
    }
}

impl Backoff {
    /// The same delay before every retry. Zero retries at once (a "no backoff" setting, for
    /// comparisons; it is what turns a blip into a storm). At most 24 hours.
    pub fn constant(delay: Duration) -> Backoff {
        Backoff {
            shape: Shape::Constant(delay),
            jitter: Jitter::None,
        }
    }

    /// `initial` before the first retry, `multiplier` times more before each next one, never
    /// more than `max`. `initial` > 0, `multiplier` >= 1 and finite, `initial` <= `max` <= 24
    /// hours. Full jitter unless [`jitter`](Self::jitter) says otherwise.
    pub fn exponential(initial: Duration, multiplier: f64, max: Duration) -> Backoff {
        Backoff {
            shape: Shape::Exponential {
                initial,
                multiplier,
                max,
            },
            jitter: Jitter::Full,
        }
    }

    /// Randomise each delay this way.
    pub fn jitter(mut self, jitter: Jitter) -> Backoff {
        self.jitter = jitter;
        self
    }

    /// The jitter in use.
    pub fn jitter_kind(&self) -> Jitter {
        self.jitter
    }

    /// Checks the settings; the retry layer's builder calls it.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match self.shape {
            Shape::Constant(delay) => at_most_a_day(delay, "backoff (constant)"),
            Shape::Exponential {
                initial,
                multiplier,
                max,
            } => {
                if initial.is_zero() {
                    return Err(ConfigError::ZeroDuration {
                        layer: LAYER,
                        setting: "backoff (initial)",
                    });
                }
                if !(multiplier.is_finite() && multiplier >= 1.0) {
                    return Err(ConfigError::out_of_range(
                        LAYER,
                        "backoff (multiplier)",
                        multiplier,
                        "at least 1 and finite",
                    ));
                }
                at_most_a_day(max, "backoff (max)")?;
                if initial > max {
                    return Err(ConfigError::MinAboveMax {
                        layer: LAYER,
                        min_setting: "backoff (initial)",
                        max_setting: "backoff (max)",
                    });
                }
                Ok(())
            }
        }
    }

    /// Whether delays are drawn at random (any jitter but none).
    pub(crate) fn is_random(&self) -> bool {
        self.jitter != Jitter::None
    }

    /// The longest delay this backoff can return.
    pub(crate) fn cap(&self) -> Duration {
        match self.shape {
            Shape::Constant(delay) => delay,
            Shape::Exponential { max, .. } => max,
        }
    }

    /// The delay before retry number `retry` (1 for the first retry), given the delay before
    /// the previous retry (`None` before the first), drawing randomness from `rng`.
    pub(crate) fn delay(
        &self,
        retry: u32,
        previous: Option<Duration>,
        rng: &mut SmallRng,
    ) -> Duration {
        let (floor, base) = match self.shape {
            Shape::Constant(delay) => (delay, delay),
            Shape::Exponential {
                initial,
                multiplier,
                max,
            } => {
                let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
                let scaled = initial.as_secs_f64() * multiplier.powi(exponent);
                let base = if scaled.is_finite() && scaled < max.as_secs_f64() {
                    Duration::from_secs_f64(scaled)
                } else {
                    max
                };
                (initial, base)
            }
        };
        let cap = self.cap();
        match self.jitter {
            Jitter::None => base,
            Jitter::Full => uniform(rng, Duration::ZERO, base),
            Jitter::Equal => {
                let half = base / 2;
                half + uniform(rng, Duration::ZERO, base - half)
            }
            Jitter::Decorrelated => {
                let previous = previous.unwrap_or(floor);
                let upper = previous.saturating_mul(3).min(cap).max(floor);
                uniform(rng, floor.min(cap), upper)
            }
        }
    }
}

/// A uniform draw in `[low, high]`, in nanoseconds.
fn uniform(rng: &mut SmallRng, low: Duration, high: Duration) -> Duration {
    let low = u64::try_from(low.as_nanos()).unwrap_or(u64::MAX);
    let high = u64::try_from(high.as_nanos()).unwrap_or(u64::MAX);
    if high <= low {
        return Duration::from_nanos(low);
    }
    Duration::from_nanos(rng.random_range(low..=high))
}

fn at_most_a_day(delay: Duration, setting: &'static str) -> Result<(), ConfigError> {
    if delay > MAX_DELAY {
        Err(ConfigError::out_of_range(
            LAYER,
            setting,
            format!("{delay:?}"),
            "at most 24 hours",
        ))
    } else {
        Ok(())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    const MS: Duration = Duration::from_millis(1);

    fn delays(backoff: Backoff, seed: u64, retries: u32) -> Vec<Duration> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut previous = None;
        (1..=retries)
            .map(|retry| {
                let delay = backoff.delay(retry, previous, &mut rng);
                previous = Some(delay);
                delay
            })
            .collect()
    }

    #[test]
    fn exponential_without_jitter_doubles_up_to_the_cap() {
        let backoff = Backoff::exponential(100 * MS, 2.0, 1000 * MS).jitter(Jitter::None);
        assert_eq!(
            delays(backoff, 0, 6),
            [100, 200, 400, 800, 1000, 1000].map(|ms| ms * MS)
        );
        let constant = Backoff::constant(30 * MS);
        assert_eq!(delays(constant, 0, 3), [30 * MS; 3]);
    }

    #[test]
    fn a_huge_retry_count_stays_at_the_cap() {
        let backoff = Backoff::exponential(MS, 10.0, 5000 * MS).jitter(Jitter::None);
        let mut rng = SmallRng::seed_from_u64(0);
        assert_eq!(backoff.delay(u32::MAX, None, &mut rng), 5000 * MS);
    }

    #[test]
    fn invalid_settings_are_refused() {
        let ok = Backoff::exponential(MS, 2.0, MS);
        assert!(ok.validate().is_ok());
        assert!(Backoff::constant(Duration::ZERO).validate().is_ok());
        for bad in [
            Backoff::exponential(Duration::ZERO, 2.0, MS),
            Backoff::exponential(MS, 0.5, MS),
            Backoff::exponential(MS, f64::NAN, MS),
            Backoff::exponential(MS, f64::INFINITY, MS),
            Backoff::exponential(2 * MS, 2.0, MS),
            Backoff::exponential(MS, 2.0, Duration::MAX),
            Backoff::constant(Duration::MAX),
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    fn any_jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Every jitter stays within its definition's bounds, and never above the cap.
        #[test]
        fn every_delay_is_within_its_bounds(
            initial_ms in 1_u32..1_000,
            multiplier in 1.0_f64..5.0,
            cap_factor in 1_u32..100,
            jitter in any_jitter(),
            seed in any::<u64>(),
        ) {
            let initial = initial_ms * MS;
            let cap = initial * cap_factor;
            let backoff = Backoff::exponential(initial, multiplier, cap).jitter(jitter);
            let unjittered = delays(backoff.jitter(Jitter::None), seed, 20);
            let jittered = delays(backoff, seed, 20);
            let mut previous = initial;
            for (base, delay) in unjittered.iter().zip(&jittered) {
                prop_assert!(*delay <= cap);
                match jitter {
                    Jitter::None => prop_assert_eq!(delay, base),
                    Jitter::Full => prop_assert!(delay <= base),
                    Jitter::Equal => prop_assert!(*delay >= *base / 2 && delay <= base),
                    Jitter::Decorrelated => {
                        prop_assert!(*delay >= initial);
                        prop_assert!(*delay <= (previous * 3).min(cap));
                    }
                }
                previous = *delay;
            }
            // The un-jittered delays never shrink, and reach the cap or keep growing.
            prop_assert!(unjittered.windows(2).all(|pair| pair[0] <= pair[1]));
        }

        /// The same seed gives the same delays.
        #[test]
        fn delays_are_reproducible_from_a_seed(jitter in any_jitter(), seed in any::<u64>()) {
            let backoff = Backoff::exponential(10 * MS, 2.0, 10_000 * MS).jitter(jitter);
            prop_assert_eq!(delays(backoff, seed, 10), delays(backoff, seed, 10));
        }
    }

    #[test]
    fn jitter_spreads_the_delays_it_draws() {
        // Over many draws, full jitter covers its range: its mean is near half the base.
        let backoff = Backoff::exponential(1000 * MS, 2.0, 1000 * MS).jitter(Jitter::Full);
        let mut rng = SmallRng::seed_from_u64(3);
        let total: Duration = (0..10_000).map(|_| backoff.delay(1, None, &mut rng)).sum();
        let mean = total / 10_000;
        assert!(mean > 480 * MS && mean < 520 * MS, "{mean:?}");
    }
}
