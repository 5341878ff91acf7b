//! ARCP over WebSocket (§4): one session per connection on path [`PATH`], one JSON envelope
//! (§5, [`super::json`]) per text frame.
//!
//! The session layer is the same as gRPC's, so a session opened here can be resumed over gRPC
//! and the other way round. A bearer token may come in `session.hello` or in the upgrade
//! request's `Authorization: Bearer` header; a bad header refuses the upgrade with HTTP 401,
//! before any session exists.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{
    future,
    stream::{SplitSink, SplitStream},
    FutureExt, SinkExt, Stream, StreamExt,
};
use http::StatusCode;
use parking_lot::Mutex;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::JoinSet,
};
use tokio_tungstenite::{
    tungstenite::{
        error::{CapacityError, ProtocolError},
        handshake::server::{ErrorResponse, Request, Response},
        protocol::{frame::coding::CloseCode, CloseFrame, Message, WebSocketConfig},
        Error as WsError,
    },
    WebSocketStream,
};
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{
        bearer_from_header,
        throttle::{Check, Failure},
        transport_principal,
    },
    error::ArcpError,
    gateway::{ConnectInfo, Gateway},
    ids::Principal,
    metrics::transport::Transport,
    protocol::client::{Inbound, ReadFault, RejectedFrame},
    session::output::{OutboundItem, StreamEnd},
};

use super::{
    held_writes::{HeldWrites, Hold},
    json,
    listener::{Accepted, Conn, Listener, PeerLimit},
    max_age::MaxAge,
};

/// The path ARCP is served on.
pub const PATH: &str = "/arcp";

/// The largest text frame accepted; a job submission's input has to fit.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The buffer a connection reads into, allocated whole when it opens. Clients send little (a
/// submit, acks, pings), and a larger message is gathered in a buffer of its own size anyway;
/// tungstenite's default (128 KiB) was nearly all of an idle session's memory.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// The reason of the close frame (code 1012, as for a restart) that ends a connection at its
/// maximum age: the client resumes its session on a new connection, which a load balancer may
/// place on another replica.
pub const MAX_AGE_REASON: &str =
    "the connection reached its maximum age; resume the session on a new connection";

/// How long the close frame may take to send before the connection is dropped without it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How long, and how many bytes, a connection is drained after a message the server could not
/// read, so that closing it does not reset it under the client (`linger`).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 2 * MAX_MESSAGE_BYTES;

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
    let listener = Listener::new(listener, "websocket", peers)
        .with_tcp_keepalive(gateway.config().tcp_keepalive);
    serve_on(gateway, listener, shutdown).await
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

/// Checks the upgrade request: the path, and the bearer token if it carries one. A refused
/// token counts against `peer`; the refusal waits out its penalty on `hold`.
fn admit(
    gateway: &Gateway,
    request: &Request,
    peer: Option<SocketAddr>,
    hold: &Hold,
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
    let token = value
        .to_str()
        .map_err(|_| ArcpError::Unauthenticated("authorization is not valid ASCII".into()))
        .and_then(bearer_from_header)
        .map_err(|e| (StatusCode::UNAUTHORIZED, e))?;
    match gateway.authenticator().authenticate(token) {
        Ok(principal) => Ok(Some(principal)),
        Err(error) => {
            hold.set(gateway.auth_throttle().record(Failure {
                check: Check::Bearer,
                via: "websocket upgrade",
                peer,
                principal: None,
                code: error.code(),
            }));
            Err((StatusCode::UNAUTHORIZED, error))
        }
    }
}

fn refusal(status: StatusCode, error: ArcpError) -> ErrorResponse {
    tracing::info!(code = %error.code(), "websocket upgrade refused: {}", error.message());
    let mut response = ErrorResponse::new(Some(error.to_string()));
    *response.status_mut() = status;
    response
}

type Socket = WebSocketStream<HeldWrites<Conn>>;
type Sink = SplitSink<Socket, Message>;

