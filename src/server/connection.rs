//! A gRPC connection as the server holds it: it must open its first stream within the setup
//! timeout, and it is cut when the shutdown grace ends, or when the grace after its maximum age
//! ends (hyper sent its GOAWAY at that age; see `http2`).
//!
//! The ends are enforced in the connection's IO ([`GuardedIo`]), whatever hyper is doing with
//! it: past the deadline, or once cut, every read and write fails, which ends hyper's
//! connection and closes the socket. A connection becomes in use when its first request
//! arrives; [`InUseLayer`] says so through the connect info `http2` puts on every request, and
//! hands the request tonic's own [`TcpConnectInfo`] in its place, so
//! [`tonic::Request::remote_addr`] keeps working.
//!
//! The checks cost one atomic load per read or write (and an [`AtomicWaker`] registration when
//! one has to wait), and nothing once the connection is in use but that load.

use std::{
    collections::HashMap,
    future::Future,
    io::{self, IoSlice},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tower::{Layer, Service};

use crate::transport::listener::{PeerSlot, Security};

/// The gRPC connections a server holds open, so that a shutdown can cut them.
#[derive(Default)]
pub(crate) struct LiveConnections {
    cut: AtomicBool,
    next_id: AtomicU64,
    wakers: Mutex<HashMap<u64, Arc<AtomicWaker>>>,
}

impl LiveConnections {
    /// Cuts every connection, and every one registered from now on; returns how many were
    /// open.
    pub(crate) fn cut_all(&self) -> usize {
        self.cut.store(true, Ordering::Release);
        let wakers = self.wakers.lock();
        for waker in wakers.values() {
            waker.wake();
        }
        wakers.len()
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    fn register(self: &Arc<Self>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let waker = Arc::new(AtomicWaker::new());
        self.wakers.lock().insert(id, waker.clone());
        Registration {
            live: self.clone(),
            id,
            waker,
        }
    }
}

/// One connection's entry in [`LiveConnections`], removed when the connection is dropped.
struct Registration {
    live: Arc<LiveConnections>,
    id: u64,
    waker: Arc<AtomicWaker>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.live.wakers.lock().remove(&self.id);
    }
}

/// A connection's IO with its setup deadline and its place in [`LiveConnections`]. It holds
/// the connection's [`PeerSlot`], so the slot is given back when the connection ends.
pub(crate) struct GuardedIo<T> {
    inner: T,
    /// Armed until the connection is in use.
    setup_deadline: Option<Pin<Box<Sleep>>>,
    /// When the connection is cut for its age, if it has a maximum one.
    age_deadline: Option<Pin<Box<Sleep>>>,
    in_use: Arc<AtomicBool>,
    security: Security,
    registration: Registration,
    _slot: PeerSlot,
}

impl<T> GuardedIo<T> {
    /// Wraps `inner`, which must open its first stream within `setup_timeout` and is cut
    /// `cut_after` from now if given; `security` is what its transport established, for every
    /// request on it.
    pub(crate) fn new(
        inner: T,
        slot: PeerSlot,
        security: Security,
        setup_timeout: Duration,
        cut_after: Option<Duration>,
        live: &Arc<LiveConnections>,
    ) -> Self {
        GuardedIo {
            inner,
            setup_deadline: Some(Box::pin(tokio::time::sleep(setup_timeout))),
            age_deadline: cut_after.map(|after| Box::pin(tokio::time::sleep(after))),
            in_use: Arc::default(),
            security,
            registration: live.register(),
            _slot: slot,
        }
    }

    /// Fails once the connection is cut, or its setup deadline or its age has passed.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.registration.live.is_cut() {
            return Err(cut());
        }
        if let Some(deadline) = &mut self.age_deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the grace after the connection's maximum age ended",
                ));
            }
        }
        if let Some(deadline) = &mut self.setup_deadline {
            if self.in_use.load(Ordering::Acquire) {
                self.setup_deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no stream opened within the connection setup timeout",
                ));
            }
        }
        Ok(())
    }

    /// `Pending`, woken by a cut as well as by the IO, unless the cut has already happened.
    fn park<R>(&self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        self.registration.waker.register(cx.waker());
        // Checked after registering, so a cut between the two is not missed.
        if self.registration.live.is_cut() {
            Poll::Ready(Err(cut()))
        } else {
            Poll::Pending
        }
    }

    /// `io`, and the registration for a cut when it has to wait.
    fn guard<R>(
        &mut self,
        cx: &mut Context<'_>,
        io: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>>
    where
        T: Unpin,
    {
        if let Err(e) = self.check(cx) {
            return Poll::Ready(Err(e));
        }
        match io(Pin::new(&mut self.inner), cx) {
            Poll::Pending => self.park(cx),
            ready => ready,
        }
    }
}

fn cut() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the shutdown grace ended with the connection still open",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().guard(cx, |io, cx| io.poll_read(cx, buf))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().guard(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .guard(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().guard(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().guard(cx, |io, cx| io.poll_shutdown(cx))
    }
}

/// What `http2` puts on every request of a [`GuardedIo`] connection; [`InUseLayer`] replaces it
/// with the [`TcpConnectInfo`] and the [`Security`] it carries.
#[derive(Clone)]
pub(crate) struct GuardedConnectInfo {
    tcp: TcpConnectInfo,
    in_use: Arc<AtomicBool>,
    security: Security,
}

