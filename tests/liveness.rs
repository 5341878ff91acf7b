//! Liveness is judged on what the client does (§6.4, §13.1), through the real server: a client
//! that negotiated `heartbeat`, stopped reading while its job emits big frames, and sends
//! nothing, is declared lost two intervals after it last spoke although the server's send to
//! it is stuck. The session detaches (its resume window starts, its jobs stop pacing themselves
//! to the dead reader) and resumes with every frame; the stuck transport ends as soon as it
//! can. A client that half-closed is lost the same way.

mod common;

use std::time::Duration;

use arcp_gateway::{
    config::GatewayConfig,
    ids::SessionId,
    proto::server_frame::Payload as Out,
    store::{session::Flow, session::SessionStore},
    ErrorCode,
};
use common::*;
use futures::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// The heartbeat interval: the smallest the welcome can advertise.
const INTERVAL: Duration = Duration::from_secs(1);

/// Frames the job emits, and their size: 40 MB, more than the client's HTTP/2 windows (or,
/// over WebSocket, the socket buffers) hold, so the server's send blocks once the client stops
/// reading; and more than two of the batches the server takes from the log at a time, so that
/// the frames it took show it stopped taking them.
const LINES: u64 = 600;
const LINE_BYTES: u64 = 64 * 1024;

async fn start() -> TestServer {
    let config = GatewayConfig {
        heartbeat_interval_sec: 1,
        ..GatewayConfig::default()
    };
    TestServer::start(config, &[("alice-token", "alice")]).await
}

fn chatter(lines: u64) -> serde_json::Value {
    serde_json::json!({"count": lines, "bytes": LINE_BYTES})
}

async fn flow(server: &TestServer, session: &str) -> Flow {
    let record = server.stores.sessions.open(&SessionId::new(session)).await;
    record.expect("the session has a record").flow()
}

/// Waits for the session to be detached; returns how long after `since` that was.
async fn detached_after(server: &TestServer, since: Instant) -> Duration {
    wait_until("the session is detached", || {
        server.stores.resume.attached() == 0
    })
    .await;
    since.elapsed()
}

#[tokio::test]
async fn a_grpc_client_that_stops_reading_is_declared_lost_though_the_send_is_stuck() {
    let server = start().await;
    let (mut conn, w) = server.hello_with("alice-token", &["heartbeat"]).await;
    let session = w.session_id.clone();
    let token = welcome(&w).resume_token.clone();
    // After this submit the client neither reads nor sends.
    let silent = Instant::now();
    let (job, _) = submit_and_accept(&mut conn, submit("chatter", chatter(LINES))).await;

    let after = detached_after(&server, silent).await;
    assert!(
        after >= 2 * INTERVAL - Duration::from_millis(50),
        "declared lost {after:?} after the client fell silent"
    );
    // Its jobs no longer wait for it: the whole job is logged, most of it never taken for this
    // client, because the transport stopped asking for frames.
    let last = LINES + 2;
    wait_for_log(&server, &session, last).await;
    let f = flow(&server, &session).await;
    assert!(!f.attached, "{f:?}");
    assert!(
        f.delivered.get() < last,
        "the send was stuck: only {} of {last} frames were taken",
        f.delivered
    );

    // Resumed after the frame it processed, the client gets all the others, in order.
    let (mut resumed, first) = server
        .resume_with_hello(
            "alice-token",
            &["heartbeat"],
            resume_info(&session, &token, 1),
        )
        .await;
    assert_eq!(first.session_id, session);
    let (frames, terminal) = resumed.recv_until_terminal(&job).await;
    let seqs: Vec<u64> = frames
        .iter()
        .filter(|f| f.job_id == job)
        .chain([&terminal])
        .map(|f| f.event_seq)
        .collect();
    assert_eq!(seqs, (2..=last).collect::<Vec<_>>(), "no gap, no duplicate");
    assert_eq!(
        result_json(&terminal),
        serde_json::json!({ "lines": LINES })
    );

    // The old stream ends as soon as its transport takes frames again: what was in flight,
    // then HEARTBEAT_LOST.
    loop {
        match conn.try_recv().await {
            Ok(Some(frame)) if frame.job_id == job => continue,
            Ok(Some(frame)) if matches!(frame.payload, Some(Out::SessionPing(_))) => continue,
            Ok(Some(frame)) => {
                let e = expect_error(&frame, ErrorCode::HeartbeatLost, Some(""));
                assert!(e.retryable);
                break;
            }
            other => panic!("expected HEARTBEAT_LOST, got {other:?}"),
        }
    }
    assert!(matches!(conn.try_recv().await, Ok(None)));
}

