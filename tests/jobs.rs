//! Jobs (§7) and their events (§8) through the real server: acceptance, results, progress,
//! sequence numbers, cancellation, timeouts, agent resolution, and jobs outliving their
//! connection.

mod common;

use std::sync::Arc;

use arcp_gateway::{
    agent::{Agent, AgentRegistry, JobContext, LogLevel},
    config::GatewayConfig,
    ids::{EventSeq, SessionId},
    proto::{self, client_frame::Payload as In, server_frame::Payload as Out, ClientFrame},
    protocol::{
        job_frame::{JobPayload, ResultBody},
        Json,
    },
    store::log::{EventLog, Wait},
    ArcpError, ErrorCode,
};
use common::*;
use serde_json::json;
use tokio::sync::Notify;

/// The progress body of a `job_event`, if it is a progress event.
fn progress(frame: &proto::ServerFrame) -> Option<&proto::ProgressBody> {
    match &frame.payload {
        Some(Out::JobEvent(proto::JobEvent {
            body: Some(proto::job_event::Body::Progress(p)),
            ..
        })) => Some(p),
        _ => None,
    }
}

fn submit_with(agent: &str, input: serde_json::Value, max_runtime_sec: u32) -> In {
    In::JobSubmit(proto::JobSubmit {
        agent: agent.into(),
        input: Some(json_value(&input)),
        max_runtime_sec,
        ..Default::default()
    })
}

/// Runs an echo job on `conn` and returns its (accepted, result) frames.
async fn run_echo(
    conn: &mut Conn,
    input: serde_json::Value,
) -> (proto::ServerFrame, proto::ServerFrame) {
    let (job, accepted) = submit_and_accept(conn, submit("echo", input.clone())).await;
    let result = conn.recv().await;
    assert_eq!(
        result.job_id, job,
        "the echo's result follows its acceptance"
    );
    assert_eq!(result_json(&result), input);
    (accepted, result)
}

// ---------------------------------------------------------------------------------------------
// Results and events
// ---------------------------------------------------------------------------------------------

async fn echo_is_accepted_then_returns_its_input() {
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello("alice-token").await;
    let input = json!({"a": 1, "b": [true, null, "x"], "c": {"d": 0.5, "e": -3}});
    let submit_id = "submit-1";
    conn.send_frame(ClientFrame {
        id: submit_id.into(),
        trace_id: TRACEPARENT.into(),
        payload: Some(submit("echo", input.clone())),
        ..Default::default()
    })
    .await;

    let frame = conn.recv().await;
    let a = accepted(&frame);
    assert!(a.job_id.starts_with("job_"), "job id {:?}", a.job_id);
    assert_eq!(frame.job_id, a.job_id, "the envelope names the job");
    assert_eq!(a.agent, "echo@1.0.0", "the resolved name@version");
    assert_eq!(a.request_id, submit_id);
    assert!(a.accepted_at.ends_with('Z'), "{:?}", a.accepted_at);
    assert!(a.lease.is_empty());
    assert_eq!(frame.event_seq, 1);
    assert_eq!(frame.session_id, w.session_id);
    assert_eq!(frame.arcp, "1.1");
    assert_eq!(
        frame.trace_id, TRACEPARENT,
        "trace_id on the envelope (§11)"
    );
    assert_eq!(a.trace_id, TRACEPARENT, "trace_id in the acceptance");

    let result = conn.recv().await;
    let r = job_result(&result);
    assert_eq!(r.final_status, "success");
    assert_eq!(to_json(r.result.as_ref().expect("inline result")), input);
    assert!(r.completed_at.ends_with('Z'), "{:?}", r.completed_at);
    assert_eq!(result.event_seq, 2);
    assert_eq!(result.job_id, a.job_id);
    assert_eq!(result.session_id, w.session_id);
    assert_eq!(result.trace_id, TRACEPARENT);
    assert_ne!(result.id, frame.id, "frames have distinct ids");
}

async fn a_job_without_a_trace_id_has_none() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (accepted_frame, result) = run_echo(&mut conn, json!("plain")).await;
    assert!(accepted_frame.trace_id.is_empty());
    assert!(accepted(&accepted_frame).trace_id.is_empty());
    assert!(result.trace_id.is_empty());
}

