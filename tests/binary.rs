//! End-to-end tests of the `arcp-gateway` binary: a real process on an ephemeral port, driven
//! over gRPC, stopped with SIGTERM.

mod common;

use std::{net::SocketAddr, time::Duration};

use arcp_gateway::{
    proto::{
        self, arcp_client::ArcpClient, client_frame::Payload as In, server_frame::Payload as Out,
        ClientFrame, ServerFrame,
    },
    transport::grpc::convert::{to_json, to_value},
};
use common::{command, GatewayProcess};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{transport::Channel, Code, Streaming};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

/// A guard against hangs, not a timing assertion: startup, frames and shutdown are all due in
/// well under a second, but CI machines can be slow.
const TIMEOUT: Duration = Duration::from_secs(30);

const TOKEN: &str = common::GATEWAY_TOKEN;
const WRONG_TOKEN: &str = "mallory-guessed-token";

/// One open `Session` stream.
struct Session {
    tx: mpsc::Sender<ClientFrame>,
    rx: Streaming<ServerFrame>,
}

impl Session {
    async fn open(channel: Channel) -> Session {
        let (tx, rx) = mpsc::channel(16);
        let rx = ArcpClient::new(channel)
            .session(ReceiverStream::new(rx))
            .await
            .expect("the session stream opens")
            .into_inner();
        Session { tx, rx }
    }

    async fn send(&self, id: &str, payload: In) {
        self.tx
            .send(ClientFrame {
                id: id.into(),
                payload: Some(payload),
                ..Default::default()
            })
            .await
            .expect("the stream accepts frames");
    }

    /// The next message: a frame, the end of the stream, or the status it ended with.
    async fn next(&mut self) -> Result<Option<ServerFrame>, tonic::Status> {
        tokio::time::timeout(TIMEOUT, self.rx.message())
            .await
            .expect("the server answered within the timeout")
    }

