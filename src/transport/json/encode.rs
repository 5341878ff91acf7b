//! The runtime's frames as JSON text (§5), written straight from the domain messages: no
//! intermediate `serde_json::Value`, no allocation for a timestamp or an envelope id, and an
//! absent optional field is absent rather than `null`, which a strict client's schema
//! ("optional string", "optional array") would refuse.
//!
//! Each message is a view that borrows what it shows and serializes as a map of only the
//! fields it has.

use serde::{
    ser::{SerializeMap, SerializeSeq},
    Serialize, Serializer,
};

use crate::{
    clock::Timestamp,
    error::ArcpError,
    ids::{EventSeq, JobId, SessionId, TraceId},
    protocol::{
        control::{AgentInfo, Control, ControlMessage, JobSummary, Welcome},
        credential::Credential,
        event::{EventBody, ToolError},
        job_frame::{JobFrame, JobPayload, ResultBody},
        PROTOCOL_VERSION,
    },
};

/// A session-control frame's text.
pub(super) fn control_text(session: Option<&SessionId>, control: &Control) -> String {
    let mut id = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut id);
    let (kind, payload) = match &control.message {
        ControlMessage::Welcome(w) => ("session.welcome", Payload::Welcome(w, session)),
        ControlMessage::Error(e) => (
            "session.error",
            Payload::Error(e, control.request_id.as_deref()),
        ),
        ControlMessage::Pong {
            ping_nonce,
            received_at,
        } => ("session.pong", Payload::Pong(ping_nonce, *received_at)),
        ControlMessage::Ping { nonce, sent_at } => ("session.ping", Payload::Ping(nonce, *sent_at)),
        ControlMessage::Closed { reason } => ("session.closed", Payload::Closed(reason)),
        ControlMessage::Jobs { jobs, next_cursor } => (
            "session.jobs",
            Payload::Jobs(jobs, next_cursor, control.request_id.as_deref()),
        ),
    };
    text(&Envelope {
        id,
        kind,
        session,
        job: None,
        payload,
    })
}

/// A logged job frame's text, with the envelope id and the sequence number it was logged with.
pub(super) fn job_text(
    session: Option<&SessionId>,
    seq: EventSeq,
    id: &str,
    frame: &JobFrame,
) -> String {
    let kind = match &frame.payload {
        JobPayload::Accepted(_) => "job.accepted",
        JobPayload::Event { .. } => "job.event",
        JobPayload::Result(_) => "job.result",
        JobPayload::Error(_) => "job.error",
        JobPayload::Cancelled { .. } => "job.cancelled",
        JobPayload::Subscribed(_) => "job.subscribed",
    };
    text(&Envelope {
        id,
        kind,
        session,
        job: Some((frame, seq)),
        payload: Payload::Job(frame),
    })
}

fn text(envelope: &Envelope<'_>) -> String {
    match serde_json::to_string(envelope) {
        Ok(text) => text,
        // Not reached: every key is a string and every value serializable. Should it be, the
        // client is told, rather than sent a frame that is not what was meant.
        Err(e) => {
            let error = ArcpError::Internal(format!("a frame could not be encoded as JSON: {e}"));
            let control = Control {
                request_id: None,
                message: ControlMessage::Error(error),
            };
            control_text(envelope.session, &control)
        }
    }
}

/// The envelope of §5.1.
struct Envelope<'a> {
    id: &'a str,
    kind: &'static str,
    session: Option<&'a SessionId>,
    /// For a job frame: the frame, for its `job_id` and `trace_id`, and its `event_seq`.
    job: Option<(&'a JobFrame, EventSeq)>,
    payload: Payload<'a>,
}

impl Serialize for Envelope<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("arcp", PROTOCOL_VERSION)?;
        map.serialize_entry("id", self.id)?;
        map.serialize_entry("type", self.kind)?;
        optional(&mut map, "session_id", self.session.map(SessionId::as_str))?;
        if let Some((frame, seq)) = self.job {
            map.serialize_entry("job_id", frame.job_id.as_str())?;
            map.serialize_entry("event_seq", &seq.get())?;
            optional(
                &mut map,
                "trace_id",
                frame.trace_id.as_ref().map(TraceId::as_str),
            )?;
        }
        map.serialize_entry("payload", &self.payload)?;
        map.end()
    }
}

/// Writes `key` only when there is a value.
fn optional<M: SerializeMap, T: Serialize + ?Sized>(
    map: &mut M,
    key: &'static str,
    value: Option<&T>,
) -> Result<(), M::Error> {
    match value {
        Some(value) => map.serialize_entry(key, value),
        None => Ok(()),
    }
}