async fn ticker_reports_progress_then_its_result_with_gap_free_event_seq() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (job, first) = submit_and_accept(&mut conn, ticker(5, 5)).await;
    assert_eq!(accepted(&first).agent, "ticker@1.0.0");
    let (events, terminal) = conn.recv_until_terminal(&job).await;

    assert_eq!(events.len(), 5, "exactly five events: {events:?}");
    for (i, f) in events.iter().enumerate() {
        assert_eq!(f.job_id, job);
        let p = progress(f).unwrap_or_else(|| panic!("expected progress, got {f:?}"));
        assert_eq!(p.current, (i + 1) as f64);
        assert_eq!(p.total, Some(5.0));
        match &f.payload {
            Some(Out::JobEvent(e)) => {
                assert_eq!(e.kind, "progress");
                assert!(e.ts.ends_with('Z'), "{:?}", e.ts);
            }
            other => panic!("expected job_event, got {other:?}"),
        }
    }
    let r = job_result(&terminal);
    assert_eq!(r.final_status, "success");
    assert_eq!(to_json(r.result.as_ref().unwrap()), json!({"ticks": 5}));

    let seqs = event_seqs([&first].into_iter().chain(&events).chain([&terminal]));
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
}

async fn concurrent_jobs_share_one_gap_free_sequence_and_end_once_each() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (a, first) = submit_and_accept(&mut conn, ticker(10, 3)).await;
    let b_submit = conn.send(ticker(8, 4)).await;
    let c_submit = conn.send(submit("echo", json!({"c": true}))).await;

    let mut frames = vec![first];
    let (mut b, mut c) = (None, None);
    let mut terminals = 0;
    while terminals < 3 {
        let f = conn.recv().await;
        if let Some(Out::JobAccepted(acc)) = &f.payload {
            let slot = if acc.request_id == b_submit {
                &mut b
            } else if acc.request_id == c_submit {
                &mut c
            } else {
                panic!("unexpected acceptance {acc:?}")
            };
            assert!(slot.replace(acc.job_id.clone()).is_none(), "accepted twice");
        }
        if is_terminal(&f) {
            terminals += 1;
        }
        frames.push(f);
    }
    let ids = [a, b.expect("b accepted"), c.expect("c accepted")];

    let seqs = event_seqs(&frames);
    assert_eq!(
        seqs,
        (1..=frames.len() as u64).collect::<Vec<_>>(),
        "one strictly increasing sequence across jobs"
    );
    for (job, ticks) in [(&ids[0], Some(10)), (&ids[1], None), (&ids[2], None)] {
        let own: Vec<&proto::ServerFrame> = frames.iter().filter(|f| &f.job_id == job).collect();
        assert!(
            matches!(own[0].payload, Some(Out::JobAccepted(_))),
            "accepted first"
        );
        assert_eq!(
            own.iter().filter(|f| is_terminal(f)).count(),
            1,
            "exactly one terminal frame for {job}"
        );
        assert!(
            is_terminal(own.last().unwrap()),
            "the terminal frame is last"
        );
        if let Some(ticks) = ticks {
            let currents: Vec<f64> = own.iter().filter_map(|f| progress_current(f)).collect();
            assert_eq!(currents, (1..=ticks).map(f64::from).collect::<Vec<_>>());
        }
    }
    let b = frames
        .iter()
        .find(|f| f.job_id == ids[1] && is_terminal(f))
        .unwrap();
    assert_eq!(
        to_json(job_result(b).result.as_ref().unwrap()),
        json!({"ticks": 8})
    );
    assert_eq!(
        newest(&server, &frames[0].session_id).await,
        frames.len() as u64
    );
}

async fn without_the_progress_feature_no_progress_is_sent_and_no_seq_is_skipped() {
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello_with("alice-token", &[]).await;
    assert!(welcome(&w)
        .capabilities
        .as_ref()
        .unwrap()
        .features
        .is_empty());

    let (job, first) = submit_and_accept(&mut conn, ticker(4, 2)).await;
    assert_eq!(first.event_seq, 1);
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert!(
        events.is_empty(),
        "no progress without the feature: {events:?}"
    );
    assert_eq!(terminal.event_seq, 2, "accepted=1, result=2");
    assert_eq!(result_json(&terminal), json!({"ticks": 4}));
    assert_eq!(newest(&server, &w.session_id).await, 2);
}

