//! The table of hostile behaviours in `docs/security.md`, driven through a real server: each
//! row's scenario runs, and what it observes must be what the row says, so the document cannot
//! drift from the code.

mod common;

use std::{collections::BTreeMap, num::NonZeroUsize, time::Duration};

use arcp_gateway::{
    config::GatewayConfig,
    proto::{self, client_frame::Payload as In, server_frame::Payload as Out},
};
use common::*;
use futures::{FutureExt, SinkExt};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::{self, Message};
use tonic_health::pb::health_check_response::ServingStatus;

const DOC: &str = include_str!("../docs/security.md");

/// A row of the table.
struct Row {
    /// What its answer starts with: what the test that drives it observes.
    observed: String,
    /// The test that drives it: `tests/security.rs`, or `tests/FILE.rs::function`.
    driver: String,
}

/// The rows of the table, by id.
fn documented() -> BTreeMap<String, Row> {
    let mut rows = BTreeMap::new();
    let table = DOC
        .split("## Hostile behaviour and bad input")
        .nth(1)
        .expect("docs/security.md has the table section");
    for line in table.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [id, _, answer, driver] = cells[..] else {
            panic!("a row of four cells: {line}")
        };
        if id == "id" || id.starts_with("---") {
            continue;
        }
        let first_code = |cell: &str| cell.split('`').nth(1).map(str::to_owned);
        let row = Row {
            observed: first_code(answer)
                .unwrap_or_else(|| panic!("row {id}: the answer starts with `what is observed`")),
            driver: first_code(driver)
                .unwrap_or_else(|| panic!("row {id}: `the test that drives it`")),
        };
        assert!(
            rows.insert(id.to_owned(), row).is_none(),
            "row {id} appears twice"
        );
    }
    rows
}

/// This file, as a row's driver.
const HERE: &str = "tests/security.rs";

/// Every row's scenario, by id.
const SCENARIOS: &[&str] = &[
    "hello-timeout",
    "bad-bearer",
    "ws-bad-bearer",
    "ws-binary",
    "ws-not-json",
    "other-session",
    "second-hello",
    "stale-resume-token",
    "resume-from-future",
    "cancel-foreign-job",
    "subscribe-foreign-job",
    "ack-undelivered",
    "feature-not-negotiated",
    "duplicate-key",
    "unknown-agent",
    "input-too-large",
    "event-too-large",
    "log-over-bytes",
    "key-too-long",
    "sessions-over-cap",
    "jobs-over-session-cap",
    "subscriptions-over-cap",
    "runtime-over-ceiling",
    "runtime-unbounded",
    "orphaned-job",
    "silent-connection",
    "partial-upgrade",
    "preface-no-stream",
    "connections-over-peer-cap",
    "watch-at-shutdown",
    "stalled-reader-at-shutdown",
    "grpc-oversized-frame",
    "grpc-not-a-frame",
    "grpc-broken-framing",
    "grpc-garbage-first",
    "ws-oversized",
    "ws-not-utf8",
    "wrong-auth-scheme",
    "credential-guessing",
    "stopped-reader",
    "input-too-deep",
    "long-field-in-error",
];

