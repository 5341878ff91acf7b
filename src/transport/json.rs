//! The JSON envelope of spec §5 to and from the domain messages: what WebSocket (and any other
//! text transport) speaks. The only place that knows the JSON shapes: the client's frames are
//! read here, the runtime's written in `encode`.
//!
//! Unknown envelope and payload fields are ignored (§5). Every way a text frame can be wrong
//! (not JSON, not an object, no `type`, an unknown `type`, a payload that does not fit its
//! schema) becomes a [`RejectedFrame`] naming what was wrong, which the session answers with
//! `session.error` `INVALID_REQUEST` and survives.

mod encode;
mod text;

use serde::{de::DeserializeOwned, Deserialize};
use serde_json::{Map, Value};

use crate::{
    encoding::{json_value::check_depth, StoredFrame},
    error::{excerpt, ArcpError, EXCERPT_CHARS},
    ids::{EventSeq, JobId, SessionId, TraceId},
    protocol::{
        client::{
            job_ref, ClientMessage, Hello, Inbound, JobSubmit, ListJobs, RejectedFrame,
            ResumeRequest, Subscribe,
        },
        control::{Control, ControlMessage},
        Json, Lease,
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
            Ok(encode::control_text(session.as_ref(), &control))
        }
        OutboundItem::Frame(session, Outbound::Job(entry)) => Ok(match entry.frame.event() {
            Some(event) => {
                encode::stored_event_text(session.as_ref(), entry.seq, &event, entry.frame.len())
            }
            None => decoded_text(session.as_ref(), entry.seq, &entry.frame),
        }),
        OutboundItem::End(end) => Err(end),
    }
}

/// A logged frame's text through its domain message, for the frames that do not read in place.
fn decoded_text(session: Option<&SessionId>, seq: EventSeq, frame: &StoredFrame) -> String {
    match frame.decode() {
        Ok((id, frame)) => encode::job_text(session, seq, &id, &frame),
        // The store handed back a frame this runtime did not write: the client is told,
        // rather than sent a frame that is not what was logged.
        Err(error) => encode::control_text(
            session,
            &Control {
                request_id: None,
                message: ControlMessage::Error(error),
            },
        ),
    }
}
