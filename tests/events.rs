//! Job events (§8.1, §8.2) and trace propagation (§11) through the real server: every event
//! kind with the body its `kind` names, feature-gated kinds, and the submit's `trace_id` on
//! every frame of a job and of the jobs it delegates to.

mod common;

use std::collections::{BTreeSet, HashMap};

use arcp_gateway::proto::{
    client_frame::Payload as In, job_event::Body, server_frame::Payload as Out, ClientFrame,
    ServerFrame,
};
use common::*;
use serde_json::json;

const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const OTHER_TRACE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

const ALL_KINDS: [&str; 10] = [
    "log",
    "thought",
    "tool_call",
    "tool_result",
    "status",
    "metric",
    "artifact_ref",
    "delegate",
    "progress",
    "result_chunk",
];

const FEATURES: &[&str] = &["progress", "result_chunk", "agent_versions"];

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn showcase() -> In {
    submit_leased("showcase", json!({}), lease(&[("tool.call", &["search"])]))
}

fn delegating() -> In {
    submit_leased(
        "delegator",
        json!({"agent": "echo", "input": "hi"}),
        lease(&[("agent.delegate", &["echo"])]),
    )
}

fn chunking() -> In {
    submit("chunker", json!({"text": "abcdefghij", "chunk_size": 4}))
}

/// Submits `payload` with envelope `trace_id` and collects every frame up to the job's
/// terminal one (including frames of the jobs it delegates to).
async fn run_traced(conn: &mut Conn, payload: In, trace_id: &str) -> (String, Vec<ServerFrame>) {
    conn.send_frame(ClientFrame {
        id: format!("submit-{trace_id}"),
        trace_id: trace_id.into(),
        payload: Some(payload),
        ..Default::default()
    })
    .await;
    let first = conn.recv().await;
    let job = accepted(&first).job_id.clone();
    let (mut frames, terminal) = conn.recv_until_terminal(&job).await;
    frames.insert(0, first);
    frames.push(terminal);
    (job, frames)
}

/// Runs `payload` untraced and returns the job's events (excluding accepted/terminal frames).
async fn run(conn: &mut Conn, payload: In) -> (String, Vec<ServerFrame>, ServerFrame) {
    let (job, _) = submit_and_accept(conn, payload).await;
    let (events, terminal) = conn.recv_until_terminal(&job).await;
    (job, events, terminal)
}

/// The name of the `body` variant that is set.
fn variant(body: &Body) -> &'static str {
    match body {
        Body::Log(_) => "log",
        Body::Thought(_) => "thought",
        Body::ToolCall(_) => "tool_call",
        Body::ToolResult(_) => "tool_result",
        Body::Status(_) => "status",
        Body::Metric(_) => "metric",
        Body::ArtifactRef(_) => "artifact_ref",
        Body::Delegate(_) => "delegate",
        Body::Progress(_) => "progress",
        Body::ResultChunk(_) => "result_chunk",
    }
}

/// The event of a `job_event` frame, checked: its `kind` names the body variant that is set,
/// and its `ts` is UTC.
fn event(frame: &ServerFrame) -> Option<(&str, &Body)> {
    match &frame.payload {
        Some(Out::JobEvent(e)) => {
            let body = e.body.as_ref().expect("an event has a body");
            assert_eq!(e.kind, variant(body), "kind matches the body in {frame:?}");
            assert!(e.ts.ends_with('Z'), "{:?}", e.ts);
            Some((e.kind.as_str(), body))
        }
        _ => None,
    }
}

fn kinds(frames: &[ServerFrame]) -> Vec<&str> {
    frames.iter().filter_map(event).map(|(k, _)| k).collect()
}

// ---------------------------------------------------------------------------------------------
// Kinds and bodies (§8.2)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn showcase_emits_every_directly_emitted_kind_with_its_body() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let (job, events, terminal) = run(&mut conn, showcase()).await;
    assert_eq!(
        kinds(&events),
        [
            "log",
            "thought",
            "status",
            "metric",
            "artifact_ref",
            "progress",
            "tool_call",
            "tool_result",
            "progress"
        ]
    );
    assert!(events.iter().all(|f| f.job_id == job));
    let bodies: Vec<&Body> = events.iter().filter_map(event).map(|(_, b)| b).collect();

    let Body::Log(log) = bodies[0] else {
        unreachable!()
    };
    assert_eq!(
        (log.level.as_str(), log.message.as_str()),
        ("info", "starting")
    );
    let Body::Thought(thought) = bodies[1] else {
        unreachable!()
    };
    assert_eq!(thought.text, "planning");
    let Body::Status(status) = bodies[2] else {
        unreachable!()
    };
    assert_eq!(status.phase, "running");
    assert_eq!(status.message, "working");
    assert!(status.credential.is_none());
    let Body::Metric(metric) = bodies[3] else {
        unreachable!()
    };
    assert_eq!(
        (metric.name.as_str(), metric.value, metric.unit.as_str()),
        ("latency_ms", 12.5, "ms")
    );
    let Body::ArtifactRef(artifact) = bodies[4] else {
        unreachable!()
    };
    assert_eq!(artifact.uri, "file:///tmp/report.txt");
    assert_eq!(artifact.content_type, "text/plain");
    assert_eq!(artifact.byte_size, Some(42));
    assert!(artifact.sha256.is_empty());
    let Body::Progress(progress) = bodies[5] else {
        unreachable!()
    };
    assert_eq!((progress.current, progress.total), (1.0, Some(2.0)));
    let Body::ToolCall(call) = bodies[6] else {
        unreachable!()
    };
    assert_eq!(call.tool, "search");
    assert_eq!(to_json(call.args.as_ref().unwrap()), json!({"q": "arcp"}));
    assert!(!call.call_id.is_empty());
    let Body::ToolResult(result) = bodies[7] else {
        unreachable!()
    };
    assert_eq!(result.call_id, call.call_id, "the result answers its call");
    assert!(result.error.is_none());
    assert_eq!(
        to_json(result.result.as_ref().unwrap()),
        json!({"q": "arcp"})
    );
    let Body::Progress(progress) = bodies[8] else {
        unreachable!()
    };
    assert_eq!((progress.current, progress.total), (2.0, Some(2.0)));

    let r = job_result(&terminal);
    assert_eq!(r.final_status, "success");
    assert_eq!(to_json(r.result.as_ref().unwrap()), json!("done"));
}