/// Runs the scenario of row `id`; what it observed, in the table's words.
async fn observe(id: &str) -> String {
    match id {
        "hello-timeout" => {
            let config = GatewayConfig {
                hello_timeout: Duration::from_millis(200),
                ..GatewayConfig::default()
            };
            let server = TestServer::start(config, &[("alice-token", "alice")]).await;
            let mut conn = server.open().await;
            let frame = conn.recv().await;
            grpc_answer(&mut conn, &frame).await
        }
        "bad-bearer" => {
            let server = TestServer::start_default().await;
            let mut conn = server.open().await;
            conn.send(hello("mallory", FEATURES, None)).await;
            let frame = conn.recv().await;
            grpc_answer(&mut conn, &frame).await
        }
        "ws-bad-bearer" => {
            let server = TestServer::start_default().await;
            let localhost = std::net::Ipv4Addr::LOCALHOST.into();
            match server.ws_from(localhost, Some("mallory")).await {
                Err(tungstenite::Error::Http(response)) => {
                    format!("HTTP {}", response.status().as_u16())
                }
                Err(other) => format!("upgrade failed: {other}"),
                Ok(_) => "upgraded".into(),
            }
        }
        "ws-binary" => {
            let server = TestServer::start_default().await;
            let (mut conn, _) = server.ws_hello("alice-token", FEATURES).await;
            conn.ws
                .send(Message::binary(vec![1u8, 2, 3]))
                .await
                .unwrap();
            ws_answer(&mut conn).await
        }
        "ws-not-json" => {
            let server = TestServer::start_default().await;
            let (mut conn, _) = server.ws_hello("alice-token", FEATURES).await;
            conn.send_text("{not json").await;
            ws_answer(&mut conn).await
        }
        "other-session" => {
            let server = TestServer::start_default().await;
            let (mut conn, _) = server.hello("alice-token").await;
            conn.send_frame(arcp_gateway::proto::ClientFrame {
                session_id: "sess_someone_else".into(),
                payload: Some(ping("n")),
                ..Default::default()
            })
            .await;
            let frame = conn.recv().await;
            grpc_answer(&mut conn, &frame).await
        }
        "second-hello" => {
            let server = TestServer::start_default().await;
            let (mut conn, _) = server.hello("alice-token").await;
            conn.send(hello("alice-token", FEATURES, None)).await;
            let frame = conn.recv().await;
            grpc_answer(&mut conn, &frame).await
        }
        "stale-resume-token" => {
            let server = TestServer::start_default().await;
            let (conn, welcome) = server.hello("alice-token").await;
            drop(conn);
            let resume = resume_info(&welcome.session_id, "not-the-token", 0);
            let (mut conn, frame) = server
                .resume_with_hello("alice-token", FEATURES, resume)
                .await;
            grpc_answer(&mut conn, &frame).await
        }
        "resume-from-future" => {
            let server = TestServer::start_default().await;
            let (conn, first) = server.hello("alice-token").await;
            drop(conn);
            let token = &welcome(&first).resume_token;
            let resume = resume_info(&first.session_id, token, 1_000);
            let (mut conn, frame) = server
                .resume_with_hello("alice-token", FEATURES, resume)
                .await;
            grpc_answer(&mut conn, &frame).await
        }
        "cancel-foreign-job" => {
            let server = TestServer::start_default().await;
            let (mut alice, _) = server.hello("alice-token").await;
            let (job, _) = submit_and_accept(&mut alice, ticker(1_000, 1_000)).await;
            let (mut bob, _) = server.hello("bob-token").await;
            bob.send(cancel(&job)).await;
            let frame = bob.recv().await;
            grpc_answer(&mut bob, &frame).await
        }
        "subscribe-foreign-job" => {
            let server = TestServer::start_default().await;
            let (mut alice, _) = server.hello("alice-token").await;
            let (job, _) = submit_and_accept(&mut alice, ticker(1_000, 1_000)).await;
            let (mut bob, _) = server.hello_with("bob-token", &["subscribe"]).await;
            bob.send(subscribe(&job, false, None)).await;
            let frame = bob.recv().await;
            grpc_answer(&mut bob, &frame).await
        }
        "ack-undelivered" => {
            let server = TestServer::start_default().await;
            let (mut conn, _) = server.hello_with("alice-token", &["ack"]).await;
            conn.send(ack(1_000)).await;
            let frame = conn.recv().await;
            grpc_answer(&mut conn, &frame).await
        }
        "feature-not-negotiated" => {
            let server = TestServer::start_default().await;
            let (mut conn, _) = server.hello_with("alice-token", &[]).await;
            conn.send(list_jobs()).await;
            let frame = conn.recv().await;
            grpc_answer(&mut conn, &frame).await
        }
        "duplicate-key" => {
            let server = TestServer::start_default().await;
            let (mut conn, _) = server.hello("alice-token").await;
            let keyed = |n: u64| In::JobSubmit(keyed("echo", serde_json::json!({ "n": n }), "k1"));
            submit_and_accept(&mut conn, keyed(1)).await;
            conn.send(keyed(2)).await;
            let (_, frame) = conn
                .recv_until(|f| matches!(f.payload, Some(Out::SessionError(_))))
                .await;
            grpc_answer(&mut conn, &frame).await
        }
        "unknown-agent" => {
            let server = TestServer::start_default().await;
            let (mut conn, _) = server.hello("alice-token").await;
            conn.send(submit("no-such-agent", serde_json::json!({})))
                .await;
            let frame = conn.recv().await;
            grpc_answer(&mut conn, &frame).await
        }
        "input-too-large" => {
            let server = start(GatewayConfig {
                max_input_bytes: 1024,
                ..GatewayConfig::default()
            })
            .await;
            let (mut conn, _) = server.hello(ALICE).await;
            conn.send(submit("echo", serde_json::json!("x".repeat(2048))))
                .await;
            let frame = conn.recv().await;
            grpc_answer(&mut conn, &frame).await
        }
        "event-too-large" => {
            let server = start(GatewayConfig {
                max_event_bytes: 1024,
                ..GatewayConfig::default()
            })
            .await;
            let (mut conn, _) = server.hello(ALICE).await;
            job_answer(&mut conn, chatter(1, 2048)).await
        }
        "log-over-bytes" => {
            let server = start(GatewayConfig {
                max_log_bytes: 64 * 1024,
                ..GatewayConfig::default()
            })
            .await;
            let (mut conn, first) = server.hello(ALICE).await;
            submit_and_accept(&mut conn, chatter(500, 1024)).await;
            drop(conn);
            let token = &welcome(&first).resume_token;
            let session = &first.session_id;
            // Accepted, 500 lines and the result, all logged while nobody reads.
            wait_for_log(&server, session, 502).await;
            let resume = resume_info(session, token, 0);
            let (mut conn, frame) = server.resume_with_hello(ALICE, FEATURES, resume).await;
            grpc_answer(&mut conn, &frame).await
        }
        "key-too-long" => {
            let server = TestServer::start_default().await;
            let (mut conn, _) = server.hello(ALICE).await;
            let key = "k".repeat(1024);
            conn.send(In::JobSubmit(keyed("echo", serde_json::json!(1), &key)))
                .await;
            let frame = conn.recv().await;
            grpc_answer(&mut conn, &frame).await
        }
        "sessions-over-cap" => {
            let server = start(GatewayConfig {
                max_sessions_per_principal: 1,
                ..GatewayConfig::default()
            })
            .await;
            let _held = server.hello(ALICE).await;
            let mut conn = server.open().await;
            conn.send(hello(ALICE, FEATURES, None)).await;
            let frame = conn.recv().await;
            grpc_answer(&mut conn, &frame).await
        }
        "jobs-over-session-cap" => {
            let server = start(GatewayConfig {
                max_jobs_per_session: 1,
                ..GatewayConfig::default()
            })
            .await;
            let (mut conn, _) = server.hello(ALICE).await;
            submit_and_accept(&mut conn, ticker(1, 86_400_000)).await;
            conn.send(ticker(1, 86_400_000)).await;
            let frame = conn.recv().await;
            grpc_answer(&mut conn, &frame).await
        }
        "subscriptions-over-cap" => {
            let server = start(GatewayConfig {
                max_subscriptions_per_session: 1,
                ..GatewayConfig::default()
            })
            .await;
            let (mut owner, _) = server.hello(ALICE).await;
            let (first, _) = submit_and_accept(&mut owner, ticker(1, 86_400_000)).await;
            let (second, _) = submit_and_accept(&mut owner, ticker(1, 86_400_000)).await;
            let (mut watcher, _) = server.hello_with(ALICE, &["subscribe"]).await;
            watcher.send(subscribe(&first, false, None)).await;
            watcher
                .recv_until(|f| matches!(f.payload, Some(Out::JobSubscribed(_))))
                .await;
            watcher.send(subscribe(&second, false, None)).await;
            let frame = watcher.recv().await;
            grpc_answer(&mut watcher, &frame).await
        }
        "runtime-over-ceiling" => {
            let server = TestServer::start_default().await;
            let (mut conn, _) = server.hello(ALICE).await;
            conn.send(In::JobSubmit(proto::JobSubmit {
                agent: "echo".into(),
                max_runtime_sec: 30 * 24 * 3600,
                ..Default::default()
            }))
            .await;
            let frame = conn.recv().await;
            grpc_answer(&mut conn, &frame).await
        }
        "runtime-unbounded" => {
            let server = start(GatewayConfig {
                default_max_runtime: Duration::from_millis(100),
                ..GatewayConfig::default()
            })
            .await;
            let (mut conn, _) = server.hello(ALICE).await;
            job_answer(&mut conn, ticker(1, 86_400_000)).await
        }
        "orphaned-job" => {
            let server = start(GatewayConfig {
                resume_window: Duration::from_millis(100),
                sweep_interval: Duration::from_millis(20),
                ..GatewayConfig::default()
            })
            .await;
            let (mut owner, _) = server.hello(ALICE).await;
            let (job, _) = submit_and_accept(&mut owner, ticker(1, 86_400_000)).await;
            let (mut watcher, _) = server.hello_with(ALICE, &["subscribe"]).await;
            watcher.send(subscribe(&job, false, None)).await;
            drop(owner);
            let (_, terminal) = watcher.recv_until_terminal(&job).await;
            terminal_answer(&terminal)
        }
        "silent-connection" => {
            let server = setup_deadline(Duration::from_millis(200), 256).await;
            let mut tcp = connect_raw(server.addr).await;
            wait_closed(&mut tcp).await;
            "closed".into()
        }
        "partial-upgrade" => {
            let server = setup_deadline(Duration::from_millis(200), 256).await;
            let mut tcp = connect_raw(server.ws_addr).await;
            tcp.write_all(PARTIAL_UPGRADE).await.unwrap();
            wait_closed(&mut tcp).await;
            "closed".into()
        }
        "preface-no-stream" => {
            let server = setup_deadline(Duration::from_millis(200), 256).await;
            let mut tcp = connect_raw(server.addr).await;
            tcp.write_all(HTTP2_PREFACE).await.unwrap();
            tcp.write_all(&EMPTY_SETTINGS).await.unwrap();
            wait_closed(&mut tcp).await;
            "closed".into()
        }
        "connections-over-peer-cap" => {
            let server = setup_deadline(Duration::from_secs(600), 1).await;
            let (mut held, _) = server.ws_hello(ALICE, FEATURES).await;
            let mut tcp = connect_raw(server.addr).await;
            wait_closed(&mut tcp).await;
            // The connection the peer already had is untouched.
            assert!(
                ws_answer_to_ping(&mut held).await,
                "the admitted session answers"
            );
            "closed".into()
        }
        "watch-at-shutdown" => {
            let server = start(GatewayConfig::default()).await;
            let watch = serving_watch(&server.channel().await, "").await;
            let (statuses, stopped) = tokio::join!(statuses_until_end(watch), stop(server));
            if !stopped {
                return "the stop did not end".into();
            }
            match statuses[..] {
                [ServingStatus::NotServing] => "NOT_SERVING, then the stream ends".into(),
                _ => format!("{statuses:?}"),
            }
        }
        "stalled-reader-at-shutdown" => {
            let grace = Duration::from_millis(500);
            let server = start(GatewayConfig {
                shutdown_grace: grace,
                max_log_frames: 64,
                ..GatewayConfig::default()
            })
            .await;
            let mut stalled = open_on(narrow_channel(server.addr).await, &[])
                .await
                .expect("the stream opens");
            stalled.send(hello(ALICE, FEATURES, None)).await;
            let session = stalled.recv().await.session_id;
            stalled.send(chatter(1_000, 65_536)).await;
            // A job runs at most half its log (32 frames) ahead of its reader: once the log
            // holds 35, the client has stopped taking frames.
            wait_for_log(&server, &session, 35).await;
            let started = tokio::time::Instant::now();
            let stopped = stop(server).await;
            let took = started.elapsed();
            if !stopped {
                "the stop did not end".into()
            } else if took >= grace {
                "cut at the grace".into()
            } else {
                format!("the stop took {took:?}, before the grace")
            }
        }
        "grpc-oversized-frame" => {
            let server = start(GatewayConfig::default()).await;
            let (mut conn, _) = server.hello(ALICE).await;
            conn.send(submit("echo", serde_json::json!("x".repeat(5 << 20))))
                .await;
            let frame = conn.recv().await;
            then_status(&frame, conn.try_recv().await)
        }
        "grpc-not-a-frame" => {
            let server = start(GatewayConfig::default()).await;
            let mut conn = raw_session(&server).await;
            // Well framed, but a field key whose varint never ends.
            conn.send_bytes(grpc_message(&[0xff; 4])).await;
            let frame = conn.recv().await;
            let Some(Out::SessionError(e)) = &frame.payload else {
                return format!("{:?}", frame.payload);
            };
            conn.send("p", ping("after")).await;
            match conn.recv().await.payload {
                Some(Out::SessionPong(_)) => format!("session_error {}, session continues", e.code),
                other => format!("session_error {}, then {other:?}", e.code),
            }
        }
        "grpc-broken-framing" => {
            let server = start(GatewayConfig::default()).await;
            let mut conn = raw_session(&server).await;
            // A compression flag no gRPC client sends.
            conn.send_bytes(b"\x7f\xde\xad\xbe\xef".to_vec()).await;
            let frame = conn.recv().await;
            then_status(&frame, conn.try_recv().await)
        }
        "grpc-garbage-first" => {
            let server = start(GatewayConfig::default()).await;
            let mut conn = server.open_raw().await;
            conn.send_bytes(b"\x16\x03\x01 not grpc at all".to_vec())
                .await;
            let frame = conn.recv().await;
            then_status(&frame, conn.try_recv().await)
        }
        "ws-oversized" => {
            let server = start(GatewayConfig::default()).await;
            let (conn, _) = server.ws_hello(ALICE, FEATURES).await;
            ws_then_close(conn, Message::text("x".repeat(17_000_000))).await
        }
        "ws-not-utf8" => {
            use tokio_tungstenite::tungstenite::protocol::frame::{
                coding::{Data, OpCode},
                Frame,
            };
            let server = start(GatewayConfig::default()).await;
            let (conn, _) = server.ws_hello(ALICE, FEATURES).await;
            let frame = Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
            ws_then_close(conn, Message::Frame(frame)).await
        }
        "wrong-auth-scheme" => {
            let server = start(GatewayConfig::default()).await;
            let mut conn = server.open().await;
            let mut hello = hello(ALICE, FEATURES, None);
            if let In::SessionHello(h) = &mut hello {
                h.auth.as_mut().expect("the hello authenticates").scheme = "basic".into();
            }
            conn.send(hello).await;
            let frame = conn.recv().await;
            grpc_answer(&mut conn, &frame).await
        }
        "credential-guessing" => {
            let server = start(GatewayConfig {
                auth_failure_limit: 1,
                auth_failure_delay: Duration::from_millis(300),
                ..GatewayConfig::default()
            })
            .await;
            let guess = |channel: tonic::transport::Channel| async move {
                let mut conn = open_on(channel, &[]).await.expect("stream opens");
                conn.send(hello("guess", FEATURES, None)).await;
                session_error(&conn.recv().await).clone()
            };
            let first = guess(server.channel().await).await;
            let throttle = server.gateway.auth_throttle();
            let second = tokio::spawn(guess(server.channel().await));
            wait_until("the second guess is held back", || throttle.waiting() == 1).await;
            let second = second.await.expect("the guess");
            if second.code == first.code && second.message == first.message {
                "the same error, answered late".into()
            } else {
                format!("first {first:?}, then {second:?}")
            }
        }
        "stopped-reader" => {
            let server = start(GatewayConfig {
                heartbeat_interval_sec: 1,
                ..GatewayConfig::default()
            })
            .await;
            let (mut conn, _) = server.hello_with(ALICE, &["heartbeat"]).await;
            submit_and_accept(&mut conn, chatter(600, 65_536)).await;
            // From here the client neither reads nor sends.
            wait_until("the session is detached", || {
                server.stores.resume.attached() == 0
            })
            .await;
            drop(conn);
            "detached".into()
        }
        "input-too-deep" => {
            let server = start(GatewayConfig::default()).await;
            let (mut conn, _) = server.hello(ALICE).await;
            let mut input = serde_json::json!(1);
            for _ in 0..30 {
                input = serde_json::json!([input]);
            }
            conn.send(submit("echo", input)).await;
            let frame = conn.recv().await;
            grpc_answer(&mut conn, &frame).await
        }
        "long-field-in-error" => {
            let server = start(GatewayConfig::default()).await;
            let (mut conn, _) = server.hello(ALICE).await;
            conn.send(submit(&"a@".repeat(500_000), serde_json::json!(1)))
                .await;
            let e = session_error(&conn.recv().await).clone();
            if e.message.len() < 256 {
                format!("session_error {}, message under 256 bytes", e.code)
            } else {
                format!(
                    "session_error {}, message of {} bytes",
                    e.code,
                    e.message.len()
                )
            }
        }
        other => panic!("no scenario for row {other}"),
    }
}