/// A timestamp as RFC 3339 text, formatted on the stack.
struct Time(Timestamp);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0.rfc3339().as_str())
    }
}

/// `{ "expires_at": ... }`, where a lease has a deadline.
struct Constraints(Timestamp);

impl Serialize for Constraints {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("expires_at", &Time(self.0))?;
        map.end()
    }
}

/// A payload of one of the runtime's messages.
enum Payload<'a> {
    Welcome(&'a Welcome, Option<&'a SessionId>),
    Error(&'a ArcpError, Option<&'a str>),
    Pong(&'a str, Timestamp),
    Ping(&'a str, Timestamp),
    Closed(&'a Option<String>),
    Jobs(&'a [JobSummary], &'a Option<String>, Option<&'a str>),
    Job(&'a JobFrame),
}

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match *self {
            Payload::Welcome(w, session) => welcome(&mut map, w, session)?,
            Payload::Error(e, request_id) => {
                map.serialize_entry("code", e.code().as_str())?;
                map.serialize_entry("message", e.message())?;
                map.serialize_entry("retryable", &e.retryable())?;
                optional(&mut map, "request_id", request_id)?;
            }
            Payload::Pong(nonce, at) => {
                map.serialize_entry("ping_nonce", nonce)?;
                map.serialize_entry("received_at", &Time(at))?;
            }
            Payload::Ping(nonce, at) => {
                map.serialize_entry("nonce", nonce)?;
                map.serialize_entry("sent_at", &Time(at))?;
            }
            Payload::Closed(reason) => optional(&mut map, "reason", reason.as_deref())?,
            Payload::Jobs(jobs, next_cursor, request_id) => {
                optional(&mut map, "request_id", request_id)?;
                map.serialize_entry("jobs", &Each(jobs, Listed))?;
                optional(&mut map, "next_cursor", next_cursor.as_deref())?;
            }
            Payload::Job(frame) => job_payload(&mut map, frame)?,
        }
        map.end()
    }
}

fn welcome<M: SerializeMap>(
    map: &mut M,
    w: &Welcome,
    session: Option<&SessionId>,
) -> Result<(), M::Error> {
    // Beyond §6.2's example, for clients (the reference Python SDK among them) that read the
    // session id from the payload and require `accepted_at`.
    optional(map, "session_id", session.map(SessionId::as_str))?;
    map.serialize_entry("accepted_at", &Time(Timestamp::now()))?;
    map.serialize_entry("runtime", &Runtime(w))?;
    map.serialize_entry("resume_token", &w.resume_token)?;
    map.serialize_entry("resume_window_sec", &w.resume_window_sec)?;
    map.serialize_entry("heartbeat_interval_sec", &w.heartbeat_interval_sec)?;
    map.serialize_entry("capabilities", &Capabilities(w))
}

struct Runtime<'a>(&'a Welcome);

impl Serialize for Runtime<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("name", self.0.runtime_name)?;
        map.serialize_entry("version", self.0.runtime_version)?;
        map.end()
    }
}

struct Capabilities<'a>(&'a Welcome);

impl Serialize for Capabilities<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("encodings", &["json"])?;
        map.serialize_entry("features", &self.0.features)?;
        map.serialize_entry("agents", &Each(&self.0.agents, Agent))?;
        map.end()
    }
}

struct Agent<'a>(&'a AgentInfo);

impl Serialize for Agent<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("name", &self.0.name)?;
        map.serialize_entry("versions", &self.0.versions)?;
        map.serialize_entry("default", &self.0.default)?;
        map.end()
    }
}

/// A slice shown element by element through a view.
struct Each<'a, T, V>(&'a [T], fn(&'a T) -> V);

impl<'a, T, V: Serialize> Serialize for Each<'a, T, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for item in self.0 {
            seq.serialize_element(&(self.1)(item))?;
        }
        seq.end()
    }
}

/// Provisioned credentials, where there are any: an empty list is absent.
fn credentials<M: SerializeMap>(map: &mut M, credentials: &[Credential]) -> Result<(), M::Error> {
    if credentials.is_empty() {
        return Ok(());
    }
    map.serialize_entry("credentials", &Each(credentials, Secret))
}

/// A credential, its value included: only the job's submitter is sent one (§14).
struct Secret<'a>(&'a Credential);

impl Serialize for Secret<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let c = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &c.id)?;
        map.serialize_entry("scheme", &c.scheme)?;
        map.serialize_entry("value", &c.value)?;
        map.serialize_entry("endpoint", &c.endpoint)?;
        optional(&mut map, "profile", c.profile.as_deref())?;
        map.serialize_entry("constraints", &c.constraints)?;
        map.end()
    }
}

