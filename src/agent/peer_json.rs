//! The §5 JSON envelope from the client's side: the frames the gateway sends to an ARCP
//! runtime it drives (a stdio child agent, an upstream runtime), and that runtime's frames as
//! domain messages.
//!
//! [`crate::transport::json`] is the other direction (a client's frames in, the gateway's out); the two
//! agree on the shapes because the tests run both against the reference Python SDK. Unknown
//! envelope and payload fields are ignored (§5); a line that is not an ARCP frame is an
//! [`ArcpError::InvalidRequest`] naming what was wrong, which the caller turns into the end
//! of the job it was relaying.

use serde::{de::DeserializeOwned, Deserialize};
use serde_json::{json, Map, Value};

use crate::{
    clock::Timestamp,
    encoding::json_value::check_depth,
    error::{excerpt, ArcpError, ErrorCode, EXCERPT_CHARS},
    ids::TraceId,
    protocol::{
        event::{EventBody, LogLevel, ToolError},
        Json, Lease, PROTOCOL_VERSION,
    },
};

/// The largest frame the gateway reads from a runtime it relays a job to; a larger one ends
/// the job.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Frames to the runtime
// ---------------------------------------------------------------------------------------------

fn envelope(kind: &str, payload: Value) -> Map<String, Value> {
    let mut frame = Map::new();
    frame.insert("arcp".into(), PROTOCOL_VERSION.into());
    // A UUIDv7: the reference Python SDK accepts ULIDs and UUIDv7s as envelope ids only.
    frame.insert("id".into(), uuid::Uuid::now_v7().to_string().into());
    frame.insert("type".into(), kind.into());
    frame.insert("payload".into(), payload);
    frame
}

/// The session a `session.hello` resumes (§6.3).
pub struct Resume<'a> {
    /// The session's id, from its welcome.
    pub session_id: &'a str,
    /// The resume token of its latest welcome.
    pub resume_token: &'a str,
    /// The newest `event_seq` received.
    pub last_event_seq: u64,
}

/// `session.hello` as `client`/`version`, presenting `token`, offering `features`; with
/// `resume`, resuming that session.
pub fn hello(
    client: &str,
    version: &str,
    token: &str,
    features: &[&str],
    resume: Option<&Resume<'_>>,
) -> String {
    let mut payload = json!({
        "client": { "name": client, "version": version },
        "auth": { "scheme": "bearer", "token": token },
        "capabilities": { "encodings": ["json"], "features": features },
    });
    if let (Some(r), Value::Object(map)) = (resume, &mut payload) {
        map.insert(
            "resume".into(),
            json!({
                "session_id": r.session_id,
                "resume_token": r.resume_token,
                "last_event_seq": r.last_event_seq,
            }),
        );
    }
    Value::Object(envelope("session.hello", payload)).to_string()
}

/// `session.list_jobs` (§6.6), unfiltered.
pub fn list_jobs() -> String {
    Value::Object(envelope(
        "session.list_jobs",
        json!({ "limit": LIST_LIMIT }),
    ))
    .to_string()
}

/// The most jobs a `session.list_jobs` asks for at once.
const LIST_LIMIT: u32 = 1000;

/// What a `job.submit` to the runtime carries: the job as the gateway accepted it.
pub struct Submission<'a> {
    /// The agent's name at the runtime.
    pub agent: &'a str,
    /// The job's input.
    pub input: &'a Json,
    /// The effective lease, in its wire shape.
    pub lease: &'a Lease,
    /// The lease's `expires_at`.
    pub expires_at: Option<Timestamp>,
    /// The job's trace context (§11).
    pub trace_id: Option<&'a TraceId>,
    /// The key under which a resubmission names the same job (§7.2).
    pub idempotency_key: Option<&'a str>,
}

/// `job.submit` of `submission`.
pub fn submit(submission: &Submission<'_>) -> String {
    let mut payload = json!({
        "agent": submission.agent,
        "input": submission.input,
        "lease_request": submission.lease,
    });
    if let Value::Object(map) = &mut payload {
        if let Some(at) = submission.expires_at {
            map.insert(
                "lease_constraints".into(),
                json!({ "expires_at": at.to_rfc3339() }),
            );
        }
        if let Some(key) = submission.idempotency_key {
            map.insert("idempotency_key".into(), key.into());
        }
    }
    let mut frame = envelope("job.submit", payload);
    if let Some(trace) = submission.trace_id.and_then(|t| wire_trace_id(t.as_str())) {
        frame.insert("trace_id".into(), trace.into());
    }
    Value::Object(frame).to_string()
}

