//! Loom stand-ins for the types the primitives use that loom has no model of.
//!
//! `tokio::sync::Notify`, `tokio::sync::Semaphore` and `parking_lot::Mutex` are built on the
//! standard library's atomics, so loom could neither interleave their steps nor see the
//! ordering they give. The stand-ins below are built on loom's own `Mutex` and atomics and
//! follow tokio's documented semantics for exactly the calls the primitives make, no more. The
//! loom tests therefore check our logic on top of those documented semantics; tokio's own
//! primitives are loom-tested by tokio. `futures::task::AtomicWaker` is replaced by
//! `loom::future::AtomicWaker`, loom's model of the same register-then-wake protocol, behind
//! the same method names.
//!
//! Only compiled with `--cfg arcp_loom`.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use loom::sync::{
    atomic::{AtomicUsize, Ordering},
    MutexGuard,
};

/// `parking_lot::Mutex`: `lock` returns the guard (no poisoning).
pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(loom::sync::Mutex::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0
            .lock()
            .expect("a loom test panicked holding the lock")
    }
}

/// `futures::task::AtomicWaker`: `register` takes the waker by reference.
#[derive(Default)]
pub(crate) struct AtomicWaker(loom::future::AtomicWaker);

impl AtomicWaker {
    pub(crate) fn new() -> Self {
        AtomicWaker(loom::future::AtomicWaker::new())
    }

    pub(crate) fn register(&self, waker: &Waker) {
        self.0.register_by_ref(waker);
    }

    pub(crate) fn wake(&self) {
        self.0.wake();
    }
}

/// `tokio::sync::Notify`, for `notified`, `Notified::enable` and `notify_waiters` only.
///
/// The documented semantics modelled (tokio 1.x, `Notify::notify_waiters` and
/// `Notified::enable`):
/// - `notify_waiters` wakes every `Notified` that exists when it is called, whether or not it
///   was polled or enabled yet ("the `Notified` future is guaranteed to receive wakeups from
///   `notify_waiters()` as soon as it has been created"), and stores no permit: a `Notified`
///   created after the call does not complete because of it.
/// - `enable` returns `true` if the future is already notified and has no other effect on
///   `notify_waiters` wake-ups.
/// - Ordering, as tokio 1.x does it: creating a `Notified` loads the call count (`Acquire`),
///   without the lock; `notify_waiters` increments it (`Release` or stronger) with the waiter
///   list locked; a poll or `enable` loads it first without the lock and then again with it.
///   So a `Notified` that sees a call acquires what the notifier did before it, and nothing
///   more is ordered than tokio orders.
pub(crate) struct Notify {
    calls: AtomicUsize,
    waiters: loom::sync::Mutex<Waiters>,
}

#[derive(Default)]
struct Waiters {
    next_id: usize,
    /// Enabled or polled `Notified`s still waiting, with the waker of their last poll.
    list: Vec<(usize, Option<Waker>)>,
}

impl Default for Notify {
    fn default() -> Self {
        Notify {
            calls: AtomicUsize::new(0),
            waiters: loom::sync::Mutex::new(Waiters::default()),
        }
    }
}

impl Notify {
    pub(crate) fn notified(&self) -> Notified<'_> {
        Notified {
            notify: self,
            calls: self.calls.load(Ordering::Acquire),
            id: None,
            done: false,
        }
    }

    pub(crate) fn notify_waiters(&self) {
        let woken = {
            let mut waiters = self.waiters.lock().unwrap();
            self.calls.fetch_add(1, Ordering::Release);
            std::mem::take(&mut waiters.list)
        };
        for waker in woken.into_iter().filter_map(|(_, waker)| waker) {
            waker.wake();
        }
    }
}

/// `tokio::sync::futures::Notified`.
pub(crate) struct Notified<'a> {
    notify: &'a Notify,
    /// `notify_waiters` calls made before this future was created.
    calls: usize,
    /// Its place in the waiter list once enabled or polled.
    id: Option<usize>,
    done: bool,
}

impl Notified<'_> {
    pub(crate) fn enable(self: Pin<&mut Self>) -> bool {
        self.get_mut().poll_with(None)
    }

    /// Whether the future is notified; if not, it is in the waiter list with `waker`.
    fn poll_with(&mut self, waker: Option<&Waker>) -> bool {
        // A `notify_waiters` call since creation took the list, with any entry of this future.
        if self.done || self.notify.calls.load(Ordering::Acquire) != self.calls {
            self.done = true;
            self.id = None;
            return true;
        }
        let mut waiters = self.notify.waiters.lock().unwrap();
        if self.notify.calls.load(Ordering::Acquire) != self.calls {
            self.done = true;
            self.id = None;
            return true;
        }
        let id = *self.id.get_or_insert_with(|| {
            waiters.next_id += 1;
            waiters.next_id
        });
        let waker = waker.cloned();
        match waiters.list.iter_mut().find(|(entry, _)| *entry == id) {
            Some(entry) => {
                if waker.is_some() {
                    entry.1 = waker;
                }
            }
            None => waiters.list.push((id, waker)),
        }
        false
    }
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.get_mut().poll_with(Some(cx.waker())) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for Notified<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let mut waiters = self.notify.waiters.lock().unwrap();
            waiters.list.retain(|(entry, _)| *entry != id);
        }
    }
}