impl<T: Connected<ConnectInfo = TcpConnectInfo>> Connected for GuardedIo<T> {
    type ConnectInfo = GuardedConnectInfo;

    fn connect_info(&self) -> GuardedConnectInfo {
        GuardedConnectInfo {
            tcp: self.inner.connect_info(),
            in_use: self.in_use.clone(),
            security: self.security.clone(),
        }
    }
}

/// Marks a [`GuardedIo`] connection in use when a request arrives on it, and gives the request
/// tonic's [`TcpConnectInfo`] and the connection's [`Security`]. Install it outside every layer that reads the peer address.
#[derive(Clone, Copy, Default)]
pub(crate) struct InUseLayer;

impl<S> Layer<S> for InUseLayer {
    type Service = MarkInUse<S>;

    fn layer(&self, inner: S) -> MarkInUse<S> {
        MarkInUse { inner }
    }
}

/// The service [`InUseLayer`] produces.
#[derive(Clone)]
pub(crate) struct MarkInUse<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for MarkInUse<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(info) = request.extensions_mut().remove::<GuardedConnectInfo>() {
            info.in_use.store(true, Ordering::Release);
            request.extensions_mut().insert(info.tcp);
            request.extensions_mut().insert(info.security);
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        net::{Ipv4Addr, SocketAddr},
        num::NonZeroUsize,
    };

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;
    use crate::transport::listener::PeerLimit;

    const SETUP: Duration = Duration::from_secs(10);

    fn guarded(live: &Arc<LiveConnections>) -> (GuardedIo<DuplexStream>, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(64);
        let peers = PeerLimit::new(NonZeroUsize::MIN);
        let slot = peers
            .admit(Ipv4Addr::LOCALHOST.into())
            .expect("an empty table admits");
        let security = Security::default();
        (
            GuardedIo::new(ours, slot, security, SETUP, None, live),
            theirs,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_no_request_fails_at_the_setup_deadline() {
        let live = Arc::default();
        let (mut io, _peer) = guarded(&live);
        let mut buf = [0; 8];
        let read = io.read(&mut buf).await.expect_err("the deadline passes");
        assert_eq!(read.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_in_use_outlives_the_setup_deadline() {
        let live = Arc::default();
        let (mut io, mut peer) = guarded(&live);
        io.in_use.store(true, Ordering::Release);
        tokio::time::advance(SETUP * 2).await;
        peer.write_all(b"late").await.expect("write");
        let mut buf = [0; 4];
        io.read_exact(&mut buf).await.expect("still open");
        assert_eq!(&buf, b"late");
        assert!(io.setup_deadline.is_none(), "the deadline is disarmed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_past_its_age_and_grace_fails_even_in_use() {
        let live = Arc::default();
        let (ours, _peer) = tokio::io::duplex(64);
        let slot = PeerLimit::new(NonZeroUsize::MIN)
            .admit(Ipv4Addr::LOCALHOST.into())
            .expect("an empty table admits");
        let age = SETUP * 3;
        let mut io = GuardedIo::new(ours, slot, Security::default(), SETUP, Some(age), &live);
        io.in_use.store(true, Ordering::Release);
        let started = tokio::time::Instant::now();
        let mut buf = [0; 8];
        let read = io.read(&mut buf).await.expect_err("the age passes");
        assert_eq!(read.kind(), io::ErrorKind::ConnectionAborted);
        assert_eq!(started.elapsed(), age);
    }

    #[tokio::test]
    async fn a_cut_wakes_a_waiting_read_and_fails_every_later_write() {
        let live = Arc::new(LiveConnections::default());
        let (mut io, _peer) = guarded(&live);
        let mut buf = [0; 8];
        {
            let mut read = std::pin::pin!(io.read(&mut buf));
            assert!(
                futures::poll!(read.as_mut()).is_pending(),
                "nothing was sent"
            );
            assert_eq!(live.cut_all(), 1);
            // Far sooner than the setup deadline, which would also end the read.
            let read = tokio::time::timeout(SETUP / 10, read)
                .await
                .expect("the cut wakes the read");
            assert_eq!(
                read.map_err(|e| e.kind()).err(),
                Some(io::ErrorKind::ConnectionAborted)
            );
        }
        assert!(io.write_all(b"x").await.is_err());
        drop(io);
        assert!(
            live.wakers.lock().is_empty(),
            "a dropped connection leaves the set"
        );
    }

    #[tokio::test]
    async fn a_request_marks_its_connection_in_use_and_carries_the_peer_address() {
        let live = Arc::default();
        let (io, _peer) = guarded(&live);
        let remote: SocketAddr = "192.0.2.7:40000".parse().expect("addr");
        let in_use = io.in_use.clone();
        let mut request = http::Request::new(());
        request.extensions_mut().insert(GuardedConnectInfo {
            tcp: TcpConnectInfo {
                local_addr: None,
                remote_addr: Some(remote),
            },
            in_use: in_use.clone(),
            security: Security::default(),
        });
        let mut service =
            InUseLayer.layer(tower::service_fn(|request: http::Request<()>| async move {
                let request = tonic::Request::from_http(request);
                Ok::<_, Infallible>(request.remote_addr())
            }));
        let seen = service.call(request).await.expect("infallible");
        assert_eq!(seen, Some(remote), "tonic's Request::remote_addr works");
        assert!(in_use.load(Ordering::Acquire));
    }
}
