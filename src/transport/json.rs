//! The JSON envelope of spec §5 to and from the domain messages: what WebSocket (and any other
//! text transport) speaks. The only place that knows the JSON shapes.
//!
//! Unknown envelope and payload fields are ignored (§5). Every way a text frame can be wrong
//! (not JSON, not an object, no `type`, an unknown `type`, a payload that does not fit its
//! schema) becomes a [`RejectedFrame`] naming what was wrong, which the session answers with
//! `session.error` `INVALID_REQUEST` and survives.

use serde::{de::DeserializeOwned, Deserialize};
use serde_json::{json, Map, Value};

use crate::{
    clock::Timestamp,
    encoding::json_value::check_depth,
    error::{excerpt, ArcpError, EXCERPT_CHARS},
    ids::{EventSeq, JobId, SessionId, TraceId},
    protocol::{
        client::{
            job_ref, ClientMessage, Hello, Inbound, JobSubmit, ListJobs, RejectedFrame,
            ResumeRequest, Subscribe,
        },
        control::{Control, ControlMessage, JobSummary},
        credential::Credential,
        event::{EventBody, ToolError},
        job_frame::{JobFrame, JobPayload, ResultBody},
        Json, Lease, PROTOCOL_VERSION,
    },
    session::output::{Outbound, OutboundItem, StreamEnd},
};

// ---------------------------------------------------------------------------------------------
// Client frames
// ---------------------------------------------------------------------------------------------

/// A text frame as a domain message, or the reason it is not one.
pub fn decode(text: &str) -> Result<Inbound, RejectedFrame> {
    let reject = |request_id: Option<String>, message: String| {
        RejectedFrame::invalid(request_id, ArcpError::InvalidRequest(message))
    };
    let value: Value =
        serde_json::from_str(text).map_err(|e| reject(None, format!("malformed JSON: {e}")))?;
    let Value::Object(mut envelope) = value else {
        return Err(reject(None, "a frame must be a JSON object".into()));
    };
    let request_id = match envelope.get("id") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let field =
        |envelope: &Map<String, Value>, name: &str| -> Result<Option<String>, RejectedFrame> {
            match envelope.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok((!s.is_empty()).then(|| s.clone())),
                Some(_) => Err(reject(
                    request_id.clone(),
                    format!("envelope field {name} must be a string"),
                )),
            }
        };
    let kind = field(&envelope, "type")?
        .ok_or_else(|| reject(request_id.clone(), "the frame has no type".into()))?;
    let session_id = field(&envelope, "session_id")?.map(SessionId::new);
    let trace_id = field(&envelope, "trace_id")?.map(TraceId::new);
    let job_id = field(&envelope, "job_id")?.map(JobId::new);
    let payload = match envelope.remove("payload") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p,
        Some(_) => {
            return Err(reject(
                request_id,
                format!("the payload of {kind} must be an object"),
            ))
        }
    };
    let message = client_message(&kind, payload, job_id.as_ref())
        .map_err(|error| RejectedFrame::invalid(request_id.clone(), error))?;
    Ok(Inbound {
        id: request_id,
        session_id,
        trace_id,
        job_id,
        message,
    })
}

