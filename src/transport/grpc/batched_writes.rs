//! Batches a connection's socket writes across the frames that become ready together.
//!
//! When a timer tick wakes many sessions that share one HTTP/2 connection, each session's
//! stream hands its frame to the connection task, and tokio polls that task right after the
//! stream that woke it. Unbatched, every frame then became its own `writev`. Here the first
//! write after a flush waits until the worker has run the tasks that were ready alongside it
//! (tokio's deferred wake-up, the one `yield_now` uses), so the frames they produced go out
//! in one write. The wait lasts until the worker runs out of ready tasks, or until its next
//! maintenance pass (every 61 polls by default) if it never does.

use std::{
    future::Future,
    io::{self, IoSlice},
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll, Wake, Waker},
};

use futures::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A write at least this long goes out at once: it already amortises its system call, and a
/// connection that is streaming flat out must not wait for other tasks between writes.
const WRITE_AT_ONCE: usize = 4096;

/// An I/O object whose writes wait for the current batch of ready tasks; reads, flushes and
/// shutdown pass straight through.
pub struct BatchedWrites<T> {
    inner: T,
    window: WriteWindow,
    release: Arc<Release>,
}

/// Where the connection is between two flushes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum WriteWindow {
    /// Flushed: the next write asks to be woken after the current batch of ready tasks.
    Closed,
    /// Waiting for that wake-up; writes are refused until it comes.
    Waiting,
    /// Woken: writes go to the socket until the next flush.
    Open,
}

/// The deferred wake-up: records that it fired and wakes the connection's task.
#[derive(Default)]
struct Release {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Release {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<T> BatchedWrites<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        BatchedWrites {
            inner,
            window: WriteWindow::Closed,
            release: Arc::default(),
        }
    }

    /// Ready once a write of `len` bytes may reach the socket.
    fn poll_open(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<()> {
        if len >= WRITE_AT_ONCE {
            return Poll::Ready(());
        }
        match self.window {
            WriteWindow::Open => return Poll::Ready(()),
            WriteWindow::Closed => {
                self.release.fired.store(false, Ordering::Relaxed);
                self.release.task.register(cx.waker());
                // Only the first poll of `yield_now` matters: it hands the waker to the
                // scheduler's deferred list (or wakes it at once outside a runtime).
                let waker = Waker::from(self.release.clone());
                let _ = pin!(tokio::task::yield_now()).poll(&mut Context::from_waker(&waker));
                self.window = WriteWindow::Waiting;
            }
            WriteWindow::Waiting => self.release.task.register(cx.waker()),
        }
        if self.release.fired.load(Ordering::Acquire) {
            self.window = WriteWindow::Open;
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for BatchedWrites<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures::ready!(self.poll_open(cx, buf.len()));
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        futures::ready!(self.poll_open(cx, len));
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        if self.window == WriteWindow::Open {
            self.window = WriteWindow::Closed;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for BatchedWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Connected> Connected for BatchedWrites<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Spawns `n` tasks that are ready at once; the returned counter says how many have run.
    fn ready_tasks(n: usize) -> Arc<AtomicUsize> {
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..n {
            let ran = ran.clone();
            tokio::spawn(async move {
                ran.fetch_add(1, Ordering::SeqCst);
            });
        }
        ran
    }

    #[tokio::test]
    async fn a_small_write_waits_for_the_tasks_ready_with_it() {
        let mut io = BatchedWrites::new(Vec::new());
        let ran = ready_tasks(3);
        io.write_all(b"frame").await.expect("write");
        assert_eq!(ran.load(Ordering::SeqCst), 3);
        assert_eq!(io.inner, b"frame");
    }

    /// Writes "first", flushes if `flush`, then writes "second" while two other tasks are
    /// ready; returns how many of them ran before the second write completed.
    async fn tasks_run_before_a_second_write(flush: bool) -> usize {
        let mut io = BatchedWrites::new(Vec::new());
        io.write_all(b"first").await.expect("write");
        if flush {
            io.flush().await.expect("flush");
        }
        let ran = ready_tasks(2);
        io.write_all(b"second").await.expect("write");
        assert_eq!(io.inner, b"firstsecond");
        ran.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn after_a_flush_the_next_small_write_waits_again() {
        assert_eq!(tasks_run_before_a_second_write(true).await, 2);
    }

    #[tokio::test]
    async fn until_the_flush_writes_go_straight_through() {
        assert_eq!(tasks_run_before_a_second_write(false).await, 0);
    }

    #[tokio::test]
    async fn a_large_write_goes_out_at_once() {
        let mut io = BatchedWrites::new(Vec::new());
        let ran = ready_tasks(3);
        io.write_all(&[7; WRITE_AT_ONCE]).await.expect("write");
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        assert_eq!(io.inner.len(), WRITE_AT_ONCE);
    }

    #[test]
    fn outside_a_runtime_a_write_does_not_wait() {
        let mut io = BatchedWrites::new(Vec::new());
        let written = futures::executor::block_on(io.write_all(b"frame"));
        assert!(written.is_ok());
        assert_eq!(io.inner, b"frame");
    }
}