async fn a_half_closed_client_still_receives_its_jobs_frames() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (job, _) = submit_and_accept(&mut conn, ticker(3, 5)).await;
    conn.close_send();
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(events.len(), 3);
    assert_eq!(terminal.event_seq, 5);
}

// ---------------------------------------------------------------------------------------------
// Cancellation (§7.4)
// ---------------------------------------------------------------------------------------------

async fn cancel_acknowledges_then_ends_the_job_once() {
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello("alice-token").await;
    let (job, _) = submit_and_accept(&mut conn, ticker(1000, 20)).await;
    conn.send(In::JobCancel(proto::JobCancel {
        job_id: job.clone(),
        reason: "changed my mind".into(),
    }))
    .await;

    let (before, cancelled) = conn
        .recv_until(|f| matches!(f.payload, Some(Out::JobCancelled(_))))
        .await;
    for f in &before {
        assert_eq!(f.job_id, job);
        assert!(progress(f).is_some(), "only progress before: {f:?}");
    }
    assert_eq!(cancelled.job_id, job);
    match &cancelled.payload {
        Some(Out::JobCancelled(c)) => {
            assert_eq!(c.job_id, job);
            assert_eq!(c.reason, "changed my mind");
        }
        _ => unreachable!(),
    }

    let terminal = conn.recv().await;
    assert_eq!(terminal.job_id, job);
    let e = job_error(&terminal);
    assert_eq!(e.code, "CANCELLED");
    assert_eq!(e.final_status, "cancelled");
    assert!(!e.retryable);
    assert!(e.completed_at.ends_with('Z'));
    assert_eq!(terminal.event_seq, cancelled.event_seq + 1);

    // A second cancel finds the job ended.
    let again = conn.send(cancel(&job)).await;
    expect_error(&conn.recv().await, ErrorCode::InvalidRequest, Some(&again));

    // Nothing more for the cancelled job: the next frames are the echo's, in sequence.
    let (accepted_frame, result) = run_echo(&mut conn, json!("after")).await;
    assert_eq!(accepted_frame.event_seq, terminal.event_seq + 1);
    assert_eq!(result.event_seq, terminal.event_seq + 2);
    assert_eq!(newest(&server, &w.session_id).await, result.event_seq);
}

async fn cancel_may_name_the_job_in_the_envelope() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (job, _) = submit_and_accept(&mut conn, ticker(1000, 20)).await;
    conn.send_frame(ClientFrame {
        id: "cancel-env".into(),
        job_id: job.clone(),
        payload: Some(In::JobCancel(proto::JobCancel::default())),
        ..Default::default()
    })
    .await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(job_error(&terminal).code, "CANCELLED");
    assert_eq!(job_error(&terminal).final_status, "cancelled");
}

async fn cancelling_a_finished_job_is_an_invalid_request() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (accepted_frame, _) = run_echo(&mut conn, json!(1)).await;
    let id = conn.send(cancel(&accepted(&accepted_frame).job_id)).await;
    expect_error(&conn.recv().await, ErrorCode::InvalidRequest, Some(&id));
}

async fn cancelling_an_unknown_job_is_job_not_found() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello("alice-token").await;
    let id = conn.send(cancel("job_does_not_exist")).await;
    expect_error(&conn.recv().await, ErrorCode::JobNotFound, Some(&id));
}

async fn only_the_submitting_session_may_cancel_and_other_principals_cannot_see_the_job() {
    let server = TestServer::start_default().await;
    let (mut owner, _) = server.hello("alice-token").await;
    let (job, _) = submit_and_accept(&mut owner, ticker(1000, 20)).await;

    // Same principal, other session: the job is visible but not theirs to cancel.
    let (mut sibling, _) = server.hello("alice-token").await;
    let id = sibling.send(cancel(&job)).await;
    expect_error(
        &sibling.recv().await,
        ErrorCode::PermissionDenied,
        Some(&id),
    );

    // Another principal: the job's existence is not revealed.
    let (mut bob, _) = server.hello("bob-token").await;
    let id = bob.send(cancel(&job)).await;
    let hidden = bob.recv().await;
    expect_error(&hidden, ErrorCode::JobNotFound, Some(&id));
    let id = bob.send(cancel("job_does_not_exist")).await;
    let missing = bob.recv().await;
    expect_error(&missing, ErrorCode::JobNotFound, Some(&id));

    // Neither attempt touched the job: its owner still cancels it.
    owner.send(cancel(&job)).await;
    owner.expect_cancelled(&job).await;
}

