//! Server frames as the gRPC stream sends them, with job frames written straight from the
//! session's event log.
//!
//! A chatty job sends thousands of frames a second, each already held by the log. Building the
//! generated `ServerFrame` for each would copy every id, timestamp and string into fresh
//! allocations, only to encode them once and free them. Instead the envelope of a job frame and
//! the bodies of the events agents emit by the thousand (`log`, `thought`, `status`, `metric`,
//! `progress`) are written from borrowed fields, field by field in tag order, exactly as prost
//! writes the generated types; rarer payloads, and bodies with nested messages (a metric's
//! dimensions, a rotated credential), are converted to the generated types and encoded by
//! prost. The tests hold every kind of job frame to the bytes the generated encoder produces.

use std::sync::Arc;

use prost::{
    bytes::BufMut,
    encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType},
    Message,
};

use crate::{
    ids::{SessionId, TraceId},
    proto::{self, job_event::Body as ProtoBody},
    protocol::{
        event::EventBody,
        server::{JobPayload, LoggedFrame},
        PROTOCOL_VERSION,
    },
};

use super::convert;

/// One frame of the gRPC session stream.
pub enum WireFrame {
    /// A frame already in protobuf form: the welcome and the other control frames. Boxed, as
    /// they are rare and large, so the job frames stay small to move.
    Message(Box<proto::ServerFrame>),
    /// A job frame from the session's log.
    Job {
        /// The session it belongs to, for the envelope.
        session: Option<SessionId>,
        /// The frame as logged.
        logged: Arc<LoggedFrame>,
    },
}

impl WireFrame {
    /// Appends the frame's protobuf encoding (an `arcp.v1.ServerFrame`) to `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) -> Result<(), NoRoom> {
        match self {
            WireFrame::Message(frame) => frame.encode(buf).map_err(|e| NoRoom {
                needed: e.required_capacity(),
                remaining: e.remaining(),
            }),
            WireFrame::Job { session, logged } => {
                let mut id = [0; uuid::fmt::Hyphenated::LENGTH];
                let (envelope, payload) = parts(session.as_ref(), logged, &mut id);
                let needed = envelope.len() + payload.len();
                if needed > buf.remaining_mut() {
                    return Err(NoRoom {
                        needed,
                        remaining: buf.remaining_mut(),
                    });
                }
                envelope.put(buf);
                payload.put(buf);
                Ok(())
            }
        }
    }
}

/// A frame did not fit in a fixed-size buffer.
#[derive(Debug, thiserror::Error)]
#[error("a {needed}-byte frame does not fit in the {remaining} bytes left in the buffer")]
pub struct NoRoom {
    needed: usize,
    remaining: usize,
}

// Field numbers, from `proto/arcp/v1/arcp.proto`.
const FRAME_ARCP: u32 = 1;
const FRAME_ID: u32 = 2;
const FRAME_SESSION_ID: u32 = 3;
const FRAME_TRACE_ID: u32 = 4;
const FRAME_JOB_ID: u32 = 5;
const FRAME_EVENT_SEQ: u32 = 6;
const FRAME_JOB_EVENT: u32 = 21;
const EVENT_KIND: u32 = 1;
const EVENT_TS: u32 = 2;
const EVENT_LOG: u32 = 10;
const EVENT_THOUGHT: u32 = 11;
const EVENT_STATUS: u32 = 14;
const EVENT_METRIC: u32 = 15;
const EVENT_PROGRESS: u32 = 18;

/// The envelope fields of a job frame, borrowed from the log.
struct Envelope<'a> {
    id: &'a str,
    session_id: &'a str,
    trace_id: &'a str,
    job_id: &'a str,
    event_seq: u64,
}

impl Envelope<'_> {
    fn len(&self) -> usize {
        str_len(FRAME_ARCP, PROTOCOL_VERSION)
            + str_len(FRAME_ID, self.id)
            + str_len(FRAME_SESSION_ID, self.session_id)
            + str_len(FRAME_TRACE_ID, self.trace_id)
            + str_len(FRAME_JOB_ID, self.job_id)
            + u64_len(FRAME_EVENT_SEQ, self.event_seq)
    }

    fn put(&self, buf: &mut impl BufMut) {
        put_str(FRAME_ARCP, PROTOCOL_VERSION, buf);
        put_str(FRAME_ID, self.id, buf);
        put_str(FRAME_SESSION_ID, self.session_id, buf);
        put_str(FRAME_TRACE_ID, self.trace_id, buf);
        put_str(FRAME_JOB_ID, self.job_id, buf);
        put_u64(FRAME_EVENT_SEQ, self.event_seq, buf);
    }
}