#[tokio::test]
async fn a_websocket_client_that_stops_reading_is_declared_lost_and_its_connection_dropped() {
    let server = start().await;
    // A small socket buffer: otherwise the kernel may take in more than the job emits.
    let mut conn = server.ws_with_receive_buffer(64 * 1024).await;
    conn.send(
        "session.hello",
        ws_hello_payload("alice-token", &["heartbeat"]),
    )
    .await;
    let welcome = conn.recv().await;
    let session = welcome["session_id"].as_str().unwrap().to_owned();
    let token = welcome["payload"]["resume_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let silent = Instant::now();
    conn.send(
        "job.submit",
        serde_json::json!({"agent": "chatter", "input": chatter(LINES)}),
    )
    .await;
    let after = detached_after(&server, silent).await;
    assert!(
        after >= 2 * INTERVAL - Duration::from_millis(50),
        "{after:?}"
    );
    wait_for_log(&server, &session, LINES + 2).await;
    assert!(flow(&server, &session).await.delivered.get() < LINES + 2);

    // The connection ends: dropped if the server found its send still stuck (what was in
    // flight arrives, then the socket ends without a close handshake), or, if the client's
    // reading here got that send moving first, with HEARTBEAT_LOST and a close.
    let mut frames = 0u64;
    let mut heartbeat_lost = false;
    loop {
        match tokio::time::timeout(FRAME_TIMEOUT, conn.ws.next())
            .await
            .expect("the socket ends")
        {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                if frame["type"] == "session.error" {
                    assert_eq!(frame["payload"]["code"], "HEARTBEAT_LOST", "{frame}");
                    heartbeat_lost = true;
                } else {
                    assert!(!heartbeat_lost, "nothing after HEARTBEAT_LOST: {frame}");
                    frames += 1;
                }
            }
            Some(Ok(Message::Close(close))) => {
                assert!(heartbeat_lost, "a close without HEARTBEAT_LOST: {close:?}");
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    assert!(frames < LINES + 2, "the job's frames were not all sent");

    let (mut resumed, first) = server
        .resume_with_hello(
            "alice-token",
            &["progress"],
            resume_info(&session, &token, 0),
        )
        .await;
    assert_eq!(first.session_id, session);
    let (frames, terminal) = resumed.recv_until(is_terminal).await;
    assert_eq!(frames.len() as u64, LINES + 1, "accepted and every line");
    assert_eq!(terminal.event_seq, LINES + 2);
}

#[tokio::test]
async fn a_client_that_half_closed_is_lost_two_intervals_after_it_last_spoke() {
    let server = start().await;
    let (mut conn, w) = server.hello_with("alice-token", &["heartbeat"]).await;
    conn.send(ping("last-words")).await;
    let (before, _) = conn
        .recv_until(|f| matches!(&f.payload, Some(Out::SessionPong(_))))
        .await;
    assert!(before.is_empty(), "{before:?}");
    conn.close_send();
    let silent = Instant::now();
    // Still delivering to it meanwhile: the runtime's pings.
    let lost = loop {
        let frame = conn.recv().await;
        if !matches!(&frame.payload, Some(Out::SessionPing(_))) {
            break frame;
        }
    };
    expect_error(&lost, ErrorCode::HeartbeatLost, Some(""));
    assert!(silent.elapsed() >= 2 * INTERVAL - Duration::from_millis(50));
    assert!(matches!(conn.try_recv().await, Ok(None)));
    detached_after(&server, silent).await;
    assert!(!flow(&server, &w.session_id).await.attached);
}
