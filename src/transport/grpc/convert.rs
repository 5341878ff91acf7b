//! Protobuf frames to and from the domain messages. The only place that knows both.

use std::collections::HashMap;

use prost_types::{value::Kind, ListValue, Struct, Value};
use tonic::Status;

use crate::{
    error::ArcpError,
    ids::{EventSeq, JobId, SessionId, TraceId},
    proto::{
        self, client_frame::Payload as In, job_event::Body as ProtoBody,
        server_frame::Payload as Out,
    },
    protocol::{
        client::{
            job_ref, ClientMessage, Hello, Inbound, JobSubmit, ListJobs, RejectedFrame,
            ResumeRequest, Subscribe,
        },
        event::EventBody,
        server::{
            Control, ControlMessage, Credential, JobFrame, JobPayload, JobSummary, Outbound,
            OutboundItem, ResultBody,
        },
        Json, Lease, PROTOCOL_VERSION,
    },
};

use super::{status, wire::WireFrame};

// ---------------------------------------------------------------------------------------------
// Client frames
// ---------------------------------------------------------------------------------------------

/// A client frame as a domain message, or the reason it is not one.
pub fn inbound(frame: proto::ClientFrame) -> Result<Inbound, RejectedFrame> {
    let request_id = non_empty(frame.id);
    let reject = |error: ArcpError| RejectedFrame {
        request_id: request_id.clone(),
        error,
    };
    let envelope_job = non_empty(frame.job_id).map(JobId::new);
    let payload = frame.payload.ok_or_else(|| {
        reject(invalid(
            "the frame has no payload (set one of the oneof fields)",
        ))
    })?;
    let message = client_message(payload, envelope_job.as_ref()).map_err(reject)?;
    Ok(Inbound {
        id: request_id.clone(),
        session_id: non_empty(frame.session_id).map(SessionId::new),
        trace_id: non_empty(frame.trace_id).map(TraceId::new),
        job_id: envelope_job,
        message,
    })
}

fn client_message(payload: In, envelope_job: Option<&JobId>) -> Result<ClientMessage, ArcpError> {
    Ok(match payload {
        In::SessionHello(hello) => ClientMessage::Hello(Hello {
            token: hello.auth.and_then(|a| non_empty(a.token)),
            features: hello.capabilities.map(|c| c.features),
            resume: hello.resume.map(resume_info).transpose()?,
        }),
        In::SessionResume(r) => ClientMessage::Resume(Hello {
            token: r.auth.and_then(|a| non_empty(a.token)),
            features: r.capabilities.map(|c| c.features),
            resume: Some(resume_info(proto::ResumeInfo {
                session_id: r.session_id,
                resume_token: r.resume_token,
                last_event_seq: r.last_event_seq,
            })?),
        }),
        In::SessionPing(ping) => ClientMessage::Ping { nonce: ping.nonce },
        In::SessionPong(_) => ClientMessage::Pong,
        In::SessionAck(ack) => ClientMessage::Ack {
            last_processed_seq: EventSeq(ack.last_processed_seq),
        },
        In::SessionListJobs(list) => {
            let filter = list.filter.unwrap_or_default();
            ClientMessage::ListJobs(ListJobs {
                status: filter.status,
                agent: non_empty(filter.agent),
                created_after: non_empty(filter.created_after),
                limit: (list.limit > 0).then_some(list.limit),
                cursor: non_empty(list.cursor),
            })
        }
        In::SessionClose(close) => ClientMessage::Close {
            reason: non_empty(close.reason),
        },
        In::JobSubmit(submit) => ClientMessage::Submit(job_submit(submit)?),
        In::JobCancel(cancel) => ClientMessage::Cancel {
            job_id: job_ref(
                non_empty(cancel.job_id).map(JobId::new),
                envelope_job,
                "job_cancel",
            )?,
            reason: non_empty(cancel.reason),
        },
        In::JobSubscribe(sub) => ClientMessage::Subscribe(Subscribe {
            job_id: job_ref(
                non_empty(sub.job_id).map(JobId::new),
                envelope_job,
                "job_subscribe",
            )?,
            from_event_seq: sub.from_event_seq.map(EventSeq),
            history: sub.history,
        }),
        In::JobUnsubscribe(unsub) => ClientMessage::Unsubscribe {
            job_id: job_ref(
                non_empty(unsub.job_id).map(JobId::new),
                envelope_job,
                "job_unsubscribe",
            )?,
        },
    })
}

