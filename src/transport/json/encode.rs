//! The runtime's frames as JSON text (§5), written straight from the domain messages, or for
//! the events agents emit by the thousand straight from their stored encoding: no
//! intermediate `serde_json::Value`, no allocation for a timestamp or an envelope id, and an
//! absent optional field is absent rather than `null`, which a strict client's schema
//! ("optional string", "optional array") would refuse.
//!
//! Each message is written member by member through a [`Writer`], only the fields it has.

use crate::{
    clock::Timestamp,
    encoding::stored_event::{StoredBody, StoredEvent},
    error::ArcpError,
    ids::{EventSeq, JobId, SessionId, TraceId},
    protocol::{
        control::{Control, ControlMessage, JobSummary, Welcome},
        credential::Credential,
        event::{EventBody, LogLevel},
        job_frame::{JobFrame, JobPayload, ResultBody},
        Json, PROTOCOL_VERSION,
    },
};

use super::text::Writer;

/// Room for a control frame's text, most of which are short.
const CONTROL_CAPACITY: usize = 256;
/// Room for a job frame's envelope and the keys around its content.
const ENVELOPE_CAPACITY: usize = 256;
/// Room for a job frame written from its domain message, whose size is not known ahead.
const JOB_CAPACITY: usize = 512;

/// A session-control frame's text.
pub(super) fn control_text(session: Option<&SessionId>, control: &Control) -> String {
    let mut id = uuid::Uuid::encode_buffer();
    let id = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut id);
    let kind = match &control.message {
        ControlMessage::Welcome(_) => "session.welcome",
        ControlMessage::Error(_) => "session.error",
        ControlMessage::Pong { .. } => "session.pong",
        ControlMessage::Ping { .. } => "session.ping",
        ControlMessage::Closed { .. } => "session.closed",
        ControlMessage::Jobs { .. } => "session.jobs",
    };
    let text = Writer::with_capacity(CONTROL_CAPACITY).text(|w| {
        envelope(w, id, kind, session);
        w.object("payload", |w| control_payload(w, control, session));
    });
    finished(text, session)
}

/// A logged job frame's text, with the envelope id and the sequence number it was logged with.
pub(super) fn job_text(
    session: Option<&SessionId>,
    seq: EventSeq,
    id: &str,
    frame: &JobFrame,
) -> String {
    let job = JobFields {
        id,
        job_id: frame.job_id.as_str(),
        trace_id: frame.trace_id.as_ref().map(TraceId::as_str),
        seq,
    };
    let kind = match &frame.payload {
        JobPayload::Accepted(_) => "job.accepted",
        JobPayload::Event { .. } => "job.event",
        JobPayload::Result(_) => "job.result",
        JobPayload::Error(_) => "job.error",
        JobPayload::Cancelled { .. } => "job.cancelled",
        JobPayload::Subscribed(_) => "job.subscribed",
    };
    let text = Writer::with_capacity(JOB_CAPACITY).text(|w| {
        job_envelope(w, &job, kind, session);
        w.object("payload", |w| job_payload(w, frame));
    });
    finished(text, session)
}

/// A logged event's text, written from its stored encoding with the sequence number it was
/// logged with; `stored_len`, the encoding's length, sizes the text.
pub(super) fn stored_event_text(
    session: Option<&SessionId>,
    seq: EventSeq,
    event: &StoredEvent<'_>,
    stored_len: usize,
) -> String {
    let job = JobFields {
        id: event.id,
        job_id: event.job_id,
        trace_id: event.trace_id,
        seq,
    };
    // The text is the stored encoding's strings with the keys and the envelope around them.
    let text = Writer::with_capacity(ENVELOPE_CAPACITY + stored_len).text(|w| {
        job_envelope(w, &job, "job.event", session);
        w.object("payload", |w| {
            event_payload(w, event.body.kind(), event.ts, |w| match event.body {
                StoredBody::Log { level, message } => log(w, level, message),
                StoredBody::Thought { text } => thought(w, text),
                StoredBody::Status { phase, message } => status(w, phase, message, None),
                StoredBody::Metric { name, value, unit } => metric(w, name, value, unit, None),
                StoredBody::Progress {
                    current,
                    total,
                    units,
                    message,
                } => progress(w, current, total, units, message),
            })
        });
    });
    finished(text, session)
}