fn job_payload<M: SerializeMap>(map: &mut M, frame: &JobFrame) -> Result<(), M::Error> {
    let job_id = frame.job_id.as_str();
    match &frame.payload {
        JobPayload::Accepted(a) => {
            map.serialize_entry("job_id", job_id)?;
            map.serialize_entry("agent", &a.agent)?;
            map.serialize_entry("lease", &a.lease)?;
            optional(
                map,
                "lease_constraints",
                a.expires_at.map(Constraints).as_ref(),
            )?;
            optional(map, "budget", a.budget.as_ref())?;
            credentials(map, &a.credentials)?;
            optional(
                map,
                "parent_job_id",
                a.parent_job_id.as_ref().map(JobId::as_str),
            )?;
            map.serialize_entry("accepted_at", &Time(a.accepted_at))?;
            optional(
                map,
                "trace_id",
                frame.trace_id.as_ref().map(TraceId::as_str),
            )?;
            optional(map, "request_id", a.request_id.as_deref())
        }
        JobPayload::Event { ts, body } => {
            map.serialize_entry("kind", body.kind())?;
            map.serialize_entry("ts", &Time(*ts))?;
            map.serialize_entry("body", &Body(body))
        }
        JobPayload::Result(r) => {
            map.serialize_entry("final_status", "success")?;
            match &r.result {
                ResultBody::Inline(result) => map.serialize_entry("result", result)?,
                ResultBody::Streamed {
                    result_id,
                    result_size,
                    summary,
                } => {
                    map.serialize_entry("result_id", result_id)?;
                    map.serialize_entry("result_size", result_size)?;
                    optional(map, "summary", summary.as_deref())?;
                }
            }
            map.serialize_entry("completed_at", &Time(r.completed_at))
        }
        JobPayload::Error(e) => {
            map.serialize_entry("final_status", e.final_status.as_str())?;
            map.serialize_entry("code", e.code.as_str())?;
            map.serialize_entry("message", &e.message)?;
            map.serialize_entry("retryable", &e.code.retryable())?;
            map.serialize_entry("completed_at", &Time(e.completed_at))
        }
        JobPayload::Cancelled { reason } => {
            map.serialize_entry("job_id", job_id)?;
            optional(map, "reason", reason.as_deref())
        }
        JobPayload::Subscribed(s) => {
            summary_fields(map, &s.summary, "current_status")?;
            map.serialize_entry("subscribed_from", &s.subscribed_from.get())?;
            map.serialize_entry("replayed", &s.replayed)?;
            optional(map, "request_id", s.request_id.as_deref())
        }
    }
}

/// A job as `session.jobs` lists it; `job.subscribed` shows part of it (`summary_fields`).
struct Listed<'a>(&'a JobSummary);

impl Serialize for Listed<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let j = self.0;
        let mut map = serializer.serialize_map(None)?;
        summary_fields(&mut map, j, "status")?;
        map.serialize_entry("created_at", &Time(j.created_at))?;
        // The same instant under the name the reference Python SDK requires.
        map.serialize_entry("submitted_at", &Time(j.created_at))?;
        map.serialize_entry("last_event_seq", &j.last_event_seq.get())?;
        map.end()
    }
}

/// What a listing and a subscription both say of a job; its status under `status_key`.
fn summary_fields<M: SerializeMap>(
    map: &mut M,
    j: &JobSummary,
    status_key: &'static str,
) -> Result<(), M::Error> {
    map.serialize_entry("job_id", j.job_id.as_str())?;
    map.serialize_entry("agent", &j.agent)?;
    map.serialize_entry(status_key, j.status)?;
    map.serialize_entry("lease", &j.lease)?;
    optional(
        map,
        "lease_constraints",
        j.expires_at.map(Constraints).as_ref(),
    )?;
    optional(map, "budget", j.budget.as_ref())?;
    optional(
        map,
        "parent_job_id",
        j.parent_job_id.as_ref().map(JobId::as_str),
    )?;
    optional(map, "trace_id", j.trace_id.as_ref().map(TraceId::as_str))?;
    credentials(map, &j.credentials)
}

/// A `job.event` body (§8.2).
struct Body<'a>(&'a EventBody);

