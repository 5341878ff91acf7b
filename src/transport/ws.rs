//! ARCP over WebSocket (§4): one session per connection on path [`PATH`], one JSON envelope
//! (§5, [`super::json`]) per text frame.
//!
//! The session layer is the same as gRPC's, so a session opened here can be resumed over gRPC
//! and the other way round. A bearer token may come in `session.hello` or in the upgrade
//! request's `Authorization: Bearer` header; a bad header refuses the upgrade with HTTP 401,
//! before any session exists.

use std::{future::Future, sync::Arc};

use futures::{future, SinkExt, StreamExt};
use http::StatusCode;
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tokio_tungstenite::tungstenite::{
    handshake::server::{ErrorResponse, Request, Response},
    protocol::{frame::coding::CloseCode, CloseFrame, Message, WebSocketConfig},
};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::bearer_from_header,
    error::ArcpError,
    gateway::{ConnectInfo, Gateway},
    ids::Principal,
    protocol::client::RejectedFrame,
    session::output::StreamEnd,
};

use super::{
    json,
    listener::{Accepted, Listener, PeerLimit},
};

/// The path ARCP is served on.
pub const PATH: &str = "/arcp";

/// The largest text frame accepted; a job submission's input has to fit.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Serves ARCP over WebSocket on `listener` until `shutdown` resolves. Connections per peer
/// address are capped ([`GatewayConfig::max_connections_per_peer`]), and one must complete its
/// upgrade within [`GatewayConfig::connection_setup_timeout`]. On shutdown the gateway is shut
/// down ([`Gateway::shutdown`]): streams end with close code 1012 so clients resume elsewhere,
/// and their sessions stay resumable. Connections still open after
/// [`GatewayConfig::shutdown_grace`] are cut; none outlives this function.
///
/// [`GatewayConfig::max_connections_per_peer`]: crate::config::GatewayConfig::max_connections_per_peer
/// [`GatewayConfig::connection_setup_timeout`]: crate::config::GatewayConfig::connection_setup_timeout
/// [`GatewayConfig::shutdown_grace`]: crate::config::GatewayConfig::shutdown_grace
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let peers = PeerLimit::new(gateway.config().max_connections_per_peer);
    serve_on(
        gateway,
        Listener::new(listener, "websocket", peers),
        shutdown,
    )
    .await
}

/// [`serve`] on an accept loop of the caller's.
pub(crate) async fn serve_on(
    gateway: Arc<Gateway>,
    mut listener: Listener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    // A set rather than detached tasks, so that a shutdown can end the ones that outlast it.
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let gateway = gateway.clone();
                connections.spawn(async move {
                    let Accepted { stream, peer, slot } = accepted;
                    if let Err(e) = connection(gateway, stream).await {
                        tracing::debug!(%peer, "websocket connection failed: {e}");
                    }
                    drop(slot);
                });
            }
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = ended {
                    tracing::warn!("websocket connection task failed: {e}");
                }
            }
        }
    }
    // New clients are refused from here on, rather than left waiting in the backlog.
    drop(listener);
    gateway.shutdown();
    let grace = gateway.config().shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            cut = connections.len(),
            "shutdown grace of {grace:?} over: websocket connections still open are cut"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Checks the upgrade request: the path, and the bearer token if it carries one.
fn admit(
    gateway: &Gateway,
    request: &Request,
) -> Result<Option<Principal>, (StatusCode, ArcpError)> {
    if request.uri().path() != PATH {
        return Err((
            StatusCode::NOT_FOUND,
            ArcpError::InvalidRequest(format!("ARCP is served on {PATH}")),
        ));
    }
    let Some(value) = request.headers().get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .map_err(|_| ArcpError::Unauthenticated("authorization is not valid ASCII".into()))
        .and_then(bearer_from_header)
        .and_then(|token| gateway.authenticator().authenticate(token))
        .map(Some)
        .map_err(|e| (StatusCode::UNAUTHORIZED, e))
}

fn refusal(status: StatusCode, error: ArcpError) -> ErrorResponse {
    tracing::info!(code = %error.code(), "websocket upgrade refused: {}", error.message());
    let mut response = ErrorResponse::new(Some(error.to_string()));
    *response.status_mut() = status;
    response
}

async fn connection(
    gateway: Arc<Gateway>,
    tcp: TcpStream,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let mut principal = None;
    // The callback's signature is tungstenite's; its error is the HTTP response itself.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        principal = admit(&gateway, request).map_err(|(status, e)| refusal(status, e))?;
        Ok(response)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config));
    // A peer that never completes its upgrade, or never sends a byte, would otherwise hold the
    // connection (and a descriptor) for ever.
    let setup_timeout = gateway.config().connection_setup_timeout;
    let socket = tokio::time::timeout(setup_timeout, upgrade)
        .await
        .map_err(|_| {
            tokio_tungstenite::tungstenite::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "upgrade not completed within the connection setup timeout",
            ))
        })??;
    let (mut sink, stream) = socket.split();

    // The client's frames until it closes or the connection fails; control frames (ping,
    // pong) are answered by the WebSocket layer itself. Unlike a gRPC half-close, a WebSocket
    // close ends both directions, so it also ends delivery.
    let gone = CancellationToken::new();
    let inbound = stream
        .take_while({
            let gone = gone.clone();
            move |message| {
                let open = matches!(message, Ok(m) if !m.is_close());
                if !open {
                    gone.cancel();
                }
                future::ready(open)
            }
        })
        .filter_map(|message| {
            future::ready(match message {
                Ok(Message::Text(text)) => Some(json::decode(text.as_str())),
                Ok(Message::Binary(_)) => Some(Err(RejectedFrame {
                    request_id: None,
                    error: ArcpError::InvalidRequest(
                        "binary frames are not ARCP: send one JSON envelope per text frame".into(),
                    ),
                })),
                _ => None,
            })
        })
        .boxed();

    let conn = ConnectInfo {
        principal,
        resume: None,
    };
    let mut outbound = std::pin::pin!(gateway.connect(conn, inbound));
    let mut close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    loop {
        let item = tokio::select! {
            item = outbound.next() => item,
            _ = gone.cancelled() => None,
        };
        let Some(item) = item else { break };
        match json::encode(item) {
            Ok(text) => sink.send(Message::text(text)).await?,
            Err(end) => {
                close = match end {
                    StreamEnd::Superseded => CloseFrame {
                        code: CloseCode::Library(4001),
                        reason: "the session was resumed on another stream".into(),
                    },
                    StreamEnd::ShuttingDown => CloseFrame {
                        code: CloseCode::Restart,
                        reason: "the gateway is shutting down; resume the session".into(),
                    },
                };
                break;
            }
        }
    }
    let _ = sink.send(Message::Close(Some(close))).await;
    let _ = sink.close().await;
    Ok(())
}
