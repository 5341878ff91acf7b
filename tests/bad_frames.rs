//! Every bad frame gets an answer, through the real server: over gRPC a message over the 4 MiB
//! limit, bytes that break gRPC's framing, and a complete message that is not a ClientFrame;
//! over WebSocket a 17 MB message and protocol violations. Where the transport can read on,
//! the session answers and carries on; where it cannot, the stream ends with the transport's
//! own error (a gRPC status carrying `arcp-error-code`, a WebSocket close code), never as a
//! clean end or a silently dead reader, and the session stays resumable.

mod common;

use arcp_gateway::{
    config::GatewayConfig,
    proto::{self, server_frame::Payload as Out},
    ErrorCode,
};
use common::*;

use tokio_tungstenite::tungstenite::{
    protocol::{
        frame::{
            coding::{CloseCode, Data, OpCode},
            Frame,
        },
        CloseFrame,
    },
    Message,
};

/// gRPC's default limit on a message the server decodes, which the gateway keeps.
const GRPC_LIMIT: usize = 4 * 1024 * 1024;
/// The WebSocket transport's limit on one message.
const WS_LIMIT: usize = 16 * 1024 * 1024;

async fn start() -> TestServer {
    TestServer::start(GatewayConfig::default(), &[("alice-token", "alice")]).await
}

/// Asserts `frame` is an `INVALID_REQUEST` session error that answers no frame in particular
/// (none could be read) and mentions `mentions`.
fn expect_unreadable(frame: &proto::ServerFrame, mentions: &str) {
    let e = expect_error(frame, ErrorCode::InvalidRequest, Some(""));
    assert!(
        e.message.contains(mentions),
        "the error says what was wrong ({mentions:?}): {}",
        e.message
    );
}

/// Asserts the stream ended with gRPC code `code`, carrying `INVALID_REQUEST` in metadata.
fn expect_status(ended: Result<Option<proto::ServerFrame>, tonic::Status>, code: tonic::Code) {
    let status = match ended {
        Err(status) => status,
        other => panic!("expected the stream to end with a status, got {other:?}"),
    };
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(arcp_code(&status), Some("INVALID_REQUEST"), "{status:?}");
    assert!(!status.message().is_empty());
}

/// Waits for `session`'s stream to let it go (its resume window started), then resumes it on
/// a new stream and proves the new stream works.
async fn resumes(server: &TestServer, session: &str, token: &str) {
    wait_until("the session is detached", || {
        server.stores.resume.attached() == 0
    })
    .await;
    let (mut conn, first) = server
        .resume_with_hello("alice-token", FEATURES, resume_info(session, token, 0))
        .await;
    assert!(!welcome(&first).resume_token.is_empty());
    assert_eq!(first.session_id, session, "the same session continues");
    sync_with_ping(&mut conn, "after-resume").await;
}

/// A raw stream with a completed hello; returns it with the session id and resume token.
async fn raw_session(server: &TestServer) -> (RawConn, String, String) {
    let mut conn = server.open_raw().await;
    conn.send("h1", hello("alice-token", FEATURES, None)).await;
    let w = conn.recv().await;
    let token = welcome(&w).resume_token.clone();
    (conn, w.session_id, token)
}

#[tokio::test]
async fn a_grpc_message_over_the_limit_is_answered_then_ends_the_stream_and_the_session_resumes() {
    let server = start().await;
    let (mut conn, w) = server.hello("alice-token").await;
    let token = welcome(&w).resume_token.clone();
    // A job submission whose input alone is over the limit, from the generated client.
    let input = serde_json::json!("x".repeat(GRPC_LIMIT + 1024));
    conn.send(submit("echo", input)).await;
    expect_unreadable(&conn.recv().await, &GRPC_LIMIT.to_string());
    expect_status(conn.try_recv().await, tonic::Code::ResourceExhausted);
    assert!(server.stores.jobs.is_empty(), "nothing was submitted");
    resumes(&server, &w.session_id, &token).await;
}

#[tokio::test]
async fn bytes_that_break_grpc_framing_after_the_hello_are_answered_and_the_session_resumes() {
    let server = start().await;
    // A compression flag other than 0 or 1, then a 4 GiB length: no gRPC client sends these.
    for garbage in [
        b"\x7f\xde\xad\xbe\xef garbage".to_vec(),
        b"\x00\xff\xff\xff\xff".to_vec(),
    ] {
        let (mut conn, session, token) = raw_session(&server).await;
        conn.send_bytes(garbage.clone()).await;
        let frame = conn.recv().await;
        let ended = conn.try_recv().await;
        if garbage[0] == 0 {
            expect_unreadable(&frame, "size limit");
            expect_status(ended, tonic::Code::ResourceExhausted);
        } else {
            expect_unreadable(&frame, "not gRPC messages");
            expect_status(ended, tonic::Code::InvalidArgument);
        }
        resumes(&server, &session, &token).await;
    }
}

