//! Resume (§6.3, §8.3): exact replay, token rotation, expiry, binding, and takeover, through
//! the real server.

mod common;

use std::time::Duration;

use arcp_gateway::{config::GatewayConfig, ids::SessionId, proto, ErrorCode};
use common::*;
use proto::{client_frame::Payload as In, server_frame::Payload as Out};
use rand::{Rng, SeedableRng};

async fn missed_frames_replay_once_in_order_then_live_frames_follow() {
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello("alice-token").await;
    let session = w.session_id.clone();
    let token = welcome(&w).resume_token.clone();
    let (job, _) = submit_and_accept(&mut conn, ticker(40, 10)).await;

    let mut seen = vec![1u64];
    let mut progress = Vec::new();
    while progress.len() < 5 {
        let f = conn.recv().await;
        seen.push(f.event_seq);
        progress.extend(progress_current(&f));
    }
    let last = *seen.last().unwrap();
    drop(conn);
    wait_for_log(&server, &session, last + 4).await;

    let (mut conn, first) = server
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, last))
        .await;
    let w2 = welcome(&first);
    assert_eq!(first.session_id, session, "the same session continues");
    assert_ne!(w2.resume_token, token, "the token rotates on every welcome");

    let (frames, terminal) = conn.recv_until_terminal(&job).await;
    for f in frames.iter().chain([&terminal]) {
        assert_eq!(f.job_id, job);
        seen.push(f.event_seq);
        progress.extend(progress_current(f));
    }
    let expected: Vec<u64> = (1..=terminal.event_seq).collect();
    assert_eq!(seen, expected, "every frame exactly once, in order");
    assert_eq!(progress, (1..=40).map(f64::from).collect::<Vec<_>>());
    assert_eq!(result_json(&terminal), serde_json::json!({"ticks": 40}));
}

async fn a_rotated_out_token_is_rejected_and_the_new_one_works() {
    let server = TestServer::start_default().await;
    let (conn, w) = server.hello("alice-token").await;
    let session = w.session_id.clone();
    let t1 = welcome(&w).resume_token.clone();
    drop(conn);

    let (conn, first) = server
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &t1, 0))
        .await;
    let t2 = welcome(&first).resume_token.clone();
    drop(conn);

    let (_conn, first) = server
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &t1, 0))
        .await;
    expect_error(&first, ErrorCode::ResumeWindowExpired, None);

    let (_conn, first) = server
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &t2, 0))
        .await;
    assert_eq!(first.session_id, session);
    welcome(&first);
}

async fn tokens_expire_with_the_resume_window_and_the_session_is_swept() {
    let config = GatewayConfig {
        resume_window: Duration::from_secs(1),
        sweep_interval: Duration::from_millis(50),
        ..GatewayConfig::default()
    };
    let server = TestServer::start(config, &[("alice-token", "alice")]).await;
    let (conn, w) = server.hello("alice-token").await;
    let session = w.session_id.clone();
    let token = welcome(&w).resume_token.clone();
    drop(conn);

    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_conn, first) = server
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, 0))
        .await;
    expect_error(&first, ErrorCode::ResumeWindowExpired, None);

    let id = SessionId::new(session.as_str());
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    while server.gateway.stores().sessions.open(&id).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expired session never swept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        server.gateway.stores().logs.open(&id).await.is_err(),
        "log removed"
    );
}

async fn the_window_only_starts_when_the_transport_drops() {
    let config = GatewayConfig {
        resume_window: Duration::from_secs(1),
        sweep_interval: Duration::from_millis(50),
        ..GatewayConfig::default()
    };
    let server = TestServer::start(config, &[("alice-token", "alice")]).await;
    let (mut attached, w) = server.hello("alice-token").await;
    let session = w.session_id.clone();
    let token = welcome(&w).resume_token.clone();

    // Longer than the window, but the stream is still attached: the token stays valid.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_conn, first) = server
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, 0))
        .await;
    assert_eq!(welcome(&first).resume_window_sec, 1);
    assert_eq!(first.session_id, session);
    let ended = attached
        .try_recv()
        .await
        .expect_err("the taken-over stream ends");
    assert_eq!(ended.code(), tonic::Code::Aborted);
}