#[tokio::test]
async fn a_denied_tool_call_is_a_tool_result_error_and_the_agent_carries_on() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let (_, events, terminal) = run(&mut conn, submit("showcase", json!({}))).await;
    let result = events
        .iter()
        .filter_map(event)
        .find_map(|(_, b)| match b {
            Body::ToolResult(r) => Some(r),
            _ => None,
        })
        .expect("a tool_result");
    let e = result.error.as_ref().expect("denied without tool.call");
    assert_eq!(e.code, "PERMISSION_DENIED");
    assert!(!e.retryable);
    assert!(result.result.is_none());
    assert_eq!(kinds(&events).last(), Some(&"progress"));
    assert_eq!(job_result(&terminal).final_status, "success");
}

#[tokio::test]
async fn all_ten_event_kinds_are_observed_across_showcase_delegation_and_chunking() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let mut seen = BTreeSet::new();
    for payload in [showcase(), delegating(), chunking()] {
        let (_, frames) = run_traced(&mut conn, payload, TRACE).await;
        seen.extend(kinds(&frames).into_iter().map(str::to_owned));
    }
    let all: BTreeSet<String> = ALL_KINDS.iter().map(|k| (*k).to_owned()).collect();
    assert_eq!(seen, all);
}

#[tokio::test]
async fn feature_gated_kinds_are_not_sent_to_sessions_without_the_feature() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello_with("alice-token", &["agent_versions"]).await;
    let (_, events, terminal) = run(&mut conn, showcase()).await;
    assert_eq!(
        kinds(&events),
        [
            "log",
            "thought",
            "status",
            "metric",
            "artifact_ref",
            "tool_call",
            "tool_result"
        ],
        "no progress without the progress feature"
    );
    assert_eq!(job_result(&terminal).final_status, "success");
    let (_, events, _) = run(&mut conn, chunking()).await;
    assert!(
        kinds(&events).is_empty(),
        "no result_chunk without result_chunk"
    );
}

// ---------------------------------------------------------------------------------------------
// Trace propagation (§11)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_frame_of_a_job_carries_the_submits_trace_id() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    for payload in [showcase(), chunking()] {
        let (job, frames) = run_traced(&mut conn, payload, TRACE).await;
        assert!(frames.len() > 2);
        for f in &frames {
            assert_eq!(f.job_id, job);
            assert_eq!(f.trace_id, TRACE, "{f:?}");
        }
        assert_eq!(accepted(&frames[0]).trace_id, TRACE);
    }
}

#[tokio::test]
async fn a_delegated_childs_frames_carry_the_parents_trace_id() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let (parent, frames) = run_traced(&mut conn, delegating(), TRACE).await;
    let child_frames: Vec<&ServerFrame> = frames.iter().filter(|f| f.job_id != parent).collect();
    assert!(
        child_frames.len() >= 2,
        "the child's acceptance and result: {frames:?}"
    );
    let child_accepted = child_frames
        .iter()
        .find_map(|f| match &f.payload {
            Some(Out::JobAccepted(a)) => Some(a),
            _ => None,
        })
        .expect("the child's acceptance");
    assert_eq!(child_accepted.parent_job_id, parent);
    assert_eq!(child_accepted.trace_id, TRACE);
    for f in &frames {
        assert_eq!(f.trace_id, TRACE, "{f:?}");
    }
}

#[tokio::test]
async fn concurrent_jobs_keep_their_own_trace_ids() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let mut expected = HashMap::new();
    for (i, trace) in [TRACE, OTHER_TRACE].into_iter().enumerate() {
        conn.send_frame(ClientFrame {
            id: format!("s{i}"),
            trace_id: trace.into(),
            payload: Some(ticker(5, 2)),
            ..Default::default()
        })
        .await;
        expected.insert(format!("s{i}"), trace);
    }
    let mut traces: HashMap<String, &str> = HashMap::new();
    let mut terminals = 0;
    while terminals < 2 {
        let f = conn.recv().await;
        if let Some(Out::JobAccepted(a)) = &f.payload {
            traces.insert(a.job_id.clone(), expected[&a.request_id]);
        }
        assert_eq!(f.trace_id, traces[&f.job_id], "{f:?}");
        terminals += usize::from(is_terminal(&f));
    }
    assert_eq!(traces.len(), 2);
}

#[tokio::test]
async fn a_job_submitted_without_a_trace_id_has_none_on_any_frame() {
    let server = TestServer::start_default().await;
    let (mut conn, _) = server.hello_with("alice-token", FEATURES).await;
    let (job, first) = submit_and_accept(&mut conn, delegating()).await;
    assert!(first.trace_id.is_empty());
    let (frames, terminal) = conn.recv_until_terminal(&job).await;
    assert!(frames
        .iter()
        .chain([&terminal])
        .all(|f| f.trace_id.is_empty()));
}