/// A job frame's payload: a `job_event` written here, or another payload prost writes.
enum Payload<'a> {
    /// A `job_event`, with the length of its content, measured once for both measuring and
    /// writing the frame.
    Event {
        kind: &'static str,
        ts: crate::clock::Rfc3339,
        body: Body<'a>,
        len: usize,
    },
    Other(proto::server_frame::Payload),
}

/// A `job_event` body: its field number in `JobEvent`, its scalar fields in tag order and
/// their encoded length, or one prost writes.
enum Body<'a> {
    Fields {
        tag: u32,
        fields: [Field<'a>; 4],
        len: usize,
    },
    Other(ProtoBody),
}

/// A scalar field of a body.
#[derive(Clone, Copy)]
enum Field<'a> {
    Str(u32, &'a str),
    Double(u32, f64),
    /// `optional double`: present even when zero.
    OptionalDouble(u32, Option<f64>),
    /// Pads bodies with fewer than four fields.
    None,
}

impl<'a> Body<'a> {
    fn of(body: &'a EventBody) -> Body<'a> {
        use Field::{Double, OptionalDouble, Str};
        let text = |value: &'a Option<String>| value.as_deref().unwrap_or_default();
        let (tag, fields) = match body {
            EventBody::Log { level, message } => (
                EVENT_LOG,
                [
                    Str(1, level.as_str()),
                    Str(2, message),
                    Field::None,
                    Field::None,
                ],
            ),
            EventBody::Thought { text } => (
                EVENT_THOUGHT,
                [Str(1, text), Field::None, Field::None, Field::None],
            ),
            EventBody::Status {
                phase,
                message,
                credential: None,
            } => (
                EVENT_STATUS,
                [
                    Str(1, phase),
                    Str(2, text(message)),
                    Field::None,
                    Field::None,
                ],
            ),
            EventBody::Metric {
                name,
                value,
                unit,
                dimensions: None,
            } => (
                EVENT_METRIC,
                [
                    Str(1, name),
                    Double(2, *value),
                    Str(3, text(unit)),
                    Field::None,
                ],
            ),
            EventBody::Progress {
                current,
                total,
                units,
                message,
            } => (
                EVENT_PROGRESS,
                [
                    Double(1, *current),
                    OptionalDouble(2, *total),
                    Str(3, text(units)),
                    Str(4, text(message)),
                ],
            ),
            other => return Body::Other(convert::event_body(other)),
        };
        let len = fields.iter().map(Field::len).sum();
        Body::Fields { tag, fields, len }
    }
}

impl<'a> Payload<'a> {
    fn of(logged: &'a LoggedFrame) -> Payload<'a> {
        match &logged.frame.payload {
            JobPayload::Event { ts, body } => {
                let (kind, ts, body) = (body.kind(), ts.rfc3339(), Body::of(body));
                let len = str_len(EVENT_KIND, kind) + str_len(EVENT_TS, ts.as_str()) + body.len();
                Payload::Event {
                    kind,
                    ts,
                    body,
                    len,
                }
            }
            _ => Payload::Other(convert::job_payload(&logged.frame)),
        }
    }

    fn len(&self) -> usize {
        match self {
            Payload::Event { len, .. } => message_len(FRAME_JOB_EVENT, *len),
            Payload::Other(payload) => payload.encoded_len(),
        }
    }

    fn put(&self, buf: &mut impl BufMut) {
        match self {
            Payload::Event {
                kind,
                ts,
                body,
                len,
            } => {
                put_message_header(FRAME_JOB_EVENT, *len, buf);
                put_str(EVENT_KIND, kind, buf);
                put_str(EVENT_TS, ts.as_str(), buf);
                body.put(buf);
            }
            Payload::Other(payload) => payload.encode(buf),
        }
    }
}

impl Body<'_> {
    /// The length of the body field, with its tag and length prefix.
    fn len(&self) -> usize {
        match self {
            Body::Fields { tag, len, .. } => message_len(*tag, *len),
            Body::Other(body) => body.encoded_len(),
        }
    }

    fn put(&self, buf: &mut impl BufMut) {
        match self {
            Body::Fields { tag, fields, len } => {
                put_message_header(*tag, *len, buf);
                for field in fields {
                    field.put(buf);
                }
            }
            Body::Other(body) => body.encode(buf),
        }
    }
}

impl Field<'_> {
    fn len(&self) -> usize {
        match *self {
            Field::Str(tag, value) => str_len(tag, value),
            // prost leaves 0.0 (and -0.0, which equals it) off the wire.
            Field::Double(_, 0.0) => 0,
            Field::Double(tag, _) | Field::OptionalDouble(tag, Some(_)) => key_len(tag) + 8,
            Field::OptionalDouble(_, None) | Field::None => 0,
        }
    }

