//! The HTTP/2 server every gRPC connection is served by: hyper's, one task per connection.
//!
//! tonic's own serve loop gives every connection the same maximum age, and its grace after the
//! age replaces the GOAWAY instead of following it. Here each connection has an age of its own
//! (jittered per connection, so that connections a deploy opened together do not all come back
//! together): at it, hyper sends a GOAWAY and takes no new stream; the streams still open when
//! the grace ends are cut by the connection's IO (`connection::GuardedIo`).

use std::{convert::Infallible, future::Future, pin::pin, time::Duration};

use futures::{Stream, StreamExt};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::server::Connected;
use tower::{Service, ServiceExt};

use crate::config::GatewayConfig;

/// One connection to serve, and when it is asked to go away, if ever.
pub(crate) struct Incoming<IO> {
    /// The connection.
    pub(crate) io: IO,
    /// Its maximum age, jittered.
    pub(crate) max_age: Option<Duration>,
}

/// Serves every connection `incoming` yields with `service` until `shutdown` resolves, then
/// asks each to go away (GOAWAY) and returns once all have closed. Each request carries its
/// connection's [`Connected::connect_info`] as an extension.
pub(crate) async fn serve<IO, S>(
    incoming: impl Stream<Item = Incoming<IO>>,
    service: S,
    config: &GatewayConfig,
    shutdown: impl Future<Output = ()>,
) where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    S: Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(config.http2_keepalive_interval))
        .keep_alive_timeout(config.http2_keepalive_timeout)
        .max_concurrent_streams(config.max_concurrent_streams);
    let connections = TaskTracker::new();
    let stopping = CancellationToken::new();
    {
        // Dropped when the loop ends: the listener closes, and new clients are refused rather
        // than left in its backlog.
        let mut incoming = pin!(incoming);
        let mut shutdown = pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = incoming.next() => accepted,
            };
            let Some(Incoming { io, max_age }) = accepted else {
                break;
            };
            let info = io.connect_info();
            let service = service.clone();
            let service = tower::service_fn(move |mut request: http::Request<_>| {
                request.extensions_mut().insert(info.clone());
                service.clone().oneshot(request)
            });
            let connection =
                builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
            let stopping = stopping.clone();
            connections.spawn(async move {
                let mut connection = pin!(connection);
                let aged = async {
                    match max_age {
                        Some(age) => tokio::time::sleep(age).await,
                        None => std::future::pending().await,
                    }
                };
                let ended = tokio::select! {
                    ended = connection.as_mut() => Some(ended),
                    () = aged => None,
                    () = stopping.cancelled() => None,
                };
                let ended = match ended {
                    Some(ended) => ended,
                    None => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!("gRPC connection ended: {e}");
                }
            });
        }
    }
    stopping.cancel();
    connections.close();
    connections.wait().await;
}
