//! A fixed limit: never moves, costs no clock read.

use super::{LAYER, MAX_LIMIT};
use crate::error::ConfigError;

/// A limit that never moves: at most `max_concurrency` calls in flight.
///
/// The cheapest mode (no clock read, no sampling): use it when the capacity of what the layer
/// protects is known, such as a pool of connections or worker threads. Same as
/// [`LoadShedLayerBuilder::max_concurrency`](crate::load_shed::LoadShedLayerBuilder::max_concurrency).
///
/// ```
/// use tower_firebreak::load_shed::{Fixed, LoadShedLayer};
///
/// let layer = LoadShedLayer::builder().limit(Fixed::new(64)).build()?;
/// assert_eq!(layer.limit(), 64);
/// # Ok::<(), tower_firebreak::error::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    pub(crate) max_concurrency: u64,
}

impl Fixed {
    /// At most `max_concurrency` calls in flight, from 1 to 1,000,000 (checked by `build`).
    pub fn new(max_concurrency: u64) -> Fixed {
        Fixed { max_concurrency }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if (1..=MAX_LIMIT).contains(&self.max_concurrency) {
            Ok(())
        } else {
            Err(ConfigError::out_of_range(
                LAYER,
                "max_concurrency",
                self.max_concurrency,
                "from 1 to 1,000,000",
            ))
        }
    }
}
