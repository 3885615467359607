//! [`LoadShedLayer`] and its builder.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::LoadShed;
use super::limit::Limiter;
use crate::error::ConfigError;

const LAYER: &str = "LoadShedLayer";

/// Rejects calls with [`Overloaded`](super::Overloaded) while `max_concurrency` calls are in
/// flight, instead of queueing them. Every service this layer wraps, and every clone of them,
/// shares one limit: build one layer per protected resource.
///
/// ```
/// use std::time::Duration;
/// use tower_firebreak::load_shed::LoadShedLayer;
///
/// let layer = LoadShedLayer::builder()
///     .max_concurrency(64)
///     .retry_after(Duration::from_secs(1))
///     .build()?;
/// assert_eq!(layer.max_concurrency(), 64);
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct LoadShedLayer {
    limiter: Arc<Limiter>,
    retry_after: Duration,
}

impl fmt::Debug for LoadShedLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedLayer")
            .field("max_concurrency", &self.limiter.limit())
            .field("in_flight", &self.limiter.in_flight())
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl LoadShedLayer {
    /// Starts building a load-shedding layer; `max_concurrency` must be set.
    pub fn builder() -> LoadShedLayerBuilder {
        LoadShedLayerBuilder {
            max_concurrency: None,
            retry_after: Duration::from_secs(1),
        }
    }

    /// The most calls in flight at once.
    pub fn max_concurrency(&self) -> u64 {
        self.limiter.limit()
    }

    /// Calls in flight now, through every service of this layer.
    pub fn in_flight(&self) -> u64 {
        self.limiter.in_flight()
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> LoadShed<S> {
        LoadShed::new(inner, Arc::clone(&self.limiter), self.retry_after)
    }
}

/// Builder of [`LoadShedLayer`]. Every setting is checked by [`build`](Self::build).
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct LoadShedLayerBuilder {
    max_concurrency: Option<u64>,
    retry_after: Duration,
}

impl LoadShedLayerBuilder {
    /// The most calls in flight at once, from 1 to 1,000,000. Required.
    pub fn max_concurrency(mut self, limit: u64) -> Self {
        self.max_concurrency = Some(limit);
        self
    }

    /// The hint a rejection carries of when to come back
    /// ([`Overloaded::retry_after`](super::Overloaded::retry_after)), greater than zero and at
    /// most 1 hour; default 1 s.
    pub fn retry_after(mut self, hint: Duration) -> Self {
        self.retry_after = hint;
        self
    }

    /// Checks the settings and builds the layer.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Missing`] without `max_concurrency`, [`ConfigError::OutOfRange`] for a
    /// limit outside 1 to 1,000,000 or a hint above 1 hour, [`ConfigError::ZeroDuration`] for
    /// a zero hint.
    pub fn build(self) -> Result<LoadShedLayer, ConfigError> {
        let limit = self.max_concurrency.ok_or(ConfigError::Missing {
            layer: LAYER,
            setting: "max_concurrency",
        })?;
        if !(1..=1_000_000).contains(&limit) {
            return Err(ConfigError::out_of_range(
                LAYER,
                "max_concurrency",
                limit,
                "from 1 to 1,000,000",
            ));
        }
        if self.retry_after.is_zero() {
            return Err(ConfigError::ZeroDuration {
                layer: LAYER,
                setting: "retry_after",
            });
        }
        if self.retry_after > Duration::from_secs(3600) {
            return Err(ConfigError::out_of_range(
                LAYER,
                "retry_after",
                format!("{:?}", self.retry_after),
                "at most 1 hour",
            ));
        }
        Ok(LoadShedLayer {
            limiter: Arc::new(Limiter::new(limit)),
            retry_after: self.retry_after,
        })
    }
}