/// The trace id as the runtime takes it: §5 names a bare W3C trace id (32 hex digits), which
/// is what the reference SDK validates, so a full `traceparent` passes on its trace-id field.
/// Anything else is not forwarded rather than have the runtime refuse the job for it.
fn wire_trace_id(trace: &str) -> Option<&str> {
    let is_trace_id =
        |s: &str| s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if is_trace_id(trace) {
        return Some(trace);
    }
    let mut parts = trace.split('-');
    match (parts.next(), parts.next()) {
        (Some(version), Some(id)) if version.len() == 2 && is_trace_id(id) => Some(id),
        _ => None,
    }
}

/// `job.cancel` of the runtime's job `job_id` (when known), for `reason`.
pub fn cancel(job_id: Option<&str>, reason: &str) -> String {
    let mut payload = json!({ "reason": reason });
    if let (Some(id), Value::Object(map)) = (job_id, &mut payload) {
        map.insert("job_id".into(), id.into());
    }
    let mut frame = envelope("job.cancel", payload);
    if let Some(id) = job_id {
        frame.insert("job_id".into(), id.into());
    }
    Value::Object(frame).to_string()
}

// ---------------------------------------------------------------------------------------------
// Frames from the runtime
// ---------------------------------------------------------------------------------------------

/// A frame the runtime sent, and the `event_seq` its envelope carries.
#[derive(Debug, PartialEq)]
pub struct Decoded {
    /// The frame.
    pub frame: RuntimeFrame,
    /// Its place in the session's event sequence (§8.3), when it has one.
    pub event_seq: Option<u64>,
    /// The job its envelope names, when it names one.
    pub job_id: Option<String>,
}

/// A frame the runtime sent.
#[derive(Debug, PartialEq)]
pub enum RuntimeFrame {
    /// `session.welcome`: the session is open.
    Welcome(Welcome),
    /// `job.accepted`: the runtime's id for the job.
    Accepted {
        /// The runtime's job id, which `job.cancel` names.
        job_id: String,
    },
    /// `job.event` of a kind this gateway knows.
    Event(EventBody),
    /// `job.event` of a vendor kind (`x-vendor.*`, §8.2), which has no domain shape.
    VendorEvent {
        /// The kind.
        kind: String,
    },
    /// `job.result`.
    Result(RuntimeResult),
    /// `job.error`: how the runtime says the job failed.
    JobError(ArcpError),
    /// `job.cancelled`.
    Cancelled,
    /// `session.error`.
    SessionError(ArcpError),
    /// `session.jobs`: a page of the jobs the session may observe.
    Jobs(JobsPage),
    /// A frame that needs no answer from a client that negotiated nothing more
    /// (`session.pong`, `session.ack`, `job.subscribed`, ...).
    Other {
        /// Its type.
        kind: String,
    },
}

/// What a `session.welcome` says of the session.
#[derive(Debug, PartialEq, Default)]
pub struct Welcome {
    /// The session's id, which a resume names.
    pub session_id: Option<String>,
    /// The token a resume presents; rotated on every welcome.
    pub resume_token: Option<String>,
    /// The features the runtime offers; the effective set is their intersection with ours.
    pub features: Vec<String>,
}

/// What a `session.jobs` lists.
#[derive(Debug, PartialEq)]
pub struct JobsPage {
    /// The jobs, as `(job_id, status)`.
    pub jobs: Vec<(String, String)>,
    /// Whether this is the last page.
    pub complete: bool,
}

/// What a `job.result` says.
#[derive(Debug, PartialEq)]
pub enum RuntimeResult {
    /// `final_status: success` with the result inline.
    Inline(Json),
    /// `final_status: success` with a streamed result (`result_id`).
    Streamed {
        /// The streamed result's id.
        result_id: String,
    },
    /// `final_status: cancelled`.
    Cancelled,
    /// `final_status: timed_out`.
    TimedOut,
}

/// One line of a runtime's output as a frame, or what is wrong with it.
pub fn decode(text: &str) -> Result<RuntimeFrame, ArcpError> {
    decode_with_seq(text).map(|d| d.frame)
}