async fn connection(
    gateway: Arc<Gateway>,
    tcp: Conn,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let peer = tcp.peer_addr().ok();
    let security = tcp.security().clone();
    let tcp = HeldWrites::new(tcp);
    let hold = tcp.hold();
    let mut principal = None;
    // The callback's signature is tungstenite's; its error is the HTTP response itself.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        principal = admit(&gateway, request, peer, &hold)
            .and_then(|bearer| {
                transport_principal(bearer, security.principal.clone())
                    .map_err(|e| (StatusCode::UNAUTHORIZED, e))
            })
            .map_err(|(status, e)| refusal(status, e))?;
        Ok(response)
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config));
    // A peer that never completes its upgrade, or never sends a byte, would otherwise hold the
    // connection (and a descriptor) for ever.
    let setup_timeout = gateway.config().connection_setup_timeout;
    let socket = tokio::time::timeout(setup_timeout, upgrade)
        .await
        .map_err(|_| {
            WsError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "upgrade not completed within the connection setup timeout",
            ))
        })??;
    let (mut sink, stream) = socket.split();

    // The client's frames until it closes, the connection fails, or it sends what cannot be
    // read (a message over the limit, a protocol violation). Control frames (ping, pong) are
    // answered by the WebSocket layer itself. Unlike a gRPC half-close, a WebSocket close ends
    // both directions, so it also ends delivery. The read half is kept where this function can
    // take it back, to drain the connection after such a message (`linger`).
    let gone = CancellationToken::new();
    let reading = Arc::new(ReadHalf(Mutex::new(Some(stream))));
    let inbound = SharedRead(reading.clone())
        .scan(false, {
            let gone = gone.clone();
            move |failed, message| {
                if *failed {
                    return future::ready(None);
                }
                future::ready(match read(message) {
                    Read::Frame(frame) => Some(Some(frame)),
                    Read::Skip => Some(None),
                    // The session answers it, then ends the stream with its close code.
                    Read::Fault(rejected) => {
                        *failed = true;
                        Some(Some(Err(rejected)))
                    }
                    Read::Gone => {
                        gone.cancel();
                        None
                    }
                })
            }
        })
        .filter_map(future::ready)
        .boxed();

    let lost = CancellationToken::new();
    let conn = ConnectInfo {
        principal,
        resume: None,
        peer,
        lost: lost.clone(),
        encrypted: security.encrypted,
        transport: Transport::WebSocket,
    };
    // Jittered per connection, so that connections opened together do not close together.
    let max_age = MaxAge::from_config(gateway.config());
    let mut aged = std::pin::pin!(async move {
        match max_age {
            Some(max) => tokio::time::sleep(max.age).await,
            None => future::pending().await,
        }
    });
    let mut too_old = false;
    let ended = {
        let mut outbound = std::pin::pin!(gateway.connect(conn, inbound));
        // Declared lost and not reading: no close handshake can complete either.
        let stuck = || {
            tracing::debug!(?peer, "dropping a websocket whose client stopped reading");
            Ok(())
        };
        loop {
            let item = tokio::select! {
                item = outbound.next() => item,
                _ = gone.cancelled() => None,
                // Dropping the stream detaches the session, which stays resumable.
                () = &mut aged => {
                    too_old = true;
                    None
                }
            };
            let Some(item) = item else { break None };
            // The frames ready now go out in one write: a flush per frame was a system call per
            // frame, most of a chatty session's cost.
            let batch = match feed_ready(&mut sink, &mut outbound, item, &lost).await {
                Some(batch) => batch?,
                None => return stuck(),
            };
            match unless_stuck(sink.flush(), &lost).await {
                Some(flushed) => flushed?,
                None => return stuck(),
            }
            match batch {
                Batch::More => {}
                Batch::Ended(end) => break end,
            }
        }
        // The session's reader, which holds the read half, ends here.
    };
    let close = match &ended {
        Some(end) => close_frame(end),
        None if too_old => CloseFrame {
            code: CloseCode::Restart,
            reason: MAX_AGE_REASON.into(),
        },
        None => CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        },
    };
    // Past its age, the connection's close handshake has the grace a gRPC connection's
    // streams get after its GOAWAY.
    let close_grace = match max_age {
        Some(max) if too_old => max.grace.max(CLOSE_GRACE),
        _ => CLOSE_GRACE,
    };
    let closing = async {
        let _ = sink.send(Message::Close(Some(close))).await;
        let _ = sink.close().await;
    };
    if tokio::time::timeout(close_grace, closing).await.is_err() {
        return Ok(());
    }
    if matches!(ended, Some(StreamEnd::Unreadable(_))) {
        linger(reading, sink).await;
    }
    Ok(())
}

/// How the stream ends for `end`, as a close frame (RFC 6455 §7.4.1).
fn close_frame(end: &StreamEnd) -> CloseFrame {
    let (code, reason) = match end {
        StreamEnd::Superseded => (
            CloseCode::Library(4001),
            "the session was resumed on another stream",
        ),
        StreamEnd::ShuttingDown => (
            CloseCode::Restart,
            "the gateway is shutting down; resume the session",
        ),
        StreamEnd::Unreadable(ReadFault::TooLarge) => (CloseCode::Size, "message too big"),
        StreamEnd::Unreadable(ReadFault::Framing) => (CloseCode::Protocol, "protocol error"),
        StreamEnd::Unreadable(ReadFault::Encoding | ReadFault::Undecodable) => {
            (CloseCode::Invalid, "invalid message data")
        }
    };
    CloseFrame {
        code,
        reason: reason.into(),
    }
}

