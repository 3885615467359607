//! [`RetryBudget`]: how many retries a client may make, as a share of its requests, so that
//! retries cannot multiply the load on a dependency that is already failing.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::ConfigError;
use crate::sync::{AtomicBool, AtomicU64, Ordering, Padded};
use crate::ticker::{Epochs, Ticker};

/// Units of a token: deposits are kept in thousandths, so a ratio like 0.1 is exact.
const UNIT: u64 = 1_000;

/// Buckets the time-to-live is split into: tokens expire a tenth of `ttl` at a time.
const BUCKETS: usize = 10;

/// How the retry word packs the current bucket and a change count with the retry total.
const TOTAL_BITS: u32 = 40;
const TOTAL_MASK: u64 = (1 << TOTAL_BITS) - 1;
const BUCKET_SHIFT: u32 = TOTAL_BITS;
const BUCKET_BITS: u32 = 8;
const BUCKET_MASK: u64 = (1 << BUCKET_BITS) - 1;
const CHANGE_SHIFT: u32 = TOTAL_BITS + BUCKET_BITS;

const LAYER: &str = "RetryBudget";

/// A retry budget, shared by every retry layer and service clone it is given to.
///
/// # The model (Finagle's)
///
/// Every request deposits `ratio` of a token; every retry withdraws one whole token. Tokens
/// last `ttl`, and a reserve of `min_per_second × ttl` tokens is always there, so a client
/// with little traffic can still retry a little. A retry is allowed only if, at that moment,
///
/// ```text
/// retries in the last ttl + 1  <=  ratio × requests in the last ttl + min_per_second × ttl
/// ```
///
/// With the defaults (10% of requests, 10 retries a second, over 10 s), a client sending
/// 1,000 requests a second to a dependency that fails every call makes at most about 110
/// retries a second: 1.11 attempts per request, where three naive retries would make 4.
///
/// # Why it cannot be overdrawn
///
/// tower's `TpsBudget` checks the balance and then subtracts from it in two steps, so
/// concurrent retries can each see the last token and all take it (tower issue 857). Here
/// every withdrawal is one compare-and-swap on a single word that holds the count of
/// retries, checked against that very count: two withdrawals cannot both take the last
/// token. Deposits only ever add, so a deposit racing a withdrawal can only make the check
/// more cautious than it needed to be, never less. A loom model checks it.
///
/// # Cost
///
/// A request's deposit is one increment on its service clone's own stripe (a cache line no
/// other clone writes) and one load to keep the bucket timer running; it allocates nothing
/// and reads no clock. Tokens expire bucket by bucket (10 buckets over `ttl`), moved on by a
/// timer task on the tokio runtime, which stops while the budget sits idle; outside a
/// runtime, each request catches the buckets up by reading the clock.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::retry::RetryBudget;
///
/// let budget = RetryBudget::builder()
///     .ratio(0.1)                 // retries may add 10% to the requests...
///     .min_per_second(10)         // ...plus 10 a second, however few requests there are
///     .ttl(Duration::from_secs(10))
///     .build()?;
/// assert_eq!(budget.balance(), 100.0); // the reserve: 10 a second for 10 s
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    pub(crate) state: Arc<BudgetState>,
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &(self.state.deposit_units as f64 / UNIT as f64))
            .field("reserve", &(self.state.reserve_units / UNIT))
            .field("balance", &self.balance())
            .finish()
    }
}

impl Default for RetryBudget {
    /// 10% of requests, 10 retries a second, over 10 s: the per-client budget Google's SRE
    /// book recommends, with Finagle's reserve and time-to-live.
    fn default() -> Self {
        RetryBudget::builder()
            .build()
            .unwrap_or_else(|_| unreachable!("the default settings are valid"))
    }
}

impl RetryBudget {
    /// Starts building a budget; the defaults are [`RetryBudget::default`]'s.
    pub fn builder() -> RetryBudgetBuilder {
        RetryBudgetBuilder {
            ratio: 0.1,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
            stripes: None,
        }
    }

    /// Retries that could be made now, in tokens (fractional: deposits are fractions).
    pub fn balance(&self) -> f64 {
        self.state.balance()
    }

    /// Retries refused since the budget was made, because it was empty.
    pub fn exhausted(&self) -> u64 {
        self.state.refused.load(Ordering::Relaxed)
    }

    /// Retries allowed since the budget was made.
    pub fn retries(&self) -> u64 {
        self.state.retries.0.load(Ordering::Relaxed) & TOTAL_MASK
    }

    /// Requests deposited since the budget was made.
    pub fn requests(&self) -> u64 {
        self.state.total_deposits()
    }
}

