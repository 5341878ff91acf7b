//! Heartbeats (§6.4) through the real server: idle pings outside `event_seq`, answering client
//! pings, staying connected by answering or sending anything, `HEARTBEAT_LOST` for a silent
//! client while its job runs on and the session resumes, and none of it without the feature.

mod common;

use std::time::Duration;

use arcp_gateway::{
    config::GatewayConfig,
    proto::{self, client_frame::Payload as In, server_frame::Payload as Out},
    ErrorCode,
};
use common::*;
use tokio::time::Instant;

/// The interval every test here runs with: the smallest the welcome can advertise.
const INTERVAL: Duration = Duration::from_secs(1);

/// A server with a one-second heartbeat and the principal alice.
async fn start() -> TestServer {
    let config = GatewayConfig {
        heartbeat_interval_sec: 1,
        ..GatewayConfig::default()
    };
    TestServer::start(config, &[("alice-token", "alice")]).await
}

/// Opens a session as alice offering `features`; asserts the welcome advertises [`INTERVAL`].
async fn alice_session(server: &TestServer, features: &[&str]) -> (Conn, proto::ServerFrame) {
    let (conn, w) = server.hello_with("alice-token", features).await;
    assert_eq!(welcome(&w).heartbeat_interval_sec, 1);
    (conn, w)
}

fn ping_of(frame: &proto::ServerFrame) -> &proto::SessionPing {
    match &frame.payload {
        Some(Out::SessionPing(p)) => p,
        other => panic!("expected session_ping, got {other:?}"),
    }
}

fn pong_of(frame: &proto::ServerFrame) -> &proto::SessionPong {
    match &frame.payload {
        Some(Out::SessionPong(p)) => p,
        other => panic!("expected session_pong, got {other:?}"),
    }
}

fn client_pong(nonce: &str) -> In {
    In::SessionPong(proto::SessionPong {
        ping_nonce: nonce.into(),
        received_at: "2026-05-13T19:42:13.020Z".into(),
    })
}

fn is_job_frame(frame: &proto::ServerFrame) -> bool {
    matches!(
        frame.payload,
        Some(Out::JobAccepted(_))
            | Some(Out::JobEvent(_))
            | Some(Out::JobResult(_))
            | Some(Out::JobError(_))
    )
}

#[tokio::test]
async fn an_idle_session_is_pinged_every_interval_and_answering_keeps_it_open() {
    let server = start().await;
    let (mut conn, w) = alice_session(&server, &["heartbeat", "progress"]).await;
    let features = &welcome(&w).capabilities.as_ref().unwrap().features;
    assert_eq!(features, &vec!["heartbeat", "progress"]);

    let opened = Instant::now();
    let mut nonces = Vec::new();
    let mut previous = opened;
    // Three pings span three intervals: longer than the two a silent client would get.
    for _ in 0..3 {
        let frame = conn.recv().await;
        let p = ping_of(&frame);
        // A lower bound only: the runtime pings after an interval without sending anything.
        assert!(
            previous.elapsed() >= INTERVAL - Duration::from_millis(200),
            "pinged after {:?}, before an idle interval",
            previous.elapsed()
        );
        previous = Instant::now();
        assert!(
            p.nonce.starts_with("p_") && p.nonce.len() > 2,
            "{:?}",
            p.nonce
        );
        assert!(
            p.sent_at.ends_with('Z') && p.sent_at.contains('T'),
            "{:?}",
            p.sent_at
        );
        assert_eq!(frame.event_seq, 0, "heartbeats are not in event_seq (§6.4)");
        assert!(frame.job_id.is_empty());
        assert_eq!(frame.session_id, w.session_id);
        assert!(!nonces.contains(&p.nonce), "a fresh nonce every ping");
        nonces.push(p.nonce.clone());
        conn.send(client_pong(&p.nonce)).await;
    }
    assert!(opened.elapsed() >= 2 * INTERVAL);

    // Still connected, and the pings consumed no sequence numbers.
    let (job, accepted_frame) =
        submit_and_accept(&mut conn, submit("echo", serde_json::json!(1))).await;
    assert_eq!(accepted_frame.event_seq, 1);
    let (before, terminal) = conn.recv_until_terminal(&job).await;
    assert!(
        before.iter().all(|f| ping_of_opt(f).is_some()),
        "{before:?}"
    );
    assert_eq!(terminal.event_seq, 2);
    assert_eq!(newest(&server, &w.session_id).await, 2);
}

fn ping_of_opt(frame: &proto::ServerFrame) -> Option<&proto::SessionPing> {
    match &frame.payload {
        Some(Out::SessionPing(p)) => Some(p),
        _ => None,
    }
}

#[tokio::test]
async fn a_client_ping_is_answered_with_a_pong_echoing_its_nonce() {
    let server = start().await;
    let (mut conn, w) = alice_session(&server, &["heartbeat"]).await;
    // The client's own pong needs no answer: the next frame answers the ping.
    conn.send(client_pong("unsolicited")).await;
    conn.send(ping("c_1")).await;
    let frame = conn.recv().await;
    let pong = pong_of(&frame);
    assert_eq!(pong.ping_nonce, "c_1");
    assert!(pong.received_at.ends_with('Z') && pong.received_at.contains('T'));
    assert_eq!(frame.event_seq, 0, "heartbeats are not in event_seq (§6.4)");
    assert!(frame.job_id.is_empty());
    assert_eq!(frame.session_id, w.session_id);
}

