//! An I/O object whose next write can be held back for a while: how a refusal that is decided
//! inside a synchronous callback (the WebSocket upgrade's) is still sent late.
//!
//! tungstenite checks the upgrade request in a callback and writes its HTTP refusal as soon as
//! the callback returns, so the callback cannot wait out a [`Penalty`] itself. It hands the
//! penalty to the connection's [`Hold`] instead, and the write of the refusal waits here. After
//! the upgrade a write costs one atomic load more than the socket's own.

use std::{
    future::Future,
    io::{self, IoSlice},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
};

use parking_lot::Mutex;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};

use crate::auth::throttle::Penalty;

/// Where a penalty waits until the connection's next write picks it up.
#[derive(Default)]
pub(crate) struct Hold {
    armed: AtomicBool,
    penalty: Mutex<Option<Penalty>>,
}

impl Hold {
    /// Holds the connection's next write until `penalty` is over; nothing if none applies.
    pub(crate) fn set(&self, penalty: Penalty) {
        if penalty.applies() {
            *self.penalty.lock() = Some(penalty);
            self.armed.store(true, Ordering::Release);
        }
    }
}

/// Wraps an I/O object so that writes wait while its [`Hold`] holds a penalty.
pub(crate) struct HeldWrites<S> {
    inner: S,
    hold: Arc<Hold>,
    /// The penalty being waited out, and its timer.
    waiting: Option<(Pin<Box<Sleep>>, Penalty)>,
}

impl<S> HeldWrites<S> {
    /// Wraps `inner`.
    pub(crate) fn new(inner: S) -> Self {
        HeldWrites {
            inner,
            hold: Arc::default(),
            waiting: None,
        }
    }

    /// The hold a callback sets.
    pub(crate) fn hold(&self) -> Arc<Hold> {
        self.hold.clone()
    }

    /// The wrapped object.
    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Ready once no penalty holds writes back.
    fn poll_held(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // A load, not a swap, on the path every write takes.
        if self.hold.armed.load(Ordering::Acquire) {
            self.hold.armed.store(false, Ordering::Relaxed);
            if let Some(penalty) = self.hold.penalty.lock().take() {
                if let Some(until) = penalty.until() {
                    self.waiting = Some((Box::pin(tokio::time::sleep_until(until)), penalty));
                }
            }
        }
        if let Some((sleep, _)) = &mut self.waiting {
            ready!(sleep.as_mut().poll(cx));
            self.waiting = None;
        }
        Poll::Ready(())
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeldWrites<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_held(cx));
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_held(cx));
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeldWrites<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::{io::AsyncWriteExt, time::Instant};

    use super::*;
    use crate::{
        auth::throttle::{AuthThrottle, Check, Failure, FailureLimits},
        error::ErrorCode,
    };

    #[tokio::test(start_paused = true)]
    async fn a_write_waits_out_the_penalty_set_on_its_hold() {
        let throttle = AuthThrottle::new(FailureLimits {
            limit: 0,
            window: Duration::from_secs(60),
            delay: Duration::from_millis(700),
            tracked: 10,
        });
        let mut io = HeldWrites::new(Vec::new());
        io.write_all(b"free").await.expect("write");
        io.hold().set(throttle.record(Failure {
            check: Check::Bearer,
            via: "test",
            peer: Some("10.0.0.1:1".parse().expect("an address")),
            principal: None,
            code: ErrorCode::Unauthenticated,
        }));
        let started = Instant::now();
        io.write_all(b" held").await.expect("write");
        assert_eq!(started.elapsed(), Duration::from_millis(700));
        assert_eq!(io.inner, b"free held");
        assert_eq!(throttle.waiting(), 0);
    }
}
