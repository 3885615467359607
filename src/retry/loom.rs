//! Loom models of the retry budget's lock-free core: the real [`BudgetState`] on loom's
//! atomics (see `crate::sync`), under every interleaving loom can produce.
//!
//! Run them with `RUSTFLAGS="--cfg loom" cargo test --release --lib`. The property behind
//! all of them: a withdrawal is one compare-and-swap on the word that holds the retry count
//! and the current bucket, checked against that very word, so no two withdrawals can take
//! the same token, and a bucket change in between makes the stale one check again.

use loom::sync::Arc;
use loom::thread;

use super::budget::BudgetState;

/// Thousandths of a token per request, as the budget keeps them.
const UNIT: u64 = 1_000;

fn check(model: impl Fn() + Sync + Send + 'static) {
    loom::model::Builder::new().check(model);
}

/// For the three-thread model around a bucket change, which has too many interleavings to
/// explore them all in CI: every interleaving with at most three preemptions (loom's
/// recommended bound; most concurrency bugs need two).
fn check_bounded(model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(model);
}

/// Buckets in the models' window: the fewest there can be, so that a deposit expires after
/// two steps and loom has few interleavings to explore.
const BUCKETS: usize = 2;

/// A budget of one token per request and no reserve, with `requests` deposited.
fn budget_with(requests: u64) -> Arc<BudgetState> {
    let budget = BudgetState::new(UNIT, 0, 2, BUCKETS, None);
    for _ in 0..requests {
        budget.deposit(0);
    }
    Arc::new(budget)
}

/// **No overdraw.** One token, two threads withdraw at once: exactly one gets it.
#[test]
fn two_withdrawals_cannot_share_the_last_token() {
    check(|| {
        let budget = budget_with(1);
        let other = {
            let budget = Arc::clone(&budget);
            thread::spawn(move || budget.withdraw())
        };
        let mine = budget.withdraw();
        let theirs = other.join().unwrap();
        assert!(mine ^ theirs, "exactly one withdrawal succeeds");
    });
}

/// **Deposits only help.** No token at first; one thread deposits the request that pays for
/// one, two threads withdraw: at most one succeeds, and if none did, the token is still there.
#[test]
fn a_deposit_racing_withdrawals_grants_at_most_its_token() {
    check(|| {
        let budget = budget_with(0);
        let depositor = {
            let budget = Arc::clone(&budget);
            thread::spawn(move || budget.deposit(1))
        };
        let withdrawer = {
            let budget = Arc::clone(&budget);
            thread::spawn(move || budget.withdraw())
        };
        let mine = budget.withdraw();
        depositor.join().unwrap();
        let theirs = withdrawer.join().unwrap();
        assert!(!(mine && theirs), "one token, two retries");
        if !mine && !theirs {
            assert!(budget.withdraw(), "the deposit is not lost");
        }
    });
}

/// **A bucket change cannot be raced into an overdraw.** One token deposited in epoch 0; one
/// thread moves the window to epoch 2 (which expires that deposit) while two threads
/// withdraw. At most one withdrawal succeeds, and none after the move: the move either comes
/// after a withdrawal (which then counted against the live token) or before both (and there is
/// nothing left to take).
#[test]
fn withdrawals_racing_a_bucket_change_never_overdraw() {
    check_bounded(|| {
        let budget = budget_with(1);
        let mover = {
            let budget = Arc::clone(&budget);
            thread::spawn(move || budget.advance_to(2))
        };
        let withdrawer = {
            let budget = Arc::clone(&budget);
            thread::spawn(move || budget.withdraw())
        };
        let mine = budget.withdraw();
        mover.join().unwrap();
        let theirs = withdrawer.join().unwrap();
        assert!(!(mine && theirs), "one token, two retries");
        assert!(!budget.withdraw(), "the token expired with its bucket");
    });
}

/// **Two movers never lose a bucket.** Two threads move the window to epoch 1 at once while
/// one withdraws the one token deposited in epoch 0: the token is still live at epoch 1 (it
/// expires at epoch 2), so exactly one withdrawal of the two (this thread's, then a second
/// one after the moves) succeeds.
#[test]
fn concurrent_moves_keep_the_window_consistent() {
    check(|| {
        let budget = budget_with(1);
        let first = {
            let budget = Arc::clone(&budget);
            thread::spawn(move || budget.advance_to(1))
        };
        let second = {
            let budget = Arc::clone(&budget);
            thread::spawn(move || budget.advance_to(1))
        };
        let mine = budget.withdraw();
        first.join().unwrap();
        second.join().unwrap();
        // A mover that found the other moving returns at once; the other finished the move.
        assert_eq!(crate::ticker::Epochs::epoch(&*budget), 1);
        let after = budget.withdraw();
        assert!(mine ^ after, "the one token is taken exactly once");
    });
}
