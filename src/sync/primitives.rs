//! What the hand-rolled primitives are built from, in one place so that `loom` can swap it.
//!
//! In a normal build these are re-exports of the standard, `futures`, `parking_lot` and
//! `tokio` types the primitives have always used: nothing here adds a wrapper or a call at
//! run time. Built with `RUSTFLAGS="--cfg arcp_loom"`, they are loom's models instead, and the
//! `loom_tests` next to [`super::wakeup`], [`super::read_mostly_lock`] and
//! [`crate::session::stream_control`] check those primitives over every interleaving (see
//! `.ci/run`). The cfg is ours rather than the usual `loom`, which would also switch tokio to
//! a build without `tokio::net` (see `Cargo.toml`).

#[cfg(not(arcp_loom))]
pub(crate) use std::{
    cell::UnsafeCell,
    sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize, Ordering},
};

#[cfg(not(arcp_loom))]
pub(crate) use futures::task::AtomicWaker;
#[cfg(not(arcp_loom))]
pub(crate) use parking_lot::Mutex;
#[cfg(not(arcp_loom))]
pub(crate) use tokio::sync::{Notify, Semaphore};

#[cfg(arcp_loom)]
pub(crate) use loom::{
    cell::UnsafeCell,
    sync::atomic::{fence, AtomicBool, AtomicU8, AtomicUsize, Ordering},
};

#[cfg(all(test, arcp_loom))]
pub(crate) use self::model::check as loom_check;
#[cfg(arcp_loom)]
pub(crate) use self::model::{AtomicWaker, Mutex, Notify, Semaphore};

#[cfg(arcp_loom)]
mod model;
