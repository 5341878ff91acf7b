//! Event acknowledgement (§6.5) through the real server: acks free logged frames early and bound
//! later resumes, may not run ahead of delivery, get no reply, and drive the `back_pressure`
//! status a lagging client gets once per slow spell, never after a terminal frame.

mod common;

use arcp_gateway::{
    agent::AgentRegistry,
    config::GatewayConfig,
    proto::{self, client_frame::Payload as In, server_frame::Payload as Out},
    ErrorCode,
};
use common::*;
use serde_json::json;
use tokio::sync::mpsc;

/// A server with alice, the built-in agents and `pacer`, whose steps the returned sender feeds.
async fn start(back_pressure_lag: u64) -> (TestServer, mpsc::UnboundedSender<u64>) {
    let (pacer, tx) = Pacer::new();
    let mut agents = AgentRegistry::with_builtins();
    agents.register("pacer", "1.0.0", pacer).unwrap();
    let config = GatewayConfig {
        back_pressure_lag,
        ..GatewayConfig::default()
    };
    (TestServer::start_with_agents(config, agents).await, tx)
}

/// The phase of a `status` event, if `frame` is one.
fn status_body(frame: &proto::ServerFrame) -> Option<&proto::StatusBody> {
    match &frame.payload {
        Some(Out::JobEvent(proto::JobEvent {
            kind,
            body: Some(proto::job_event::Body::Status(s)),
            ..
        })) => {
            assert_eq!(kind, "status");
            Some(s)
        }
        _ => None,
    }
}

fn is_back_pressure(frame: &proto::ServerFrame) -> bool {
    status_body(frame).is_some_and(|s| s.phase == "back_pressure")
}

#[tokio::test]
async fn an_ack_without_the_ack_feature_is_refused_and_the_session_survives() {
    let (server, _steps) = start(1000).await;
    let (mut conn, _) = server.hello_with("alice-token", &["progress"]).await;
    let id = conn.send(ack(0)).await;
    expect_error(&conn.recv().await, ErrorCode::InvalidRequest, Some(&id));
    let (job, accepted_frame) = submit_and_accept(&mut conn, submit("echo", json!(1))).await;
    assert_eq!(accepted_frame.event_seq, 1);
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(terminal.event_seq, 2);
}

#[tokio::test]
async fn acks_get_no_reply_and_may_not_run_ahead_of_what_this_stream_delivered() {
    let (server, _steps) = start(1000).await;
    let (mut conn, w) = server.hello_with("alice-token", &["ack"]).await;

    // Nothing delivered yet: only 0 may be acknowledged.
    let id = conn.send(ack(1)).await;
    expect_error(&conn.recv().await, ErrorCode::InvalidRequest, Some(&id));
    conn.send(ack(0)).await;
    assert!(
        sync_with_ping(&mut conn, "n0").await.is_empty(),
        "an ack has no reply"
    );

    let (job, _) = submit_and_accept(&mut conn, submit("echo", json!("x"))).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(terminal.event_seq, 2);

    let id = conn.send(ack(3)).await;
    expect_error(&conn.recv().await, ErrorCode::InvalidRequest, Some(&id));
    let id = conn.send(ack(u64::MAX)).await;
    expect_error(&conn.recv().await, ErrorCode::InvalidRequest, Some(&id));
    conn.send(ack(2)).await;
    // Acks never move backwards, and repeating one is harmless.
    conn.send(ack(1)).await;
    conn.send(ack(2)).await;
    assert!(
        sync_with_ping(&mut conn, "n1").await.is_empty(),
        "acks have no reply"
    );

    // The acknowledged frames are freed; the session carries on in sequence.
    let bounds = session_log(&server, &w.session_id)
        .await
        .bounds()
        .await
        .unwrap();
    assert_eq!(bounds.evicted_through.get(), 2);
    let (job, accepted_frame) = submit_and_accept(&mut conn, submit("echo", json!("y"))).await;
    assert_eq!(accepted_frame.event_seq, 3);
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(terminal.event_seq, 4);
}

