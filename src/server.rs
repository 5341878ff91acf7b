//! The servers: the gRPC server (tonic's services: the ARCP service behind its authentication
//! layer, with gRPC health and server reflection; served by hyper's HTTP/2, one task per
//! connection (`http2`); graceful shutdown and the session sweeper), and [`serve_all`], which
//! runs it beside the WebSocket transport over one gateway.
//!
//! Both accept through one loop (`crate::transport::listener`: back-off on accept errors, a
//! cap on connections per peer address shared by the two). A gRPC connection must open its
//! first stream within [`GatewayConfig::connection_setup_timeout`] (`connection`), and a
//! shutdown always ends within [`GatewayConfig::shutdown_grace`]: health turns NOT_SERVING
//! (`health`), every stream is told to end, and whatever is still open when the grace ends is
//! cut. While the gateway's shared store does not answer, health is NOT_SERVING as well.
//!
//! With [`ServeOptions::tls`], both listeners wrap every connection in TLS (ALPN `h2` for
//! gRPC, `http/1.1` for WebSocket), the handshake done in the accept loop's own tasks, and the
//! certificate files are watched for a change ([`Tls::watch`]). [`ServeOptions::health`] is a
//! plaintext listener serving only `grpc.health.v1`, the same statuses as the main one, for
//! probes that cannot speak TLS (the kubelet's gRPC probe).
//!
//! For proxies and meshes, the HTTP/2 keepalive, the streams per connection and a maximum
//! connection age come from [`GatewayConfig`](crate::config::GatewayConfig): past its own
//! (jittered) age a connection gets a GOAWAY, and is cut once the grace after it ends.
//!
//! [`GatewayConfig::connection_setup_timeout`]: crate::config::GatewayConfig::connection_setup_timeout
//! [`GatewayConfig::shutdown_grace`]: crate::config::GatewayConfig::shutdown_grace

mod connection;
mod health;
mod http2;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use self::{
    connection::{GuardedIo, InUseLayer, LiveConnections},
    health::ServerHealth,
};
use crate::{
    gateway::Gateway,
    metrics::grpc_layer::GrpcMetricsLayer,
    proto,
    transport::{
        grpc::{auth_layer::AuthLayer, batched_writes::BatchedWrites, service::ArcpService},
        listener::{
            tls::{Alpn, Tls},
            Listener, PeerLimit,
        },
        max_age::MaxAge,
        ws,
    },
};

/// What [`serve_all_with`] serves beside the two listeners.
#[derive(Default)]
pub struct ServeOptions {
    /// TLS on both listeners.
    pub tls: Option<Arc<Tls>>,
    /// A plaintext listener serving only `grpc.health.v1`.
    pub health: Option<TcpListener>,
}

/// How long cut connections get to finish closing before `serve` returns regardless: a cut
/// connection's next read or write fails, so this is a bound, not a wait.
const CUT_SETTLE: Duration = Duration::from_secs(1);

/// Binds `addr` (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `gateway` on `listener` until `shutdown` resolves. On shutdown, health turns to
/// NOT_SERVING (`Watch` streams end after saying so), every ARCP stream ends with UNAVAILABLE
/// (sessions stay resumable), and the server drains connections for at most
/// [`shutdown_grace`](crate::config::GatewayConfig::shutdown_grace), then cuts the rest and
/// returns.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let peers = PeerLimit::new(gateway.config().max_connections_per_peer);
    let listener =
        Listener::new(listener, "grpc", peers).with_tcp_keepalive(gateway.config().tcp_keepalive);
    serve_grpc(gateway, listener, None, shutdown, CancellationToken::new()).await
}

