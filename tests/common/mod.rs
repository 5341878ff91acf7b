//! A real gateway on an ephemeral port, and a small client that speaks frames to it.
#![allow(dead_code)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use arcp_gateway::{
    auth::Authenticator,
    config::GatewayConfig,
    ids::Principal,
    proto::{
        self, arcp_client::ArcpClient, client_frame::Payload as In, server_frame::Payload as Out,
        ClientFrame, ServerFrame,
    },
    server, Gateway,
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{metadata::MetadataValue, transport::Channel, Streaming};

/// How long a test waits for a frame before failing. A guard against hangs, not a timing
/// assertion: every frame the tests wait for is due in milliseconds.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(20);

/// The features the runtime implements, offered by the tests' hellos.
pub const FEATURES: &[&str] = &["progress", "agent_versions"];

/// A gateway serving gRPC and WebSocket on 127.0.0.1, each on an ephemeral port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub ws_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a gateway with `config` and the built-in agents. `tokens` are `(token, principal)`
    /// pairs; none means open authentication.
    pub async fn start(config: GatewayConfig, tokens: &[(&str, &str)]) -> TestServer {
        let auth = Authenticator::from_pairs(
            tokens
                .iter()
                .map(|(t, p)| (t.to_string(), Principal::new(*p))),
        );
        let gateway = Gateway::builder(config).auth(auth).build();
        Self::start_gateway(gateway).await
    }

    /// Starts `config` with `agents`, for the single principal `alice` (token `alice-token`).
    pub async fn start_with_agents(
        config: GatewayConfig,
        agents: arcp_gateway::agent::AgentRegistry,
    ) -> TestServer {
        let auth =
            Authenticator::from_pairs([("alice-token".to_string(), Principal::new("alice"))]);
        Self::start_gateway(Gateway::builder(config).auth(auth).agents(agents).build()).await
    }

    /// Starts the default configuration, with session logs bounded to `max_log_frames`, for
    /// the single principal `alice` (token `alice-token`).
    pub async fn start_with_log_bound(max_log_frames: usize) -> TestServer {
        let config = GatewayConfig {
            max_log_frames,
            ..GatewayConfig::default()
        };
        Self::start(config, &[("alice-token", "alice")]).await
    }

    /// Starts the default configuration with two principals: `alice` (token `alice-token`)
    /// and `bob` (token `bob-token`).
    pub async fn start_default() -> TestServer {
        Self::start(
            GatewayConfig::default(),
            &[("alice-token", "alice"), ("bob-token", "bob")],
        )
        .await
    }

    pub async fn start_gateway(gateway: Arc<Gateway>) -> TestServer {
        let listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let ws_listener = server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ws_addr = ws_listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let gw = gateway.clone();
        let task = tokio::spawn(async move {
            server::serve_all(gw, listener, ws_listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("server failed");
        });
        TestServer {
            addr,
            ws_addr,
            gateway,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to test server")
    }

    /// Opens a session stream with no metadata.
    pub async fn open(&self) -> Conn {
        self.open_with(&[]).await.expect("stream opens")
    }

    /// Opens a session stream with the given metadata; `Err` is the status that refused it.
    pub async fn open_with(
        &self,
        metadata: &[(&'static str, &str)],
    ) -> Result<Conn, tonic::Status> {
        let (tx, rx) = mpsc::channel::<ClientFrame>(1024);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        for (key, value) in metadata {
            request
                .metadata_mut()
                .insert(*key, MetadataValue::try_from(*value).unwrap());
        }
        let mut client = ArcpClient::new(self.channel().await);
        let response = client.session(request).await?;
        Ok(Conn {
            tx: Some(tx),
            rx: response.into_inner(),
            next_id: 0,
        })
    }

    /// Opens a stream and completes a hello as `token`; returns the welcome frame.
    pub async fn hello(&self, token: &str) -> (Conn, ServerFrame) {
        let mut conn = self.open().await;
        conn.send(hello(token, FEATURES, None)).await;
        let welcome = conn.recv().await;
        assert!(
            matches!(welcome.payload, Some(Out::SessionWelcome(_))),
            "expected a welcome, got {welcome:?}"
        );
        (conn, welcome)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One client stream.
pub struct Conn {
    tx: Option<mpsc::Sender<ClientFrame>>,
    pub rx: Streaming<ServerFrame>,
    next_id: u64,
}

impl Conn {
    /// Sends a payload in a frame with a fresh `id`; returns that id.
    pub async fn send(&mut self, payload: In) -> String {
        self.next_id += 1;
        let id = format!("c{}", self.next_id);
        self.send_frame(ClientFrame {
            id: id.clone(),
            payload: Some(payload),
            ..Default::default()
        })
        .await;
        id
    }

    pub async fn send_frame(&mut self, frame: ClientFrame) {
        self.tx
            .as_ref()
            .expect("send side open")
            .send(frame)
            .await
            .expect("stream accepts frames");
    }

    /// Closes the client's sending half, keeping the receiving half.
    pub fn close_send(&mut self) {
        self.tx = None;
    }

    /// The next frame; fails the test on a status, end of stream or timeout.
    pub async fn recv(&mut self) -> ServerFrame {
        match self.try_recv().await {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("stream ended while a frame was expected"),
            Err(status) => panic!("stream failed while a frame was expected: {status:?}"),
        }
    }

    /// The next frame, `None` at the end of the stream, or the status it ended with.
    pub async fn try_recv(&mut self) -> Result<Option<ServerFrame>, tonic::Status> {
        tokio::time::timeout(FRAME_TIMEOUT, self.rx.message())
            .await
            .expect("no frame arrived within the timeout")
    }

    /// Receives frames until `pred` holds; returns the frames before it and the match.
    pub async fn recv_until(
        &mut self,
        pred: impl Fn(&ServerFrame) -> bool,
    ) -> (Vec<ServerFrame>, ServerFrame) {
        let mut before = Vec::new();
        loop {
            let frame = self.recv().await;
            if pred(&frame) {
                return (before, frame);
            }
            before.push(frame);
        }
    }

    /// Receives up to and including the job's terminal frame (`job_result` or `job_error`).
    pub async fn recv_until_terminal(&mut self, job_id: &str) -> (Vec<ServerFrame>, ServerFrame) {
        let job_id = job_id.to_owned();
        self.recv_until(move |f| f.job_id == job_id && is_terminal(f))
            .await
    }

    /// Receives up to the job's terminal frame and asserts the job was cancelled (§7.4):
    /// `job_cancelled`, then a `CANCELLED` error.
    pub async fn expect_cancelled(&mut self, job_id: &str) {
        let (before, terminal) = self.recv_until_terminal(job_id).await;
        assert!(
            before
                .iter()
                .any(|f| matches!(f.payload, Some(Out::JobCancelled(_)))),
            "job_cancelled precedes the terminal error: {before:?}"
        );
        assert_eq!(job_error(&terminal).code, "CANCELLED");
    }
}

pub fn is_terminal(frame: &ServerFrame) -> bool {
    matches!(
        frame.payload,
        Some(Out::JobResult(_)) | Some(Out::JobError(_))
    )
}

pub fn hello(token: &str, features: &[&str], resume: Option<proto::ResumeInfo>) -> In {
    In::SessionHello(proto::SessionHello {
        client: Some(proto::ClientInfo {
            name: "arcp-gateway-tests".into(),
            version: "0".into(),
        }),
        auth: Some(proto::Auth {
            scheme: "bearer".into(),
            token: token.into(),
        }),
        capabilities: Some(proto::Capabilities {
            encodings: vec!["protobuf".into()],
            features: features.iter().map(|f| f.to_string()).collect(),
            agents: vec![],
        }),
        resume,
    })
}

pub fn resume_info(session_id: &str, token: &str, last_event_seq: u64) -> proto::ResumeInfo {
    proto::ResumeInfo {
        session_id: session_id.into(),
        resume_token: token.into(),
        last_event_seq,
    }
}

pub fn submit(agent: &str, input: serde_json::Value) -> In {
    In::JobSubmit(proto::JobSubmit {
        agent: agent.into(),
        input: Some(json_value(&input)),
        ..Default::default()
    })
}

pub fn ticker(count: u64, interval_ms: u64) -> In {
    submit(
        "ticker",
        serde_json::json!({"count": count, "interval_ms": interval_ms}),
    )
}

pub fn cancel(job_id: &str) -> In {
    In::JobCancel(proto::JobCancel {
        job_id: job_id.into(),
        reason: "test".into(),
    })
}

pub fn json_value(json: &serde_json::Value) -> prost_types::Value {
    arcp_gateway::transport::grpc::convert::to_value(json)
}

pub fn to_json(value: &prost_types::Value) -> serde_json::Value {
    arcp_gateway::transport::grpc::convert::to_json(value.clone())
}

pub fn welcome(frame: &ServerFrame) -> &proto::SessionWelcome {
    match &frame.payload {
        Some(Out::SessionWelcome(w)) => w,
        other => panic!("expected session_welcome, got {other:?}"),
    }
}

pub fn session_error(frame: &ServerFrame) -> &proto::SessionError {
    match &frame.payload {
        Some(Out::SessionError(e)) => e,
        other => panic!("expected session_error, got {other:?}"),
    }
}

pub fn accepted(frame: &ServerFrame) -> &proto::JobAccepted {
    match &frame.payload {
        Some(Out::JobAccepted(a)) => a,
        other => panic!("expected job_accepted, got {other:?}"),
    }
}

pub fn job_error(frame: &ServerFrame) -> &proto::JobError {
    match &frame.payload {
        Some(Out::JobError(e)) => e,
        other => panic!("expected job_error, got {other:?}"),
    }
}

pub fn job_result(frame: &ServerFrame) -> &proto::JobResult {
    match &frame.payload {
        Some(Out::JobResult(r)) => r,
        other => panic!("expected job_result, got {other:?}"),
    }
}

/// The inline result of a `job_result` frame, as JSON.
pub fn result_json(frame: &ServerFrame) -> serde_json::Value {
    let result = job_result(frame).result.as_ref();
    to_json(result.expect("an inline result"))
}

/// The message of a `log` event frame, if it is one.
pub fn log_message(frame: &ServerFrame) -> Option<&str> {
    match &frame.payload {
        Some(Out::JobEvent(proto::JobEvent {
            body: Some(proto::job_event::Body::Log(l)),
            ..
        })) => Some(&l.message),
        _ => None,
    }
}

/// `progress.current` of a `job_event` frame, if it is a progress event.
pub fn progress_current(frame: &ServerFrame) -> Option<f64> {
    match &frame.payload {
        Some(Out::JobEvent(proto::JobEvent {
            body: Some(proto::job_event::Body::Progress(p)),
            ..
        })) => Some(p.current),
        _ => None,
    }
}

/// Submits and waits for the acceptance; returns the job id and the accepted frame.
pub async fn submit_and_accept(conn: &mut Conn, payload: In) -> (String, ServerFrame) {
    let request_id = conn.send(payload).await;
    let frame = conn.recv().await;
    let a = accepted(&frame);
    assert_eq!(
        a.request_id, request_id,
        "job_accepted echoes the submit id"
    );
    (a.job_id.clone(), frame)
}

/// The session's log, straight from the gateway.
pub async fn session_log(
    server: &TestServer,
    session: &str,
) -> std::sync::Arc<dyn arcp_gateway::event_log::SessionLog> {
    server
        .gateway
        .event_log()
        .open(&arcp_gateway::ids::SessionId::new(session))
        .await
        .expect("the session has a log")
}

/// The session's newest event_seq, straight from the gateway's log.
pub async fn newest(server: &TestServer, session: &str) -> u64 {
    session_log(server, session)
        .await
        .bounds()
        .await
        .expect("the log is readable")
        .newest
        .get()
}

/// Polls the log until it holds `seq` frames. A guard against hangs bounded by a deadline, not
/// a timing assertion.
pub async fn wait_for_log(server: &TestServer, session: &str, seq: u64) {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    loop {
        let n = newest(server, session).await;
        if n >= seq {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never reached {seq} (newest {n})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A `lease_request` map from `(namespace, patterns)` pairs.
pub fn lease(
    entries: &[(&str, &[&str])],
) -> std::collections::HashMap<String, prost_types::ListValue> {
    entries
        .iter()
        .map(|(ns, patterns)| {
            let values = patterns
                .iter()
                .map(|p| prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue((*p).to_owned())),
                })
                .collect();
            ((*ns).to_owned(), prost_types::ListValue { values })
        })
        .collect()
}

/// Receives `n` frames.
pub async fn recv_n(conn: &mut Conn, n: usize) -> Vec<ServerFrame> {
    let mut frames = Vec::with_capacity(n);
    for _ in 0..n {
        frames.push(conn.recv().await);
    }
    frames
}

/// The `event_seq` of each frame.
pub fn seqs(frames: &[ServerFrame]) -> Vec<u64> {
    frames.iter().map(|f| f.event_seq).collect()
}

/// One WebSocket session speaking §5 JSON envelopes.
pub struct WsConn {
    pub ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl TestServer {
    /// Opens a WebSocket to `/arcp`.
    pub async fn ws(&self) -> WsConn {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/arcp", self.ws_addr))
            .await
            .expect("websocket opens");
        WsConn { ws, next_id: 0 }
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

impl WsConn {
    /// Wraps a socket opened by hand (e.g. with custom upgrade headers).
    pub fn from_socket(
        ws: tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> WsConn {
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
        use futures::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .expect("websocket accepts frames");
    }

    /// The next WebSocket message other than ping/pong; `None` once the socket is gone.
    pub async fn next_message(&mut self) -> Option<tokio_tungstenite::tungstenite::Message> {
        use futures::StreamExt;
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
            Some(tokio_tungstenite::tungstenite::Message::Text(text)) => {
                serde_json::from_str(text.as_str()).expect("frames are JSON")
            }
            other => panic!("expected a JSON text frame, got {other:?}"),
        }
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

/// A `job_submit` of `agent` with `input` under `lease_request`.
pub fn submit_leased(
    agent: &str,
    input: serde_json::Value,
    lease_request: std::collections::HashMap<String, prost_types::ListValue>,
) -> In {
    submit_expiring(agent, input, lease_request, None)
}

/// [`submit_leased`] with `lease_constraints.expires_at`.
pub fn submit_expiring(
    agent: &str,
    input: serde_json::Value,
    lease_request: std::collections::HashMap<String, prost_types::ListValue>,
    expires_at: Option<&str>,
) -> In {
    In::JobSubmit(leased_submit(agent, input, lease_request, expires_at))
}

/// The `job.submit` of [`submit_expiring`], for callers that set more of its fields.
pub fn leased_submit(
    agent: &str,
    input: serde_json::Value,
    lease_request: std::collections::HashMap<String, prost_types::ListValue>,
    expires_at: Option<&str>,
) -> proto::JobSubmit {
    proto::JobSubmit {
        agent: agent.into(),
        input: Some(json_value(&input)),
        lease_request,
        lease_constraints: expires_at.map(|at| proto::LeaseConstraints {
            expires_at: at.into(),
        }),
        ..Default::default()
    }
}

/// Now plus `ms` milliseconds, as RFC 3339 UTC with a `Z` suffix.
pub fn in_ms(ms: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::milliseconds(ms))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A test agent that emits `n` log lines for every `n` the test sends and returns
/// `{"lines": total}` on a 0, so the test decides exactly when each frame is logged.
pub struct Pacer {
    steps: tokio::sync::Mutex<mpsc::UnboundedReceiver<u64>>,
}

impl Pacer {
    /// The agent, and the sender that feeds its steps.
    pub fn new() -> (Arc<Pacer>, mpsc::UnboundedSender<u64>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let pacer = Pacer {
            steps: tokio::sync::Mutex::new(rx),
        };
        (Arc::new(pacer), tx)
    }
}

#[async_trait::async_trait]
impl arcp_gateway::agent::Agent for Pacer {
    async fn run(
        &self,
        ctx: arcp_gateway::agent::JobContext,
        _input: serde_json::Value,
    ) -> Result<serde_json::Value, arcp_gateway::ArcpError> {
        let mut steps = self.steps.lock().await;
        let mut lines = 0u64;
        while let Some(n) = steps.recv().await {
            if n == 0 {
                break;
            }
            for _ in 0..n {
                lines += 1;
                ctx.log(arcp_gateway::agent::LogLevel::Info, format!("line {lines}"))
                    .await?;
            }
        }
        Ok(serde_json::json!({ "lines": lines }))
    }
}

/// Sends a ping and returns the frames before its pong. A connection handles frames in order,
/// so everything sent before the ping (acks included) has been acted on when the pong arrives.
pub async fn sync_with_ping(conn: &mut Conn, nonce: &str) -> Vec<ServerFrame> {
    conn.send(In::SessionPing(proto::SessionPing {
        nonce: nonce.into(),
        sent_at: String::new(),
    }))
    .await;
    let nonce = nonce.to_owned();
    let (before, _) = conn
        .recv_until(
            move |f| matches!(&f.payload, Some(Out::SessionPong(p)) if p.ping_nonce == nonce),
        )
        .await;
    before
}

/// The `event_seq` of each frame, in order.
pub fn event_seqs<'a>(frames: impl IntoIterator<Item = &'a ServerFrame>) -> Vec<u64> {
    frames.into_iter().map(|f| f.event_seq).collect()
}