/// [`decode`], keeping the envelope's `event_seq`.
pub fn decode_with_seq(text: &str) -> Result<Decoded, ArcpError> {
    let invalid = |m: String| ArcpError::InvalidRequest(m);
    let value: Value = serde_json::from_str(text).map_err(|e| {
        invalid(format!(
            "not JSON ({e}): {:?}",
            excerpt(text, EXCERPT_CHARS)
        ))
    })?;
    let Value::Object(mut envelope) = value else {
        return Err(invalid(format!(
            "not an ARCP envelope (a JSON object): {:?}",
            excerpt(text, EXCERPT_CHARS)
        )));
    };
    let kind = match envelope.get("type") {
        Some(Value::String(kind)) if !kind.is_empty() => kind.clone(),
        _ => {
            return Err(invalid(format!(
                "not an ARCP envelope (no type): {:?}",
                excerpt(text, EXCERPT_CHARS)
            )))
        }
    };
    let envelope_job = match envelope.get("job_id") {
        Some(Value::String(id)) => Some(id.clone()),
        _ => None,
    };
    let event_seq =
        match envelope.get("event_seq") {
            None | Some(Value::Null) => None,
            Some(seq) => Some(seq.as_u64().ok_or_else(|| {
                invalid(format!("the event_seq of {kind} is not a sequence number"))
            })?),
        };
    let session_id = match envelope.get("session_id") {
        Some(Value::String(id)) => Some(id.clone()),
        _ => None,
    };
    let payload = match envelope.remove("payload") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p,
        Some(_) => return Err(invalid(format!("the payload of {kind} is not an object"))),
    };
    let frame = match kind.as_str() {
        "session.welcome" => {
            let p: WelcomePayload = parse(&kind, payload)?;
            RuntimeFrame::Welcome(Welcome {
                session_id: p.session_id.or(session_id),
                resume_token: p.resume_token,
                features: p.capabilities.map(|c| c.features).unwrap_or_default(),
            })
        }
        "session.jobs" => {
            let p: JobsPayload = parse(&kind, payload)?;
            RuntimeFrame::Jobs(JobsPage {
                jobs: p.jobs.into_iter().map(|j| (j.job_id, j.status)).collect(),
                complete: p.next_cursor.is_none(),
            })
        }
        "session.error" => {
            let p: ErrorPayload = parse(&kind, payload)?;
            RuntimeFrame::SessionError(p.into_error())
        }
        "job.accepted" => {
            let p: AcceptedPayload = parse(&kind, payload)?;
            let job_id = p
                .job_id
                .or_else(|| envelope_job.clone())
                .ok_or_else(|| invalid("job.accepted names no job_id".into()))?;
            RuntimeFrame::Accepted { job_id }
        }
        "job.event" => {
            let p: EventPayload = parse(&kind, payload)?;
            match event_body(&p.kind, p.body)? {
                Some(body) => RuntimeFrame::Event(body),
                None => RuntimeFrame::VendorEvent { kind: p.kind },
            }
        }
        "job.result" => {
            let p: ResultPayload = parse(&kind, payload)?;
            RuntimeFrame::Result(match p.final_status.as_str() {
                "success" => match p.result_id {
                    Some(result_id) => RuntimeResult::Streamed { result_id },
                    None => {
                        let result = p.result.unwrap_or(Value::Null);
                        check_depth(&result, "the agent's result")?;
                        RuntimeResult::Inline(result)
                    }
                },
                "cancelled" => RuntimeResult::Cancelled,
                "timed_out" => RuntimeResult::TimedOut,
                other => {
                    return Err(invalid(format!(
                        "job.result has final_status {:?}",
                        excerpt(other, EXCERPT_CHARS)
                    )))
                }
            })
        }
        "job.error" => {
            let p: ErrorPayload = parse(&kind, payload)?;
            RuntimeFrame::JobError(p.into_error())
        }
        "job.cancelled" => RuntimeFrame::Cancelled,
        "session.ping" | "session.pong" | "session.ack" | "session.closed" | "job.subscribed" => {
            RuntimeFrame::Other { kind }
        }
        other => {
            return Err(invalid(format!(
                "unknown message type {:?}",
                excerpt(other, EXCERPT_CHARS)
            )))
        }
    };
    Ok(Decoded {
        frame,
        event_seq,
        job_id: envelope_job,
    })
}

