//! ARCP over WebSocket (§4): one session per connection on path [`PATH`], one JSON envelope
//! (§5, [`super::json`]) per text frame.
//!
//! The session layer is the same as gRPC's, so a session opened here can be resumed over gRPC
//! and the other way round. A bearer token may come in `session.hello` or in the upgrade
//! request's `Authorization: Bearer` header; a bad header refuses the upgrade with HTTP 401,
//! before any session exists.

use std::{future::Future, sync::Arc, time::Duration};

use futures::{future, SinkExt, StreamExt};
use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::{
    handshake::server::{ErrorResponse, Request, Response},
    protocol::{frame::coding::CloseCode, CloseFrame, Message, WebSocketConfig},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth::bearer_from_header,
    error::ArcpError,
    gateway::{ConnectInfo, Gateway},
    ids::Principal,
    protocol::client::RejectedFrame,
    session::output::StreamEnd,
};

use super::json;

/// The path ARCP is served on.
pub const PATH: &str = "/arcp";

/// The largest text frame accepted; a job submission's input has to fit.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// How long a graceful stop waits for connections to say goodbye.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves ARCP over WebSocket on `listener` until `shutdown` resolves. Streams end when the
/// gateway shuts down ([`Gateway::shutdown`]), with close code 1012 so clients resume
/// elsewhere; their sessions stay resumable.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let gateway = gateway.clone();
                    connections.spawn(async move {
                        if let Err(e) = connection(gateway, tcp).await {
                            tracing::debug!(%peer, "websocket connection failed: {e}");
                        }
                    });
                }
                // Out of descriptors or a reset before accept: the listener itself is fine.
                Err(e) => tracing::warn!("websocket accept failed: {e}"),
            },
        }
    }
    connections.close();
    let _ = tokio::time::timeout(DRAIN, connections.wait()).await;
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
    let socket =
        tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await?;
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