// ---------------------------------------------------------------------------------------------
// Runtime limit
// ---------------------------------------------------------------------------------------------

async fn a_job_past_max_runtime_sec_times_out() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (job, _) = submit_and_accept(
        &mut conn,
        submit_with("ticker", json!({"count": 1000, "interval_ms": 50}), 1),
    )
    .await;
    let (before, terminal) = conn.recv_until_terminal(&job).await;
    for f in &before {
        assert!(progress(f).is_some(), "only progress before: {f:?}");
    }
    let e = job_error(&terminal);
    assert_eq!(e.code, "TIMEOUT");
    assert_eq!(e.final_status, "timed_out");
    assert!(!e.retryable);
    let seqs = event_seqs(before.iter().chain([&terminal]));
    assert_eq!(seqs, (2..=terminal.event_seq).collect::<Vec<_>>());
}

async fn a_job_within_max_runtime_sec_succeeds() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (job, _) = submit_and_accept(
        &mut conn,
        submit_with("ticker", json!({"count": 2, "interval_ms": 1}), 60),
    )
    .await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(job_result(&terminal).final_status, "success");
}

// ---------------------------------------------------------------------------------------------
// Agent resolution (§7.5) and submission errors
// ---------------------------------------------------------------------------------------------

async fn submissions_naming_unavailable_agents_are_refused_without_a_job() {
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello("alice-token").await;
    for (agent, code) in [
        ("no-such-agent", ErrorCode::AgentNotAvailable),
        ("no-such-agent@1.0.0", ErrorCode::AgentNotAvailable),
        ("echo@9.9.9", ErrorCode::AgentVersionNotAvailable),
        ("Echo!", ErrorCode::InvalidRequest),
        ("echo@", ErrorCode::InvalidRequest),
        ("", ErrorCode::InvalidRequest),
    ] {
        let id = conn.send(submit(agent, json!({}))).await;
        let answer = conn.recv().await;
        expect_error(&answer, code, Some(&id));
        assert_eq!(answer.session_id, w.session_id);
    }
    assert_eq!(
        newest(&server, &w.session_id).await,
        0,
        "no job frame logged"
    );
    let (accepted_frame, _) = run_echo(&mut conn, json!("ok")).await;
    assert_eq!(accepted_frame.event_seq, 1);
}

async fn a_pinned_version_needs_the_agent_versions_feature() {
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello_with("alice-token", &["progress"]).await;
    assert_eq!(
        welcome(&w).capabilities.as_ref().unwrap().features,
        vec!["progress"]
    );
    let id = conn.send(submit("echo@1.0.0", json!(1))).await;
    expect_error(&conn.recv().await, ErrorCode::InvalidRequest, Some(&id));

    // A bare name still resolves to the default.
    let (_, a) = submit_and_accept(&mut conn, submit("echo", json!(1))).await;
    assert_eq!(accepted(&a).agent, "echo@1.0.0");
    assert_eq!(a.event_seq, 1);
}

async fn a_pinned_version_resolves_exactly_when_negotiated() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (job, a) = submit_and_accept(
        &mut conn,
        submit("ticker@1.0.0", json!({"count": 1, "interval_ms": 0})),
    )
    .await;
    assert_eq!(accepted(&a).agent, "ticker@1.0.0");
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    assert_eq!(result_json(&terminal), json!({"ticks": 1}));
}

async fn bad_agent_input_is_accepted_then_fails_the_job() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (job, a) = submit_and_accept(&mut conn, submit("ticker", json!({"count": "x"}))).await;
    assert_eq!(a.event_seq, 1);
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert!(events.is_empty(), "{events:?}");
    let e = job_error(&terminal);
    assert_eq!(e.code, "INVALID_REQUEST");
    assert_eq!(e.final_status, "error");
    assert!(!e.retryable);
    assert_eq!(terminal.event_seq, 2);
}

async fn lease_features_the_client_did_not_negotiate_are_refused_on_submit() {
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello("alice-token").await;
    for payload in [In::JobSubmit(proto::JobSubmit {
        agent: "echo".into(),
        lease_constraints: Some(proto::LeaseConstraints {
            expires_at: "2099-01-01T00:00:00Z".into(),
        }),
        ..Default::default()
    })] {
        let id = conn.send(payload).await;
        expect_error(&conn.recv().await, ErrorCode::InvalidRequest, Some(&id));
    }
    assert_eq!(newest(&server, &w.session_id).await, 0);
}

