//! [`ServiceBuilderExt`]: this crate's layers as methods on tower's `ServiceBuilder`.
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, service_fn};
//! use tower_firebreak::ServiceBuilderExt;
//! use tower_firebreak::error::BoxError;
//!
//! use tower_firebreak::circuit_breaker::CircuitBreakerLayer;
//!
//! # fn main() -> Result<(), tower_firebreak::error::ConfigError> {
//! let breaker = CircuitBreakerLayer::builder().consecutive_failures(5).build()?;
//! let handle = breaker.handle(); // for metrics and manual overrides
//! let svc = ServiceBuilder::new()
//!     .deadline(Duration::from_secs(2))?
//!     .circuit_breaker(breaker)
//!     .timeout_attempt(Duration::from_millis(300))?
//!     .service(service_fn(|x: u32| async move { Ok::<_, BoxError>(x) }));
//! # let _ = svc;
//! # Ok(())
//! # }
//! ```
//!
//! Each method checks its settings and returns `Result<ServiceBuilder<_>, ConfigError>`, so a
//! chain reads top to bottom with `?` and a bad value is an error where the stack is built,
//! never a panic. The trait is sealed: it is implemented for `ServiceBuilder` only, so new
//! methods can be added without breaking anyone.

use std::time::Duration;

use tower::ServiceBuilder;
use tower::layer::util::Stack;

use crate::circuit_breaker::CircuitBreakerLayer;
use crate::error::ConfigError;
use crate::load_shed::LoadShedLayer;
use crate::retry::RetryLayer;
use crate::timeout::{DeadlineLayer, TimeoutLayer};

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// Adds this crate's layers to a [`ServiceBuilder`]. Layers added first are outermost.
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// Gives each request a deadline `budget` after it arrives, visible to every layer below
    /// and enforced over all of them. See [`DeadlineLayer`].
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroDuration`] if `budget` is zero.
    fn deadline(
        self,
        budget: Duration,
    ) -> Result<ServiceBuilder<Stack<DeadlineLayer, L>>, ConfigError>;

    /// Bounds each attempt by `timeout` and by the time left before the request's deadline.
    /// See [`TimeoutLayer`].
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroDuration`] if `timeout` is zero.
    fn timeout_attempt(
        self,
        timeout: Duration,
    ) -> Result<ServiceBuilder<Stack<TimeoutLayer, L>>, ConfigError>;

    /// Puts calls behind the circuit breaker `layer`, built (and checked) with
    /// [`CircuitBreakerLayer::builder`]. Takes the layer rather than its settings so that you
    /// can keep its [`handle`](CircuitBreakerLayer::handle).
    fn circuit_breaker<C>(
        self,
        layer: CircuitBreakerLayer<C>,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer<C>, L>>;

    /// Retries failed calls as `layer` says, built (and checked) with
    /// [`RetryLayer::builder`]. Takes the layer rather than its settings so that you can keep
    /// its [`budget`](RetryLayer::budget).
    fn retry_with<P, R>(
        self,
        layer: RetryLayer<P, R>,
    ) -> ServiceBuilder<Stack<RetryLayer<P, R>, L>>;

    /// Rejects calls beyond `layer`'s concurrency limit with
    /// [`Overloaded`](crate::load_shed::Overloaded), built (and checked) with
    /// [`LoadShedLayer::builder`]. Takes the layer so that several stacks can share its limit.
    /// (Not `load_shed`: tower's `ServiceBuilder` has an inherent method of that name.)
    fn load_shed_with(self, layer: LoadShedLayer) -> ServiceBuilder<Stack<LoadShedLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn deadline(
        self,
        budget: Duration,
    ) -> Result<ServiceBuilder<Stack<DeadlineLayer, L>>, ConfigError> {
        Ok(self.layer(DeadlineLayer::new(budget)?))
    }

    fn timeout_attempt(
        self,
        timeout: Duration,
    ) -> Result<ServiceBuilder<Stack<TimeoutLayer, L>>, ConfigError> {
        Ok(self.layer(TimeoutLayer::new(timeout)?))
    }

    fn circuit_breaker<C>(
        self,
        layer: CircuitBreakerLayer<C>,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer<C>, L>> {
        self.layer(layer)
    }

    fn retry_with<P, R>(
        self,
        layer: RetryLayer<P, R>,
    ) -> ServiceBuilder<Stack<RetryLayer<P, R>, L>> {
        self.layer(layer)
    }

    fn load_shed_with(self, layer: LoadShedLayer) -> ServiceBuilder<Stack<LoadShedLayer, L>> {
        self.layer(layer)
    }
}
