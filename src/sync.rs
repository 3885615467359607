//! The atomics the lock-free state is built from: `std`'s normally, loom's when the crate is
//! built with `--cfg loom`, so that the loom models in the modules below explore every
//! interleaving of the real code.
//!
//! Run the models with `RUSTFLAGS="--cfg loom" cargo test --release --lib`.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};

/// Only off the hot paths (the load-shedding wait queue's list of waiters).
#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;

/// An atomic alone on its cache line (128 bytes covers adjacent-line prefetching), so that
/// threads writing neighbouring counters do not slow each other down.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);