const ALICE: &str = "alice-token";

/// A gateway for alice whose connections must be useful within `setup`, at most `per_peer`
/// from one address.
async fn setup_deadline(setup: Duration, per_peer: usize) -> TestServer {
    start(GatewayConfig {
        connection_setup_timeout: setup,
        max_connections_per_peer: NonZeroUsize::new(per_peer).expect("a cap of at least 1"),
        ..GatewayConfig::default()
    })
    .await
}

/// Stops `server`; whether the stop ended within [`FRAME_TIMEOUT`].
async fn stop(server: TestServer) -> bool {
    tokio::time::timeout(FRAME_TIMEOUT, server.stop())
        .await
        .is_ok()
}

/// A gateway with `config` for alice.
async fn start(config: GatewayConfig) -> TestServer {
    TestServer::start(config, &[(ALICE, "alice")]).await
}

fn chatter(count: u64, bytes: u64) -> In {
    submit(
        "chatter",
        serde_json::json!({"count": count, "bytes": bytes}),
    )
}

/// Submits `payload` and reads to the job's terminal frame: [`terminal_answer`].
async fn job_answer(conn: &mut Conn, payload: In) -> String {
    let (job, _) = submit_and_accept(conn, payload).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    terminal_answer(&terminal)
}

/// `job_error CODE` or `job_result STATUS`.
fn terminal_answer(terminal: &arcp_gateway::proto::ServerFrame) -> String {
    match &terminal.payload {
        Some(Out::JobError(e)) => format!("job_error {}", e.code),
        Some(Out::JobResult(r)) => format!("job_result {}", r.final_status),
        other => format!("{other:?}"),
    }
}