// ---------------------------------------------------------------------------------------------
// Jobs outlive their connection (§6.4, §6.7)
// ---------------------------------------------------------------------------------------------

/// The last frame of the session's log, straight from the gateway.
async fn last_logged(server: &TestServer, session: &str, seq: u64) -> JobPayload {
    let frames = session_log(server, session)
        .await
        .read(EventSeq(seq - 1), 10, Wait::No)
        .await
        .expect("the log is readable");
    assert_eq!(frames.len(), 1, "frame {seq} is the last");
    assert_eq!(frames[0].seq, EventSeq(seq));
    frames[0]
        .frame
        .decode()
        .expect("a logged frame decodes")
        .1
        .payload
}

async fn jobs_keep_running_after_the_client_disconnects() {
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello("alice-token").await;
    let (_job, _) = submit_and_accept(&mut conn, ticker(20, 10)).await;
    drop(conn);

    // accepted + 20 progress + result.
    wait_for_log(&server, &w.session_id, 22).await;
    match last_logged(&server, &w.session_id, 22).await {
        JobPayload::Result(r) => assert_eq!(r.result, ResultBody::Inline(json!({"ticks": 20}))),
        other => panic!("expected the result last, got {other:?}"),
    }
}

async fn jobs_keep_running_after_session_close() {
    let server = TestServer::start_default().await;
    let (mut conn, w) = server.hello("alice-token").await;
    let (_job, _) = submit_and_accept(&mut conn, ticker(10, 5)).await;
    conn.send(In::SessionClose(proto::SessionClose::default()))
        .await;
    conn.recv_until(|f| matches!(f.payload, Some(Out::SessionClosed(_))))
        .await;

    // accepted + 10 progress + result.
    wait_for_log(&server, &w.session_id, 12).await;
    match last_logged(&server, &w.session_id, 12).await {
        JobPayload::Result(r) => assert_eq!(r.result, ResultBody::Inline(json!({"ticks": 10}))),
        other => panic!("expected the result last, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Agents that misbehave: the runtime still ends every job with exactly one terminal frame
// ---------------------------------------------------------------------------------------------

/// Panics instead of returning.
struct Panics;

#[async_trait::async_trait]
impl Agent for Panics {
    async fn run(&self, _ctx: JobContext, _input: Json) -> Result<Json, ArcpError> {
        panic!("the agent panicked on purpose")
    }
}

/// Fails with the §12 code named by its input.
struct Fails;

#[async_trait::async_trait]
impl Agent for Fails {
    async fn run(&self, _ctx: JobContext, input: Json) -> Result<Json, ArcpError> {
        let code = ErrorCode::parse(input.as_str().unwrap_or_default()).expect("a §12 code");
        Err(ArcpError::from_code(code, "failing on purpose"))
    }
}

/// Returns at once, leaving behind a sub-task holding a clone of its context (which
/// `JobContext` allows: "clones may move to other tasks"). The sub-task has not yet noticed the
/// job ended when it emits: it emits when the test says `go`, then reports `done`.
struct Straggler {
    go: Arc<Notify>,
    done: Arc<Notify>,
}

#[async_trait::async_trait]
impl Agent for Straggler {
    async fn run(&self, ctx: JobContext, _input: Json) -> Result<Json, ArcpError> {
        let (go, done) = (self.go.clone(), self.done.clone());
        tokio::spawn(async move {
            go.notified().await;
            let _ = ctx.log(LogLevel::Info, "a late line from a sub-task").await;
            done.notify_one();
        });
        Ok(json!("returned"))
    }
}

/// Reports the size of the futures its context returns for an emit, without awaiting them
/// (an emit that is never awaited sends nothing).
struct Sizer;

#[async_trait::async_trait]
impl Agent for Sizer {
    async fn run(&self, ctx: JobContext, _input: Json) -> Result<Json, ArcpError> {
        let log = std::mem::size_of_val(&ctx.log(LogLevel::Info, "a line"));
        let metric = std::mem::size_of_val(&ctx.metric("tokens", 1.0, None));
        Ok(json!({ "log": log, "metric": metric }))
    }
}

/// A server with the built-in agents plus `panics`, `fails`, `straggler` and `sizer`.
async fn server_with_test_agents() -> (TestServer, Arc<Notify>, Arc<Notify>) {
    let (go, done) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let mut agents = AgentRegistry::with_builtins();
    agents.register("sizer", "1.0.0", Arc::new(Sizer)).unwrap();
    agents
        .register("panics", "1.0.0", Arc::new(Panics))
        .unwrap();
    agents.register("fails", "1.0.0", Arc::new(Fails)).unwrap();
    agents
        .register(
            "straggler",
            "1.0.0",
            Arc::new(Straggler {
                go: go.clone(),
                done: done.clone(),
            }),
        )
        .unwrap();
    (
        TestServer::start_with_agents(GatewayConfig::default(), agents).await,
        go,
        done,
    )
}

async fn a_panicking_agent_ends_its_job_with_a_retryable_internal_error() {
    let (server, _, _) = server_with_test_agents().await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (job, _) = submit_and_accept(&mut conn, submit("panics", json!(null))).await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert!(events.is_empty());
    let e = job_error(&terminal);
    assert_eq!(e.code, "INTERNAL_ERROR");
    assert_eq!(e.final_status, "error");
    assert!(e.retryable, "INTERNAL_ERROR is always retryable (§12)");
    assert_eq!(terminal.event_seq, 2);
    // The session is unharmed.
    run_echo(&mut conn, json!("still here")).await;
}

async fn agent_errors_become_job_errors_with_the_spec_status_and_retryability() {
    let (server, _, _) = server_with_test_agents().await;
    let (mut conn, _) = server.hello("alice-token").await;
    for (code, final_status, retryable) in [
        (ErrorCode::BudgetExhausted, "error", false),
        (ErrorCode::LeaseExpired, "error", false),
        (ErrorCode::PermissionDenied, "error", false),
        (ErrorCode::InternalError, "error", true),
        (ErrorCode::Timeout, "timed_out", false),
    ] {
        let (job, _) = submit_and_accept(&mut conn, submit("fails", json!(code.as_str()))).await;
        let (_, terminal) = conn.recv_until_terminal(&job).await;
        let e = job_error(&terminal);
        assert_eq!(e.code, code.as_str());
        assert_eq!(e.final_status, final_status, "{code}");
        assert_eq!(e.retryable, retryable, "{code}");
        assert_eq!(e.message, "failing on purpose");
    }
}

/// §7.3: a job's terminal frame is its last. An event a sub-task emits through its context
/// after the job ended must not be logged behind the terminal frame.
async fn nothing_is_logged_for_a_job_after_its_terminal_frame() {
    let (server, go, done) = server_with_test_agents().await;
    let (mut conn, w) = server.hello("alice-token").await;
    let (job, _) = submit_and_accept(&mut conn, submit("straggler", json!(null))).await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    assert!(events.is_empty());
    assert_eq!(job_result(&terminal).final_status, "success");
    assert_eq!(terminal.event_seq, 2);

    go.notify_one();
    done.notified().await;
    assert_eq!(
        newest(&server, &w.session_id).await,
        terminal.event_seq,
        "an event was logged for job {job} after its terminal frame"
    );
    let (accepted_frame, _) = run_echo(&mut conn, json!("next")).await;
    assert_eq!(accepted_frame.event_seq, 3);
}

/// An agent emits by the thousand, and each emit's future is moved into the agent's own:
/// the frame travels boxed, so that future stays a few hundred bytes rather than the nearly
/// 2 KiB it was when every layer held the frame by value.
async fn an_emit_is_a_small_future() {
    let (server, _, _) = server_with_test_agents().await;
    let (mut conn, _) = server.hello("alice-token").await;
    let (job, _) = submit_and_accept(&mut conn, submit("sizer", json!(null))).await;
    let (_, terminal) = conn.recv_until_terminal(&job).await;
    let sizes = result_json(&terminal);
    for emit in ["log", "metric"] {
        let size = sizes[emit].as_u64().expect("a size");
        assert!(size <= 512, "the future of a {emit} emit is {size} bytes");
    }
}

/// Waits for `go`, then emits log lines without ever waiting until a task it spawned first
/// gets to run, and reports how many it emitted by then (`None` if it reached `SPIN_LIMIT`).
/// On a single-threaded runtime that task runs only when the agent's task yields.
struct Spinner {
    go: Arc<Notify>,
    spun: tokio::sync::mpsc::UnboundedSender<Option<u64>>,
}

/// More emits than a job may run ahead of its reader.
const SPIN_LIMIT: u64 = 100_000;

#[async_trait::async_trait]
impl Agent for Spinner {
    async fn run(&self, ctx: JobContext, _input: Json) -> Result<Json, ArcpError> {
        self.go.notified().await;
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        tokio::spawn({
            let ran = ran.clone();
            async move { ran.store(true, std::sync::atomic::Ordering::Release) }
        });
        let mut spun = None;
        for emits in 0..SPIN_LIMIT {
            if ran.load(std::sync::atomic::Ordering::Acquire) {
                spun = Some(emits);
                break;
            }
            ctx.log(LogLevel::Debug, "spin").await?;
        }
        let _ = self.spun.send(spun);
        Ok(json!(null))
    }
}

/// An agent that emits without ever waiting must not keep its worker thread from every other
/// task, whether its session is reading (flow control would stop it only a whole window
/// ahead) or gone (nothing would: its emits return at once). This test runtime has one
/// thread, so the spinner's spawned task runs only when the job yields.
#[tokio::test]
async fn an_agent_that_never_waits_still_lets_other_tasks_run() {
    let go = Arc::new(Notify::new());
    let (spun_tx, mut spun) = tokio::sync::mpsc::unbounded_channel();
    let mut agents = AgentRegistry::with_builtins();
    let spinner = Spinner {
        go: go.clone(),
        spun: spun_tx,
    };
    agents
        .register("spinner", "1.0.0", Arc::new(spinner))
        .unwrap();
    let server = TestServer::start_with_agents(GatewayConfig::default(), agents).await;
    let window = GatewayConfig::default().flow_window;

    for session_gone in [false, true] {
        let (mut conn, w) = server.hello("alice-token").await;
        submit_and_accept(&mut conn, submit("spinner", json!(null))).await;
        if session_gone {
            let id = SessionId::new(w.session_id.as_str());
            server.stores.logs.remove(&id).await;
        }
        go.notify_one();
        let emits = tokio::time::timeout(FRAME_TIMEOUT, spun.recv())
            .await
            .expect("the spinner reports")
            .expect("the spinner is registered");
        let emits = emits.unwrap_or_else(|| {
            panic!("{SPIN_LIMIT} emits and no other task ran (session gone: {session_gone})")
        });
        assert!(emits < window, "{emits} emits before another task ran");
    }
}

// Each test above on memory and on Redis stores, but for
// `an_agent_that_never_waits_still_lets_other_tasks_run`, which is about the memory stores'
// emits that never suspend (and removes a log from them).
on_each_store!(
    echo_is_accepted_then_returns_its_input,
    a_job_without_a_trace_id_has_none,
    ticker_reports_progress_then_its_result_with_gap_free_event_seq,
    concurrent_jobs_share_one_gap_free_sequence_and_end_once_each,
    without_the_progress_feature_no_progress_is_sent_and_no_seq_is_skipped,
    a_half_closed_client_still_receives_its_jobs_frames,
    cancel_acknowledges_then_ends_the_job_once,
    cancel_may_name_the_job_in_the_envelope,
    cancelling_a_finished_job_is_an_invalid_request,
    cancelling_an_unknown_job_is_job_not_found,
    only_the_submitting_session_may_cancel_and_other_principals_cannot_see_the_job,
    a_job_past_max_runtime_sec_times_out,
    a_job_within_max_runtime_sec_succeeds,
    submissions_naming_unavailable_agents_are_refused_without_a_job,
    a_pinned_version_needs_the_agent_versions_feature,
    a_pinned_version_resolves_exactly_when_negotiated,
    bad_agent_input_is_accepted_then_fails_the_job,
    lease_features_the_client_did_not_negotiate_are_refused_on_submit,
    jobs_keep_running_after_the_client_disconnects,
    jobs_keep_running_after_session_close,
    a_panicking_agent_ends_its_job_with_a_retryable_internal_error,
    agent_errors_become_job_errors_with_the_spec_status_and_retryability,
    nothing_is_logged_for_a_job_after_its_terminal_frame,
    an_emit_is_a_small_future,
);