/// What the envelope of a job frame says of the frame.
struct JobFields<'a> {
    id: &'a str,
    job_id: &'a str,
    trace_id: Option<&'a str>,
    seq: EventSeq,
}

/// A `job.event` payload: its `kind`, its `ts` and the body `body` writes.
fn event_payload(w: &mut Writer, kind: &'static str, ts: &str, body: impl FnOnce(&mut Writer)) {
    w.str("kind", kind);
    w.str("ts", ts);
    w.object("body", body);
}

/// The text, or if serde_json refused a value (not reached: every key is a string and every
/// value serializable), an error frame telling the client so, rather than a frame that is
/// not what was meant.
fn finished(text: Result<String, serde_json::Error>, session: Option<&SessionId>) -> String {
    text.unwrap_or_else(|e| {
        let error = ArcpError::Internal(format!("a frame could not be encoded as JSON: {e}"));
        let control = Control {
            request_id: None,
            message: ControlMessage::Error(error),
        };
        control_text(session, &control)
    })
}

/// The envelope of §5.1, up to its payload.
fn envelope(w: &mut Writer, id: &str, kind: &'static str, session: Option<&SessionId>) {
    w.str("arcp", PROTOCOL_VERSION);
    w.str("id", id);
    w.str("type", kind);
    w.opt_str("session_id", session.map(SessionId::as_str));
}

fn job_envelope(
    w: &mut Writer,
    job: &JobFields<'_>,
    kind: &'static str,
    session: Option<&SessionId>,
) {
    envelope(w, job.id, kind, session);
    w.str("job_id", job.job_id);
    w.value("event_seq", &job.seq.get());
    w.opt_str("trace_id", job.trace_id);
}

/// A timestamp as RFC 3339 text, formatted on the stack.
fn time(w: &mut Writer, key: &'static str, at: Timestamp) {
    w.str(key, at.rfc3339().as_str());
}

/// `lease_constraints`, where a lease has a deadline.
fn constraints(w: &mut Writer, expires_at: Option<Timestamp>) {
    if let Some(at) = expires_at {
        w.object("lease_constraints", |w| time(w, "expires_at", at));
    }
}

fn control_payload(w: &mut Writer, control: &Control, session: Option<&SessionId>) {
    let request_id = control.request_id.as_deref();
    match &control.message {
        ControlMessage::Welcome(welcome) => self::welcome(w, welcome, session),
        ControlMessage::Error(e) => {
            w.str("code", e.code().as_str());
            w.str("message", e.message());
            w.value("retryable", &e.retryable());
            w.opt_str("request_id", request_id);
        }
        ControlMessage::Pong {
            ping_nonce,
            received_at,
        } => {
            w.str("ping_nonce", ping_nonce);
            time(w, "received_at", *received_at);
        }
        ControlMessage::Ping { nonce, sent_at } => {
            w.str("nonce", nonce);
            time(w, "sent_at", *sent_at);
        }
        ControlMessage::Closed { reason } => w.opt_str("reason", reason.as_deref()),
        ControlMessage::Jobs { jobs, next_cursor } => {
            w.opt_str("request_id", request_id);
            w.objects("jobs", jobs, listed);
            w.opt_str("next_cursor", next_cursor.as_deref());
        }
    }
}

fn welcome(w: &mut Writer, welcome: &Welcome, session: Option<&SessionId>) {
    // Beyond §6.2's example, for clients (the reference Python SDK among them) that read the
    // session id from the payload and require `accepted_at`.
    w.opt_str("session_id", session.map(SessionId::as_str));
    time(w, "accepted_at", Timestamp::now());
    w.object("runtime", |w| {
        w.str("name", welcome.runtime_name);
        w.str("version", welcome.runtime_version);
    });
    w.str("resume_token", &welcome.resume_token);
    w.value("resume_window_sec", &welcome.resume_window_sec);
    w.value("heartbeat_interval_sec", &welcome.heartbeat_interval_sec);
    w.object("capabilities", |w| {
        w.value("encodings", &["json"]);
        w.value("features", &welcome.features);
        w.objects("agents", &welcome.agents, |w, agent| {
            w.str("name", &agent.name);
            w.value("versions", &agent.versions);
            w.str("default", &agent.default);
        });
    });
}

