//! Running a session-level test against each kind of store: [`on_each_store!`] turns plain
//! `async fn` tests into one test per [`StoreKind`], and every [`super::TestServer`] such a
//! test starts keeps its state in that kind, without the test saying so.

use std::future::Future;

tokio::task_local! {
    /// The kind of store the running test's servers use; unset outside [`on_each_store!`].
    static STORE_KIND: StoreKind;
}

/// Where a [`super::TestServer`] keeps its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// The embedded memory stores, which a test may also look into.
    Memory,
    /// Redis stores on this test process's shared `redis-server`, each server under keys of
    /// its own: a deployment of one replica.
    Redis,
}

impl StoreKind {
    /// The kind the running test was started for; memory for a test not run by
    /// [`on_each_store!`].
    pub fn current() -> StoreKind {
        STORE_KIND
            .try_with(|kind| *kind)
            .unwrap_or(StoreKind::Memory)
    }

    /// Runs `test` with this kind as [`StoreKind::current`] (not for tasks it spawns).
    pub async fn scope<F: Future>(self, test: F) -> F::Output {
        STORE_KIND.scope(self, test).await
    }
}

/// For each `async fn` test named, a module of that name with one `#[tokio::test]` per
/// [`StoreKind`] (`NAME::memory`, `NAME::redis`) that runs it with its servers on that kind.
/// `multi_thread:` first runs them on a two-worker runtime.
///
/// ```ignore
/// on_each_store!(a_test, another_test);
/// on_each_store!(multi_thread: a_racing_test);
/// ```
// Each test crate that runs nothing on each store leaves it unused.
#[allow(unused_macros)]
macro_rules! on_each_store {
    (multi_thread: $($test:ident),* $(,)?) => {
        $crate::common::on_each_store!(
            @runtime (flavor = "multi_thread", worker_threads = 2); $($test),*
        );
    };
    ($($test:ident),* $(,)?) => {
        $crate::common::on_each_store!(@runtime (); $($test),*);
    };
    (@runtime $runtime:tt; $($test:ident),*) => {
        $(
            mod $test {
                #[tokio::test $runtime]
                async fn memory() {
                    $crate::common::StoreKind::Memory.scope(super::$test()).await
                }

                #[tokio::test $runtime]
                async fn redis() {
                    $crate::common::StoreKind::Redis.scope(super::$test()).await
                }
            }
        )*
    };
}

// As unused as the macro in those crates.
#[allow(unused_imports)]
pub(crate) use on_each_store;
