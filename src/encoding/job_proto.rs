//! Job frames as the `arcp.v1` protobuf messages, both ways: what [`super::stored_frame`]
//! writes for the payloads it does not write field by field, and how a stored frame is read
//! back into the domain types.
//!
//! Absent optional text is the empty string in proto3, so an empty optional string reads back
//! as absent.

use std::collections::{BTreeMap, HashMap};

use prost_types::{value::Kind, ListValue, Value};

use crate::{
    clock::Timestamp,
    error::{ArcpError, ErrorCode},
    ids::{EventSeq, JobId, TraceId},
    proto::{self, job_event::Body as ProtoBody, server_frame::Payload as Out},
    protocol::{
        control::JobSummary,
        credential::Credential,
        event::{EventBody, LogLevel, ToolError},
        job_frame::{
            Accepted, FinalStatus, JobError, JobFrame, JobPayload, JobResult, ResultBody,
            Subscribed,
        },
        Json, Lease,
    },
};

use super::json_value::{struct_to_json, to_json, to_struct, to_value};

// ---------------------------------------------------------------------------------------------
// Domain to protobuf
// ---------------------------------------------------------------------------------------------

/// The payload of a job frame.
pub(crate) fn job_payload(frame: &JobFrame) -> Out {
    let job_id = frame.job_id.as_str().to_owned();
    let trace_id = text(frame.trace_id.as_ref().map(TraceId::as_str));
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
                final_status: FinalStatus::Success.as_str().into(),
                result: Some(to_value(result)),
                completed_at: r.completed_at.to_rfc3339(),
                ..Default::default()
            },
            ResultBody::Streamed {
                result_id,
                result_size,
                summary,
            } => proto::JobResult {
                final_status: FinalStatus::Success.as_str().into(),
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

/// The body of a `job.event`.
pub(crate) fn event_body(body: &EventBody) -> ProtoBody {
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

/// A job's observable view (§6.6).
pub(crate) fn job_summary(j: &JobSummary) -> proto::JobSummary {
    proto::JobSummary {
        job_id: j.job_id.as_str().to_owned(),
        agent: j.agent.clone(),
        status: j.status.into(),
        lease: lease_to_proto(&j.lease),
        lease_constraints: lease_constraints(j.expires_at),
        budget: budget_to_proto(j.budget.as_ref()),
        parent_job_id: id_or_empty(j.parent_job_id.as_ref()),
        created_at: j.created_at.to_rfc3339(),
        trace_id: text(j.trace_id.as_ref().map(TraceId::as_str)),
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

fn lease_constraints(expires_at: Option<Timestamp>) -> Option<proto::LeaseConstraints> {
    expires_at.map(|at| proto::LeaseConstraints {
        expires_at: at.to_rfc3339(),
    })
}

fn budget_to_proto(budget: Option<&BTreeMap<String, f64>>) -> HashMap<String, f64> {
    budget
        .map(|b| b.iter().map(|(c, v)| (c.clone(), *v)).collect())
        .unwrap_or_default()
}

fn id_or_empty(id: Option<&JobId>) -> String {
    text(id.map(JobId::as_str))
}

fn text(value: Option<&str>) -> String {
    value.unwrap_or_default().to_owned()
}

/// A lease as the schema's map of namespace to pattern list.
pub(crate) fn lease_to_proto(lease: &Lease) -> HashMap<String, ListValue> {
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
// Protobuf to domain
// ---------------------------------------------------------------------------------------------

/// The domain frame of a stored `ServerFrame` holding a job payload.
pub(crate) fn job_frame_from_proto(frame: proto::ServerFrame) -> Result<JobFrame, ArcpError> {
    let payload = match frame.payload {
        Some(Out::JobAccepted(a)) => JobPayload::Accepted(Box::new(Accepted {
            agent: a.agent,
            lease: lease_from_proto(a.lease)?,
            expires_at: expires_from_proto(a.lease_constraints)?,
            budget: budget_from_proto(a.budget),
            credentials: credentials_from_proto(a.credentials),
            parent_job_id: non_empty(a.parent_job_id).map(JobId::new),
            accepted_at: timestamp(&a.accepted_at)?,
            request_id: non_empty(a.request_id),
        })),
        Some(Out::JobSubscribed(s)) => JobPayload::Subscribed(Box::new(Subscribed {
            summary: JobSummary {
                job_id: JobId::new(s.job_id),
                agent: s.agent,
                status: job_status(&s.current_status)?,
                lease: lease_from_proto(s.lease)?,
                expires_at: expires_from_proto(s.lease_constraints)?,
                budget: budget_from_proto(s.budget),
                parent_job_id: non_empty(s.parent_job_id).map(JobId::new),
                // Not part of `job.subscribed`: the announcement carries `subscribed_from`.
                created_at: Timestamp(std::time::UNIX_EPOCH),
                trace_id: non_empty(s.trace_id).map(TraceId::new),
                last_event_seq: EventSeq(s.subscribed_from),
                credentials: credentials_from_proto(s.credentials),
            },
            subscribed_from: EventSeq(s.subscribed_from),
            replayed: s.replayed,
            request_id: non_empty(s.request_id),
        })),
        Some(Out::JobEvent(e)) => JobPayload::Event {
            ts: timestamp(&e.ts)?,
            body: event_body_from_proto(e.body.ok_or_else(|| corrupt("a job_event has no body"))?)?,
        },
        Some(Out::JobResult(r)) => JobPayload::Result(JobResult {
            result: match r.result {
                Some(value) => ResultBody::Inline(to_json(value)),
                None => ResultBody::Streamed {
                    result_id: r.result_id,
                    result_size: r.result_size,
                    summary: non_empty(r.summary),
                },
            },
            completed_at: timestamp(&r.completed_at)?,
        }),
        Some(Out::JobError(e)) => JobPayload::Error(JobError {
            final_status: final_status(&e.final_status)?,
            code: error_code(&e.code)?,
            message: e.message,
            completed_at: timestamp(&e.completed_at)?,
        }),
        Some(Out::JobCancelled(c)) => JobPayload::Cancelled {
            reason: non_empty(c.reason),
        },
        _ => return Err(corrupt("the frame holds no job payload")),
    };
    Ok(JobFrame {
        job_id: JobId::new(frame.job_id),
        trace_id: non_empty(frame.trace_id).map(TraceId::new),
        payload,
    })
}

fn event_body_from_proto(body: ProtoBody) -> Result<EventBody, ArcpError> {
    Ok(match body {
        ProtoBody::Log(l) => EventBody::Log {
            level: LogLevel::parse(&l.level)?,
            message: l.message,
        },
        ProtoBody::Thought(t) => EventBody::Thought { text: t.text },
        ProtoBody::ToolCall(c) => EventBody::ToolCall {
            tool: c.tool,
            args: c.args.map(to_json).unwrap_or(Json::Null),
            call_id: c.call_id,
        },
        ProtoBody::ToolResult(r) => EventBody::ToolResult {
            call_id: r.call_id,
            outcome: match r.error {
                Some(e) => Err(ToolError {
                    code: error_code(&e.code)?,
                    message: e.message,
                }),
                None => Ok(r.result.map(to_json).unwrap_or(Json::Null)),
            },
        },
        ProtoBody::Status(s) => EventBody::Status {
            phase: s.phase,
            message: non_empty(s.message),
            credential: s.credential.map(|c| Box::new(credential_from_proto(c))),
        },
        ProtoBody::Metric(m) => EventBody::Metric {
            name: m.name,
            value: m.value,
            unit: non_empty(m.unit),
            dimensions: m.dimensions.map(struct_to_json),
        },
        ProtoBody::ArtifactRef(a) => EventBody::ArtifactRef {
            uri: a.uri,
            content_type: a.content_type,
            byte_size: a.byte_size,
            sha256: non_empty(a.sha256),
        },
        ProtoBody::Delegate(d) => EventBody::Delegate {
            child_job_id: d.child_job_id,
            agent: d.agent,
            input: d.input.map(to_json).unwrap_or(Json::Null),
            lease_request: lease_from_proto(d.lease_request)?,
            expires_at: expires_from_proto(d.lease_constraints)?,
        },
        ProtoBody::Progress(p) => EventBody::Progress {
            current: p.current,
            total: p.total,
            units: non_empty(p.units),
            message: non_empty(p.message),
        },
        ProtoBody::ResultChunk(c) => EventBody::ResultChunk {
            result_id: c.result_id,
            chunk_seq: c.chunk_seq,
            data: c.data,
            encoding: c.encoding,
            more: c.more,
        },
    })
}

/// A lease from the schema's map; patterns must be strings.
pub(crate) fn lease_from_proto(map: HashMap<String, ListValue>) -> Result<Lease, ArcpError> {
    map.into_iter()
        .map(|(namespace, list)| {
            let patterns = list
                .values
                .into_iter()
                .map(|v| match v.kind {
                    Some(Kind::StringValue(s)) => Ok(s),
                    _ => Err(ArcpError::InvalidRequest(format!(
                        "lease patterns of {namespace} must be strings"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((namespace, patterns))
        })
        .collect()
}

fn credentials_from_proto(credentials: Vec<proto::Credential>) -> Vec<Credential> {
    credentials.into_iter().map(credential_from_proto).collect()
}

fn credential_from_proto(c: proto::Credential) -> Credential {
    Credential {
        id: c.id,
        scheme: c.scheme,
        value: c.value,
        endpoint: c.endpoint,
        profile: non_empty(c.profile),
        constraints: c.constraints.map(struct_to_json).unwrap_or_default(),
    }
}

fn budget_from_proto(budget: HashMap<String, f64>) -> Option<BTreeMap<String, f64>> {
    (!budget.is_empty()).then(|| budget.into_iter().collect())
}

fn expires_from_proto(
    constraints: Option<proto::LeaseConstraints>,
) -> Result<Option<Timestamp>, ArcpError> {
    constraints
        .and_then(|c| non_empty(c.expires_at))
        .map(|at| timestamp(&at))
        .transpose()
}

fn timestamp(text: &str) -> Result<Timestamp, ArcpError> {
    Timestamp::parse_rfc3339(text)
        .ok_or_else(|| corrupt(&format!("{text:?} is not an RFC 3339 timestamp")))
}

fn error_code(code: &str) -> Result<ErrorCode, ArcpError> {
    ErrorCode::parse(code).ok_or_else(|| corrupt(&format!("unknown error code {code:?}")))
}

fn final_status(status: &str) -> Result<FinalStatus, ArcpError> {
    FinalStatus::ALL
        .into_iter()
        .find(|s| s.as_str() == status)
        .ok_or_else(|| corrupt(&format!("unknown final status {status:?}")))
}

fn job_status(status: &str) -> Result<&'static str, ArcpError> {
    crate::protocol::control::JOB_STATUSES
        .iter()
        .copied()
        .find(|s| *s == status)
        .ok_or_else(|| corrupt(&format!("unknown job status {status:?}")))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A stored frame that does not read back: the store handed back something this runtime did
/// not write.
pub(crate) fn corrupt(what: &str) -> ArcpError {
    ArcpError::Internal(format!("a stored frame does not decode: {what}"))
}
