//! A service that fails its first calls, then succeeds; shared by the observability tests
//! (included with `#[path]`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tower::service_fn;
use tower_firebreak::error::BoxError;

/// The error the service fails with.
#[derive(Debug)]
pub(crate) struct Refused;

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("refused")
    }
}

impl std::error::Error for Refused {}

/// A service that fails its first `failures` calls with [`Refused`], then succeeds.
pub(crate) fn failing_first(
    failures: u32,
) -> impl tower::Service<(), Response = (), Error = BoxError, Future: Send> + Clone {
    let calls = Arc::new(AtomicU32::new(0));
    service_fn(move |_: ()| {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if call < failures {
                Err::<(), BoxError>(Box::new(Refused))
            } else {
                Ok(())
            }
        }
    })
}