fn parse<T: DeserializeOwned>(kind: &str, payload: Value) -> Result<T, ArcpError> {
    serde_json::from_value(payload).map_err(|e| {
        ArcpError::InvalidRequest(format!(
            "the payload of {kind} does not fit its schema: {e}"
        ))
    })
}

#[derive(Deserialize)]
struct WelcomePayload {
    session_id: Option<String>,
    resume_token: Option<String>,
    capabilities: Option<WelcomeCapabilities>,
}

#[derive(Deserialize)]
struct WelcomeCapabilities {
    #[serde(default)]
    features: Vec<String>,
}

#[derive(Deserialize)]
struct JobsPayload {
    #[serde(default)]
    jobs: Vec<ListedJob>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct ListedJob {
    job_id: String,
    status: String,
}

#[derive(Deserialize)]
struct AcceptedPayload {
    job_id: Option<String>,
}

#[derive(Deserialize)]
struct EventPayload {
    kind: String,
    #[serde(default)]
    body: Value,
}

#[derive(Deserialize)]
struct ResultPayload {
    final_status: String,
    result: Option<Json>,
    result_id: Option<String>,
}

#[derive(Deserialize)]
struct ErrorPayload {
    code: String,
    #[serde(default)]
    message: String,
}

impl ErrorPayload {
    /// The runtime's error under its own code; a code outside §12 is the runtime's fault.
    fn into_error(self) -> ArcpError {
        match ErrorCode::parse(&self.code) {
            Some(code) => ArcpError::from_code(code, self.message),
            None => ArcpError::Internal(format!(
                "the agent failed with a code outside §12 ({}): {}",
                excerpt(&self.code, EXCERPT_CHARS),
                self.message
            )),
        }
    }
}

/// A `job.event` body of `kind` as its domain shape; `None` for a vendor kind.
fn event_body(kind: &str, body: Value) -> Result<Option<EventBody>, ArcpError> {
    let what = format!("job.event {kind}");
    Ok(Some(match kind {
        "log" => {
            let b: LogBody = parse(&what, body)?;
            EventBody::Log {
                level: LogLevel::parse(&b.level)?,
                message: b.message,
            }
        }
        "thought" => {
            let b: ThoughtBody = parse(&what, body)?;
            EventBody::Thought { text: b.text }
        }
        "tool_call" => {
            let b: ToolCallBody = parse(&what, body)?;
            check_depth(&b.args, "tool_call args")?;
            EventBody::ToolCall {
                tool: b.tool,
                args: b.args,
                call_id: b.call_id,
            }
        }
        "tool_result" => {
            let b: ToolResultBody = parse(&what, body)?;
            let outcome = match (b.result, b.error) {
                (_, Some(e)) => Err(ToolError {
                    code: ErrorCode::parse(&e.code).unwrap_or(ErrorCode::InternalError),
                    message: e.message,
                }),
                (result, None) => {
                    let result = result.unwrap_or(Value::Null);
                    check_depth(&result, "tool_result result")?;
                    Ok(result)
                }
            };
            EventBody::ToolResult {
                call_id: b.call_id,
                outcome,
            }
        }
        "status" => {
            let b: StatusBody = parse(&what, body)?;
            EventBody::Status {
                phase: b.phase,
                message: b.message,
                credential: None,
            }
        }
        "metric" => {
            let b: MetricBody = parse(&what, body)?;
            EventBody::Metric {
                name: b.name,
                value: b.value,
                unit: b.unit,
                dimensions: b.dimensions,
            }
        }
        "artifact_ref" => {
            let b: ArtifactBody = parse(&what, body)?;
            EventBody::ArtifactRef {
                uri: b.uri,
                content_type: b.content_type,
                byte_size: b.byte_size,
                sha256: b.sha256,
            }
        }
        "progress" => {
            let b: ProgressBody = parse(&what, body)?;
            EventBody::Progress {
                current: b.current,
                total: b.total,
                units: b.units,
                message: b.message,
            }
        }
        // Runtime semantics the gateway does not take from a child in this version: a child's
        // delegation and streamed results would have to become the gateway's own.
        "delegate" | "result_chunk" => {
            return Err(ArcpError::InvalidRequest(format!(
                "{kind} events from a stdio agent are not supported"
            )))
        }
        vendor if vendor.starts_with("x-vendor.") => return Ok(None),
        other => {
            return Err(ArcpError::InvalidRequest(format!(
                "unknown event kind {:?}",
                excerpt(other, EXCERPT_CHARS)
            )))
        }
    }))
}

#[derive(Deserialize)]
struct LogBody {
    level: String,
    message: String,
}

#[derive(Deserialize)]
struct ThoughtBody {
    text: String,
}

#[derive(Deserialize)]
struct ToolCallBody {
    tool: String,
    #[serde(default)]
    args: Json,
    call_id: String,
}

#[derive(Deserialize)]
struct ToolErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct ToolResultBody {
    call_id: String,
    result: Option<Json>,
    error: Option<ToolErrorBody>,
}

#[derive(Deserialize)]
struct StatusBody {
    phase: String,
    message: Option<String>,
}

#[derive(Deserialize)]
struct MetricBody {
    name: String,
    value: f64,
    unit: Option<String>,
    dimensions: Option<Map<String, Json>>,
}

#[derive(Deserialize)]
struct ArtifactBody {
    uri: String,
    content_type: String,
    byte_size: Option<u64>,
    sha256: Option<String>,
}

#[derive(Deserialize)]
struct ProgressBody {
    current: f64,
    total: Option<f64>,
    units: Option<String>,
    message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_frames_a_job_produces() {
        assert_eq!(
            decode(r#"{"arcp":"1.1","id":"x","type":"session.welcome","payload":{}}"#),
            Ok(RuntimeFrame::Welcome(Welcome::default()))
        );
        assert_eq!(
            decode_with_seq(
                r#"{"type":"session.welcome","session_id":"s1","payload":{"resume_token":"rt","capabilities":{"features":["progress"]}}}"#
            ),
            Ok(Decoded {
                frame: RuntimeFrame::Welcome(Welcome {
                    session_id: Some("s1".into()),
                    resume_token: Some("rt".into()),
                    features: vec!["progress".into()],
                }),
                event_seq: None,
                job_id: None,
            })
        );
        assert_eq!(
            decode_with_seq(
                r#"{"type":"job.event","event_seq":7,"payload":{"kind":"thought","body":{"text":"t"}}}"#
            )
            .map(|d| d.event_seq),
            Ok(Some(7))
        );
        assert_eq!(
            decode(
                r#"{"type":"session.jobs","payload":{"jobs":[{"job_id":"j1","status":"success","agent":"a"}],"next_cursor":null}}"#
            ),
            Ok(RuntimeFrame::Jobs(JobsPage {
                jobs: vec![("j1".into(), "success".into())],
                complete: true,
            }))
        );
        assert_eq!(
            decode(r#"{"type":"job.accepted","job_id":"j1","payload":{}}"#),
            Ok(RuntimeFrame::Accepted {
                job_id: "j1".into()
            })
        );
        assert_eq!(
            decode(
                r#"{"type":"job.event","payload":{"kind":"log","body":{"level":"info","message":"hi"}}}"#
            ),
            Ok(RuntimeFrame::Event(EventBody::Log {
                level: LogLevel::Info,
                message: "hi".into()
            }))
        );
        assert_eq!(
            decode(
                r#"{"type":"job.result","payload":{"final_status":"success","result":{"a":1}}}"#
            ),
            Ok(RuntimeFrame::Result(RuntimeResult::Inline(json!({"a":1}))))
        );
        assert_eq!(
            decode(r#"{"type":"job.error","payload":{"code":"PERMISSION_DENIED","message":"no"}}"#),
            Ok(RuntimeFrame::JobError(ArcpError::PermissionDenied(
                "no".into()
            )))
        );
    }

    #[test]
    fn refuses_what_is_not_arcp() {
        for line in [
            "hello",
            "[1]",
            r#"{"payload":{}}"#,
            r#"{"type":"job.bogus"}"#,
            r#"{"type":"job.event","payload":{"kind":"nope","body":{}}}"#,
            r#"{"type":"job.event","event_seq":-1,"payload":{"kind":"thought","body":{"text":"t"}}}"#,
        ] {
            let e = decode(line).expect_err(line);
            assert_eq!(e.code(), ErrorCode::InvalidRequest, "{line}: {e}");
        }
    }

    #[test]
    fn forwards_the_trace_id_of_a_traceparent() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(wire_trace_id(id), Some(id));
        assert_eq!(
            wire_trace_id(&format!("00-{id}-00f067aa0ba902b7-01")),
            Some(id)
        );
        assert_eq!(wire_trace_id("opaque"), None);
    }
}
