//! Concurrency primitives the frame path uses on every frame, cheaper than the stock ones in
//! the one way that matters there (see each module for what was measured).
//!
//! - [`wakeup`]: [`wakeup::Wakeup`], a notification that costs one atomic load when nobody
//!   waits.
//! - [`read_mostly_lock`]: [`read_mostly_lock::ReadMostlyLock`], an async read-write lock whose
//!   readers pay one compare-and-swap and one subtraction.
//! - [`primitives`]: the atomics, cells, mutex and tokio types they are built from, which
//!   `--cfg arcp_loom` swaps for loom's models so `loom` can check them.

pub(crate) mod primitives;
pub(crate) mod read_mostly_lock;
pub(crate) mod wakeup;
