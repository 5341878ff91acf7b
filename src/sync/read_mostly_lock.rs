//! [`ReadMostlyLock`]: an async read-write lock for state that is read on every frame and written rarely.
//!
//! Every emit of a job holds the job's emission state for reading across the log append, and
//! only a job ending or a subscriber attaching or leaving writes it. `async_lock`'s read guard
//! rings an event whenever the last reader leaves, and ringing it locks a mutex, so every emit
//! paid for a lock no writer was waiting on. A lock's reader pays one compare-and-swap to enter
//! and one subtraction to leave; it rings the [`Wakeup`] only when it is the last reader and a
//! writer is waiting for it.

use std::ops::{Deref, DerefMut};

use crate::sync::{
    primitives::{AtomicUsize, Ordering, UnsafeCell},
    wakeup::Wakeup,
};

/// The bit of `state` a writer holds; the bits below it count the readers inside.
const WRITER: usize = 1 << (usize::BITS - 1);

/// An async read-write lock: any number of readers, or one writer. A writer that has claimed
/// the lock keeps new readers out while it waits for those inside to leave, so a steady stream
/// of readers cannot starve it.
pub struct ReadMostlyLock<T> {
    state: AtomicUsize,
    /// Rung when a writer leaves, and when the last reader leaves while a writer waits.
    changed: Wakeup,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&T` to readers on several threads at once only while no writer is
// inside, and `&mut T` to one writer at a time, as `std::sync::RwLock` does.
unsafe impl<T: Send> Send for ReadMostlyLock<T> {}
unsafe impl<T: Send + Sync> Sync for ReadMostlyLock<T> {}

impl<T> ReadMostlyLock<T> {
    /// A lock around `value`.
    pub fn new(value: T) -> Self {
        ReadMostlyLock {
            state: AtomicUsize::new(0),
            changed: Wakeup::default(),
            value: UnsafeCell::new(value),
        }
    }

    /// Shared access, once no writer holds or has claimed the lock. Cancel-safe.
    ///
    /// The waits are boxed: this future is part of every emit's, and of every session task
    /// that may subscribe or unsubscribe, which would otherwise reserve room for them.
    pub async fn read(&self) -> ReadGuard<'_, T> {
        match self.try_read() {
            Some(guard) => guard,
            None => Box::pin(self.read_contended()).await,
        }
    }

    /// Exclusive access, once every reader inside has left. Cancel-safe: dropping the future
    /// while it waits for readers gives up the claim.
    pub async fn write(&self) -> WriteGuard<'_, T> {
        match self
            .state
            .compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => WriteGuard { lock: self },
            Err(_) => Box::pin(self.write_contended()).await,
        }
    }

    fn try_read(&self) -> Option<ReadGuard<'_, T>> {
        let mut state = self.state.load(Ordering::Relaxed);
        while state & WRITER == 0 {
            match self.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(ReadGuard { lock: self }),
                Err(now) => state = now,
            }
        }
        None
    }

    async fn read_contended(&self) -> ReadGuard<'_, T> {
        loop {
            self.changed.wait_until(|| self.writer_gone()).await;
            if let Some(guard) = self.try_read() {
                return guard;
            }
        }
    }

    async fn write_contended(&self) -> WriteGuard<'_, T> {
        loop {
            let state = self.state.load(Ordering::Relaxed);
            if state & WRITER != 0 {
                self.changed.wait_until(|| self.writer_gone()).await;
            } else if self
                .state
                .compare_exchange_weak(state, state | WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                break;
            }
        }
        // The guard owns the claim from here: dropped while waiting, it releases it.
        let guard = WriteGuard { lock: self };
        self.changed
            .wait_until(|| self.state.load(Ordering::Acquire) == WRITER)
            .await;
        guard
    }

    fn writer_gone(&self) -> bool {
        self.state.load(Ordering::Acquire) & WRITER == 0
    }
}

/// The value, for the guards. Under loom every access is recorded, so one not ordered after a
/// conflicting access is reported.
impl<T> ReadMostlyLock<T> {
    /// # Safety
    /// No writer may be inside, other than the caller's own guard.
    #[cfg(not(arcp_loom))]
    unsafe fn shared(&self) -> &T {
        unsafe { &*self.value.get() }
    }

    /// # Safety
    /// As the other `shared`.
    #[cfg(arcp_loom)]
    unsafe fn shared(&self) -> &T {
        self.value.with(|value| unsafe { &*value })
    }

    /// # Safety
    /// The caller's guard must be the only one inside.
    #[cfg(not(arcp_loom))]
    #[allow(clippy::mut_from_ref)]
    unsafe fn exclusive(&self) -> &mut T {
        unsafe { &mut *self.value.get() }
    }

    /// # Safety
    /// As the other `exclusive`.
    #[cfg(arcp_loom)]
    #[allow(clippy::mut_from_ref)]
    unsafe fn exclusive(&self) -> &mut T {
        self.value.with_mut(|value| unsafe { &mut *value })
    }
}

impl<T: Default> Default for ReadMostlyLock<T> {
    fn default() -> Self {
        ReadMostlyLock::new(T::default())
    }
}

/// Shared access to a [`ReadMostlyLock`]'s value.
pub struct ReadGuard<'a, T> {
    lock: &'a ReadMostlyLock<T>,
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: a reader is counted in `state`, so no writer is inside.
        unsafe { self.lock.shared() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        if self.lock.state.fetch_sub(1, Ordering::Release) == WRITER | 1 {
            self.lock.changed.notify();
        }
    }
}

/// Exclusive access to a [`ReadMostlyLock`]'s value.
pub struct WriteGuard<'a, T> {
    lock: &'a ReadMostlyLock<T>,
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the writer bit is held and no reader is inside (`ReadMostlyLock::write` waited).
        unsafe { self.lock.shared() }
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`, and this guard is the only one.
        unsafe { self.lock.exclusive() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.state.fetch_and(!WRITER, Ordering::Release);
        self.lock.changed.notify();
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    async fn pending<F: std::future::Future>(future: F) -> bool {
        tokio::time::timeout(Duration::from_millis(20), future)
            .await
            .is_err()
    }

    #[test]
    fn its_futures_hold_a_pointer_to_their_waits() {
        // Every emit's future holds a read's, and every session task may hold a write's.
        let lock = ReadMostlyLock::new(());
        assert!(std::mem::size_of_val(&lock.read()) <= 32);
        assert!(std::mem::size_of_val(&lock.write()) <= 32);
    }

    #[tokio::test]
    async fn readers_share_and_a_writer_waits_for_them() {
        let lock = ReadMostlyLock::new(0u32);
        let first = lock.read().await;
        let second = lock.read().await;
        assert_eq!(*first + *second, 0);
        assert!(pending(lock.write()).await);
        drop(first);
        assert!(pending(lock.write()).await);
        drop(second);
        *lock.write().await += 1;
        assert_eq!(*lock.read().await, 1);
    }

    #[tokio::test]
    async fn a_claiming_writer_keeps_new_readers_out() {
        let lock = Arc::new(ReadMostlyLock::new(0u32));
        let reader = lock.read().await;
        let writer = tokio::spawn({
            let lock = lock.clone();
            async move { *lock.write().await = 7 }
        });
        // Once the writer has claimed the lock, a new reader waits behind it.
        while lock.state.load(Ordering::Acquire) & WRITER == 0 {
            tokio::task::yield_now().await;
        }
        assert!(pending(lock.read()).await);
        drop(reader);
        writer.await.expect("the writer did not panic");
        assert_eq!(*lock.read().await, 7);
    }

    #[tokio::test]
    async fn a_dropped_write_gives_up_its_claim() {
        let lock = ReadMostlyLock::new(0u32);
        let reader = lock.read().await;
        assert!(pending(lock.write()).await);
        // The abandoned writer must not keep readers out.
        let again = lock.read().await;
        drop((reader, again));
        assert_eq!(lock.state.load(Ordering::Acquire), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_are_exclusive_under_contention() {
        // Writers update two fields in two steps with a yield between; a reader or another
        // writer getting in between would see them differ.
        let lock = Arc::new(ReadMostlyLock::new((0u64, 0u64)));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let lock = lock.clone();
                tokio::spawn(async move {
                    for _ in 0..500 {
                        if i % 2 == 0 {
                            let mut pair = lock.write().await;
                            pair.0 += 1;
                            tokio::task::yield_now().await;
                            pair.1 += 1;
                        } else {
                            let pair = lock.read().await;
                            assert_eq!(pair.0, pair.1, "a reader saw a write half done");
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("no waiter was left hanging")
                .expect("no task panicked");
        }
        assert_eq!(*lock.read().await, (2000, 2000));
        assert_eq!(lock.state.load(Ordering::Acquire), 0);
    }
}

/// Model checks over every interleaving, or every one within a preemption bound where there are
/// too many (see `loom_check`); `.ci/run` runs them as
/// `RUSTFLAGS="--cfg arcp_loom" cargo test --release --lib loom_`. The value is a loom
/// `UnsafeCell`, so a read or write not ordered after every conflicting access is reported as a
/// data race; a lost wake-up shows as a deadlock.
#[cfg(all(test, arcp_loom))]
mod loom_tests {
    use std::{
        future::Future,
        pin::pin,
        task::{Context, Poll},
    };

    use futures::task::noop_waker;
    use loom::{future::block_on, sync::Arc, thread};

    use super::*;
    use crate::sync::primitives::loom_check;

    fn read_pair(lock: &ReadMostlyLock<(usize, usize)>) -> (usize, usize) {
        block_on(async {
            let pair = lock.read().await;
            let first = pair.0;
            let second = pair.1;
            assert_eq!(first, second, "a reader saw a write half done");
            (first, second)
        })
    }

    #[test]
    fn loom_readers_never_see_a_write_half_done() {
        // Two readers and a writer: the writer may claim the lock with both, one or none
        // inside, and must wait for the last one to leave.
        loom_check(Some(3), || {
            let lock = Arc::new(ReadMostlyLock::new((0usize, 0usize)));
            let writer = thread::spawn({
                let lock = lock.clone();
                move || {
                    block_on(async {
                        let mut pair = lock.write().await;
                        pair.0 += 1;
                        pair.1 += 1;
                    })
                }
            });
            let reader = thread::spawn({
                let lock = lock.clone();
                move || read_pair(&lock)
            });
            read_pair(&lock);
            writer.join().unwrap();
            reader.join().unwrap();
            assert_eq!(read_pair(&lock), (1, 1));
            assert_eq!(lock.state.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn loom_writers_exclude_each_other_and_readers() {
        loom_check(Some(3), || {
            let lock = Arc::new(ReadMostlyLock::new((0usize, 0usize)));
            let write = |lock: Arc<ReadMostlyLock<(usize, usize)>>| {
                move || {
                    block_on(async {
                        let mut pair = lock.write().await;
                        let seen = pair.0;
                        pair.0 = seen + 1;
                        pair.1 += 1;
                    })
                }
            };
            let first = thread::spawn(write(lock.clone()));
            let second = thread::spawn(write(lock.clone()));
            read_pair(&lock);
            first.join().unwrap();
            second.join().unwrap();
            assert_eq!(read_pair(&lock), (2, 2), "a write was lost");
            assert_eq!(lock.state.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn loom_a_dropped_write_gives_up_its_claim() {
        // A writer claims the lock while a reader is inside, then is dropped while it waits:
        // a reader that arrives meanwhile must get in, and the lock ends free.
        loom_check(Some(3), || {
            let lock = Arc::new(ReadMostlyLock::new((0usize, 0usize)));
            let inside = block_on(lock.read());
            let arriving = thread::spawn({
                let lock = lock.clone();
                move || read_pair(&lock)
            });
            {
                let waker = noop_waker();
                let write = pin!(lock.write());
                assert!(write.poll(&mut Context::from_waker(&waker)).is_pending());
            }
            drop(inside);
            arriving.join().unwrap();
            assert_eq!(lock.state.load(Ordering::Relaxed), 0);
            let waker = noop_waker();
            let write = pin!(lock.write());
            assert!(matches!(
                write.poll(&mut Context::from_waker(&waker)),
                Poll::Ready(_)
            ));
        });
    }

    #[test]
    fn loom_a_write_dropped_as_the_last_reader_leaves_gives_up_its_claim() {
        // A reader enters and leaves on its own thread while a write is polled once and
        // dropped, done or not: the claim may be given up before or after the reader's leaving
        // rang the wake-up, and either way the lock ends free.
        loom_check(Some(3), || {
            let lock = Arc::new(ReadMostlyLock::new((0usize, 0usize)));
            let passing = thread::spawn({
                let lock = lock.clone();
                move || read_pair(&lock)
            });
            {
                let waker = noop_waker();
                let write = pin!(lock.write());
                if let Poll::Ready(mut pair) = write.poll(&mut Context::from_waker(&waker)) {
                    pair.0 += 1;
                    pair.1 += 1;
                }
            }
            read_pair(&lock);
            passing.join().unwrap();
            assert_eq!(lock.state.load(Ordering::Relaxed), 0);
        });
    }
}