/// [`serve`] on an accept loop of the caller's; cancels `drained` once health is NOT_SERVING
/// and the gateway has told every stream to end.
/// With `health_listener`, health is served there too, in plaintext, until the drain.
async fn serve_grpc(
    gateway: Arc<Gateway>,
    listener: Listener,
    health_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
    drained: CancellationToken,
) -> Result<(), ServeError> {
    let (health, health_service) = ServerHealth::serving().await;
    let health = Arc::new(health);
    let follower = gateway.stores().health.as_ref().map(|store| {
        let (health, store) = (health.clone(), store.watch());
        tokio::spawn(async move { health.follow_store(store).await })
    });
    // grpcurl and most tools speak reflection v1; older ones only v1alpha.
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let health_only = health_listener.map(|listener| {
        let served = tonic::transport::Server::builder()
            .add_service(health_service.clone())
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                drained.clone().cancelled_owned(),
            );
        tokio::spawn(async move {
            if let Err(e) = served.await {
                tracing::warn!("health listener: {e}");
            }
        })
    });

    let sweeper = gateway.spawn_sweeper();
    let config = gateway.config();
    let (setup_timeout, grace) = (config.connection_setup_timeout, config.shutdown_grace);
    let live = Arc::new(LiveConnections::default());
    let incoming = futures::stream::unfold(listener, |mut listener| async move {
        let accepted = listener.accept().await;
        Some((accepted, listener))
    })
    .map({
        let live = live.clone();
        move |accepted| {
            let security = accepted.stream.security().clone();
            // Jittered per connection; hyper sends the GOAWAY at the age, `GuardedIo` cuts
            // what is left once the grace after it ends.
            let max_age = MaxAge::from_config(config);
            let cut_after = max_age.map(|max| max.cut_after());
            // Frames that many sessions produce at the same tick share a write.
            let io = BatchedWrites::new(accepted.stream);
            let io = GuardedIo::new(io, accepted.slot, security, setup_timeout, cut_after, &live);
            http2::Incoming {
                io,
                max_age: max_age.map(|max| max.age),
            }
        }
    });
    let stopping = CancellationToken::new();
    let signal = {
        let (gateway, stopping, drained) = (gateway.clone(), stopping.clone(), drained.clone());
        async move {
            shutdown.await;
            tracing::info!("shutting down: draining streams");
            stopping.cancel();
            health.drain().await;
            gateway.shutdown();
            drained.cancel();
        }
    };
    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ArcpService::new(gateway.clone()))
        .prepare();
    let service = tower::ServiceBuilder::new()
        // Outermost: it marks the connection in use and restores the peer address for the
        // layers inside it.
        .layer(InUseLayer)
        // Outside authentication, so that the calls it refuses are counted too.
        .layer(GrpcMetricsLayer::new(DESCRIPTOR_SETS))
        .layer(AuthLayer::new(gateway.clone()))
        .service(routes);
    let serving = http2::serve(incoming, service, config, signal);
    let mut serving = std::pin::pin!(serving);
    tokio::select! {
        () = &mut serving => {}
        () = async {
            stopping.cancelled().await;
            tokio::time::sleep(grace).await;
        } => {
            let cut = live.cut_all();
            tracing::warn!(cut, "shutdown grace of {grace:?} over: gRPC connections still open are cut");
            if tokio::time::timeout(CUT_SETTLE, &mut serving).await.is_err() {
                tracing::warn!("gRPC connections still open after the cut; returning anyway");
            }
        }
    }
    drained.cancel();
    sweeper.abort();
    if let Some(follower) = follower {
        follower.abort();
    }
    if let Some(mut health_only) = health_only {
        if tokio::time::timeout(CUT_SETTLE, &mut health_only)
            .await
            .is_err()
        {
            health_only.abort();
        }
    }
    Ok(())
}

/// Serves gRPC on `grpc` and WebSocket ([`crate::transport::ws`]) on `websocket` until
/// `shutdown` resolves, or until either server fails, which stops the other too. Connections
/// per peer address are capped over both together. On shutdown, health turns NOT_SERVING
/// before any stream of either transport is told to end.
pub async fn serve_all(
    gateway: Arc<Gateway>,
    grpc: TcpListener,
    websocket: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_all_with(gateway, grpc, websocket, ServeOptions::default(), shutdown).await
}

/// [`serve_all`] with TLS on both listeners and/or a plaintext health listener.
pub async fn serve_all_with(
    gateway: Arc<Gateway>,
    grpc: TcpListener,
    websocket: TcpListener,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let peers = PeerLimit::new(gateway.config().max_connections_per_peer);
    let keepalive = gateway.config().tcp_keepalive;
    let grpc = Listener::new(grpc, "grpc", peers.clone()).with_tcp_keepalive(keepalive);
    let websocket = Listener::new(websocket, "websocket", peers).with_tcp_keepalive(keepalive);
    let setup_timeout = gateway.config().connection_setup_timeout;
    let (grpc, websocket) = match &options.tls {
        Some(tls) => (
            grpc.with_tls(tls.clone(), Alpn::H2, setup_timeout),
            websocket.with_tls(tls.clone(), Alpn::Http11, setup_timeout),
        ),
        None => (grpc, websocket),
    };
    let watcher = options.tls.as_ref().map(|tls| AbortOnDrop(Tls::watch(tls)));
    let stop = CancellationToken::new();
    // Cancelled by the gRPC server once health is NOT_SERVING, or when it stops.
    let drained = CancellationToken::new();
    let trigger = async {
        tokio::select! {
            _ = shutdown => stop.cancel(),
            _ = stop.cancelled() => {}
        }
    };
    let grpc = async {
        let served = serve_grpc(
            gateway.clone(),
            grpc,
            options.health,
            stop.clone().cancelled_owned(),
            drained.clone(),
        )
        .await;
        stop.cancel();
        served
    };
    let websocket = async {
        let served = ws::serve_on(
            gateway.clone(),
            websocket,
            drained.clone().cancelled_owned(),
        )
        .await;
        stop.cancel();
        served
    };
    let ((), grpc, websocket) = tokio::join!(trigger, grpc, websocket);
    drop(watcher);
    grpc?;
    Ok(websocket?)
}

/// A task that ends when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why the server stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The embedded protobuf descriptors could not be served by reflection.
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The WebSocket listener failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] std::io::Error),
}

/// The services the server offers, as encoded descriptor sets: for reflection, and for the
/// method label of the gRPC metrics.
const DESCRIPTOR_SETS: &[&[u8]] = &[
    proto::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