    fn put(&self, buf: &mut impl BufMut) {
        match *self {
            Field::Str(tag, value) => put_str(tag, value, buf),
            Field::Double(_, 0.0) => {}
            Field::Double(tag, value) | Field::OptionalDouble(tag, Some(value)) => {
                encode_key(tag, WireType::SixtyFourBit, buf);
                buf.put_f64_le(value);
            }
            Field::OptionalDouble(_, None) | Field::None => {}
        }
    }
}

/// The pieces of a job frame, ready to measure and write.
fn parts<'a>(
    session: Option<&'a SessionId>,
    logged: &'a LoggedFrame,
    id: &'a mut [u8; uuid::fmt::Hyphenated::LENGTH],
) -> (Envelope<'a>, Payload<'a>) {
    let envelope = Envelope {
        id: logged.id.hyphenated().encode_lower(id),
        session_id: session.map_or("", SessionId::as_str),
        trace_id: logged.frame.trace_id.as_ref().map_or("", TraceId::as_str),
        job_id: logged.frame.job_id.as_str(),
        event_seq: logged.seq.get(),
    };
    (envelope, Payload::of(logged))
}

// proto3 leaves scalar fields at their default value (empty, zero) off the wire.

fn str_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        message_len(tag, value.len())
    }
}

fn put_str(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        put_message_header(tag, value.len(), buf);
        buf.put_slice(value.as_bytes());
    }
}

fn u64_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

fn put_u64(tag: u32, value: u64, buf: &mut impl BufMut) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