impl Serialize for Body<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match self.0 {
            EventBody::Log { level, message } => {
                map.serialize_entry("level", level.as_str())?;
                map.serialize_entry("message", message)?;
            }
            EventBody::Thought { text } => map.serialize_entry("text", text)?,
            EventBody::ToolCall {
                tool,
                args,
                call_id,
            } => {
                map.serialize_entry("tool", tool)?;
                map.serialize_entry("args", args)?;
                map.serialize_entry("call_id", call_id)?;
            }
            EventBody::ToolResult { call_id, outcome } => {
                map.serialize_entry("call_id", call_id)?;
                match outcome {
                    Ok(result) => map.serialize_entry("result", result)?,
                    Err(error) => map.serialize_entry("error", &Failure(error))?,
                }
            }
            EventBody::Status {
                phase,
                message,
                credential,
            } => {
                map.serialize_entry("phase", phase)?;
                optional(&mut map, "message", message.as_deref())?;
                optional(
                    &mut map,
                    "credential",
                    credential.as_deref().map(Secret).as_ref(),
                )?;
            }
            EventBody::Metric {
                name,
                value,
                unit,
                dimensions,
            } => {
                map.serialize_entry("name", name)?;
                map.serialize_entry("value", value)?;
                optional(&mut map, "unit", unit.as_deref())?;
                optional(&mut map, "dimensions", dimensions.as_ref())?;
            }
            EventBody::ArtifactRef {
                uri,
                content_type,
                byte_size,
                sha256,
            } => {
                map.serialize_entry("uri", uri)?;
                map.serialize_entry("content_type", content_type)?;
                optional(&mut map, "byte_size", byte_size.as_ref())?;
                optional(&mut map, "sha256", sha256.as_deref())?;
            }
            EventBody::Delegate {
                child_job_id,
                agent,
                input,
                lease_request,
                expires_at,
            } => {
                map.serialize_entry("child_job_id", child_job_id)?;
                map.serialize_entry("agent", agent)?;
                map.serialize_entry("input", input)?;
                map.serialize_entry("lease_request", lease_request)?;
                optional(
                    &mut map,
                    "lease_constraints",
                    expires_at.map(Constraints).as_ref(),
                )?;
            }
            EventBody::Progress {
                current,
                total,
                units,
                message,
            } => {
                map.serialize_entry("current", current)?;
                optional(&mut map, "total", total.as_ref())?;
                optional(&mut map, "units", units.as_deref())?;
                optional(&mut map, "message", message.as_deref())?;
            }
            EventBody::ResultChunk {
                result_id,
                chunk_seq,
                data,
                encoding,
                more,
            } => {
                map.serialize_entry("result_id", result_id)?;
                map.serialize_entry("chunk_seq", chunk_seq)?;
                map.serialize_entry("data", data)?;
                map.serialize_entry("encoding", encoding)?;
                map.serialize_entry("more", more)?;
            }
        }
        map.end()
    }
}

/// The error of a `tool_result`.
struct Failure<'a>(&'a ToolError);