async fn unknown_malformed_and_mismatched_tokens_are_refused() {
    let server = TestServer::start_default().await;
    let (_a, wa) = server.hello("alice-token").await;
    let (_b, wb) = server.hello("alice-token").await;
    let token_a = welcome(&wa).resume_token.clone();

    for (session, token) in [
        (wa.session_id.as_str(), "nope"),
        (wa.session_id.as_str(), "rt_sess_unknown.c2VjcmV0"),
        (wa.session_id.as_str(), &format!("{token_a}x")),
        // A's valid token, but claiming to resume B.
        (wb.session_id.as_str(), token_a.as_str()),
    ] {
        let (_conn, first) = server
            .resume_with_hello("alice-token", FEATURES, resume_info(session, token, 0))
            .await;
        expect_error(&first, ErrorCode::ResumeWindowExpired, None);
        assert_eq!(first.event_seq, 0);
    }
}

async fn a_token_presented_by_another_principal_is_denied_and_not_burnt() {
    let server = TestServer::start_default().await;
    let (conn, w) = server.hello("alice-token").await;
    let session = w.session_id.clone();
    let token = welcome(&w).resume_token.clone();
    drop(conn);

    let (_conn, first) = server
        .resume_with_hello("bob-token", FEATURES, resume_info(&session, &token, 0))
        .await;
    expect_error(&first, ErrorCode::PermissionDenied, None);

    let (_conn, first) = server
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, 0))
        .await;
    assert_eq!(first.session_id, session);
    welcome(&first);
}

async fn last_event_seq_must_lie_within_the_buffer() {
    let server = TestServer::start_with_log_bound(5).await;
    let (mut conn, w) = server.hello("alice-token").await;
    let session = w.session_id.clone();
    let token = welcome(&w).resume_token.clone();
    let (job, _) = submit_and_accept(&mut conn, ticker(10, 0)).await;
    drop(conn);
    // accepted + 10 progress + result; only the last five stay buffered.
    let newest = 12;
    wait_for_log(&server, &session, newest).await;

    // Beyond the newest: a client bug, not an expired window. The token survives.
    let (_conn, first) = server
        .resume_with_hello(
            "alice-token",
            FEATURES,
            resume_info(&session, &token, newest + 1),
        )
        .await;
    expect_error(&first, ErrorCode::InvalidRequest, None);

    // Frames 1..=7 were evicted; resuming from 6 would leave a gap.
    let (_conn, first) = server
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, 6))
        .await;
    expect_error(&first, ErrorCode::ResumeWindowExpired, None);

    // From 7 the five retained frames replay exactly.
    let (mut conn, first) = server
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, 7))
        .await;
    welcome(&first);
    let (frames, terminal) = conn.recv_until_terminal(&job).await;
    let seqs = event_seqs(frames.iter().chain([&terminal]));
    assert_eq!(seqs, vec![8, 9, 10, 11, 12]);
}

async fn resuming_takes_over_a_live_stream() {
    let server = TestServer::start_default().await;
    let (mut old, w) = server.hello("alice-token").await;
    let session = w.session_id.clone();
    let token = welcome(&w).resume_token.clone();
    let (job, _) = submit_and_accept(&mut old, ticker(5, 20)).await;

    let (mut new, first) = server
        .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, 1))
        .await;
    welcome(&first);
    loop {
        match old.try_recv().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("old stream ended without a status"),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Aborted);
                break;
            }
        }
    }
    let (frames, terminal) = new.recv_until_terminal(&job).await;
    let seqs = event_seqs(frames.iter().chain([&terminal]));
    assert_eq!(seqs, (2..=7).collect::<Vec<_>>());

    // The new stream owns the session: it may cancel its jobs.
    let (job2, _) = submit_and_accept(&mut new, ticker(1000, 20)).await;
    new.send(cancel(&job2)).await;
    let (_, terminal) = new.recv_until_terminal(&job2).await;
    assert_eq!(job_error(&terminal).code, "CANCELLED");
}

async fn standalone_session_resume_continues_the_session() {
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello("alice-token").await;
    let session = w.session_id.clone();
    let token = welcome(&w).resume_token.clone();
    let (job, _) = submit_and_accept(&mut conn, submit("echo", serde_json::json!({"x": 1}))).await;
    drop(conn);

    let mut conn = server.open().await;
    conn.send(In::SessionResume(proto::SessionResume {
        session_id: session.clone(),
        resume_token: token,
        last_event_seq: 1,
        auth: Some(proto::Auth {
            scheme: "bearer".into(),
            token: "alice-token".into(),
        }),
        ..Default::default()
    }))
    .await;
    let first = conn.recv().await;
    welcome(&first);
    assert_eq!(first.session_id, session);
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(terminal.event_seq, 2);
    assert_eq!(result_json(&terminal), serde_json::json!({"x": 1}));
}