#[tokio::test]
async fn a_message_that_is_not_a_client_frame_is_answered_and_the_stream_reads_on() {
    let server = start().await;
    let (mut conn, session, _) = raw_session(&server).await;
    // Well framed, but a field key whose varint never ends.
    conn.send_bytes(grpc_message(&[0xff; 4])).await;
    expect_unreadable(&conn.recv().await, "not an arcp.v1.ClientFrame");
    // The stream is still in step: the next frame is read and answered.
    conn.send("p1", ping("still-here")).await;
    let pong = conn.recv().await;
    match &pong.payload {
        Some(Out::SessionPong(p)) => assert_eq!(p.ping_nonce, "still-here"),
        other => panic!("expected session_pong, got {other:?}"),
    }
    assert_eq!(pong.session_id, session);
    assert_eq!(server.stores.resume.attached(), 1, "still attached");
}

#[tokio::test]
async fn garbage_as_the_first_frame_ends_with_a_status_carrying_the_arcp_code() {
    let server = start().await;
    for (garbage, code, mentions) in [
        (
            b"\x16\x03\x01 not grpc at all".to_vec(),
            tonic::Code::InvalidArgument,
            "not gRPC messages",
        ),
        (
            grpc_message(&[0xff; 4]),
            tonic::Code::InvalidArgument,
            "not an arcp.v1.ClientFrame",
        ),
        (
            b"\x00\x7f\xff\xff\xff".to_vec(),
            tonic::Code::ResourceExhausted,
            "size limit",
        ),
    ] {
        let mut conn = server.open_raw().await;
        conn.send_bytes(garbage).await;
        let frame = conn.recv().await;
        expect_unreadable(&frame, mentions);
        assert!(frame.session_id.is_empty(), "no session was opened");
        expect_status(conn.try_recv().await, code);
    }
    assert_eq!(server.session_count(), 0);
}

/// Asserts `message` is an `INVALID_REQUEST` `session.error` mentioning `mentions`.
fn expect_ws_error(message: &Message, mentions: &str) {
    let Message::Text(text) = message else {
        panic!("expected a session.error, got {message:?}");
    };
    let frame: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON");
    assert_eq!(frame["type"], "session.error", "{frame}");
    assert_eq!(frame["payload"]["code"], "INVALID_REQUEST", "{frame}");
    let said = frame["payload"]["message"].as_str().unwrap_or_default();
    assert!(said.contains(mentions), "{mentions:?} in {said}");
}

fn expect_close(message: &Message, code: CloseCode) {
    match message {
        Message::Close(Some(CloseFrame { code: got, .. })) => assert_eq!(*got, code),
        other => panic!("expected a close with {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_17_mb_websocket_message_gets_an_error_naming_the_limit_then_close_1009() {
    let server = start().await;
    let (conn, welcome) = server.ws_hello("alice-token", &["progress"]).await;
    let session = welcome["session_id"].as_str().unwrap().to_owned();
    let token = welcome["payload"]["resume_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let text = "x".repeat(17 * 1000 * 1000);
    let (mut stream, sending) = conn.send_aside(Message::text(text));
    expect_ws_error(&next_ws(&mut stream).await, &WS_LIMIT.to_string());
    expect_close(&next_ws(&mut stream).await, CloseCode::Size);
    sending.await.expect("the sender finished");
    // The session outlives its connection, as after any drop.
    wait_until("the session is detached", || {
        server.stores.resume.attached() == 0
    })
    .await;
    let (mut resumed, first) = server
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, 0))
        .await;
    assert_eq!(first.session_id, session);
    sync_with_ping(&mut resumed, "after-resume").await;
}

#[tokio::test]
async fn websocket_protocol_violations_get_an_error_then_their_close_code() {
    let server = start().await;
    for (frame, code, mentions) in [
        // An opcode RFC 6455 reserves.
        (
            Frame::message(b"{}".to_vec(), OpCode::Data(Data::Reserved(3)), true),
            CloseCode::Protocol,
            "WebSocket protocol",
        ),
        // A text message that is not UTF-8.
        (
            Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true),
            CloseCode::Invalid,
            "UTF-8",
        ),
    ] {
        let (conn, _) = server.ws_hello("alice-token", &["progress"]).await;
        let (mut stream, sending) = conn.send_aside(Message::Frame(frame));
        expect_ws_error(&next_ws(&mut stream).await, mentions);
        expect_close(&next_ws(&mut stream).await, code);
        sending.await.expect("the sender finished");
    }
}

#[tokio::test]
async fn a_17_mb_first_websocket_message_is_refused_the_same_way() {
    let server = start().await;
    let conn = server.ws().await;
    let (mut stream, sending) = conn.send_aside(Message::text("x".repeat(17 * 1000 * 1000)));
    expect_ws_error(&next_ws(&mut stream).await, &WS_LIMIT.to_string());
    expect_close(&next_ws(&mut stream).await, CloseCode::Size);
    sending.await.expect("the sender finished");
    assert_eq!(server.session_count(), 0);
}