/// `tokio::sync::Semaphore`, for `new`, `acquire`, `add_permits` and `SemaphorePermit::forget`.
///
/// The documented semantics modelled: the semaphore is fair, permits going to `acquire` calls
/// in the order they were made (a waiting acquire keeps later ones out even when permits are
/// free); dropping a permit returns it and `forget` does not; dropping an `acquire` future gives
/// up its place; `add_permits` releases and a successful `acquire` acquires (the stand-in's
/// mutex). It is never closed, as ours is not.
pub(crate) struct Semaphore {
    state: loom::sync::Mutex<Permits>,
}

struct Permits {
    free: usize,
    next_id: usize,
    /// Waiting acquires, first come first: their id and the waker of their last poll.
    queue: VecDeque<(usize, Waker)>,
}

/// `tokio::sync::AcquireError`: returned only by a closed semaphore, so never here.
#[derive(Debug)]
pub(crate) struct AcquireError(());

/// `tokio::sync::SemaphorePermit`.
pub(crate) struct SemaphorePermit<'a> {
    semaphore: &'a Semaphore,
}

impl SemaphorePermit<'_> {
    pub(crate) fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for SemaphorePermit<'_> {
    fn drop(&mut self) {
        self.semaphore.add_permits(1);
    }
}

impl Semaphore {
    pub(crate) fn new(permits: usize) -> Self {
        Semaphore {
            state: loom::sync::Mutex::new(Permits {
                free: permits,
                next_id: 0,
                queue: VecDeque::new(),
            }),
        }
    }

    pub(crate) fn acquire(&self) -> Acquire<'_> {
        Acquire {
            semaphore: self,
            id: None,
        }
    }

    pub(crate) fn add_permits(&self, n: usize) {
        let mut state = self.state.lock().unwrap();
        state.free += n;
        if let Some((_, waker)) = state.queue.front() {
            waker.wake_by_ref();
        }
    }
}

/// The future of [`Semaphore::acquire`].
pub(crate) struct Acquire<'a> {
    semaphore: &'a Semaphore,
    /// Its place in the queue once it had to wait.
    id: Option<usize>,
}

impl<'a> Future for Acquire<'a> {
    type Output = Result<SemaphorePermit<'a>, AcquireError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut state = this.semaphore.state.lock().unwrap();
        let first = match this.id {
            None => state.queue.is_empty(),
            Some(id) => state.queue.front().map(|(front, _)| *front) == Some(id),
        };
        if first && state.free > 0 {
            state.free -= 1;
            if this.id.take().is_some() {
                state.queue.pop_front();
            }
            // Permits left over go on to the next in line.
            if state.free > 0 {
                if let Some((_, waker)) = state.queue.front() {
                    waker.wake_by_ref();
                }
            }
            return Poll::Ready(Ok(SemaphorePermit {
                semaphore: this.semaphore,
            }));
        }
        match this.id {
            Some(id) => {
                let entry = state
                    .queue
                    .iter_mut()
                    .find(|(entry, _)| *entry == id)
                    .expect("a waiting acquire is queued");
                entry.1 = cx.waker().clone();
            }
            None => {
                state.next_id += 1;
                let id = state.next_id;
                state.queue.push_back((id, cx.waker().clone()));
                this.id = Some(id);
            }
        }
        Poll::Pending
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let mut state = self.semaphore.state.lock().unwrap();
            state.queue.retain(|(entry, _)| *entry != id);
            if state.free > 0 {
                if let Some((_, waker)) = state.queue.front() {
                    waker.wake_by_ref();
                }
            }
        }
    }
}

/// Runs `test` under loom over every interleaving of its threads with at most `preemptions`
/// preemptions (switches away from a thread that could have gone on; `None`: no bound, every
/// interleaving), unless `LOOM_MAX_PREEMPTIONS` sets another bound. Most concurrency bugs need
/// two preemptions or fewer to show; the bound keeps a model check of three threads, or of
/// two that go round a wait loop, within seconds rather than hours.
#[cfg(test)]
pub(crate) fn check(preemptions: Option<usize>, test: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = preemptions;
    }
    // As `loom::model` does: `LOOM_LOG=info` reports how many interleavings were checked.
    let log = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("LOOM_LOG"))
        .with_test_writer()
        .without_time()
        .finish();
    tracing::subscriber::with_default(log, || builder.check(test));
}