/// Provisioned credentials, where there are any: an empty list is absent.
fn credentials(w: &mut Writer, credentials: &[Credential]) {
    if !credentials.is_empty() {
        w.objects("credentials", credentials, secret);
    }
}

/// A credential, its value included: only the job's submitter is sent one (§14).
fn secret(w: &mut Writer, c: &Credential) {
    w.str("id", &c.id);
    w.str("scheme", &c.scheme);
    w.str("value", &c.value);
    w.str("endpoint", &c.endpoint);
    w.opt_str("profile", c.profile.as_deref());
    w.value("constraints", &c.constraints);
}

fn job_payload(w: &mut Writer, frame: &JobFrame) {
    let job_id = frame.job_id.as_str();
    match &frame.payload {
        JobPayload::Accepted(a) => {
            w.str("job_id", job_id);
            w.str("agent", &a.agent);
            w.value("lease", &a.lease);
            constraints(w, a.expires_at);
            w.opt_value("budget", a.budget.as_ref());
            credentials(w, &a.credentials);
            w.opt_str("parent_job_id", a.parent_job_id.as_ref().map(JobId::as_str));
            time(w, "accepted_at", a.accepted_at);
            w.opt_str("trace_id", frame.trace_id.as_ref().map(TraceId::as_str));
            w.opt_str("request_id", a.request_id.as_deref());
        }
        JobPayload::Event { ts, body } => {
            event_payload(w, body.kind(), ts.rfc3339().as_str(), |w| {
                domain_body(w, body)
            })
        }
        JobPayload::Result(r) => {
            w.str("final_status", "success");
            match &r.result {
                ResultBody::Inline(result) => w.value("result", result),
                ResultBody::Streamed {
                    result_id,
                    result_size,
                    summary,
                } => {
                    w.str("result_id", result_id);
                    w.value("result_size", result_size);
                    w.opt_str("summary", summary.as_deref());
                }
            }
            time(w, "completed_at", r.completed_at);
        }
        JobPayload::Error(e) => {
            w.str("final_status", e.final_status.as_str());
            w.str("code", e.code.as_str());
            w.str("message", &e.message);
            w.value("retryable", &e.code.retryable());
            time(w, "completed_at", e.completed_at);
        }
        JobPayload::Cancelled { reason } => {
            w.str("job_id", job_id);
            w.opt_str("reason", reason.as_deref());
        }
        JobPayload::Subscribed(s) => {
            summary_fields(w, &s.summary, "current_status");
            w.value("subscribed_from", &s.subscribed_from.get());
            w.value("replayed", &s.replayed);
            w.opt_str("request_id", s.request_id.as_deref());
        }
    }
}

/// A job as `session.jobs` lists it; `job.subscribed` shows part of it (`summary_fields`).
fn listed(w: &mut Writer, j: &JobSummary) {
    summary_fields(w, j, "status");
    time(w, "created_at", j.created_at);
    // The same instant under the name the reference Python SDK requires.
    time(w, "submitted_at", j.created_at);
    w.value("last_event_seq", &j.last_event_seq.get());
}

/// What a listing and a subscription both say of a job; its status under `status_key`.
fn summary_fields(w: &mut Writer, j: &JobSummary, status_key: &'static str) {
    w.str("job_id", j.job_id.as_str());
    w.str("agent", &j.agent);
    w.str(status_key, j.status);
    w.value("lease", &j.lease);
    constraints(w, j.expires_at);
    w.opt_value("budget", j.budget.as_ref());
    w.opt_str("parent_job_id", j.parent_job_id.as_ref().map(JobId::as_str));
    w.opt_str("trace_id", j.trace_id.as_ref().map(TraceId::as_str));
    credentials(w, &j.credentials);
}