/// A client message, as the session should see it.
enum Read {
    Frame(Result<Inbound, RejectedFrame>),
    /// Not for the session (ping, pong).
    Skip,
    /// Not readable; nothing after it is.
    Fault(RejectedFrame),
    /// The client closed, or the connection is gone.
    Gone,
}

fn read(message: Result<Message, WsError>) -> Read {
    let fault = |fault, message: String| {
        Read::Fault(RejectedFrame::unreadable(
            fault,
            ArcpError::InvalidRequest(message),
        ))
    };
    match message {
        Ok(Message::Text(text)) => Read::Frame(json::decode(text.as_str())),
        Ok(Message::Binary(_)) => Read::Frame(Err(RejectedFrame::invalid(
            None,
            ArcpError::InvalidRequest(
                "binary frames are not ARCP: send one JSON envelope per text frame".into(),
            ),
        ))),
        Ok(Message::Close(_)) => Read::Gone,
        Ok(_) => Read::Skip,
        Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => fault(
            ReadFault::TooLarge,
            format!("a message of {size} bytes is over the {max_size}-byte limit"),
        ),
        // The client dropped the connection without a close: it left, it did not misbehave.
        Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => Read::Gone,
        Err(WsError::Protocol(violation)) => fault(
            ReadFault::Framing,
            format!("the client broke the WebSocket protocol: {violation}"),
        ),
        Err(WsError::Utf8(_)) => fault(
            ReadFault::Encoding,
            "a text message is not valid UTF-8".into(),
        ),
        Err(_) => Read::Gone,
    }
}

/// The most frames written between two flushes: enough to amortise the system call, few
/// enough that the first of them is not held back long.
const MAX_BATCH: usize = 256;

/// How a batch of ready frames ended.
enum Batch {
    /// With no more frames ready: the stream goes on.
    More,
    /// With the end of the stream: how it ended (`None` for its normal end).
    Ended(Option<StreamEnd>),
}

/// Feeds `first` and then every frame the session has ready without waiting, up to
/// [`MAX_BATCH`], into `sink` (which writes them once its buffer is full, and at the caller's
/// flush). `None` if the client is declared lost while a write waits for it to read.
async fn feed_ready<S, O>(
    sink: &mut S,
    outbound: &mut O,
    first: OutboundItem,
    lost: &CancellationToken,
) -> Option<Result<Batch, WsError>>
where
    S: futures::Sink<Message, Error = WsError> + Unpin,
    O: Stream<Item = OutboundItem> + Unpin,
{
    let mut items = vec![first];
    let mut ended = false;
    while items.len() < MAX_BATCH {
        match outbound.next().now_or_never() {
            Some(Some(next)) => items.push(next),
            Some(None) => {
                ended = true;
                break;
            }
            None => break,
        }
    }
    for text in encode_all(items).await {
        match text {
            Ok(text) => match unless_stuck(sink.feed(Message::text(text)), lost).await? {
                Ok(()) => {}
                Err(e) => return Some(Err(e)),
            },
            Err(end) => return Some(Ok(Batch::Ended(Some(end)))),
        }
    }
    Some(Ok(if ended {
        Batch::Ended(None)
    } else {
        Batch::More
    }))
}

/// From how many frames a batch is encoded in two halves at once.
const PARALLEL_FROM: usize = 64;

/// Encodes `items` as JSON, in order. A large batch (a replay's, or a live stream's that fell
/// behind) is encoded in two halves on two tasks, which the runtime can run on two cores:
/// encoding is most of a WebSocket stream's work, and one task doing it all held a replay to
/// one core.
async fn encode_all(mut items: Vec<OutboundItem>) -> Vec<Result<String, StreamEnd>> {
    let encode = |items: Vec<OutboundItem>| items.into_iter().map(json::encode).collect::<Vec<_>>();
    if items.len() < PARALLEL_FROM {
        return encode(items);
    }
    let second = items.split_off(items.len() / 2);
    // Both halves spawned: the second spawn moves the first out of the worker's own slot,
    // where no other worker could take it.
    let first = tokio::spawn(async move { encode(items) });
    let second = tokio::spawn(async move { encode(second) });
    let (first, second) = futures::future::join(first, second).await;
    let mut texts = joined(first);
    texts.extend(joined(second));
    texts
}