fn resume_info(r: proto::ResumeInfo) -> Result<ResumeRequest, ArcpError> {
    Ok(ResumeRequest {
        session_id: non_empty(r.session_id).map(SessionId::new),
        token: non_empty(r.resume_token).ok_or_else(|| invalid("resume requires resume_token"))?,
        last_event_seq: EventSeq(r.last_event_seq),
    })
}

fn job_submit(s: proto::JobSubmit) -> Result<JobSubmit, ArcpError> {
    Ok(JobSubmit {
        agent: non_empty(s.agent).ok_or_else(|| invalid("job_submit requires agent"))?,
        input: s.input.map(to_json).unwrap_or(Json::Null),
        lease_request: lease_from_proto(s.lease_request)?,
        expires_at: s.lease_constraints.and_then(|c| non_empty(c.expires_at)),
        idempotency_key: non_empty(s.idempotency_key),
        max_runtime_sec: (s.max_runtime_sec > 0).then_some(s.max_runtime_sec),
    })
}

fn lease_from_proto(map: HashMap<String, ListValue>) -> Result<Lease, ArcpError> {
    map.into_iter()
        .map(|(namespace, list)| {
            let patterns = list
                .values
                .into_iter()
                .map(|v| match v.kind {
                    Some(Kind::StringValue(s)) => Ok(s),
                    _ => Err(invalid(&format!(
                        "lease patterns of {namespace} must be strings"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((namespace, patterns))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Server frames
// ---------------------------------------------------------------------------------------------

/// A gateway output as a server frame, or the status that ends the stream.
pub fn outbound(item: OutboundItem) -> Result<WireFrame, Status> {
    match item {
        OutboundItem::Frame(session, Outbound::Control(control)) => Ok(WireFrame::Message(
            Box::new(control_frame(session, *control)),
        )),
        OutboundItem::Frame(session, Outbound::Job(logged)) => {
            Ok(WireFrame::Job { session, logged })
        }
        OutboundItem::End(end) => Err(status::from_stream_end(&end)),
    }
}

fn control_frame(session: Option<SessionId>, control: Control) -> proto::ServerFrame {
    let request_id = control.request_id.unwrap_or_default();
    let payload = match control.message {
        ControlMessage::Welcome(w) => Out::SessionWelcome(Box::new(proto::SessionWelcome {
            runtime: Some(proto::RuntimeInfo {
                name: w.runtime_name.into(),
                version: w.runtime_version.into(),
            }),
            resume_token: w.resume_token,
            resume_window_sec: w.resume_window_sec,
            heartbeat_interval_sec: w.heartbeat_interval_sec,
            capabilities: Some(proto::Capabilities {
                encodings: vec!["protobuf".into()],
                features: w.features,
                agents: w
                    .agents
                    .into_iter()
                    .map(|a| proto::AgentInfo {
                        name: a.name,
                        versions: a.versions,
                        default: a.default,
                    })
                    .collect(),
            }),
        })),
        ControlMessage::Error(e) => Out::SessionError(Box::new(proto::SessionError {
            code: e.code().as_str().into(),
            message: e.message().into(),
            retryable: e.retryable(),
            request_id,
            details: None,
        })),
        ControlMessage::Pong {
            ping_nonce,
            received_at,
        } => Out::SessionPong(proto::SessionPong {
            ping_nonce,
            received_at: received_at.to_rfc3339(),
        }),
        ControlMessage::Closed { reason } => Out::SessionClosed(proto::SessionClosed {
            reason: reason.unwrap_or_default(),
        }),
        ControlMessage::Ping { nonce, sent_at } => Out::SessionPing(proto::SessionPing {
            nonce,
            sent_at: sent_at.to_rfc3339(),
        }),
        ControlMessage::Jobs { jobs, next_cursor } => {
            Out::SessionJobs(Box::new(proto::SessionJobs {
                request_id,
                jobs: jobs.iter().map(job_summary).collect(),
                next_cursor: next_cursor.unwrap_or_default(),
            }))
        }
    };
    proto::ServerFrame {
        arcp: PROTOCOL_VERSION.into(),
        id: uuid::Uuid::now_v7().to_string(),
        session_id: session.map(|s| s.as_str().to_owned()).unwrap_or_default(),
        payload: Some(payload),
        ..Default::default()
    }
}

/// The payload of a job frame; [`super::wire`] writes the envelope around it.
pub(super) fn job_payload(frame: &JobFrame) -> Out {
    let job_id = frame.job_id.as_str().to_owned();
    let trace_id = frame
        .trace_id
        .as_ref()
        .map(|t| t.as_str().to_owned())
        .unwrap_or_default();
    match &frame.payload {
        JobPayload::Accepted(a) => Out::JobAccepted(Box::new(proto::JobAccepted {
            job_id,
            agent: a.agent.clone(),
            lease: lease_to_proto(&a.lease),
            lease_constraints: lease_constraints(a.expires_at),
            budget: budget_to_proto(a.budget.as_ref()),
            credentials: a.credentials.iter().map(credential).collect(),
            accepted_at: a.accepted_at.to_rfc3339(),
            trace_id,
            request_id: a.request_id.clone().unwrap_or_default(),
            parent_job_id: id_or_empty(a.parent_job_id.as_ref()),
        })),
        JobPayload::Subscribed(s) => {
            let summary = job_summary(&s.summary);
            Out::JobSubscribed(Box::new(proto::JobSubscribed {
                job_id: summary.job_id,
                current_status: summary.status,
                agent: summary.agent,
                lease: summary.lease,
                lease_constraints: summary.lease_constraints,
                budget: summary.budget,
                parent_job_id: summary.parent_job_id,
                trace_id: summary.trace_id,
                subscribed_from: s.subscribed_from.get(),
                replayed: s.replayed,
                request_id: s.request_id.clone().unwrap_or_default(),
                credentials: summary.credentials,
            }))
        }
        JobPayload::Event { ts, body } => Out::JobEvent(proto::JobEvent {
            kind: body.kind().into(),
            ts: ts.to_rfc3339(),
            body: Some(event_body(body)),
        }),
        JobPayload::Result(r) => Out::JobResult(Box::new(match &r.result {
            ResultBody::Inline(result) => proto::JobResult {
                final_status: "success".into(),
                result: Some(to_value(result)),
                completed_at: r.completed_at.to_rfc3339(),
                ..Default::default()
            },
            ResultBody::Streamed {
                result_id,
                result_size,
                summary,
            } => proto::JobResult {
                final_status: "success".into(),
                result: None,
                result_id: result_id.clone(),
                result_size: *result_size,
                summary: summary.clone().unwrap_or_default(),
                completed_at: r.completed_at.to_rfc3339(),
            },
        })),
        JobPayload::Error(e) => Out::JobError(Box::new(proto::JobError {
            final_status: e.final_status.as_str().into(),
            code: e.code.as_str().into(),
            message: e.message.clone(),
            retryable: e.code.retryable(),
            details: None,
            completed_at: e.completed_at.to_rfc3339(),
        })),
        JobPayload::Cancelled { reason } => Out::JobCancelled(proto::JobCancelled {
            job_id,
            reason: reason.clone().unwrap_or_default(),
        }),
    }
}

/// A job frame as the generated protobuf type: what [`super::wire`] encodes, built the slow
/// way, for the tests that hold the two to the same bytes.
#[cfg(test)]
pub(super) fn job_frame(
    session: Option<&SessionId>,
    logged: &crate::protocol::server::LoggedFrame,
) -> proto::ServerFrame {
    let frame = &logged.frame;
    proto::ServerFrame {
        arcp: PROTOCOL_VERSION.into(),
        id: logged.id.to_string(),
        session_id: session.map(|s| s.as_str().to_owned()).unwrap_or_default(),
        trace_id: frame
            .trace_id
            .as_ref()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        job_id: frame.job_id.as_str().to_owned(),
        event_seq: logged.seq.get(),
        payload: Some(job_payload(frame)),
    }
}

/// The body of a `job.event`.
pub(super) fn event_body(body: &EventBody) -> ProtoBody {
    match body.clone() {
        EventBody::Log { level, message } => ProtoBody::Log(proto::LogBody {
            level: level.as_str().into(),
            message,
        }),
        EventBody::Thought { text } => ProtoBody::Thought(proto::ThoughtBody { text }),
        EventBody::ToolCall {
            tool,
            args,
            call_id,
        } => ProtoBody::ToolCall(Box::new(proto::ToolCallBody {
            tool,
            args: Some(to_value(&args)),
            call_id,
        })),
        EventBody::ToolResult { call_id, outcome } => {
            let (result, error) = match outcome {
                Ok(result) => (Some(to_value(&result)), None),
                Err(e) => (
                    None,
                    Some(proto::ErrorInfo {
                        code: e.code.as_str().into(),
                        retryable: e.code.retryable(),
                        message: e.message,
                    }),
                ),
            };
            ProtoBody::ToolResult(Box::new(proto::ToolResultBody {
                call_id,
                result,
                error,
            }))
        }
        EventBody::Status {
            phase,
            message,
            credential: rotated,
        } => ProtoBody::Status(Box::new(proto::StatusBody {
            phase,
            message: message.unwrap_or_default(),
            credential: rotated.as_deref().map(credential),
        })),
        EventBody::Metric {
            name,
            value,
            unit,
            dimensions,
        } => ProtoBody::Metric(Box::new(proto::MetricBody {
            name,
            value,
            unit: unit.unwrap_or_default(),
            dimensions: dimensions.map(|d| to_struct(&d)),
        })),
        EventBody::ArtifactRef {
            uri,
            content_type,
            byte_size,
            sha256,
        } => ProtoBody::ArtifactRef(Box::new(proto::ArtifactRefBody {
            uri,
            content_type,
            byte_size,
            sha256: sha256.unwrap_or_default(),
        })),
        EventBody::Delegate {
            child_job_id,
            agent,
            input,
            lease_request,
            expires_at,
        } => ProtoBody::Delegate(Box::new(proto::DelegateBody {
            child_job_id,
            agent,
            input: Some(to_value(&input)),
            lease_request: lease_to_proto(&lease_request),
            lease_constraints: lease_constraints(expires_at),
        })),
        EventBody::Progress {
            current,
            total,
            units,
            message,
        } => ProtoBody::Progress(proto::ProgressBody {
            current,
            total,
            units: units.unwrap_or_default(),
            message: message.unwrap_or_default(),
        }),
        EventBody::ResultChunk {
            result_id,
            chunk_seq,
            data,
            encoding,
            more,
        } => ProtoBody::ResultChunk(Box::new(proto::ResultChunkBody {
            result_id,
            chunk_seq,
            data,
            encoding,
            more,
        })),
    }
}

fn job_summary(j: &JobSummary) -> proto::JobSummary {
    proto::JobSummary {
        job_id: j.job_id.as_str().to_owned(),
        agent: j.agent.clone(),
        status: j.status.into(),
        lease: lease_to_proto(&j.lease),
        lease_constraints: lease_constraints(j.expires_at),
        budget: budget_to_proto(j.budget.as_ref()),
        parent_job_id: id_or_empty(j.parent_job_id.as_ref()),
        created_at: j.created_at.to_rfc3339(),
        trace_id: j
            .trace_id
            .as_ref()
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default(),
        last_event_seq: j.last_event_seq.get(),
        credentials: j.credentials.iter().map(credential).collect(),
    }
}

fn credential(c: &Credential) -> proto::Credential {
    proto::Credential {
        id: c.id.clone(),
        scheme: c.scheme.clone(),
        value: c.value.clone(),
        endpoint: c.endpoint.clone(),
        profile: c.profile.clone().unwrap_or_default(),
        constraints: (!c.constraints.is_empty()).then(|| to_struct(&c.constraints)),
    }
}

fn lease_constraints(
    expires_at: Option<crate::clock::Timestamp>,
) -> Option<proto::LeaseConstraints> {
    expires_at.map(|at| proto::LeaseConstraints {
        expires_at: at.to_rfc3339(),
    })
}

fn budget_to_proto(
    budget: Option<&std::collections::BTreeMap<String, f64>>,
) -> HashMap<String, f64> {
    budget
        .map(|b| b.iter().map(|(c, v)| (c.clone(), *v)).collect())
        .unwrap_or_default()
}

fn id_or_empty(id: Option<&JobId>) -> String {
    id.map(|j| j.as_str().to_owned()).unwrap_or_default()
}

fn lease_to_proto(lease: &Lease) -> HashMap<String, ListValue> {
    lease
        .iter()
        .map(|(namespace, patterns)| {
            let values = patterns
                .iter()
                .map(|p| Value {
                    kind: Some(Kind::StringValue(p.clone())),
                })
                .collect();
            (namespace.clone(), ListValue { values })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// JSON <-> google.protobuf.Value
// ---------------------------------------------------------------------------------------------

/// `google.protobuf.Value` as JSON.
pub fn to_json(value: Value) -> Json {
    match value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(b),
        Some(Kind::NumberValue(n)) => number_to_json(n),
        Some(Kind::StringValue(s)) => Json::String(s),
        Some(Kind::ListValue(list)) => Json::Array(list.values.into_iter().map(to_json).collect()),
        Some(Kind::StructValue(s)) => {
            Json::Object(s.fields.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
    }
}

/// Protobuf numbers are doubles; integral ones become JSON integers so agents reading
/// `{"count": 5}` see an integer, as they would from a JSON client.
fn number_to_json(n: f64) -> Json {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.fract() == 0.0 && n.abs() <= EXACT {
        if n >= 0.0 {
            return Json::from(n as u64);
        }
        return Json::from(n as i64);
    }
    serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number)
}

/// JSON as `google.protobuf.Value`.
pub fn to_value(json: &Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(to_value).collect(),
        }),
        Json::Object(map) => Kind::StructValue(to_struct(map)),
    };
    Value { kind: Some(kind) }
}

fn to_struct(map: &serde_json::Map<String, Json>) -> Struct {
    Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn invalid(message: &str) -> ArcpError {
    ArcpError::InvalidRequest(message.to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn json_survives_the_round_trip_through_protobuf_values() {
        let original = json!({"count": 5, "ratio": 0.5, "neg": -3, "list": [true, null, "x"], "nested": {"a": {}}});
        assert_eq!(to_json(to_value(&original)), original);
    }

    #[test]
    fn frames_without_payload_are_rejected_with_their_id() {
        let rejected = inbound(proto::ClientFrame {
            id: "m1".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(rejected.request_id.as_deref(), Some("m1"));
        assert_eq!(rejected.error.code(), ErrorCode::InvalidRequest);
    }

    #[test]
    fn cancel_takes_the_job_from_payload_or_envelope() {
        let frame = |payload_job: &str, envelope_job: &str| proto::ClientFrame {
            job_id: envelope_job.into(),
            payload: Some(In::JobCancel(proto::JobCancel {
                job_id: payload_job.into(),
                reason: String::new(),
            })),
            ..Default::default()
        };
        for (p, e) in [("job_1", ""), ("", "job_1"), ("job_1", "job_1")] {
            match inbound(frame(p, e)).unwrap().message {
                ClientMessage::Cancel { job_id, .. } => assert_eq!(job_id.as_str(), "job_1"),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(inbound(frame("", "")).is_err());
        assert!(inbound(frame("job_1", "job_2")).is_err());
    }
}