/// `session_error CODE, session continues` if a ping after the error still gets its pong,
/// `..., stream ends` if the stream ends instead; anything else as it is.
async fn grpc_answer(conn: &mut Conn, frame: &arcp_gateway::proto::ServerFrame) -> String {
    let Some(Out::SessionError(error)) = &frame.payload else {
        return format!("{:?}", frame.payload);
    };
    assert!(!error.message.is_empty(), "errors explain themselves");
    let code = &error.code;
    if !conn.try_send(ping("after")).await {
        return format!("session_error {code}, stream ends");
    }
    loop {
        match conn.try_recv().await {
            Ok(Some(f)) if matches!(f.payload, Some(Out::SessionPong(_))) => {
                return format!("session_error {code}, session continues")
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return format!("session_error {code}, stream ends"),
        }
    }
}

/// A raw gRPC stream with a completed hello.
async fn raw_session(server: &TestServer) -> RawConn {
    let mut conn = server.open_raw().await;
    conn.send("h", hello(ALICE, FEATURES, None)).await;
    welcome(&conn.recv().await);
    conn
}

/// `session_error CODE, then status STATUS with arcp-error-code CODE`, for a stream that ends
/// after the error.
fn then_status(
    frame: &proto::ServerFrame,
    ended: Result<Option<proto::ServerFrame>, tonic::Status>,
) -> String {
    let Some(Out::SessionError(e)) = &frame.payload else {
        return format!("{:?}", frame.payload);
    };
    match ended {
        Err(status) => format!(
            "session_error {}, then status {} with arcp-error-code {}",
            e.code,
            grpc_code_name(status.code()),
            arcp_code(&status).unwrap_or("(none)")
        ),
        other => format!("session_error {}, then {other:?}", e.code),
    }
}

/// A gRPC code as the gRPC specification spells it.
fn grpc_code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

/// Sends `message` and reads the answer: `session_error CODE, then close N`.
async fn ws_then_close(conn: WsConn, message: Message) -> String {
    let (mut stream, sending) = conn.send_aside(message);
    let error = next_ws(&mut stream).await;
    let close = next_ws(&mut stream).await;
    sending.await.expect("the sender finished");
    let code = match &error {
        Message::Text(text) => serde_json::from_str::<serde_json::Value>(text.as_str())
            .map(|v| v["payload"]["code"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default(),
        other => return format!("{other:?}"),
    };
    match close {
        Message::Close(Some(frame)) => {
            format!("session_error {code}, then close {}", u16::from(frame.code))
        }
        other => format!("session_error {code}, then {other:?}"),
    }
}

/// Whether a ping gets its pong.
async fn ws_answer_to_ping(conn: &mut WsConn) -> bool {
    conn.send("session.ping", serde_json::json!({"nonce": "alive"}))
        .await;
    loop {
        match conn.next_message().await {
            Some(Message::Text(text)) if text.contains("session.pong") => return true,
            Some(Message::Text(_)) => continue,
            _ => return false,
        }
    }
}

/// The WebSocket counterpart of [`grpc_answer`], for the next envelope.
async fn ws_answer(conn: &mut WsConn) -> String {
    let frame = conn.recv().await;
    if frame["type"] != "session.error" {
        return frame.to_string();
    }
    let code = frame["payload"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    conn.send("session.ping", serde_json::json!({"nonce": "after"}))
        .await;
    loop {
        match conn.next_message().await {
            Some(Message::Text(text)) if text.contains("session.pong") => {
                return format!("session_error {code}, session continues")
            }
            Some(Message::Text(_)) => continue,
            _ => return format!("session_error {code}, stream ends"),
        }
    }
}

#[test]
fn the_table_and_the_scenarios_name_the_same_rows() {
    let rows: Vec<String> = documented()
        .into_iter()
        .filter(|(_, row)| row.driver == HERE)
        .map(|(id, _)| id)
        .collect();
    let mut scenarios: Vec<String> = SCENARIOS.iter().map(|s| s.to_string()).collect();
    scenarios.sort();
    assert_eq!(rows, scenarios, "docs/security.md rows vs {HERE} scenarios");
}

#[test]
fn rows_driven_elsewhere_name_a_test_that_exists() {
    for (id, row) in documented().into_iter().filter(|(_, r)| r.driver != HERE) {
        let (file, test) = row
            .driver
            .split_once("::")
            .unwrap_or_else(|| panic!("row {id}: driven by FILE::test, not {}", row.driver));
        let source = std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_else(|e| panic!("row {id}: {file}: {e}"));
        assert!(
            source.contains(&format!("#[tokio::test]\nasync fn {test}()")),
            "row {id}: {file} has no test {test}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_row_of_the_table_is_what_the_server_does() {
    let mut wrong = Vec::new();
    for (id, row) in documented().into_iter().filter(|(_, r)| r.driver == HERE) {
        let observed = std::panic::AssertUnwindSafe(observe(&id))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| "the scenario panicked".into());
        if observed != row.observed {
            wrong.push(format!(
                "{id}: documented `{}`, observed `{observed}`",
                row.observed
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/security.md is wrong:\n{}",
        wrong.join("\n")
    );
}