/// A `job.event` body (§8.2). The bodies agents emit by the thousand are written by the same
/// functions whether they come from the domain message or from the stored encoding.
fn domain_body(w: &mut Writer, body: &EventBody) {
    match body {
        EventBody::Log { level, message } => log(w, *level, message),
        EventBody::Thought { text } => thought(w, text),
        EventBody::ToolCall {
            tool,
            args,
            call_id,
        } => {
            w.str("tool", tool);
            w.value("args", args);
            w.str("call_id", call_id);
        }
        EventBody::ToolResult { call_id, outcome } => {
            w.str("call_id", call_id);
            match outcome {
                Ok(result) => w.value("result", result),
                Err(error) => w.object("error", |w| {
                    w.str("code", error.code.as_str());
                    w.str("message", &error.message);
                    w.value("retryable", &error.code.retryable());
                }),
            }
        }
        EventBody::Status {
            phase,
            message,
            credential,
        } => status(w, phase, message.as_deref(), credential.as_deref()),
        EventBody::Metric {
            name,
            value,
            unit,
            dimensions,
        } => metric(w, name, *value, unit.as_deref(), dimensions.as_ref()),
        EventBody::ArtifactRef {
            uri,
            content_type,
            byte_size,
            sha256,
        } => {
            w.str("uri", uri);
            w.str("content_type", content_type);
            w.opt_value("byte_size", byte_size.as_ref());
            w.opt_str("sha256", sha256.as_deref());
        }
        EventBody::Delegate {
            child_job_id,
            agent,
            input,
            lease_request,
            expires_at,
        } => {
            w.str("child_job_id", child_job_id);
            w.str("agent", agent);
            w.value("input", input);
            w.value("lease_request", lease_request);
            constraints(w, *expires_at);
        }
        EventBody::Progress {
            current,
            total,
            units,
            message,
        } => progress(w, *current, *total, units.as_deref(), message.as_deref()),
        EventBody::ResultChunk {
            result_id,
            chunk_seq,
            data,
            encoding,
            more,
        } => {
            w.str("result_id", result_id);
            w.value("chunk_seq", chunk_seq);
            w.str("data", data);
            w.str("encoding", encoding);
            w.value("more", more);
        }
    }
}

fn log(w: &mut Writer, level: LogLevel, message: &str) {
    w.str("level", level.as_str());
    w.str("message", message);
}

fn thought(w: &mut Writer, text: &str) {
    w.str("text", text);
}

fn status(w: &mut Writer, phase: &str, message: Option<&str>, credential: Option<&Credential>) {
    w.str("phase", phase);
    w.opt_str("message", message);
    if let Some(credential) = credential {
        w.object("credential", |w| secret(w, credential));
    }
}

fn metric(
    w: &mut Writer,
    name: &str,
    value: f64,
    unit: Option<&str>,
    dimensions: Option<&serde_json::Map<String, Json>>,
) {
    w.str("name", name);
    w.value("value", &value);
    w.opt_str("unit", unit);
    w.opt_value("dimensions", dimensions);
}

fn progress(
    w: &mut Writer,
    current: f64,
    total: Option<f64>,
    units: Option<&str>,
    message: Option<&str>,
) {
    w.value("current", &current);
    w.opt_value("total", total.as_ref());
    w.opt_str("units", units);
    w.opt_str("message", message);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{json, Value};

    use super::*;
    use crate::{
        encoding::fixtures::{self, at},
        protocol::{
            control::AgentInfo,
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
    fn an_event_written_from_its_stored_encoding_is_the_text_of_its_domain_message() {
        let session = SessionId::new("sess_1");
        let mut in_place = 0;
        for (i, payload) in job_payloads().into_iter().enumerate() {
            let frame = JobFrame {
                job_id: JobId::new("job_1"),
                trace_id: (i % 2 == 0).then(|| TraceId::new("4bf92f3577b34da6a3ce929d0e0e4736")),
                payload,
            };
            let stored = crate::encoding::StoredFrame::encode(&frame);
            let Some(event) = stored.event() else {
                continue;
            };
            in_place += 1;
            let (id, decoded) = stored.decode().expect("decodes");
            let seq = EventSeq(i as u64 + 1);
            for session in [None, Some(&session)] {
                assert_eq!(
                    stored_event_text(session, seq, &event, stored.len()),
                    job_text(session, seq, &id, &decoded),
                );
            }
        }
        assert!(in_place >= 5, "only {in_place} frames read in place");
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