async fn resume_metadata_is_validated_before_the_stream_opens() {
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello("alice-token").await;
    let session = w.session_id.clone();
    let token = welcome(&w).resume_token.clone();
    let (job, _) = submit_and_accept(&mut conn, submit("echo", serde_json::json!("hi"))).await;
    conn.recv_until_terminal(&job).await;
    drop(conn);

    let refused = |metadata: Vec<(&'static str, String)>, code: tonic::Code, arcp: ErrorCode| {
        let server = &server;
        async move {
            let md: Vec<(&'static str, &str)> =
                metadata.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let status = match server.open_with(&md).await {
                Err(status) => status,
                Ok(mut conn) => conn
                    .try_recv()
                    .await
                    .expect_err("refused before the stream opens"),
            };
            assert_eq!(status.code(), code, "{status:?}");
            assert_eq!(
                status
                    .metadata()
                    .get("arcp-error-code")
                    .and_then(|v| v.to_str().ok()),
                Some(arcp.as_str())
            );
        }
    };
    let alice = || ("authorization", "Bearer alice-token".to_string());
    refused(
        vec![alice(), ("arcp-resume-token", "rt_sess_x.bogus".into())],
        tonic::Code::FailedPrecondition,
        ErrorCode::ResumeWindowExpired,
    )
    .await;
    refused(
        vec![
            ("authorization", "Bearer bob-token".into()),
            ("arcp-resume-token", token.clone()),
        ],
        tonic::Code::PermissionDenied,
        ErrorCode::PermissionDenied,
    )
    .await;
    refused(
        vec![("arcp-resume-token", token.clone())],
        tonic::Code::Unauthenticated,
        ErrorCode::Unauthenticated,
    )
    .await;
    refused(
        vec![
            ("authorization", "Bearer wrong".into()),
            ("arcp-resume-token", token.clone()),
        ],
        tonic::Code::Unauthenticated,
        ErrorCode::Unauthenticated,
    )
    .await;
    refused(
        vec![
            alice(),
            ("arcp-resume-token", token.clone()),
            ("arcp-last-event-seq", "x".into()),
        ],
        tonic::Code::InvalidArgument,
        ErrorCode::InvalidRequest,
    )
    .await;
    refused(
        vec![
            alice(),
            ("arcp-resume-token", token.clone()),
            ("arcp-last-event-seq", "3".into()),
        ],
        tonic::Code::InvalidArgument,
        ErrorCode::InvalidRequest,
    )
    .await;

    // Valid metadata: a hello without a resume block continues the session from seq 1.
    let mut conn = server
        .open_with(&[
            ("authorization", "Bearer alice-token"),
            ("arcp-resume-token", &token),
            ("arcp-last-event-seq", "1"),
        ])
        .await
        .expect("stream opens");
    conn.send(hello("", FEATURES, None)).await;
    let first = conn.recv().await;
    assert_eq!(first.session_id, session);
    assert_ne!(welcome(&first).resume_token, token);
    let replayed = conn.recv().await;
    assert_eq!(replayed.event_seq, 2);
    assert!(matches!(replayed.payload, Some(Out::JobResult(_))));
}

/// Drops and resumes the stream at random points while a job emits; the client must see every
/// sequence number from 1 to the terminal frame exactly once.
async fn random_drops_and_resumes_lose_and_repeat_nothing() {
    let seed: u64 = std::env::var("ARCP_STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("ARCP_STRESS_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    const TICKS: u64 = 3000;
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello("alice-token").await;
    let session = w.session_id.clone();
    let mut token = welcome(&w).resume_token.clone();
    let (job, _) = submit_and_accept(&mut conn, ticker(TICKS, 0)).await;

    let mut seen = vec![1u64];
    let mut progress = Vec::new();
    let mut resumes = 0;
    'outer: loop {
        let burst = rng.random_range(0..200);
        for _ in 0..burst {
            let f = conn.recv().await;
            assert_eq!(f.job_id, job);
            seen.push(f.event_seq);
            progress.extend(progress_current(&f));
            if is_terminal(&f) {
                break 'outer;
            }
        }
        drop(conn);
        resumes += 1;
        let last = *seen.last().unwrap();
        let (next, first) = match rng.random_range(0..3) {
            0 => {
                server
                    .resume_with_hello("alice-token", FEATURES, resume_info(&session, &token, last))
                    .await
            }
            1 => {
                let mut c = server.open().await;
                c.send(In::SessionResume(proto::SessionResume {
                    session_id: session.clone(),
                    resume_token: token.clone(),
                    last_event_seq: last,
                    auth: Some(proto::Auth {
                        scheme: "bearer".into(),
                        token: "alice-token".into(),
                    }),
                    ..Default::default()
                }))
                .await;
                let first = c.recv().await;
                (c, first)
            }
            _ => {
                let last = last.to_string();
                let mut c = server
                    .open_with(&[
                        ("authorization", "Bearer alice-token"),
                        ("arcp-resume-token", &token),
                        ("arcp-last-event-seq", &last),
                    ])
                    .await
                    .expect("resume metadata accepted");
                c.send(hello("", FEATURES, None)).await;
                let first = c.recv().await;
                (c, first)
            }
        };
        assert_eq!(first.session_id, session);
        token = welcome(&first).resume_token.clone();
        conn = next;
    }
    println!("resumed {resumes} times");
    assert!(resumes >= 5, "the test must actually exercise resume");
    let expected: Vec<u64> = (1..=*seen.last().unwrap()).collect();
    assert_eq!(
        seen, expected,
        "gap-free and duplicate-free across {resumes} resumes"
    );
    assert_eq!(progress.len() as u64, TICKS);
    assert!(progress
        .iter()
        .enumerate()
        .all(|(i, p)| *p == (i + 1) as f64));
}

/// A live client that does not keep up slows its own job down instead of losing frames: the
/// job runs only a flow window ahead of what the stream delivered (here 25 frames, half the
/// 50-frame log), so eviction can never overtake the reader.
#[tokio::test]
async fn a_live_reader_that_falls_behind_throttles_its_job_and_loses_nothing() {
    let server = TestServer::start_with_log_bound(50).await;
    let (mut conn, w) = server.hello("alice-token").await;
    const TICKS: u64 = 60_000;
    let (job, _) = submit_and_accept(&mut conn, ticker(TICKS, 0)).await;
    wait_for_log(&server, &w.session_id, 100).await;
    // Unthrottled, the job would finish all 60,000 ticks in this pause. HTTP/2 flow-control
    // windows hold some 11,000 of these small frames between the stream and this unread
    // client; beyond that the job waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = newest(&server, &w.session_id).await;
    assert!(
        held < 30_000,
        "the job ran {held} frames ahead of an idle reader"
    );

    let (frames, terminal) = conn.recv_until_terminal(&job).await;
    let seqs = event_seqs(frames.iter().chain([&terminal]));
    assert_eq!(
        seqs,
        (2..=TICKS + 2).collect::<Vec<_>>(),
        "every frame, in order"
    );
    assert!(matches!(terminal.payload, Some(Out::JobResult(_))));
}

/// Flow control applies only while a stream is attached: a job of a session with no reader
/// runs on (§6.4), and the log bound holds its memory.
async fn a_detached_session_does_not_throttle_its_job() {
    let server = TestServer::start_with_log_bound(50).await;
    let (mut conn, w) = server.hello("alice-token").await;
    let (_job, _) = submit_and_accept(&mut conn, ticker(5_000, 0)).await;
    drop(conn);
    // accepted + 5,000 progress + result, all logged with nobody reading.
    wait_for_log(&server, &w.session_id, 5_002).await;
    let bounds = session_log(&server, &w.session_id)
        .await
        .bounds()
        .await
        .unwrap();
    assert_eq!(
        bounds.evicted_through.get(),
        5_002 - 50,
        "the log kept its bound"
    );
}

// Each test above on memory and on Redis stores, but for
// `a_live_reader_that_falls_behind_throttles_its_job_and_loses_nothing`: its 60,000 frames
// through a 25-frame flow window take a minute on Redis in a debug build, and the flow window
// it tests is the same whatever the store.
on_each_store!(
    missed_frames_replay_once_in_order_then_live_frames_follow,
    a_rotated_out_token_is_rejected_and_the_new_one_works,
    tokens_expire_with_the_resume_window_and_the_session_is_swept,
    the_window_only_starts_when_the_transport_drops,
    unknown_malformed_and_mismatched_tokens_are_refused,
    a_token_presented_by_another_principal_is_denied_and_not_burnt,
    last_event_seq_must_lie_within_the_buffer,
    resuming_takes_over_a_live_stream,
    standalone_session_resume_continues_the_session,
    resume_metadata_is_validated_before_the_stream_opens,
    a_detached_session_does_not_throttle_its_job,
);
on_each_store!(
    multi_thread:
    random_drops_and_resumes_lose_and_repeat_nothing,
);