#[tokio::test]
async fn an_ack_frees_frames_early_so_a_resume_must_start_at_or_after_it() {
    let (server, _steps) = start(1000).await;
    let (mut conn, w) = server.hello_with("alice-token", &["ack", "progress"]).await;
    let session = w.session_id.clone();
    let token = welcome(&w).resume_token.clone();
    let (job, _) = submit_and_accept(&mut conn, ticker(5, 0)).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(terminal.event_seq, 7);
    conn.send(ack(4)).await;
    sync_with_ping(&mut conn, "acked").await;
    drop(conn);

    // Frames up to 4 are gone: resuming from before the ack would leave a gap.
    for last in [0, 3] {
        let (_conn, first) = server
            .resume_with_hello(
                "alice-token",
                &["ack", "progress"],
                resume_info(&session, &token, last),
            )
            .await;
        let e = session_error(&first);
        assert_eq!(e.code, ErrorCode::ResumeWindowExpired.as_str(), "{e:?}");
        assert!(!e.retryable);
    }

    // From the acknowledged frame itself, the rest replays exactly (the token survived).
    let (mut conn, first) = server
        .resume_with_hello(
            "alice-token",
            &["ack", "progress"],
            resume_info(&session, &token, 4),
        )
        .await;
    let token = welcome(&first).resume_token.clone();
    assert_eq!(first.session_id, session);
    let (frames, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(event_seqs(&frames), vec![5, 6]);
    assert_eq!(terminal.event_seq, 7);
    assert_eq!(result_json(&terminal), json!({"ticks": 5}));
    drop(conn);

    // And from a later one.
    let (mut conn, first) = server
        .resume_with_hello(
            "alice-token",
            &["ack", "progress"],
            resume_info(&session, &token, 6),
        )
        .await;
    welcome(&first);
    let (frames, terminal) = conn.recv_until_terminal(&job).await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(terminal.event_seq, 7);
}

#[tokio::test]
async fn a_client_lagging_past_the_limit_gets_one_back_pressure_status_for_the_job_that_crossed_it()
{
    let (server, _steps) = start(3).await;
    let (mut conn, w) = server.hello_with("alice-token", &["ack", "progress"]).await;
    let (job, _) = submit_and_accept(&mut conn, ticker(10, 0)).await;
    let (frames, terminal) = conn.recv_until_terminal(&job).await;

    // accepted=1, ticks 1..3 = 2..4; the fourth unacknowledged frame (lag 4 > 3) draws the
    // signal at 5; the other seven ticks and the result follow with no second signal.
    assert_eq!(event_seqs(&frames), (2..=12).collect::<Vec<_>>());
    assert_eq!(terminal.event_seq, 13);
    let signals: Vec<&proto::ServerFrame> = frames.iter().filter(|f| is_back_pressure(f)).collect();
    assert_eq!(signals.len(), 1, "one signal per slow spell: {frames:?}");
    let signal = signals[0];
    assert_eq!(signal.event_seq, 5);
    assert_eq!(signal.job_id, job);
    assert_eq!(signal.session_id, w.session_id);
    assert!(!status_body(signal).unwrap().message.is_empty());
    let ticks: Vec<f64> = frames.iter().filter_map(progress_current).collect();
    assert_eq!(ticks, (1..=10).map(f64::from).collect::<Vec<_>>());
    assert_eq!(newest(&server, &w.session_id).await, 13);
}

#[tokio::test]
async fn an_ack_that_brings_the_lag_within_the_limit_re_arms_the_signal() {
    let (server, steps) = start(3).await;
    let (mut conn, w) = server.hello_with("alice-token", &["ack"]).await;
    let (job, _) = submit_and_accept(&mut conn, submit("pacer", json!(null))).await;

    // Lines at 2, 3, 4; 4 is the fourth unacknowledged frame: the signal at 5.
    steps.send(3).unwrap();
    let spell = recv_n(&mut conn, 4).await;
    assert_eq!(event_seqs(&spell), vec![2, 3, 4, 5]);
    assert_eq!(log_message(&spell[2]), Some("line 3"));
    assert!(is_back_pressure(&spell[3]), "{:?}", spell[3]);
    assert_eq!(spell[3].job_id, job);

    // An ack that leaves the lag above the limit (5 - 1 = 4) does not re-arm it.
    conn.send(ack(1)).await;
    sync_with_ping(&mut conn, "a1").await;
    steps.send(2).unwrap();
    let more = recv_n(&mut conn, 2).await;
    assert_eq!(event_seqs(&more), vec![6, 7]);
    assert!(more.iter().all(|f| log_message(f).is_some()), "{more:?}");

    // Catching up (lag 0) re-arms it: the next spell is signalled again, once.
    conn.send(ack(7)).await;
    sync_with_ping(&mut conn, "a7").await;
    steps.send(4).unwrap();
    let spell = recv_n(&mut conn, 5).await;
    assert_eq!(event_seqs(&spell), vec![8, 9, 10, 11, 12]);
    assert_eq!(log_message(&spell[3]), Some("line 9"));
    assert!(is_back_pressure(&spell[4]), "{:?}", spell[4]);
    assert_eq!(spell[4].job_id, job);

    steps.send(0).unwrap();
    let terminal = conn.recv().await;
    assert_eq!(terminal.event_seq, 13);
    assert_eq!(result_json(&terminal), json!({"lines": 9}));
    assert_eq!(newest(&server, &w.session_id).await, 13);
}

#[tokio::test]
async fn a_terminal_frame_never_draws_a_back_pressure_status() {
    let (server, steps) = start(3).await;
    let (mut conn, w) = server.hello_with("alice-token", &["ack"]).await;
    let (pacer, _) = submit_and_accept(&mut conn, submit("pacer", json!(null))).await;
    steps.send(2).unwrap();
    assert_eq!(event_seqs(&recv_n(&mut conn, 2).await), vec![2, 3]);
    // The result is the fourth unacknowledged frame, but nothing may follow a terminal frame.
    steps.send(0).unwrap();
    let terminal = conn.recv().await;
    assert_eq!(terminal.job_id, pacer);
    assert_eq!(terminal.event_seq, 4);
    job_result(&terminal);
    assert!(sync_with_ping(&mut conn, "after").await.is_empty());
    assert_eq!(newest(&server, &w.session_id).await, 4);

    // The next job's first frame crosses the limit: the signal is that job's.
    let (echo, accepted_frame) = submit_and_accept(&mut conn, submit("echo", json!(2))).await;
    assert_eq!(accepted_frame.event_seq, 5);
    let (frames, terminal) = conn.recv_until_terminal(&echo).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert!(is_back_pressure(&frames[0]));
    assert_eq!(frames[0].job_id, echo);
    assert_eq!(frames[0].event_seq, 6);
    assert_eq!(terminal.event_seq, 7);
}

/// §7.3: nothing of a job follows its terminal frame. A repeated idempotent submission (§7.2)
/// is answered with the finished job's `job.accepted` again; when that answer crosses the lag
/// limit, no `status` event of the finished job may follow it.
#[tokio::test]
async fn a_repeated_acceptance_of_a_finished_job_draws_no_back_pressure_status_for_it() {
    let (server, _steps) = start(2).await;
    let (mut conn, w) = server.hello_with("alice-token", &["ack"]).await;
    let keyed = || In::JobSubmit(keyed("echo", json!("once"), "k"));
    let (job, _) = submit_and_accept(&mut conn, keyed()).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(terminal.event_seq, 2);

    // The repeat is logged at 3: the third unacknowledged frame, over the limit of 2.
    let (again, repeat) = submit_and_accept(&mut conn, keyed()).await;
    assert_eq!(again, job);
    assert_eq!(repeat.event_seq, 3);
    let after = sync_with_ping(&mut conn, "after").await;
    assert!(
        after.is_empty(),
        "frames of job {job} logged after its terminal frame: {after:?}"
    );
    assert_eq!(newest(&server, &w.session_id).await, 3);
}

#[tokio::test]
async fn without_ack_negotiated_no_back_pressure_is_signalled() {
    let (server, _steps) = start(3).await;
    let (mut conn, w) = server.hello_with("alice-token", &["progress"]).await;
    let (job, _) = submit_and_accept(&mut conn, ticker(10, 0)).await;
    let (frames, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(frames.len(), 10, "only the ticks: {frames:?}");
    assert!(frames.iter().all(|f| progress_current(f).is_some()));
    assert_eq!(terminal.event_seq, 12);
    assert_eq!(newest(&server, &w.session_id).await, 12);
}