/// A half's texts, from its task.
fn joined(
    half: Result<Vec<Result<String, StreamEnd>>, tokio::task::JoinError>,
) -> Vec<Result<String, StreamEnd>> {
    match half {
        Ok(texts) => texts,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Nothing aborts these tasks: only a runtime shutting down cancels them.
        Err(_) => vec![Err(StreamEnd::ShuttingDown)],
    }
}

/// Runs `write`, unless the client is declared lost while it waits for the client to read:
/// then `None`, and the caller drops the connection.
async fn unless_stuck<F>(write: F, lost: &CancellationToken) -> Option<Result<(), WsError>>
where
    F: Future<Output = Result<(), WsError>>,
{
    tokio::select! {
        biased;
        written = write => Some(written),
        () = lost.cancelled() => None,
    }
}

/// After a message the server could not read, the client may still be sending it: closing the
/// socket with its bytes unread would reset the connection, and the client could lose the error
/// and the close frame already sent. So the write side is shut, and what arrives is read and
/// dropped until the client closes too, for at most [`LINGER`] and [`LINGER_BYTES`].
async fn linger(reading: Arc<ReadHalf>, sink: Sink) {
    let Some(stream) = reading.0.lock().take() else {
        return;
    };
    let Ok(mut socket) = stream.reunite(sink) else {
        return;
    };
    let tcp = socket.get_mut().get_mut();
    let drain = async {
        let _ = tcp.shutdown().await;
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The connection's read half, where both the session's reader and [`linger`] can reach it.
struct ReadHalf(Mutex<Option<SplitStream<Socket>>>);

/// Reads through a [`ReadHalf`]; ends once [`linger`] took it.
struct SharedRead(Arc<ReadHalf>);

impl Stream for SharedRead {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.0 .0.lock().as_mut() {
            Some(stream) => stream.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;
    use crate::{
        encoding::StoredFrame,
        ids::{EventSeq, JobId, SessionId},
        protocol::job_frame::{JobFrame, JobPayload},
        session::output::Outbound,
        store::log::LogEntry,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_encoded_in_halves_keeps_its_order_and_its_end() {
        let session = SessionId::new("sess_1");
        let item = |seq: u64| {
            let frame = StoredFrame::encode(&JobFrame {
                job_id: JobId::new(format!("job_{seq}")),
                trace_id: None,
                payload: JobPayload::Cancelled { reason: None },
            });
            OutboundItem::Frame(
                Some(session.clone()),
                Outbound::Job(LogEntry {
                    seq: EventSeq(seq),
                    frame,
                }),
            )
        };
        for len in [1, PARALLEL_FROM - 1, PARALLEL_FROM, MAX_BATCH] {
            let mut items: Vec<_> = (1..=len as u64).map(item).collect();
            items.push(OutboundItem::End(StreamEnd::ShuttingDown));
            let texts = encode_all(items).await;
            assert_eq!(texts.len(), len + 1);
            for (n, text) in texts[..len].iter().enumerate() {
                let text = text.as_ref().expect("a frame");
                let seq = n + 1;
                assert!(
                    text.contains(&format!("\"job_id\":\"job_{seq}\",\"event_seq\":{seq},")),
                    "frame {seq} in its place: {text}"
                );
            }
            assert_eq!(texts[len], Err(StreamEnd::ShuttingDown));
        }
    }

    #[tokio::test]
    async fn a_send_stuck_on_a_client_declared_lost_is_given_up() {
        let (ours, _theirs) = tokio::io::duplex(1024);
        let mut socket = WebSocketStream::from_raw_socket(ours, Role::Server, None).await;
        let lost = CancellationToken::new();
        let big = || Message::text("x".repeat(64 * 1024));
        let send = unless_stuck(socket.send(big()), &lost);
        tokio::pin!(send);
        // Nobody reads the other end: the send cannot finish.
        assert!(futures::poll!(&mut send).is_pending());
        lost.cancel();
        assert!(send.await.is_none(), "given up once lost");
        // Sends to a client not lost, or that complete at once, are left alone.
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut socket = WebSocketStream::from_raw_socket(ours, Role::Server, None).await;
        let sent = unless_stuck(socket.send(big()), &lost).await;
        assert!(matches!(sent, Some(Ok(()))), "{sent:?}");
        let mut buf = [0u8; 16];
        assert!(theirs.read(&mut buf).await.expect("reads") > 0);
    }
}
