//! The error the retry layer adds.

use std::error::Error;
use std::fmt;

use crate::error::BoxError;

/// A failed call was not retried because the [`RetryBudget`](super::RetryBudget) was empty.
///
/// The retry layer would have tried again, but retries already make up the share of the
/// traffic the budget allows: the dependency is failing broadly, and more retries would only
/// add to its load. The last attempt's own error is the [`source`](Error::source), and
/// [`into_last_error`](Self::into_last_error) gives it back.
///
/// Other reasons not to retry (attempts used up, a request that cannot be cloned, a deadline
/// too close, an error that says to back off) return the last attempt's error unchanged.
pub struct BudgetExhausted {
    last: BoxError,
}

impl BudgetExhausted {
    pub(crate) fn new(last: BoxError) -> Self {
        BudgetExhausted { last }
    }

    /// The last attempt's error.
    pub fn last_error(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.last
    }

    /// The last attempt's error, owned.
    pub fn into_last_error(self) -> BoxError {
        self.last
    }
}

impl fmt::Debug for BudgetExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetExhausted")
            .field("last", &self.last)
            .finish()
    }
}

impl fmt::Display for BudgetExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "retry budget exhausted; last attempt: {}", self.last)
    }
}

impl Error for BudgetExhausted {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.last)
    }
}
