//! What a timeout layer reports when it fails a call.

use std::time::Duration;

#[cfg(feature = "metrics")]
use crate::observe::metrics::TimeoutMetrics;
use crate::observe::{Event, Observer};

/// A timeout layer's name, listener and metrics, shared with its response futures.
#[derive(Debug)]
pub(crate) struct TimeoutObserver {
    observer: Observer,
    #[cfg(feature = "metrics")]
    metrics: TimeoutMetrics,
}

impl TimeoutObserver {
    pub(crate) fn new(observer: Observer) -> TimeoutObserver {
        TimeoutObserver {
            #[cfg(feature = "metrics")]
            metrics: TimeoutMetrics::new(&observer),
            observer,
        }
    }
}

/// An attempt outlived `timeout`.
pub(crate) fn timed_out(observer: Option<&TimeoutObserver>, timeout: Duration) {
    let name = observer.map_or("", |o| o.observer.name());
    tracing::debug!(name, ?timeout, "attempt timed out");
    if let Some(o) = observer {
        #[cfg(feature = "metrics")]
        o.metrics.elapsed.increment(1);
        o.observer.emit(&Event::TimedOut { name, timeout });
    }
}

/// The request's deadline ended a call (or had passed before it).
pub(crate) fn deadline_exceeded(observer: Option<&TimeoutObserver>) {
    let name = observer.map_or("", |o| o.observer.name());
    tracing::debug!(name, "deadline exceeded");
    if let Some(o) = observer {
        #[cfg(feature = "metrics")]
        o.metrics.deadline.increment(1);
        o.observer.emit(&Event::DeadlineExceeded { name });
    }
}