    async fn recv(&mut self) -> ServerFrame {
        match self.next().await {
            Ok(Some(frame)) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

/// Opens a stream and says hello as `token`; returns the stream and the first server frame.
async fn hello_as(channel: Channel, token: &str) -> (Session, ServerFrame) {
    let mut session = Session::open(channel).await;
    session
        .send("hello", common::hello(token, common::FEATURES, None))
        .await;
    let first = session.recv().await;
    (session, first)
}

/// Opens a stream, says hello with `features` and expects the welcome.
async fn welcomed(channel: Channel, features: &[&str]) -> Session {
    let mut session = Session::open(channel).await;
    session
        .send("hello", common::hello(TOKEN, features, None))
        .await;
    let welcome = session.recv().await;
    assert!(
        matches!(welcome.payload, Some(Out::SessionWelcome(_))),
        "expected a welcome, got {welcome:?}"
    );
    session
}

#[tokio::test]
async fn serves_a_job_and_shuts_down_gracefully_on_sigterm() {
    let process = GatewayProcess::start("info").await;
    let channel = process.channel().await;

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "arcp.v1.Arcp".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    let (mut session, welcome) = hello_as(channel, TOKEN).await;
    let Some(Out::SessionWelcome(w)) = &welcome.payload else {
        panic!("expected session_welcome, got {welcome:?}");
    };
    assert!(
        !welcome.session_id.is_empty(),
        "the welcome names the session"
    );
    assert!(
        !w.resume_token.is_empty(),
        "the welcome carries a resume token"
    );

    let input = json!({"hello": "world"});
    session
        .send(
            "submit-1",
            In::JobSubmit(proto::JobSubmit {
                agent: "echo".into(),
                input: Some(to_value(&input)),
                ..Default::default()
            }),
        )
        .await;
    let frame = session.recv().await;
    let Some(Out::JobAccepted(accepted)) = &frame.payload else {
        panic!("expected job_accepted, got {frame:?}");
    };
    assert_eq!(accepted.request_id, "submit-1");
    assert!(!accepted.job_id.is_empty());
    let job_id = accepted.job_id.clone();

    let result = loop {
        let frame = session.recv().await;
        assert_eq!(frame.job_id, job_id, "only this job's frames: {frame:?}");
        match frame.payload {
            Some(Out::JobEvent(_)) => continue,
            Some(Out::JobResult(result)) => break result,
            _ => panic!("expected job_result, got {frame:?}"),
        }
    };
    assert_eq!(result.final_status, "success");
    let output = to_json(result.result.expect("an inline result"));
    assert_eq!(output, input);

    // SIGTERM with the session stream still open (its send half too): the stream ends with
    // UNAVAILABLE so the client knows to resume elsewhere, and the process exits cleanly.
    let stream_end = tokio::spawn(async move {
        let end = session.next().await;
        (end, session)
    });
    let (status, log) = process.terminate().await;
    let (end, session) = stream_end.await.unwrap();
    match end {
        Err(status) => assert_eq!(
            status.code(),
            Code::Unavailable,
            "the stream ends with UNAVAILABLE: {status:?}"
        ),
        other => panic!("expected the stream to end with UNAVAILABLE, got {other:?}"),
    }
    assert!(
        status.success(),
        "arcp-gateway exits with success after SIGTERM, got {status}; output:\n{log}"
    );
    drop(session);
}

#[tokio::test]
async fn a_malformed_auth_token_is_refused_at_startup() {
    let run = command(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--auth-token",
        "bad-format",
    ])
    .spawn()
    .expect("spawn arcp-gateway");
    let out = tokio::time::timeout(TIMEOUT, run.wait_with_output())
        .await
        .expect("arcp-gateway exits on a malformed --auth-token")
        .expect("run arcp-gateway");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "exit status {} should be a failure; output:\n{text}",
        out.status
    );
    assert!(
        text.contains("TOKEN=PRINCIPAL"),
        "the error names the expected form; output:\n{text}"
    );
}

#[tokio::test]
async fn tokens_never_reach_the_log() {
    // The gateway's own debug logs too, to cover everything it might say about a hello.
    let process = GatewayProcess::start("info,arcp_gateway=debug").await;
    let channel = process.channel().await;

    // A hello with the configured token is welcomed.
    let (good, welcome) = hello_as(channel.clone(), TOKEN).await;
    assert!(
        matches!(welcome.payload, Some(Out::SessionWelcome(_))),
        "expected session_welcome, got {welcome:?}"
    );

    // A hello with a wrong token is refused.
    let (mut bad, refusal) = hello_as(channel.clone(), WRONG_TOKEN).await;
    let Some(Out::SessionError(error)) = &refusal.payload else {
        panic!("expected session_error, got {refusal:?}");
    };
    assert_eq!(error.code, "UNAUTHENTICATED");
    assert!(
        matches!(bad.next().await, Ok(None) | Err(_)),
        "the refused stream ends"
    );

    // The same two tokens as `authorization` metadata, which is checked before a stream opens.
    let mut client = ArcpClient::new(channel);
    for token in [TOKEN, WRONG_TOKEN] {
        let (tx, rx) = mpsc::channel::<ClientFrame>(1);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let opened = client.session(request).await;
        if token == WRONG_TOKEN {
            let status = opened.expect_err("a wrong bearer token is refused");
            assert_eq!(status.code(), Code::Unauthenticated);
        } else {
            opened.expect("the configured bearer token is accepted");
        }
        drop(tx);
    }

    drop(good);
    let (status, log) = process.terminate().await;
    assert!(status.success(), "exit status {status}; output:\n{log}");
    assert!(
        log.contains("arcp-gateway listening"),
        "the log was captured:\n{log}"
    );
    for secret in [TOKEN, WRONG_TOKEN] {
        assert!(
            !log.contains(secret),
            "the log contains the token {secret:?}:\n{log}"
        );
    }
}

/// §11: a job's tracing span carries its `trace_id` and the recommended
/// `arcp.lease.expires_at` attribute, so the log line that ends the job names them.
#[tokio::test]
async fn job_spans_carry_the_trace_context_and_lease_attributes() {
    let process = GatewayProcess::start("info").await;
    let channel = process.channel().await;
    let mut session = welcomed(channel, &["lease_expires_at", "progress"]).await;

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let expires_at = "2099-01-01T00:00:00Z";
    session
        .tx
        .send(ClientFrame {
            id: "submit-traced".into(),
            trace_id: traceparent.into(),
            payload: Some(In::JobSubmit(proto::JobSubmit {
                agent: "echo".into(),
                input: Some(to_value(&json!("traced"))),
                lease_constraints: Some(proto::LeaseConstraints {
                    expires_at: expires_at.into(),
                }),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .expect("the stream accepts frames");
    loop {
        let frame = session.recv().await;
        assert_eq!(
            frame.trace_id, traceparent,
            "every job frame carries the trace"
        );
        if matches!(frame.payload, Some(Out::JobResult(_))) {
            break;
        }
    }
    drop(session);
    let (status, log) = process.terminate().await;
    assert!(status.success(), "exit status {status}; output:\n{log}");
    let finished = log
        .lines()
        .find(|l| l.contains("job finished"))
        .unwrap_or_else(|| panic!("no `job finished` line:\n{log}"));
    assert!(finished.contains("arcp.job"), "{finished}");
    assert!(finished.contains(traceparent), "{finished}");
    assert!(
        finished.contains(r#"arcp.lease.expires_at="2099-01-01T00:00:00.000Z""#),
        "{finished}"
    );
}

/// §14: every `job.subscribe` is logged for audit with the subscriber, the job, the job's
/// principal and the decision.
#[tokio::test]
async fn subscribe_decisions_are_logged_for_audit() {
    let process = GatewayProcess::start("info").await;
    let channel = process.channel().await;
    let mut owner = welcomed(channel.clone(), &["subscribe"]).await;
    owner
        .send(
            "submit",
            In::JobSubmit(proto::JobSubmit {
                agent: "ticker".into(),
                input: Some(to_value(&json!({"count": 50, "interval_ms": 100}))),
                ..Default::default()
            }),
        )
        .await;
    let Some(Out::JobAccepted(accepted)) = owner.recv().await.payload else {
        panic!("expected job_accepted");
    };
    let mut watcher = welcomed(channel, &["subscribe"]).await;
    watcher
        .send(
            "subscribe",
            In::JobSubscribe(proto::JobSubscribe {
                job_id: accepted.job_id.clone(),
                ..Default::default()
            }),
        )
        .await;
    assert!(matches!(
        watcher.recv().await.payload,
        Some(Out::JobSubscribed(_))
    ));
    drop((owner, watcher));
    let (status, log) = process.terminate().await;
    assert!(status.success(), "exit status {status}; output:\n{log}");
    let audit = log
        .lines()
        .find(|l| l.contains("arcp::audit") && l.contains("job.subscribe"))
        .unwrap_or_else(|| panic!("no audit line for the subscribe:\n{log}"));
    for field in [
        "subscriber=alice",
        &format!("job={}", accepted.job_id),
        "job_principal=alice",
        "decision=\"permit\"",
    ] {
        assert!(audit.contains(field), "{field} in {audit}");
    }
}

/// Sends a ping on `session` and expects its pong.
async fn ping_pong(session: &mut Session, nonce: &str) {
    session.send(nonce, common::ping(nonce)).await;
    let pong = session.recv().await;
    assert!(
        matches!(&pong.payload, Some(Out::SessionPong(p)) if p.ping_nonce == nonce),
        "expected the pong for {nonce}, got {pong:?}"
    );
}

/// A WebSocket session welcomed as alice.
async fn ws_welcomed(addr: SocketAddr) -> common::WsConn {
    let (ws, _) = tokio_timeout(tokio_tungstenite::connect_async(format!(
        "ws://{addr}/arcp"
    )))
    .await
    .expect("the websocket opens");
    let mut conn = common::WsConn::from_socket(ws);
    conn.send("session.hello", common::ws_hello_payload(TOKEN, &[]))
        .await;
    let welcome = conn.recv().await;
    assert_eq!(welcome["type"], "session.welcome", "{welcome}");
    conn
}

async fn ws_ping_pong(conn: &mut common::WsConn, nonce: &str) {
    conn.send(
        "session.ping",
        json!({"nonce": nonce, "sent_at": "2026-05-13T19:42:13.000Z"}),
    )
    .await;
    let pong = conn.recv().await;
    assert_eq!(pong["type"], "session.pong", "{pong}");
    assert_eq!(pong["payload"]["ping_nonce"], nonce, "{pong}");
}

async fn tokio_timeout<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .expect("done within the timeout")
}

/// Issue 16: out of descriptors, each accept loop backs off instead of spinning, warns at a
/// bounded rate (saying how many failures it held back), keeps serving the sessions it has,
/// and serves new clients once descriptors free up.
#[tokio::test]
async fn out_of_descriptors_the_accept_loops_back_off_and_keep_serving() {
    const NOFILE: u32 = 64;
    // Idle connections are held as long as the test needs them, and none is refused as one
    // peer's too many: every one here comes from 127.0.0.1.
    let process = GatewayProcess::start_with(
        "info",
        Some(NOFILE),
        &[
            "--connection-setup-timeout-sec",
            "600",
            "--max-connections-per-peer",
            "100000",
        ],
    )
    .await;
    let mut grpc = welcomed(process.channel().await, common::FEATURES).await;
    let mut ws = ws_welcomed(process.ws_addr).await;

    // More idle connections than the process has descriptors, first to one listener, then,
    // once it is out of them, to the other.
    let mut idle = Vec::new();
    for (addr, transport) in [
        (process.ws_addr, "transport=\"websocket\""),
        (process.addr, "transport=\"grpc\""),
    ] {
        for _ in 0..NOFILE {
            idle.push(
                tokio_timeout(tokio::net::TcpStream::connect(addr))
                    .await
                    .expect("the kernel completes the handshake"),
            );
        }
        process.wait_for_line(&["accept failed", transport]).await;
    }

    // Both listeners are out of descriptors now. Time has to pass for a rate to show: this
    // sleep is the measurement window, not a synchronisation.
    let (exhausted, cpu_before) = (tokio::time::Instant::now(), process.cpu_time());
    ping_pong(&mut grpc, "exhausted-1").await;
    ws_ping_pong(&mut ws, "exhausted-1").await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    ping_pong(&mut grpc, "exhausted-2").await;
    ws_ping_pong(&mut ws, "exhausted-2").await;
    let (window, cpu) = (exhausted.elapsed(), process.cpu_time() - cpu_before);
    assert!(
        cpu < window / 4,
        "{cpu:?} of CPU in {window:?} out of descriptors: the accept loops spin"
    );
    let warnings = process.lines_containing("accept failed");
    // One per listener per 5 s interval, over the window and the setup before it.
    assert!(
        (2..=6).contains(&warnings),
        "{warnings} accept warnings; output:\n{}",
        process.output.lock()
    );
    process
        .wait_for_line(&["accept failed", "suppressed="])
        .await;
    assert!(
        process
            .output
            .lock()
            .lines()
            .any(|l| l.contains("accept failed") && !l.contains("suppressed=0")),
        "a later warning counts the failures held back; output:\n{}",
        process.output.lock()
    );

    // Once the idle connections close, new clients are served on both transports.
    drop(idle);
    let mut fresh = welcomed(process.channel().await, common::FEATURES).await;
    ping_pong(&mut fresh, "fresh").await;
    let mut fresh_ws = ws_welcomed(process.ws_addr).await;
    ws_ping_pong(&mut fresh_ws, "fresh").await;
    ping_pong(&mut grpc, "after").await;

    drop((grpc, ws, fresh, fresh_ws));
    let (status, log) = process.terminate().await;
    assert!(status.success(), "exit status {status}; output:\n{log}");
}

/// Issue 16: SIGTERM ends whatever the clients do: an open `Health/Watch` stream (which needs
/// no credentials) sees NOT_SERVING and ends, a client that stopped reading while its job
/// emits is cut when the grace ends, and the process exits within the grace.
#[tokio::test]
async fn sigterm_ends_health_watch_streams_and_stalled_clients_within_the_grace() {
    let grace = Duration::from_secs(2);
    let process = GatewayProcess::start_with("info", None, &["--shutdown-grace-sec", "2"]).await;
    let channel = process.channel().await;
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("Watch opens")
        .into_inner();
    let first = tokio_timeout(watch.message())
        .await
        .expect("Watch is OK")
        .expect("Watch sends the current status");
    assert_eq!(first.status(), ServingStatus::Serving);

    // A client whose windows hold less than one line, which reads no further than the job's
    // acceptance.
    let narrow = Channel::from_shared(format!("http://{}", process.addr))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut stalled = welcomed(narrow, common::FEATURES).await;
    stalled
        .send(
            "chatter",
            In::JobSubmit(proto::JobSubmit {
                agent: "chatter".into(),
                input: Some(to_value(&json!({"count": 1000, "bytes": 65536}))),
                ..Default::default()
            }),
        )
        .await;
    assert!(matches!(
        stalled.recv().await.payload,
        Some(Out::JobAccepted(_))
    ));
    // One line read: the job is emitting, and the next line, already on its way, fills the
    // window; from here on the client reads nothing.
    assert!(matches!(
        stalled.recv().await.payload,
        Some(Out::JobEvent(_))
    ));

    let watching = tokio::spawn(async move {
        let mut statuses = Vec::new();
        while let Some(response) = tokio_timeout(watch.message())
            .await
            .expect("the Watch stream ends with OK")
        {
            statuses.push(response.status());
        }
        statuses
    });
    let started = tokio::time::Instant::now();
    let (status, log) = process.terminate().await;
    let took = started.elapsed();
    assert!(status.success(), "exit status {status}; output:\n{log}");
    assert!(
        took >= grace && log.contains("gRPC connections still open are cut"),
        "exited {took:?} after SIGTERM, grace {grace:?}: the stalled client was not cut; \
         output:\n{log}"
    );
    assert!(
        took < grace + Duration::from_secs(5),
        "exited {took:?} after SIGTERM, grace {grace:?}; output:\n{log}"
    );
    let statuses = watching.await.expect("the watcher");
    assert_eq!(statuses, [ServingStatus::NotServing]);
    drop(stalled);
}