fn client_message(
    kind: &str,
    payload: Value,
    envelope_job: Option<&JobId>,
) -> Result<ClientMessage, ArcpError> {
    Ok(match kind {
        "session.hello" => {
            let p: HelloPayload = parse(kind, payload)?;
            // The public SDKs put resume coordinates either in a `resume` block or at the top
            // level of the hello payload; both mean the same.
            let resume = match (p.resume, p.resume_token) {
                (Some(r), _) => Some(r.into_request()),
                (None, Some(token)) => Some(ResumeRequest {
                    session_id: p.session_id.filter(|s| !s.is_empty()).map(SessionId::new),
                    token,
                    last_event_seq: EventSeq(p.last_event_seq.unwrap_or(0)),
                }),
                (None, None) => None,
            };
            ClientMessage::Hello(Hello {
                scheme: p.auth.as_ref().and_then(AuthPayload::scheme),
                token: p.auth.and_then(|a| a.token).filter(|t| !t.is_empty()),
                features: p.capabilities.and_then(|c| c.features),
                resume,
            })
        }
        "session.resume" => {
            let p: ResumePayload = parse(kind, payload)?;
            ClientMessage::Resume(Hello {
                scheme: p.auth.as_ref().and_then(AuthPayload::scheme),
                token: p.auth.and_then(|a| a.token).filter(|t| !t.is_empty()),
                features: p.capabilities.and_then(|c| c.features),
                resume: Some(
                    ResumeInfo {
                        session_id: p.session_id,
                        resume_token: p.resume_token,
                        last_event_seq: p.last_event_seq,
                    }
                    .into_request(),
                ),
            })
        }
        "session.ping" => {
            let p: PingPayload = parse(kind, payload)?;
            ClientMessage::Ping { nonce: p.nonce }
        }
        "session.pong" => ClientMessage::Pong,
        "session.ack" => {
            let p: AckPayload = parse(kind, payload)?;
            ClientMessage::Ack {
                last_processed_seq: EventSeq(p.last_processed_seq),
            }
        }
        "session.list_jobs" => {
            let p: ListPayload = parse(kind, payload)?;
            let filter = p.filter.unwrap_or_default();
            ClientMessage::ListJobs(ListJobs {
                status: filter.status.unwrap_or_default(),
                agent: filter.agent,
                created_after: filter.created_after,
                limit: p.limit.filter(|l| *l > 0),
                cursor: p.cursor.filter(|c| !c.is_empty()),
            })
        }
        // `session.bye` is what the reference Python SDK sends to close (§6.7 names
        // `session.close`); both close the session.
        "session.close" | "session.bye" => {
            let p: ClosePayload = parse(kind, payload)?;
            ClientMessage::Close { reason: p.reason }
        }
        "job.submit" => {
            let p: SubmitPayload = parse(kind, payload)?;
            if p.agent.is_empty() {
                return Err(ArcpError::InvalidRequest(
                    "job.submit requires agent".into(),
                ));
            }
            check_depth(&p.input, "job.submit input")?;
            ClientMessage::Submit(JobSubmit {
                agent: p.agent,
                input: p.input,
                lease_request: p.lease_request.unwrap_or_default(),
                expires_at: p.lease_constraints.and_then(|c| c.expires_at),
                idempotency_key: p.idempotency_key.filter(|k| !k.is_empty()),
                max_runtime_sec: p.max_runtime_sec.filter(|s| *s > 0),
            })
        }
        "job.cancel" => {
            let p: CancelPayload = parse(kind, payload)?;
            ClientMessage::Cancel {
                job_id: job_ref(p.job_id.map(JobId::new), envelope_job, kind)?,
                reason: p.reason,
            }
        }
        "job.subscribe" => {
            let p: SubscribePayload = parse(kind, payload)?;
            ClientMessage::Subscribe(Subscribe {
                job_id: job_ref(p.job_id.map(JobId::new), envelope_job, kind)?,
                from_event_seq: p.from_event_seq.map(EventSeq),
                history: p.history,
            })
        }
        "job.unsubscribe" => {
            let p: CancelPayload = parse(kind, payload)?;
            ClientMessage::Unsubscribe {
                job_id: job_ref(p.job_id.map(JobId::new), envelope_job, kind)?,
            }
        }
        other => {
            return Err(ArcpError::InvalidRequest(format!(
                "unknown message type {}",
                excerpt(other, EXCERPT_CHARS)
            )))
        }
    })
}

fn parse<T: DeserializeOwned>(kind: &str, payload: Value) -> Result<T, ArcpError> {
    serde_json::from_value(payload).map_err(|e| {
        ArcpError::InvalidRequest(format!(
            "the payload of {kind} does not fit its schema: {e}"
        ))
    })
}

#[derive(Deserialize, Default)]
struct AuthPayload {
    scheme: Option<String>,
    token: Option<String>,
}

impl AuthPayload {
    fn scheme(&self) -> Option<String> {
        self.scheme.clone().filter(|s| !s.is_empty())
    }
}

