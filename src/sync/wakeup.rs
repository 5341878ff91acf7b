//! [`Wakeup`]: a wake-up that costs one atomic load when nobody waits.
//!
//! The hot path of the gateway signals on every frame: an append wakes the session's reader,
//! and the reader's progress wakes jobs throttled behind it. Most of the time nobody is
//! waiting, yet `tokio::sync::Notify::notify_waiters` (and a `watch` channel built on it)
//! locks a mutex on every call. A [`Wakeup`] counts its waiters and skips the notification
//! when there are none.

use std::pin::pin;

use crate::sync::primitives::{fence, AtomicUsize, Notify, Ordering};

/// Wakes every task waiting in [`Wakeup::wait_until`] when [`Wakeup::notify`] is called.
#[derive(Default)]
pub struct Wakeup {
    notify: Notify,
    waiters: AtomicUsize,
}

impl Wakeup {
    /// Wakes the current waiters so they re-check their condition. Call after changing the
    /// state they check.
    pub fn notify(&self) {
        // Pairs with the fence in `wait_until`: either this load sees the waiter, or the
        // waiter's check sees the state changed before this call.
        fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::Relaxed) > 0 {
            self.notify.notify_waiters();
        }
    }

    /// Returns once `ready` holds, re-checking it after every [`Wakeup::notify`].
    /// Cancel-safe: dropping the future unregisters the waiter.
    pub async fn wait_until(&self, mut ready: impl FnMut() -> bool) {
        if ready() {
            return;
        }
        let _registered = Registered::new(&self.waiters);
        fence(Ordering::SeqCst);
        loop {
            let mut notified = pin!(self.notify.notified());
            notified.as_mut().enable();
            if ready() {
                return;
            }
            notified.await;
        }
    }
}

/// Counts a waiter for as long as it waits, however its wait ends.
struct Registered<'a>(&'a AtomicUsize);