#[tokio::test]
async fn a_client_that_sends_anything_stays_connected_and_a_busy_server_does_not_ping() {
    let server = start().await;
    let (mut conn, w) = alice_session(&server, &["heartbeat", "progress"]).await;
    // 25 ticks 100 ms apart: 2.5 s, longer than two intervals. The client sends only its own
    // pings, every fifth tick; the server sends a frame every 100 ms, so it never idles.
    let (job, _) = submit_and_accept(&mut conn, ticker(25, 100)).await;
    let mut seqs = vec![1];
    let mut sent = Vec::new();
    let mut echoed = Vec::new();
    loop {
        let frame = conn.recv().await;
        match &frame.payload {
            Some(Out::SessionPong(p)) => {
                assert_eq!(frame.event_seq, 0);
                echoed.push(p.ping_nonce.clone());
                continue;
            }
            Some(Out::SessionPing(_)) => panic!("a busy server pinged: {frame:?}"),
            Some(Out::SessionError(e)) => panic!("the session failed: {e:?}"),
            _ => {}
        }
        assert_eq!(frame.job_id, job);
        seqs.push(frame.event_seq);
        if is_terminal(&frame) {
            assert_eq!(job_result(&frame).final_status, "success");
            break;
        }
        if let Some(tick) = progress_current(&frame) {
            if tick as u64 % 5 == 0 {
                let nonce = format!("c_{tick}");
                conn.send(ping(&nonce)).await;
                sent.push(nonce);
            }
        }
    }
    assert_eq!(seqs, (1..=27).collect::<Vec<_>>());
    // The last ping may still be answered after the result.
    while echoed.len() < sent.len() {
        let frame = conn.recv().await;
        echoed.push(pong_of(&frame).ping_nonce.clone());
    }
    assert_eq!(echoed, sent, "every client ping answered, in order");
    assert_eq!(newest(&server, &w.session_id).await, 27);
}

#[tokio::test]
async fn a_silent_client_is_declared_lost_after_two_intervals_while_its_job_runs_on() {
    let server = start().await;
    let (mut conn, w) = alice_session(&server, &["heartbeat", "progress"]).await;
    let session = w.session_id.clone();
    let token = welcome(&w).resume_token.clone();

    // 40 ticks 75 ms apart: 3 s. The client says nothing after the submit.
    let submitted = Instant::now();
    let (job, _) = submit_and_accept(&mut conn, ticker(40, 75)).await;
    let mut seen = vec![1u64];
    let mut progress = Vec::new();
    let lost = loop {
        let frame = conn.recv().await;
        if let Some(Out::SessionError(_)) = &frame.payload {
            break frame;
        }
        assert!(
            is_job_frame(&frame),
            "only job frames before the loss: {frame:?}"
        );
        assert!(!is_terminal(&frame), "the job outlived two intervals");
        assert_eq!(frame.job_id, job);
        seen.push(frame.event_seq);
        progress.extend(progress_current(&frame));
    };
    let e = session_error(&lost);
    assert_eq!(e.code, ErrorCode::HeartbeatLost.as_str(), "{e:?}");
    assert!(e.retryable, "a lost heartbeat is retryable by resuming");
    assert!(e.request_id.is_empty(), "no client frame caused it");
    assert_eq!(lost.event_seq, 0);
    assert_eq!(lost.session_id, session);
    // A lower bound only: the client was silent for two intervals before it was given up.
    assert!(
        submitted.elapsed() >= 2 * INTERVAL - Duration::from_millis(20),
        "declared lost after {:?}",
        submitted.elapsed()
    );
    assert!(
        matches!(conn.try_recv().await, Ok(None)),
        "the transport ends after HEARTBEAT_LOST"
    );

    // The job ran on: resuming (without heartbeat now) delivers every frame after the last one
    // processed, through the result.
    let last = *seen.last().unwrap();
    let (mut resumed, first) = server
        .resume_with_hello(
            "alice-token",
            &["progress"],
            resume_info(&session, &token, last),
        )
        .await;
    welcome(&first);
    assert_eq!(first.session_id, session, "the same session continues");
    let (frames, terminal) = resumed.recv_until_terminal(&job).await;
    for f in frames.iter().chain([&terminal]) {
        assert_eq!(f.job_id, job);
        seen.push(f.event_seq);
        progress.extend(progress_current(f));
    }
    assert_eq!(seen, (1..=42).collect::<Vec<_>>(), "no gap, no duplicate");
    assert_eq!(progress, (1..=40).map(f64::from).collect::<Vec<_>>());
    assert_eq!(result_json(&terminal), serde_json::json!({"ticks": 40}));
}

#[tokio::test]
async fn without_the_heartbeat_feature_there_are_no_pings_and_no_loss() {
    let server = start().await;
    let (mut conn, w) = alice_session(&server, &["progress"]).await;
    assert_eq!(
        welcome(&w).capabilities.as_ref().unwrap().features,
        vec!["progress"]
    );
    // Two ticks 1.2 s apart: each gap is longer than an interval (a heartbeat session would be
    // pinged in it), and the client stays silent for longer than two intervals.
    let started = Instant::now();
    let (job, _) = submit_and_accept(&mut conn, ticker(2, 1200)).await;
    let (frames, terminal) = conn.recv_until_terminal(&job).await;
    assert!(started.elapsed() >= 2 * INTERVAL);
    assert_eq!(frames.len(), 2, "exactly the two ticks: {frames:?}");
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(progress_current(f), Some((i + 1) as f64), "{f:?}");
    }
    assert_eq!(terminal.event_seq, 4);
    assert_eq!(job_result(&terminal).final_status, "success");

    // The session is still open on this stream.
    conn.send(ping("still-here")).await;
    assert_eq!(pong_of(&conn.recv().await).ping_nonce, "still-here");
}
