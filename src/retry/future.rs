//! The retry layer's response future: attempt, decide, wait, attempt again.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::{Sleep, sleep};
use tower::Service;

use super::Local;
use super::error::BudgetExhausted;
use super::policy::{CloneRequest, Decision, RetryPolicy, must_not_retry};
use crate::error::{BoxError, ErrorKind};
use crate::timeout::deadline;

pin_project! {
    /// Response future of [`Retry`](super::Retry).
    ///
    /// Resolves to the first result the policy accepts, or to the last attempt's result when
    /// no further attempt is allowed (see [`RetryLayer`](super::RetryLayer) for when), or to
    /// a boxed [`BudgetExhausted`] when only the retry budget stood in the way. Dropping it
    /// cancels the attempt in flight and any retry to come.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<S, Request, P, R>
    where
        S: Service<Request>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        // The copy the next attempt will send; `None` once no further attempt may be made.
        spare: Option<Request>,
        attempt: u32,
        previous_delay: Option<Duration>,
        local: Arc<Local>,
        policy: P,
        cloner: R,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Attempting { #[pin] response: F },
        // Boxed: only a retry pays for the timer's room, not every call's future.
        Waiting { delay: Pin<Box<Sleep>> },
        // Waiting for the service to be ready for the next attempt.
        Readying,
    }
}

/// What follows an attempt.
enum Next {
    Return,
    Retry(Duration),
    /// The policy wanted a retry, and only the budget refused.
    OutOfBudget,
}

impl<S, Request, P, R> ResponseFuture<S, Request, P, R>
where
    S: Service<Request>,
{
    pub(crate) fn new(
        response: S::Future,
        service: S,
        spare: Option<Request>,
        local: Arc<Local>,
        policy: P,
        cloner: R,
    ) -> Self {
        ResponseFuture {
            state: State::Attempting { response },
            service,
            spare,
            attempt: 1,
            previous_delay: None,
            local,
            policy,
            cloner,
        }
    }
}

impl<S, Request, P, R> Future for ResponseFuture<S, Request, P, R>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    P: RetryPolicy<S::Response>,
    R: CloneRequest<Request>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Attempting { response } => {
                    let result = ready!(response.poll(cx)).map_err(Into::into);
                    let next = next_step(
                        &result,
                        *this.attempt,
                        this.spare.is_some(),
                        *this.previous_delay,
                        this.local,
                        this.policy,
                    );
                    match next {
                        Next::Return => return Poll::Ready(result),
                        Next::OutOfBudget => {
                            this.local.settings.budget_exhausted(*this.attempt);
                            return Poll::Ready(
                                result.map_err(|err| BoxError::from(BudgetExhausted::new(err))),
                            );
                        }
                        Next::Retry(delay) => {
                            this.local.settings.retry_scheduled(*this.attempt, delay);
                            *this.previous_delay = Some(delay);
                            if delay.is_zero() {
                                this.state.set(State::Readying);
                            } else {
                                this.state.set(State::Waiting {
                                    delay: Box::pin(sleep(delay)),
                                });
                            }
                        }
                    }
                }
                StateProj::Waiting { delay } => {
                    ready!(delay.as_mut().poll(cx));
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    ready!(this.service.poll_ready(cx)).map_err(Into::into)?;
                    // `next_step` only retries while a spare copy exists.
                    let Some(request) = this.spare.take() else {
                        unreachable!("a retry is only scheduled with a copy of the request")
                    };
                    *this.attempt += 1;
                    this.local.settings.count_attempt();
                    if *this.attempt < this.local.settings.max_attempts {
                        *this.spare = this.cloner.clone_request(&request);
                    }
                    let response = this.service.call(request);
                    this.state.set(State::Attempting { response });
                }
            }
        }
    }
}

/// Decides what follows attempt number `attempt`. The order of the checks matters: the
/// budget is asked last, so that a retry that would not happen anyway takes no token.
#[inline]
fn next_step<T, P: RetryPolicy<T>>(
    result: &Result<T, BoxError>,
    attempt: u32,
    have_copy: bool,
    previous_delay: Option<Duration>,
    local: &Local,
    policy: &P,
) -> Next {
    let settings = &local.settings;
    let decision = policy.decide(result);
    if decision == Decision::Return {
        return Next::Return;
    }
    if let Err(err) = result
        && must_not_retry(err)
    {
        return Next::Return;
    }
    if attempt >= settings.max_attempts || !have_copy {
        return Next::Return;
    }
    let hint = match (decision, result) {
        (Decision::RetryAfter(delay), _) => Some(delay),
        (_, Err(err)) => ErrorKind::retry_after(&**err),
        _ => None,
    };
    let delay = match hint {
        Some(hint) => hint.min(settings.max_retry_after),
        None => {
            // Seeding a generator costs more than the rest of the decision: only jitter needs
            // one.
            let seed = if settings.backoff.is_random() {
                local.next_seed()
            } else {
                0
            };
            let mut rng = SmallRng::seed_from_u64(seed);
            settings.backoff.delay(attempt, previous_delay, &mut rng)
        }
    };
    // An attempt that would start after the deadline cannot succeed: do not start it.
    if let Some(left) = deadline::remaining()
        && left <= delay
    {
        return Next::Return;
    }
    match &settings.budget {
        Some(budget) if !budget.state.withdraw() => Next::OutOfBudget,
        _ => Next::Retry(delay),
    }
}