impl<'a> Registered<'a> {
    fn new(waiters: &'a AtomicUsize) -> Self {
        waiters.fetch_add(1, Ordering::SeqCst);
        Registered(waiters)
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicBool, AtomicU64},
            Arc,
        },
        time::Duration,
    };

    use super::*;

    #[tokio::test]
    async fn a_waiter_wakes_on_the_change_it_waits_for() {
        let signal = Arc::new(Wakeup::default());
        let value = Arc::new(AtomicU64::new(0));
        let waiter = tokio::spawn({
            let (signal, value) = (signal.clone(), value.clone());
            async move {
                signal
                    .wait_until(|| value.load(Ordering::Acquire) >= 3)
                    .await
            }
        });
        for n in 1..=3 {
            tokio::task::yield_now().await;
            value.store(n, Ordering::Release);
            signal.notify();
        }
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the waiter woke")
            .expect("the waiter did not panic");
        assert_eq!(signal.waiters.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_wake_up_is_lost_between_check_and_wait() {
        // Many rounds of a setter racing a waiter on two threads: a lost wake-up hangs a round.
        for _ in 0..2000 {
            let signal = Arc::new(Wakeup::default());
            let flag = Arc::new(AtomicBool::new(false));
            let setter = tokio::spawn({
                let (signal, flag) = (signal.clone(), flag.clone());
                async move {
                    flag.store(true, Ordering::Release);
                    signal.notify();
                }
            });
            tokio::time::timeout(
                Duration::from_secs(5),
                signal.wait_until(|| flag.load(Ordering::Acquire)),
            )
            .await
            .expect("a wake-up was lost");
            setter.await.expect("the setter did not panic");
        }
    }

    #[tokio::test]
    async fn a_dropped_wait_unregisters() {
        let signal = Wakeup::default();
        let wait = signal.wait_until(|| false);
        assert!(tokio::time::timeout(Duration::from_millis(10), wait)
            .await
            .is_err());
        assert_eq!(signal.waiters.load(Ordering::SeqCst), 0);
        // With no waiter, notifying takes no lock and wakes nobody.
        signal.notify();
    }
}

/// Model checks over every interleaving, or every one within a preemption bound where there are
/// too many (see `loom_check`); `.ci/run` runs them as
/// `RUSTFLAGS="--cfg arcp_loom" cargo test --release --lib loom_`. A lost wake-up shows as loom
/// reporting a deadlock: every thread blocked.
#[cfg(all(test, arcp_loom))]
mod loom_tests {
    use std::{
        future::Future,
        pin::pin,
        task::{Context, Poll},
    };

    use futures::task::noop_waker;
    use loom::{
        future::block_on,
        sync::{
            atomic::{AtomicBool, AtomicUsize},
            Arc,
        },
        thread,
    };

    use super::*;
    use crate::sync::primitives::loom_check;

    /// A thread that sets `flag` and notifies `signal`.
    fn set_and_notify(signal: &Arc<Wakeup>, flag: &Arc<AtomicBool>) -> thread::JoinHandle<()> {
        let (signal, flag) = (signal.clone(), flag.clone());
        thread::spawn(move || {
            // Relaxed on purpose: the wake-up must not rely on the caller's ordering.
            flag.store(true, Ordering::Relaxed);
            signal.notify();
        })
    }

    #[test]
    fn loom_no_wake_up_is_lost_between_check_and_wait() {
        loom_check(None, || {
            let signal = Arc::new(Wakeup::default());
            let flag = Arc::new(AtomicBool::new(false));
            let setter = set_and_notify(&signal, &flag);
            block_on(signal.wait_until(|| flag.load(Ordering::Relaxed)));
            setter.join().unwrap();
            assert_eq!(signal.waiters.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn loom_a_waiter_sees_every_change_through_repeated_notifies() {
        // The waiter needs two changes, so it may go round its loop and wait again.
        loom_check(Some(3), || {
            let signal = Arc::new(Wakeup::default());
            let value = Arc::new(AtomicUsize::new(0));
            let setter = thread::spawn({
                let (signal, value) = (signal.clone(), value.clone());
                move || {
                    for _ in 0..2 {
                        value.fetch_add(1, Ordering::Relaxed);
                        signal.notify();
                    }
                }
            });
            block_on(signal.wait_until(|| value.load(Ordering::Relaxed) == 2));
            setter.join().unwrap();
            assert_eq!(signal.waiters.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn loom_two_waiters_are_both_woken() {
        loom_check(Some(3), || {
            let signal = Arc::new(Wakeup::default());
            let flag = Arc::new(AtomicBool::new(false));
            let other = thread::spawn({
                let (signal, flag) = (signal.clone(), flag.clone());
                move || block_on(signal.wait_until(|| flag.load(Ordering::Relaxed)))
            });
            let setter = set_and_notify(&signal, &flag);
            block_on(signal.wait_until(|| flag.load(Ordering::Relaxed)));
            setter.join().unwrap();
            other.join().unwrap();
            assert_eq!(signal.waiters.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn loom_a_dropped_wait_unregisters() {
        // The wait is abandoned after one poll while another thread changes the state and
        // notifies; however the two interleave, the count is back to zero.
        loom_check(None, || {
            let signal = Arc::new(Wakeup::default());
            let flag = Arc::new(AtomicBool::new(false));
            let setter = set_and_notify(&signal, &flag);
            {
                let waker = noop_waker();
                let mut wait = pin!(signal.wait_until(|| flag.load(Ordering::Relaxed)));
                let _ = wait.as_mut().poll(&mut Context::from_waker(&waker));
            }
            assert_eq!(signal.waiters.load(Ordering::Relaxed), 0);
            setter.join().unwrap();
            // Dropped while it waited, it left nothing behind for a later wait to trip on.
            let waker = noop_waker();
            let later = pin!(signal.wait_until(|| flag.load(Ordering::Relaxed)));
            assert_eq!(
                later.poll(&mut Context::from_waker(&waker)),
                Poll::Ready(())
            );
            assert_eq!(signal.waiters.load(Ordering::Relaxed), 0);
        });
    }
}