#[derive(Deserialize, Default)]
struct CapabilitiesPayload {
    features: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct ResumeInfo {
    session_id: Option<String>,
    resume_token: String,
    #[serde(default)]
    last_event_seq: u64,
}

impl ResumeInfo {
    fn into_request(self) -> ResumeRequest {
        ResumeRequest {
            session_id: self
                .session_id
                .filter(|s| !s.is_empty())
                .map(SessionId::new),
            token: self.resume_token,
            last_event_seq: EventSeq(self.last_event_seq),
        }
    }
}

#[derive(Deserialize)]
struct HelloPayload {
    auth: Option<AuthPayload>,
    capabilities: Option<CapabilitiesPayload>,
    resume: Option<ResumeInfo>,
    resume_token: Option<String>,
    last_event_seq: Option<u64>,
    session_id: Option<String>,
}

#[derive(Deserialize)]
struct ResumePayload {
    session_id: Option<String>,
    resume_token: String,
    #[serde(default)]
    last_event_seq: u64,
    auth: Option<AuthPayload>,
    capabilities: Option<CapabilitiesPayload>,
}

#[derive(Deserialize)]
struct PingPayload {
    #[serde(default)]
    nonce: String,
}

#[derive(Deserialize)]
struct AckPayload {
    last_processed_seq: u64,
}

#[derive(Deserialize, Default)]
struct FilterPayload {
    status: Option<Vec<String>>,
    agent: Option<String>,
    created_after: Option<String>,
}

#[derive(Deserialize)]
struct ListPayload {
    filter: Option<FilterPayload>,
    limit: Option<u32>,
    cursor: Option<String>,
}

#[derive(Deserialize)]
struct ClosePayload {
    reason: Option<String>,
}

#[derive(Deserialize)]
struct ConstraintsPayload {
    expires_at: Option<String>,
}

#[derive(Deserialize)]
struct SubmitPayload {
    agent: String,
    #[serde(default)]
    input: Json,
    lease_request: Option<Lease>,
    lease_constraints: Option<ConstraintsPayload>,
    idempotency_key: Option<String>,
    max_runtime_sec: Option<u32>,
}

#[derive(Deserialize)]
struct CancelPayload {
    job_id: Option<String>,
    reason: Option<String>,
}

#[derive(Deserialize)]
struct SubscribePayload {
    job_id: Option<String>,
    from_event_seq: Option<u64>,
    #[serde(default)]
    history: bool,
}

// ---------------------------------------------------------------------------------------------
// Server frames
// ---------------------------------------------------------------------------------------------

/// A gateway output as a text frame, or why the stream ends.
pub fn encode(item: OutboundItem) -> Result<String, StreamEnd> {
    match item {
        OutboundItem::Frame(session, Outbound::Control(control)) => {
            Ok(control_frame(session, *control).to_string())
        }
        OutboundItem::Frame(session, Outbound::Job(entry)) => Ok(match entry.frame.decode() {
            Ok((id, frame)) => job_frame(session, entry.seq, id, &frame).to_string(),
            // The store handed back a frame this runtime did not write: the client is told,
            // rather than sent a frame that is not what was logged.
            Err(error) => control_frame(
                session,
                Control {
                    request_id: None,
                    message: ControlMessage::Error(error),
                },
            )
            .to_string(),
        }),
        OutboundItem::End(end) => Err(end),
    }
}

fn envelope(
    kind: &str,
    id: String,
    session: Option<&SessionId>,
    payload: Value,
) -> Map<String, Value> {
    let mut frame = Map::new();
    frame.insert("arcp".into(), PROTOCOL_VERSION.into());
    frame.insert("id".into(), id.into());
    frame.insert("type".into(), kind.into());
    if let Some(session) = session {
        frame.insert("session_id".into(), session.as_str().into());
    }
    frame.insert("payload".into(), payload);
    frame
}

fn control_frame(session: Option<SessionId>, control: Control) -> Value {
    let request_id = control.request_id;
    let (kind, payload) = match control.message {
        ControlMessage::Welcome(w) => (
            "session.welcome",
            json!({
                // Beyond §6.2's example, for clients (the reference Python SDK among them)
                // that read the session id from the payload and require `accepted_at`.
                "session_id": session.as_ref().map(SessionId::as_str),
                "accepted_at": Timestamp::now().to_rfc3339(),
                "runtime": { "name": w.runtime_name, "version": w.runtime_version },
                "resume_token": w.resume_token,
                "resume_window_sec": w.resume_window_sec,
                "heartbeat_interval_sec": w.heartbeat_interval_sec,
                "capabilities": {
                    "encodings": ["json"],
                    "features": w.features,
                    "agents": w.agents.iter().map(|a| json!({
                        "name": a.name, "versions": a.versions, "default": a.default,
                    })).collect::<Vec<_>>(),
                },
            }),
        ),
        ControlMessage::Error(e) => (
            "session.error",
            json!({
                "code": e.code().as_str(),
                "message": e.message(),
                "retryable": e.retryable(),
                "request_id": request_id,
            }),
        ),
        ControlMessage::Pong {
            ping_nonce,
            received_at,
        } => (
            "session.pong",
            json!({ "ping_nonce": ping_nonce, "received_at": received_at.to_rfc3339() }),
        ),
        ControlMessage::Ping { nonce, sent_at } => (
            "session.ping",
            json!({ "nonce": nonce, "sent_at": sent_at.to_rfc3339() }),
        ),
        ControlMessage::Closed { reason } => ("session.closed", json!({ "reason": reason })),
        ControlMessage::Jobs { jobs, next_cursor } => (
            "session.jobs",
            json!({
                "request_id": request_id,
                "jobs": jobs.iter().map(job_summary).collect::<Vec<_>>(),
                "next_cursor": next_cursor,
            }),
        ),
    };
    Value::Object(envelope(
        kind,
        uuid::Uuid::now_v7().to_string(),
        session.as_ref(),
        payload,
    ))
}

fn job_frame(session: Option<SessionId>, seq: EventSeq, id: String, frame: &JobFrame) -> Value {
    let job_id = frame.job_id.as_str();
    let trace_id = frame.trace_id.as_ref().map(|t| t.as_str());
    let (kind, payload) = match &frame.payload {
        JobPayload::Accepted(a) => (
            "job.accepted",
            json!({
                "job_id": job_id,
                "agent": a.agent,
                "lease": a.lease,
                "lease_constraints": a.expires_at.map(|at| json!({ "expires_at": at.to_rfc3339() })),
                "budget": a.budget,
                "credentials": (!a.credentials.is_empty()).then(|| a.credentials.iter().map(credential).collect::<Vec<_>>()),
                "parent_job_id": a.parent_job_id.as_ref().map(JobId::as_str),
                "accepted_at": a.accepted_at.to_rfc3339(),
                "trace_id": trace_id,
                "request_id": a.request_id,
            }),
        ),
        JobPayload::Event { ts, body } => (
            "job.event",
            json!({ "kind": body.kind(), "ts": ts.to_rfc3339(), "body": event_body(body) }),
        ),
        JobPayload::Result(r) => (
            "job.result",
            match &r.result {
                ResultBody::Inline(result) => json!({
                    "final_status": "success",
                    "result": result,
                    "completed_at": r.completed_at.to_rfc3339(),
                }),
                ResultBody::Streamed {
                    result_id,
                    result_size,
                    summary,
                } => json!({
                    "final_status": "success",
                    "result_id": result_id,
                    "result_size": result_size,
                    "summary": summary,
                    "completed_at": r.completed_at.to_rfc3339(),
                }),
            },
        ),
        JobPayload::Error(e) => (
            "job.error",
            json!({
                "final_status": e.final_status.as_str(),
                "code": e.code.as_str(),
                "message": e.message,
                "retryable": e.code.retryable(),
                "completed_at": e.completed_at.to_rfc3339(),
            }),
        ),
        JobPayload::Cancelled { reason } => (
            "job.cancelled",
            json!({ "job_id": job_id, "reason": reason }),
        ),
        JobPayload::Subscribed(s) => {
            let mut payload = job_summary(&s.summary);
            if let Value::Object(map) = &mut payload {
                if let Some(status) = map.remove("status") {
                    map.insert("current_status".into(), status);
                }
                map.remove("created_at");
                map.remove("submitted_at");
                map.remove("last_event_seq");
                map.insert("subscribed_from".into(), s.subscribed_from.get().into());
                map.insert("replayed".into(), s.replayed.into());
                map.insert("request_id".into(), json!(s.request_id));
            }
            ("job.subscribed", payload)
        }
    };
    let session = session.as_ref();
    let mut frame = envelope(kind, id, session, payload);
    frame.insert("job_id".into(), job_id.into());
    frame.insert("event_seq".into(), seq.get().into());
    if let Some(trace_id) = trace_id {
        frame.insert("trace_id".into(), trace_id.into());
    }
    Value::Object(frame)
}

fn job_summary(j: &JobSummary) -> Value {
    json!({
        "job_id": j.job_id.as_str(),
        "agent": j.agent,
        "status": j.status,
        "lease": j.lease,
        "lease_constraints": j.expires_at.map(|at| json!({ "expires_at": at.to_rfc3339() })),
        "budget": j.budget,
        "parent_job_id": j.parent_job_id.as_ref().map(JobId::as_str),
        "created_at": j.created_at.to_rfc3339(),
        // The same instant under the name the reference Python SDK requires.
        "submitted_at": j.created_at.to_rfc3339(),
        "trace_id": j.trace_id.as_ref().map(TraceId::as_str),
        "last_event_seq": j.last_event_seq.get(),
        "credentials": (!j.credentials.is_empty()).then(|| j.credentials.iter().map(credential).collect::<Vec<_>>()),
    })
}

fn credential(c: &Credential) -> Value {
    json!({
        "id": c.id,
        "scheme": c.scheme,
        "value": c.value,
        "endpoint": c.endpoint,
        "profile": c.profile,
        "constraints": c.constraints,
    })
}

fn event_body(body: &EventBody) -> Value {
    match body {
        EventBody::Log { level, message } => {
            json!({ "level": level.as_str(), "message": message })
        }
        EventBody::Thought { text } => json!({ "text": text }),
        EventBody::ToolCall {
            tool,
            args,
            call_id,
        } => json!({ "tool": tool, "args": args, "call_id": call_id }),
        EventBody::ToolResult { call_id, outcome } => match outcome {
            Ok(result) => json!({ "call_id": call_id, "result": result }),
            Err(ToolError { code, message }) => json!({
                "call_id": call_id,
                "error": { "code": code.as_str(), "message": message, "retryable": code.retryable() },
            }),
        },
        EventBody::Status {
            phase,
            message,
            credential: rotated,
        } => json!({
            "phase": phase,
            "message": message,
            "credential": rotated.as_deref().map(credential),
        }),
        EventBody::Metric {
            name,
            value,
            unit,
            dimensions,
        } => json!({
            "name": name, "value": value, "unit": unit, "dimensions": dimensions,
        }),
        EventBody::ArtifactRef {
            uri,
            content_type,
            byte_size,
            sha256,
        } => json!({
            "uri": uri, "content_type": content_type, "byte_size": byte_size, "sha256": sha256,
        }),
        EventBody::Delegate {
            child_job_id,
            agent,
            input,
            lease_request,
            expires_at,
        } => json!({
            "child_job_id": child_job_id,
            "agent": agent,
            "input": input,
            "lease_request": lease_request,
            "lease_constraints": expires_at.map(|at: Timestamp| json!({ "expires_at": at.to_rfc3339() })),
        }),
        EventBody::Progress {
            current,
            total,
            units,
            message,
        } => json!({
            "current": current, "total": total, "units": units, "message": message,
        }),
        EventBody::ResultChunk {
            result_id,
            chunk_seq,
            data,
            encoding,
            more,
        } => json!({
            "result_id": result_id, "chunk_seq": chunk_seq, "data": data, "encoding": encoding, "more": more,
        }),
    }
}
