//! One WebSocket connection to an upstream runtime: text frames in and out, a ping when it
//! has been silent, and what ended it: a lost connection (which a resume may mend) or a
//! fault of the upstream's (which ends the job).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tokio_tungstenite::{
    tungstenite::{protocol::WebSocketConfig, Error as WsError, Message},
    WebSocketStream,
};

use super::spec::UpstreamSpec;
use crate::agent::peer_json::MAX_FRAME_BYTES;

/// How long closing a connection the gateway is done with may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a connection ended.
#[derive(Debug)]
pub(super) enum LinkError {
    /// It was lost or closed: what happened.
    Dropped(String),
    /// The upstream broke the protocol: what it did.
    Fault(String),
}

/// A byte stream a WebSocket runs over: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An open connection.
pub(super) struct Link {
    ws: WebSocketStream<Box<dyn Io>>,
    ping_interval: Duration,
    /// Whether a ping is out and nothing has come since.
    pinged: bool,
}

impl Link {
    /// Connects to `spec`'s URL: TCP, TLS for `wss://`, the WebSocket handshake, all within
    /// its welcome timeout.
    pub(super) async fn connect(spec: &UpstreamSpec) -> Result<Link, String> {
        let connecting = async {
            let tcp = TcpStream::connect((spec.host.as_str(), spec.port))
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            // Frames are small and each is awaited: Nagle would only add latency.
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = match &spec.tls {
                Some((config, name)) => Box::new(
                    tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| format!("TLS handshake: {e}"))?,
                ),
                None => Box::new(tcp),
            };
            let config = WebSocketConfig::default()
                .max_message_size(Some(MAX_FRAME_BYTES))
                .max_frame_size(Some(MAX_FRAME_BYTES));
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(spec.url.as_str(), io, Some(config))
                    .await
                    .map_err(|e| format!("WebSocket handshake: {e}"))?;
            Ok::<_, String>(ws)
        };
        let ws = tokio::time::timeout(spec.timings.welcome_timeout, connecting)
            .await
            .map_err(|_| format!("no connection within {:?}", spec.timings.welcome_timeout))??;
        Ok(Link {
            ws,
            ping_interval: spec.timings.ping_interval,
            pinged: false,
        })
    }

    /// Sends one frame.
    pub(super) async fn send(&mut self, text: String) -> Result<(), LinkError> {
        self.ws
            .send(Message::text(text))
            .await
            .map_err(|e| LinkError::Dropped(format!("sending failed: {e}")))
    }

    /// The next text frame. A connection silent for the ping interval gets a ping, and one
    /// silent for twice that is lost.
    pub(super) async fn next(&mut self) -> Result<String, LinkError> {
        loop {
            let message = match tokio::time::timeout(self.ping_interval, self.ws.next()).await {
                Err(_) if self.pinged => {
                    return Err(LinkError::Dropped(format!(
                        "nothing came for {:?}, a ping included",
                        self.ping_interval * 2
                    )))
                }
                Err(_) => {
                    self.pinged = true;
                    self.ws
                        .send(Message::Ping(Default::default()))
                        .await
                        .map_err(|e| LinkError::Dropped(format!("sending a ping failed: {e}")))?;
                    continue;
                }
                Ok(None) => return Err(LinkError::Dropped("the connection closed".into())),
                Ok(Some(Err(e))) => return Err(read_error(e)),
                Ok(Some(Ok(message))) => message,
            };
            self.pinged = false;
            match message {
                Message::Text(text) => return Ok(text.as_str().to_owned()),
                Message::Binary(_) => {
                    return Err(LinkError::Fault(
                        "sent a binary WebSocket frame (ARCP over WebSocket is text)".into(),
                    ))
                }
                Message::Close(frame) => {
                    return Err(LinkError::Dropped(match frame {
                        Some(f) if !f.reason.is_empty() => {
                            format!("the upstream closed the connection ({})", f.reason)
                        }
                        _ => "the upstream closed the connection".into(),
                    }))
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// Closes the connection, waiting a little for the upstream to agree.
    pub(super) async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.close(None)).await;
    }
}

fn read_error(e: WsError) -> LinkError {
    match e {
        WsError::Capacity(_) => {
            LinkError::Fault(format!("sent a frame larger than {MAX_FRAME_BYTES} bytes"))
        }
        WsError::Utf8(_) => LinkError::Fault("sent a text frame that is not UTF-8".into()),
        other => LinkError::Dropped(other.to_string()),
    }
}