/// Builder of [`RetryBudget`]; every setting is checked by [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct RetryBudgetBuilder {
    ratio: f64,
    min_per_second: u32,
    ttl: Duration,
    stripes: Option<usize>,
}

impl RetryBudgetBuilder {
    /// Retries allowed per request, from 0 to 1,000 (0.1: one retry for every ten requests).
    /// Default 0.1.
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// Retries allowed each second whatever the traffic, up to 1,000,000. Default 10.
    pub fn min_per_second(mut self, retries: u32) -> Self {
        self.min_per_second = retries;
        self
    }

    /// How long a deposit (and a withdrawal) counts, from 1 s to 60 s. Default 10 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How many deposit counters (one cache line each) to spread service clones over, from 1
    /// to 1024, rounded up to a power of two. Default: twice the available parallelism.
    pub fn stripes(mut self, stripes: usize) -> Self {
        self.stripes = Some(stripes);
        self
    }

    /// Checks the settings and builds the budget.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for a ratio outside [0, 1000] or NaN, a `min_per_second` above
    /// 1,000,000, a ttl outside [1 s, 60 s], stripes outside [1, 1024], or a budget that
    /// could never allow a retry (ratio 0 and `min_per_second` 0: use one attempt instead).
    pub fn build(self) -> Result<RetryBudget, ConfigError> {
        if !(0.0..=1000.0).contains(&self.ratio) {
            return Err(ConfigError::out_of_range(
                LAYER,
                "ratio",
                self.ratio,
                "in [0, 1000]",
            ));
        }
        if self.min_per_second > 1_000_000 {
            return Err(ConfigError::out_of_range(
                LAYER,
                "min_per_second",
                self.min_per_second,
                "at most 1,000,000",
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&self.ttl) {
            return Err(ConfigError::out_of_range(
                LAYER,
                "ttl",
                format!("{:?}", self.ttl),
                "from 1 s to 60 s",
            ));
        }
        let deposit_units = (self.ratio * UNIT as f64).round() as u64;
        let reserve_units = (u64::from(self.min_per_second) * self.ttl.as_millis() as u64)
            .saturating_mul(UNIT)
            / 1000;
        if deposit_units == 0 && reserve_units == 0 {
            return Err(ConfigError::out_of_range(
                LAYER,
                "ratio",
                self.ratio,
                "above 0.0005 when min_per_second is 0 (this budget never allows a retry)",
            ));
        }
        let stripes = match self.stripes {
            Some(stripes) if !(1..=1024).contains(&stripes) => {
                return Err(ConfigError::out_of_range(
                    LAYER,
                    "stripes",
                    stripes,
                    "from 1 to 1024",
                ));
            }
            Some(stripes) => stripes,
            None => std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
        };
        Ok(RetryBudget {
            state: Arc::new(BudgetState::new(
                deposit_units,
                reserve_units,
                stripes,
                BUCKETS,
                Some(Ticker::new(self.ttl / BUCKETS as u32, BUCKETS as u64)),
            )),
        })
    }
}

/// The lock-free core: no tokio, no clock; time arrives as epochs through [`advance_to`].
///
/// [`advance_to`]: BudgetState::advance_to
#[derive(Debug)]
pub(crate) struct BudgetState {
    /// Thousandths of a token each request deposits.
    deposit_units: u64,
    /// Thousandths of a token always available over the window.
    reserve_units: u64,
    /// Requests ever deposited, one counter per stripe. Only ever grows.
    deposits: Box<[Padded<AtomicU64>]>,
    /// Retries ever allowed (low bits), the current bucket, and a count of bucket changes
    /// (high bits), so a withdrawal that raced a bucket change fails its compare-and-swap.
    retries: Padded<AtomicU64>,
    /// For each bucket: the deposit total and the retry total when it became current. The
    /// window's counts are the totals now minus those of its oldest bucket.
    deposit_marks: Box<[AtomicU64]>,
    retry_marks: Box<[AtomicU64]>,
    /// The epoch the buckets have reached, and who is moving them.
    epoch: AtomicU64,
    advancing: AtomicBool,
    /// Buckets in the window (10, but for the loom models, which need fewer steps).
    buckets: usize,
    /// Withdrawals refused.
    refused: AtomicU64,
    /// Which stripe the next service clone takes.
    next_stripe: AtomicU64,
    ticker: Option<Ticker>,
    /// The balance gauge of the first retry layer built with this budget, set at every
    /// bucket change.
    #[cfg(feature = "metrics")]
    balance_gauge: std::sync::OnceLock<::metrics::Gauge>,
}

impl BudgetState {
    pub(crate) fn new(
        deposit_units: u64,
        reserve_units: u64,
        stripes: usize,
        buckets: usize,
        ticker: Option<Ticker>,
    ) -> BudgetState {
        // At least 2, so that the current bucket is never also the oldest; at most 256, what
        // the retry word has room for.
        let buckets = buckets.clamp(2, 1 << BUCKET_BITS);
        let zeroed = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        BudgetState {
            deposit_units,
            reserve_units,
            // A power of two, so that a stripe is found with a mask, not a division.
            deposits: (0..stripes.max(1).next_power_of_two())
                .map(|_| Padded(AtomicU64::new(0)))
                .collect(),
            retries: Padded(AtomicU64::new(0)),
            deposit_marks: zeroed(buckets),
            retry_marks: zeroed(buckets),
            buckets,
            epoch: AtomicU64::new(0),
            advancing: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            next_stripe: AtomicU64::new(0),
            ticker,
            #[cfg(feature = "metrics")]
            balance_gauge: std::sync::OnceLock::new(),
        }
    }

    /// Retries that could be made now, in tokens.
    fn balance(&self) -> f64 {
        let (allowed, used) = self.window();
        // Never below zero, although retries made can outlive the deposits that paid for
        // them (they expire a bucket later): no retry is possible either way.
        ((allowed as f64 - (used * UNIT) as f64) / UNIT as f64).max(0.0)
    }

    /// Sets `gauge` to the balance at every bucket change, unless another retry layer's
    /// gauge already is.
    #[cfg(feature = "metrics")]
    pub(crate) fn watch_balance(&self, gauge: &::metrics::Gauge) {
        let _ = self.balance_gauge.set(gauge.clone());
    }

    /// The stripe for a new service clone, round robin.
    pub(crate) fn take_stripe(&self) -> usize {
        (self.next_stripe.fetch_add(1, Ordering::Relaxed) as usize) & (self.deposits.len() - 1)
    }

    /// A request arrived: deposit its share.
    #[inline]
    pub(crate) fn deposit(&self, stripe: usize) {
        // Relaxed: a count that only grows; a withdrawal that misses the newest deposits
        // only errs on the side of refusing.
        self.deposits[stripe & (self.deposits.len() - 1)]
            .0
            .fetch_add(1, Ordering::Relaxed);
    }

    fn total_deposits(&self) -> u64 {
        self.deposits
            .iter()
            .map(|stripe| stripe.0.load(Ordering::Acquire))
            .sum()
    }

    /// Takes one retry token if the window has one. Lock-free; see the module docs for why it
    /// cannot be overdrawn.
    pub(crate) fn withdraw(&self) -> bool {
        let mut word = self.retries.0.load(Ordering::Acquire);
        loop {
            let bucket = ((word >> BUCKET_SHIFT) & BUCKET_MASK) as usize;
            let retries = word & TOTAL_MASK;
            let oldest = (bucket + 1) % self.buckets;
            // The retry mark before the deposit mark: see `advance_to`.
            let used = retries.wrapping_sub(self.retry_marks[oldest].load(Ordering::Acquire));
            let allowed = self.allowed_units(bucket);
            if (used + 1).saturating_mul(UNIT) > allowed {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            // AcqRel: the count this check was made on is the count it replaces; a bucket
            // change in between changed the word, so this fails and checks again.
            match self.retries.0.compare_exchange_weak(
                word,
                (word & !TOTAL_MASK) | ((retries + 1) & TOTAL_MASK),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => word = actual,
            }
        }
    }

    /// Thousandths of a token the window allows in all, with `bucket` current.
    fn allowed_units(&self, bucket: usize) -> u64 {
        let oldest = (bucket + 1) % self.buckets;
        let deposits = self
            .total_deposits()
            .wrapping_sub(self.deposit_marks[oldest].load(Ordering::Acquire));
        deposits
            .saturating_mul(self.deposit_units)
            .saturating_add(self.reserve_units)
    }

    /// (thousandths of a token allowed, retries used) in the current window.
    fn window(&self) -> (u64, u64) {
        let word = self.retries.0.load(Ordering::Acquire);
        let bucket = ((word >> BUCKET_SHIFT) & BUCKET_MASK) as usize;
        let oldest = (bucket + 1) % self.buckets;
        let used =
            (word & TOTAL_MASK).wrapping_sub(self.retry_marks[oldest].load(Ordering::Acquire));
        (self.allowed_units(bucket), used)
    }

    /// Moves the window forward to `epoch` (tenths of the ttl since the budget was made): the
    /// oldest bucket's deposits and retries expire. If another thread is already moving it,
    /// returns at once: that thread will get there.
    pub(crate) fn advance_to(&self, epoch: u64) {
        if self
            .advancing
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let mut current = self.epoch.load(Ordering::Relaxed);
        // More than a whole window: the buckets in between hold nothing, so only the last
        // `buckets` steps matter.
        let buckets = self.buckets as u64;
        if epoch > current + buckets {
            current = epoch - buckets;
        }
        while current < epoch {
            current += 1;
            let bucket = (current % buckets) as usize;
            // The new bucket replaces the oldest one. Marks are written deposits first,
            // retries second (Release), and read retries first, deposits second (Acquire),
            // so a reader may see the new deposit mark with the old retry mark (fewer tokens,
            // more retries: the most cautious mix) but never the reverse. A withdrawal that
            // read the old word cannot succeed after the word changes below.
            self.deposit_marks[bucket].store(self.total_deposits(), Ordering::Release);
            let mut word = self.retries.0.load(Ordering::Acquire);
            loop {
                self.retry_marks[bucket].store(word & TOTAL_MASK, Ordering::Release);
                let changes = (word >> CHANGE_SHIFT).wrapping_add(1);
                let next = (changes << CHANGE_SHIFT)
                    | ((bucket as u64) << BUCKET_SHIFT)
                    | (word & TOTAL_MASK);
                match self.retries.0.compare_exchange(
                    word,
                    next,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    // A retry was allowed meanwhile: the mark must include it.
                    Err(actual) => word = actual,
                }
            }
        }
        self.epoch.store(current.max(epoch), Ordering::Release);
        self.advancing.store(false, Ordering::Release);
        #[cfg(feature = "metrics")]
        if let Some(gauge) = self.balance_gauge.get() {
            gauge.set(self.balance());
        }
    }
}

impl Epochs for BudgetState {
    fn ticker(&self) -> Option<&Ticker> {
        self.ticker.as_ref()
    }

    fn advance_to(&self, epoch: u64) {
        BudgetState::advance_to(self, epoch);
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn activity(&self) -> u64 {
        self.total_deposits()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// 10% per request and a reserve of `reserve` tokens, no timer.
    fn budget(ratio_units: u64, reserve: u64) -> BudgetState {
        BudgetState::new(ratio_units, reserve * UNIT, 2, BUCKETS, None)
    }

    #[test]
    fn retries_are_a_share_of_requests_plus_the_reserve() {
        let b = budget(100, 2);
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw(), "the reserve is spent");
        for stripe in 0..10 {
            b.deposit(stripe);
        }
        assert!(b.withdraw(), "10 requests at 10% make one retry");
        assert!(!b.withdraw());
        assert_eq!(b.refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn deposits_and_retries_expire_with_their_bucket() {
        let b = budget(1000, 0);
        b.deposit(0);
        b.deposit(0);
        b.advance_to(5);
        assert!(b.withdraw());
        // Epoch 10 retires the bucket of epoch 0, with its two deposits: the window now has
        // one retry (epoch 5) and nothing to pay for it.
        b.advance_to(10);
        assert!(!b.withdraw());
        b.deposit(1);
        b.deposit(1);
        assert!(b.withdraw(), "2 new tokens, 1 used by the retry at epoch 5");
        assert!(!b.withdraw());
        // At epoch 15 the retry of epoch 5 has expired, and frees a token of epoch 10.
        b.advance_to(15);
        assert!(b.withdraw());
        assert!(!b.withdraw());
        // At epoch 20 the deposits of epoch 10 have expired; the retry of epoch 15 has not.
        b.advance_to(20);
        assert!(!b.withdraw());
        b.deposit(0);
        b.deposit(0);
        assert!(
            b.withdraw(),
            "2 new tokens, 1 used by the retry at epoch 15"
        );
        assert!(!b.withdraw());
        b.advance_to(1_000);
        assert!(!b.withdraw(), "a jump past the window leaves nothing");
    }

    #[test]
    fn fractional_ratios_accumulate_exactly() {
        let b = budget(250, 0); // a quarter of a token per request
        for _ in 0..3 {
            b.deposit(0);
        }
        assert!(!b.withdraw(), "0.75 tokens");
        b.deposit(0);
        assert!(b.withdraw(), "1 token");
    }

    #[test]
    fn concurrent_withdrawals_never_exceed_the_budget() {
        use std::sync::Arc;
        for _ in 0..50 {
            let b = Arc::new(budget(100, 0));
            for _ in 0..1_000 {
                b.deposit(0); // 100 tokens
            }
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let b = Arc::clone(&b);
                    std::thread::spawn(move || (0..100).filter(|_| b.withdraw()).count())
                })
                .collect();
            let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
            assert_eq!(granted, 100);
        }
    }
}
