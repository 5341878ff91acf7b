//! The servers: the tonic server (the ARCP service behind its authentication layer, with gRPC
//! health and server reflection, graceful shutdown and the session sweeper), and
//! [`serve_all`], which runs it beside the WebSocket transport over one gateway.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::{
    gateway::Gateway,
    proto,
    transport::{
        grpc::{auth_layer::AuthLayer, batched_writes::BatchedWrites, service::ArcpService},
        ws,
    },
};

/// HTTP/2 pings detect peers that vanished without closing the connection, so their sessions
/// detach (and start the resume window) instead of hanging.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `gateway` on `listener` until `shutdown` resolves. On shutdown, health turns to
/// NOT_SERVING, every ARCP stream ends with UNAVAILABLE (sessions stay resumable), and the
/// server drains connections before returning.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ArcpService>().await;
    // grpcurl and most tools speak reflection v1; older ones only v1alpha.
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let sweeper = gateway.spawn_sweeper();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let stopping = {
        let gateway = gateway.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: draining streams");
            health.set_not_serving::<ArcpService>().await;
            gateway.shutdown();
        }
    };
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .layer(AuthLayer::new(gateway.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ArcpService::new(gateway.clone()))
        .serve_with_incoming_shutdown(
            // Frames that many sessions produce at the same tick share a write.
            incoming.map(|io| io.map(BatchedWrites::new)),
            stopping,
        )
        .await;
    sweeper.abort();
    Ok(result?)
}

/// Serves gRPC on `grpc` and WebSocket ([`crate::transport::ws`]) on `websocket` until
/// `shutdown` resolves, or until either server fails, which stops the other too.
pub async fn serve_all(
    gateway: Arc<Gateway>,
    grpc: TcpListener,
    websocket: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let stop = CancellationToken::new();
    let trigger = async {
        tokio::select! {
            _ = shutdown => stop.cancel(),
            _ = stop.cancelled() => {}
        }
    };
    let grpc = async {
        let served = serve(gateway.clone(), grpc, stop.clone().cancelled_owned()).await;
        stop.cancel();
        served
    };
    let websocket = async {
        let served = ws::serve(gateway.clone(), websocket, stop.clone().cancelled_owned()).await;
        stop.cancel();
        served
    };
    let ((), grpc, websocket) = tokio::join!(trigger, grpc, websocket);
    grpc?;
    Ok(websocket?)
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

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}
