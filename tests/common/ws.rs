//! The WebSocket client: one session speaking §5 JSON envelopes ([`WsConn`]), and how one
//! opens on an [`Endpoint`].

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

use super::{Endpoint, FRAME_TIMEOUT};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

impl Endpoint {
    /// Opens a WebSocket to `/arcp`.
    pub async fn ws(&self) -> WsConn {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/arcp", self.ws_addr))
            .await
            .expect("websocket opens");
        WsConn::from_socket(ws)
    }

    /// Opens a WebSocket whose socket receives into a buffer of about `bytes` (the kernel's
    /// autotuning off), so that a client that stops reading soon blocks the server's sends.
    pub async fn ws_with_receive_buffer(&self, bytes: u32) -> WsConn {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        let tcp = socket.connect(self.ws_addr).await.expect("tcp connects");
        let (ws, _) = tokio_tungstenite::client_async(
            format!("ws://{}/arcp", self.ws_addr),
            MaybeTlsStream::Plain(tcp),
        )
        .await
        .expect("websocket opens");
        WsConn::from_socket(ws)
    }

    /// Opens a WebSocket from the local address `from` (any of 127.0.0.0/8 is this host), with
    /// `Authorization: Bearer <token>` on the upgrade request if `token` is given; `Err` is
    /// the error the upgrade failed with.
    pub async fn ws_from(
        &self,
        from: std::net::IpAddr,
        token: Option<&str>,
    ) -> Result<WsConn, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(std::net::SocketAddr::new(from, 0))
            .expect("bind the local address");
        let tcp = socket.connect(self.ws_addr).await.expect("tcp connects");
        let mut request = format!("ws://{}/arcp", self.ws_addr)
            .into_client_request()
            .expect("a request");
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().expect("a header value");
            request.headers_mut().insert("authorization", value);
        }
        let upgrade = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp));
        let (ws, _) = tokio::time::timeout(FRAME_TIMEOUT, upgrade)
            .await
            .expect("the upgrade is answered within the timeout")?;
        Ok(WsConn::from_socket(ws))
    }

    /// Opens a WebSocket and completes a hello as `token` offering `features`.
    pub async fn ws_hello(&self, token: &str, features: &[&str]) -> (WsConn, serde_json::Value) {
        let mut conn = self.ws().await;
        conn.send("session.hello", ws_hello_payload(token, features))
            .await;
        let welcome = conn.recv().await;
        assert_eq!(welcome["type"], "session.welcome", "{welcome}");
        (conn, welcome)
    }
}

/// A `session.hello` payload as the spec's JSON example writes it.
pub fn ws_hello_payload(token: &str, features: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "client": {"name": "arcp-gateway-tests", "version": "0"},
        "auth": {"scheme": "bearer", "token": token},
        "capabilities": {"encodings": ["json"], "features": features},
    })
}

/// One WebSocket session speaking §5 JSON envelopes.
pub struct WsConn {
    pub ws: Socket,
    next_id: u64,
}

impl WsConn {
    /// Wraps a socket opened by hand (e.g. with custom upgrade headers).
    pub fn from_socket(ws: Socket) -> WsConn {
        WsConn { ws, next_id: 0 }
    }

    /// Sends an envelope of `kind` with a fresh `id`; returns that id.
    pub async fn send(&mut self, kind: &str, payload: serde_json::Value) -> String {
        self.next_id += 1;
        let id = format!("w{}", self.next_id);
        let frame = serde_json::json!({"arcp": "1.1", "id": id, "type": kind, "payload": payload});
        self.send_text(&frame.to_string()).await;
        id
    }

    /// Sends one text frame as is.
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text))
            .await
            .expect("websocket accepts frames");
    }

    /// The next WebSocket message other than ping/pong; `None` once the socket is gone.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            let message = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .expect("no websocket message within the timeout");
            match message {
                Some(Ok(m)) if m.is_ping() || m.is_pong() => continue,
                Some(Ok(m)) => return Some(m),
                _ => return None,
            }
        }
    }

    /// The next JSON envelope; fails the test on anything else.
    pub async fn recv(&mut self) -> serde_json::Value {
        match self.next_message().await {
            Some(Message::Text(text)) => {
                serde_json::from_str(text.as_str()).expect("frames are JSON")
            }
            other => panic!("expected a JSON text frame, got {other:?}"),
        }
    }

    /// Submits a `ticker` job of `count` ticks `interval_ms` apart and waits for its
    /// acceptance; returns the job id and the `job.accepted` envelope.
    pub async fn submit_ticker(
        &mut self,
        count: u64,
        interval_ms: u64,
    ) -> (String, serde_json::Value) {
        let input = serde_json::json!({"count": count, "interval_ms": interval_ms});
        let id = self
            .send(
                "job.submit",
                serde_json::json!({"agent": "ticker", "input": input}),
            )
            .await;
        let accepted = self.recv().await;
        assert_eq!(accepted["type"], "job.accepted", "{accepted}");
        assert_eq!(accepted["payload"]["request_id"], id);
        let job = accepted["job_id"].as_str().expect("a job_id").to_owned();
        (job, accepted)
    }

    /// Receives envelopes up to and including the terminal frame of `job_id`.
    pub async fn recv_until_terminal(&mut self, job_id: &str) -> Vec<serde_json::Value> {
        let mut frames = Vec::new();
        loop {
            let frame = self.recv().await;
            let done = frame["job_id"] == job_id
                && (frame["type"] == "job.result" || frame["type"] == "job.error");
            frames.push(frame);
            if done {
                return frames;
            }
        }
    }
}

/// The receiving half of a WebSocket.
pub type WsReceiver = futures::stream::SplitStream<Socket>;

impl WsConn {
    /// Sends `message` from a task of its own, since the server may answer before the client
    /// has finished sending it; returns the receiving half, and the task, which ends once the
    /// send is over.
    pub fn send_aside(self, message: Message) -> (WsReceiver, tokio::task::JoinHandle<()>) {
        let (mut sink, stream) = self.ws.split();
        let sending = tokio::spawn(async move {
            // The server may close before the whole message is written; that is its answer.
            let _ = sink.send(message).await;
            let _ = sink.close().await;
        });
        (stream, sending)
    }
}

/// The next message on `stream` other than ping/pong; fails the test if there is none.
pub async fn next_ws(stream: &mut WsReceiver) -> Message {
    loop {
        let message = tokio::time::timeout(FRAME_TIMEOUT, stream.next())
            .await
            .expect("no websocket message within the timeout")
            .expect("the socket is open")
            .expect("the socket reads");
        if !(message.is_ping() || message.is_pong()) {
            return message;
        }
    }
}