/// A length-delimited field of `len` bytes, with its tag and length prefix.
fn message_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_message_header(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde_json::json;

    use super::*;
    use crate::{
        clock::Timestamp,
        error::ErrorCode,
        ids::{EventSeq, JobId},
        protocol::{
            event::{LogLevel, ToolError},
            server::{
                Accepted, Credential, FinalStatus, JobError, JobFrame, JobResult, JobSummary,
                ResultBody, Subscribed,
            },
            Lease,
        },
    };

    fn at(ms: u64) -> Timestamp {
        Timestamp(SystemTime::UNIX_EPOCH + Duration::from_millis(ms))
    }

    fn bodies() -> Vec<EventBody> {
        let lease: Lease = [("tool.call".to_owned(), vec!["search.*".to_owned()])].into();
        vec![
            EventBody::Log {
                level: LogLevel::Info,
                message: "x".repeat(300),
            },
            EventBody::Log {
                level: LogLevel::Warn,
                message: String::new(),
            },
            EventBody::Thought {
                text: "thinking ✓".into(),
            },
            EventBody::Thought {
                text: String::new(),
            },
            EventBody::ToolCall {
                tool: "search".into(),
                args: json!({"q": "rust", "n": 3}),
                call_id: "c1".into(),
            },
            EventBody::ToolResult {
                call_id: "c1".into(),
                outcome: Err(ToolError {
                    code: ErrorCode::PermissionDenied,
                    message: "no".into(),
                }),
            },
            EventBody::Status {
                phase: "running".into(),
                message: None,
                credential: None,
            },
            EventBody::Status {
                phase: "credential_rotated".into(),
                message: Some("rotated".into()),
                credential: Some(Box::new(credential())),
            },
            EventBody::Metric {
                name: "tokens".into(),
                value: 12.5,
                unit: Some("count".into()),
                dimensions: None,
            },
            EventBody::Metric {
                name: "zero".into(),
                value: 0.0,
                unit: None,
                dimensions: None,
            },
            EventBody::Metric {
                name: "negative zero".into(),
                value: -0.0,
                unit: None,
                dimensions: None,
            },
            EventBody::Metric {
                name: "cost.inference".into(),
                value: -1.25e-300,
                unit: Some("USD".into()),
                dimensions: Some(
                    json!({"model": "m", "n": 2})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                ),
            },
            EventBody::ArtifactRef {
                uri: "s3://b/k".into(),
                content_type: "text/plain".into(),
                byte_size: Some(0),
                sha256: None,
            },
            EventBody::Delegate {
                child_job_id: "job_child".into(),
                agent: "echo".into(),
                input: json!(null),
                lease_request: lease,
                expires_at: Some(at(5)),
            },
            EventBody::Progress {
                current: 0.0,
                total: Some(0.0),
                units: None,
                message: Some("m".into()),
            },
            EventBody::Progress {
                current: 3.5,
                total: None,
                units: Some("files".into()),
                message: None,
            },
            EventBody::ResultChunk {
                result_id: "r".into(),
                chunk_seq: 0,
                data: "aGk=".into(),
                encoding: "base64".into(),
                more: false,
            },
        ]
    }

    fn credential() -> Credential {
        Credential {
            id: "cred_1".into(),
            scheme: "bearer".into(),
            value: "secret".into(),
            endpoint: "https://api".into(),
            profile: None,
            constraints: serde_json::Map::new(),
        }
    }

    fn summary() -> JobSummary {
        JobSummary {
            job_id: JobId::new("job_1"),
            agent: "echo@1".into(),
            status: "running",
            lease: Lease::new(),
            expires_at: None,
            budget: Some([("USD".to_owned(), 1.5)].into()),
            parent_job_id: None,
            created_at: at(1),
            trace_id: None,
            last_event_seq: EventSeq(7),
            credentials: Vec::new(),
        }
    }

    fn payloads() -> Vec<JobPayload> {
        let mut payloads: Vec<JobPayload> = bodies()
            .into_iter()
            .enumerate()
            .map(|(i, body)| JobPayload::Event {
                // Before 1970 and after 9999 as well, which are formatted differently.
                ts: match i {
                    0 => Timestamp(SystemTime::UNIX_EPOCH - Duration::from_millis(1500)),
                    1 => at(300_000_000_000_000),
                    _ => at(1_764_000_000_123 + i as u64),
                },
                body,
            })
            .collect();
        payloads.extend([
            JobPayload::Accepted(Box::new(Accepted {
                agent: "echo@1".into(),
                lease: Lease::new(),
                expires_at: Some(at(9)),
                budget: None,
                credentials: vec![credential()],
                parent_job_id: Some(JobId::new("job_0")),
                accepted_at: at(2),
                request_id: Some("req".into()),
            })),
            JobPayload::Subscribed(Box::new(Subscribed {
                summary: summary(),
                subscribed_from: EventSeq(3),
                replayed: true,
                request_id: None,
            })),
            JobPayload::Result(JobResult {
                result: ResultBody::Inline(json!({"lines": 3})),
                completed_at: at(4),
            }),
            JobPayload::Result(JobResult {
                result: ResultBody::Streamed {
                    result_id: "r".into(),
                    result_size: 10,
                    summary: None,
                },
                completed_at: at(4),
            }),
            JobPayload::Error(JobError {
                final_status: FinalStatus::TimedOut,
                code: ErrorCode::Timeout,
                message: "late".into(),
                completed_at: at(4),
            }),
            JobPayload::Cancelled { reason: None },
        ]);
        payloads
    }

    #[test]
    fn job_frames_encode_to_the_generated_encoders_bytes() {
        let sessions = [None, Some(SessionId::new("sess_01J"))];
        let traces = [None, Some(TraceId::new("4bf92f3577b34da6a3ce929d0e0e4736"))];
        let mut checked = 0;
        for (i, payload) in payloads().into_iter().enumerate() {
            for session in &sessions {
                for trace_id in &traces {
                    let logged = Arc::new(LoggedFrame {
                        // 0 is left off the wire; 300 takes a two-byte varint.
                        seq: EventSeq([0, 1, 300][i % 3]),
                        id: uuid::Uuid::now_v7(),
                        frame: JobFrame {
                            job_id: JobId::new("job_1"),
                            trace_id: trace_id.clone(),
                            payload: payload.clone(),
                        },
                    });
                    let expected = convert::job_frame(session.as_ref(), &logged).encode_to_vec();
                    let mut written = Vec::new();
                    WireFrame::Job {
                        session: session.clone(),
                        logged: logged.clone(),
                    }
                    .encode(&mut written)
                    .expect("a Vec has room");
                    assert_eq!(written, expected, "{:?}", logged.frame.payload);
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, payloads().len() * 4);
    }

    #[test]
    fn a_full_buffer_is_an_error_not_a_panic() {
        let logged = LoggedFrame {
            seq: EventSeq(1),
            id: uuid::Uuid::now_v7(),
            frame: JobFrame {
                job_id: JobId::new("job_1"),
                trace_id: None,
                payload: JobPayload::Cancelled { reason: None },
            },
        };
        let mut room = [0u8; 8];
        let error = WireFrame::Job {
            session: None,
            logged: Arc::new(logged),
        }
        .encode(&mut &mut room[..])
        .expect_err("8 bytes cannot hold a frame");
        assert_eq!(error.remaining, 8);
        assert!(error.needed > 8, "{error}");
    }
}