impl Serialize for Failure<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("code", self.0.code.as_str())?;
        map.serialize_entry("message", &self.0.message)?;
        map.serialize_entry("retryable", &self.0.code.retryable())?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{json, Value};

    use super::*;
    use crate::{
        encoding::fixtures::{self, at},
        protocol::{
            job_frame::{Accepted, Subscribed},
            Lease,
        },
    };

    /// Every runtime message of §5, once with its optional fields absent wherever the fixtures
    /// leave them so, and once with them present.
    fn job_payloads() -> Vec<JobPayload> {
        let mut payloads = fixtures::payloads();
        payloads.extend([
            JobPayload::Accepted(Box::new(Accepted {
                agent: "echo@1".into(),
                lease: Lease::new(),
                expires_at: None,
                budget: None,
                credentials: Vec::new(),
                parent_job_id: None,
                accepted_at: at(2),
                request_id: None,
            })),
            JobPayload::Subscribed(Box::new(Subscribed {
                summary: JobSummary {
                    budget: None,
                    ..fixtures::summary()
                },
                subscribed_from: EventSeq(3),
                replayed: false,
                request_id: Some("req".into()),
            })),
            JobPayload::Cancelled {
                reason: Some("enough".into()),
            },
        ]);
        for payload in &mut payloads {
            // A null the agent put in a free-form value is its data, not an absent field.
            if let JobPayload::Event {
                body: EventBody::Delegate { input, .. },
                ..
            } = payload
            {
                *input = json!({});
            }
        }
        payloads
    }

    fn controls() -> Vec<Control> {
        let welcome = Welcome {
            runtime_name: "arcp-gateway",
            runtime_version: "1",
            resume_token: "tok".into(),
            resume_window_sec: 600,
            heartbeat_interval_sec: 30,
            features: vec!["ack".into()],
            agents: vec![AgentInfo {
                name: "echo".into(),
                versions: vec!["1".into()],
                default: "1".into(),
            }],
        };
        let listed = JobSummary {
            budget: None,
            ..fixtures::summary()
        };
        [
            ControlMessage::Welcome(welcome),
            ControlMessage::Error(ArcpError::JobNotFound("no such job".into())),
            ControlMessage::Pong {
                ping_nonce: "n".into(),
                received_at: at(1),
            },
            ControlMessage::Ping {
                nonce: "n".into(),
                sent_at: at(1),
            },
            ControlMessage::Closed { reason: None },
            ControlMessage::Closed {
                reason: Some("bye".into()),
            },
            ControlMessage::Jobs {
                jobs: vec![listed, fixtures::summary()],
                next_cursor: None,
            },
            ControlMessage::Jobs {
                jobs: Vec::new(),
                next_cursor: Some("c".into()),
            },
        ]
        .into_iter()
        .flat_map(|message| {
            [None, Some("req".to_owned())].map(|request_id| Control {
                request_id,
                message: message.clone(),
            })
        })
        .collect()
    }

    fn nulls(value: &Value, path: &str, found: &mut Vec<String>) {
        match value {
            Value::Null => found.push(path.to_owned()),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    nulls(item, &format!("{path}[{i}]"), found);
                }
            }
            Value::Object(fields) => {
                for (key, item) in fields {
                    nulls(item, &format!("{path}.{key}"), found);
                }
            }
            _ => {}
        }
    }

    /// Every frame the runtime sends, as text, parsed back.
    fn every_frame() -> Vec<Value> {
        let session = SessionId::new("sess_1");
        let mut texts: Vec<String> = controls()
            .iter()
            .map(|c| control_text(Some(&session), c))
            .collect();
        for (i, payload) in job_payloads().into_iter().enumerate() {
            let frame = JobFrame {
                job_id: JobId::new("job_1"),
                trace_id: (i % 2 == 0).then(|| TraceId::new("4bf92f3577b34da6a3ce929d0e0e4736")),
                payload,
            };
            texts.push(job_text(
                Some(&session),
                EventSeq(i as u64 + 1),
                "id",
                &frame,
            ));
        }
        texts
            .iter()
            .map(|t| serde_json::from_str(t).expect("every frame is JSON"))
            .collect()
    }

    #[test]
    fn no_frame_of_any_type_carries_a_null() {
        let frames = every_frame();
        let kinds: BTreeSet<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
        assert_eq!(
            kinds,
            BTreeSet::from([
                "job.accepted",
                "job.cancelled",
                "job.error",
                "job.event",
                "job.result",
                "job.subscribed",
                "session.closed",
                "session.error",
                "session.jobs",
                "session.ping",
                "session.pong",
                "session.welcome",
            ]),
            "every message type the runtime sends"
        );
        let events: BTreeSet<&str> = frames
            .iter()
            .filter_map(|f| f["payload"]["kind"].as_str())
            .collect();
        assert_eq!(events.len(), 10, "every event kind: {events:?}");
        for frame in &frames {
            let mut found = Vec::new();
            nulls(frame, "", &mut found);
            assert!(found.is_empty(), "null at {found:?} in {frame}");
        }
    }

    #[test]
    fn absent_fields_are_absent_and_present_ones_are_there() {
        let frames = every_frame();
        let accepted: Vec<&Value> = frames
            .iter()
            .filter(|f| f["type"] == "job.accepted")
            .collect();
        let [full, bare] = accepted[..] else {
            panic!("two job.accepted frames: {accepted:?}");
        };
        assert_eq!(full["payload"]["credentials"][0]["value"], "secret");
        assert_eq!(full["payload"]["parent_job_id"], "job_0");
        assert_eq!(full["payload"]["request_id"], "req");
        for absent in [
            "credentials",
            "parent_job_id",
            "request_id",
            "lease_constraints",
            "budget",
        ] {
            assert!(bare["payload"].get(absent).is_none(), "{absent} in {bare}");
        }
        let error = frames
            .iter()
            .find(|f| f["type"] == "session.error" && f["payload"].get("request_id").is_some())
            .expect("an error answering a request");
        assert_eq!(error["payload"]["code"], "JOB_NOT_FOUND");
        assert_eq!(error["payload"]["request_id"], "req");
        let event = frames
            .iter()
            .find(|f| f["type"] == "job.event")
            .expect("an event");
        assert_eq!(event["arcp"], PROTOCOL_VERSION);
        assert_eq!(event["session_id"], "sess_1");
        assert_eq!(event["job_id"], "job_1");
        assert_eq!(event["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(event["event_seq"].as_u64().is_some());
        assert!(event["payload"]["ts"]
            .as_str()
            .is_some_and(|ts| ts.ends_with('Z')));
    }
}
