//! Frames: the client payloads the tests send, and accessors and checks for the server frames
//! they receive.

use std::collections::HashMap;

use arcp_gateway::{
    proto::{self, client_frame::Payload as In, server_frame::Payload as Out, ServerFrame},
    ErrorCode,
};

// ---------------------------------------------------------------------------------------------
// Client payloads
// ---------------------------------------------------------------------------------------------

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

/// A client `session.ping` with `nonce`.
pub fn ping(nonce: &str) -> In {
    In::SessionPing(proto::SessionPing {
        nonce: nonce.into(),
        sent_at: "2026-05-13T19:42:13.000Z".into(),
    })
}

pub fn submit(agent: &str, input: serde_json::Value) -> In {
    In::JobSubmit(proto::JobSubmit {
        agent: agent.into(),
        input: Some(json_value(&input)),
        ..Default::default()
    })
}

/// A `job.submit` of `agent` with `input` that may run `max_runtime_sec`.
pub fn submit_with_runtime(agent: &str, input: serde_json::Value, max_runtime_sec: u32) -> In {
    In::JobSubmit(proto::JobSubmit {
        agent: agent.into(),
        input: Some(json_value(&input)),
        max_runtime_sec,
        ..Default::default()
    })
}

/// A `job.submit` of `agent` with `input` under `idempotency_key` `key`.
pub fn keyed(agent: &str, input: serde_json::Value, key: &str) -> proto::JobSubmit {
    proto::JobSubmit {
        agent: agent.into(),
        input: Some(json_value(&input)),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

/// A `session.ack` of everything through `seq`.
pub fn ack(seq: u64) -> In {
    In::SessionAck(proto::SessionAck {
        last_processed_seq: seq,
    })
}

/// A `session.list_jobs` with no filter.
pub fn list_jobs() -> In {
    In::SessionListJobs(proto::SessionListJobs::default())
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

/// A `lease_request` map from `(namespace, patterns)` pairs.
pub fn lease(entries: &[(&str, &[&str])]) -> HashMap<String, prost_types::ListValue> {
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

/// A `job_submit` of `agent` with `input` under `lease_request`.
pub fn submit_leased(
    agent: &str,
    input: serde_json::Value,
    lease_request: HashMap<String, prost_types::ListValue>,
) -> In {
    submit_expiring(agent, input, lease_request, None)
}

/// [`submit_leased`] with `lease_constraints.expires_at`.
pub fn submit_expiring(
    agent: &str,
    input: serde_json::Value,
    lease_request: HashMap<String, prost_types::ListValue>,
    expires_at: Option<&str>,
) -> In {
    In::JobSubmit(leased_submit(agent, input, lease_request, expires_at))
}

/// The `job.submit` of [`submit_expiring`], for callers that set more of its fields.
pub fn leased_submit(
    agent: &str,
    input: serde_json::Value,
    lease_request: HashMap<String, prost_types::ListValue>,
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

/// A `job.subscribe` to `job`, replaying its frames after `from` first with `history`.
pub fn subscribe(job: &str, history: bool, from: Option<u64>) -> In {
    In::JobSubscribe(proto::JobSubscribe {
        job_id: job.into(),
        from_event_seq: from,
        history,
    })
}

/// A `job.unsubscribe` from `job`.
pub fn unsubscribe(job: &str) -> In {
    In::JobUnsubscribe(proto::JobUnsubscribe { job_id: job.into() })
}

/// Now plus `ms` milliseconds, as RFC 3339 UTC with a `Z` suffix.
pub fn in_ms(ms: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::milliseconds(ms))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn json_value(json: &serde_json::Value) -> prost_types::Value {
    arcp_gateway::transport::grpc::convert::to_value(json)
}

pub fn to_json(value: &prost_types::Value) -> serde_json::Value {
    arcp_gateway::transport::grpc::convert::to_json(value.clone())
}

// ---------------------------------------------------------------------------------------------
// Server frames
// ---------------------------------------------------------------------------------------------

pub fn welcome(frame: &ServerFrame) -> &proto::SessionWelcome {
    match &frame.payload {
        Some(Out::SessionWelcome(w)) => w,
        other => panic!("expected session_welcome, got {other:?}"),
    }
}

/// The agent inventory of a welcome: each agent's name, versions and default version.
pub fn inventory(frame: &ServerFrame) -> Vec<(String, Vec<String>, String)> {
    welcome(frame)
        .capabilities
        .as_ref()
        .expect("capabilities")
        .agents
        .iter()
        .map(|a| (a.name.clone(), a.versions.clone(), a.default.clone()))
        .collect()
}

/// The features a welcome frame says the session negotiated.
pub fn offered_features(frame: &ServerFrame) -> &[String] {
    let capabilities = welcome(frame).capabilities.as_ref();
    &capabilities.expect("a welcome has capabilities").features
}

pub fn session_error(frame: &ServerFrame) -> &proto::SessionError {
    match &frame.payload {
        Some(Out::SessionError(e)) => e,
        other => panic!("expected session_error, got {other:?}"),
    }
}

/// Asserts `frame` is a `session_error` with `code` and the retryability §12 fixes for it,
/// explaining itself, answering the client frame `request_id` (when the test knows it), and
/// outside any job and `event_seq` like every control frame. Returns the error.
pub fn expect_error<'a>(
    frame: &'a ServerFrame,
    code: ErrorCode,
    request_id: Option<&str>,
) -> &'a proto::SessionError {
    let e = session_error(frame);
    assert_eq!(e.code, code.as_str(), "unexpected error: {e:?}");
    assert_eq!(e.retryable, code.retryable(), "retryable of {e:?}");
    if let Some(request_id) = request_id {
        assert_eq!(e.request_id, request_id, "request_id of {e:?}");
    }
    assert!(!e.message.is_empty(), "errors explain themselves: {e:?}");
    assert_eq!(frame.event_seq, 0, "control frames carry no event_seq");
    assert!(frame.job_id.is_empty(), "control frames name no job");
    e
}

/// The §12 code a gRPC status carries in its `arcp-error-code` metadata.
pub fn arcp_code(status: &tonic::Status) -> Option<&str> {
    let value = status.metadata().get("arcp-error-code")?;
    value.to_str().ok()
}

pub fn accepted(frame: &ServerFrame) -> &proto::JobAccepted {
    match &frame.payload {
        Some(Out::JobAccepted(a)) => a,
        other => panic!("expected job_accepted, got {other:?}"),
    }
}

pub fn subscribed(frame: &ServerFrame) -> &proto::JobSubscribed {
    match &frame.payload {
        Some(Out::JobSubscribed(s)) => s,
        other => panic!("expected job_subscribed, got {other:?}"),
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

/// Whether `frame` ends its job: a `job_result` or a `job_error`.
pub fn is_terminal(frame: &ServerFrame) -> bool {
    matches!(
        frame.payload,
        Some(Out::JobResult(_)) | Some(Out::JobError(_))
    )
}

/// The inline result of a `job_result` frame, as JSON.
pub fn result_json(frame: &ServerFrame) -> serde_json::Value {
    let result = job_result(frame).result.as_ref();
    to_json(result.expect("an inline result"))
}

/// The body of a `job_event` frame, if it is one.
pub fn event_body(frame: &ServerFrame) -> Option<&proto::job_event::Body> {
    match &frame.payload {
        Some(Out::JobEvent(e)) => e.body.as_ref(),
        _ => None,
    }
}

/// The message of a `log` event frame, if it is one.
pub fn log_message(frame: &ServerFrame) -> Option<&str> {
    match event_body(frame) {
        Some(proto::job_event::Body::Log(l)) => Some(&l.message),
        _ => None,
    }
}

/// `progress.current` of a `job_event` frame, if it is a progress event.
pub fn progress_current(frame: &ServerFrame) -> Option<f64> {
    match event_body(frame) {
        Some(proto::job_event::Body::Progress(p)) => Some(p.current),
        _ => None,
    }
}

/// The `event_seq` of each frame, in order.
pub fn event_seqs<'a>(frames: impl IntoIterator<Item = &'a ServerFrame>) -> Vec<u64> {
    frames.into_iter().map(|f| f.event_seq).collect()
}
