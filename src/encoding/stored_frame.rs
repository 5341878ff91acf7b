//! [`StoredFrame`]: a job frame in the encoding every event log stores and every reader gets.
//!
//! The encoding is the frame's `arcp.v1.ServerFrame` protobuf without the fields that belong to
//! where it is delivered: its envelope `id` (field 2), `trace_id` (4), `job_id` (5) and payload
//! (20 and up), in that order, each as prost writes it. That is a valid `ServerFrame` on its
//! own, so it reads back with the generated decoder; and the gRPC transport sends a frame by
//! copying these bytes around the `arcp`, `session_id` and `event_seq` fields it writes itself,
//! so a frame is encoded once, when it is logged, however many times it is replayed.
//!
//! A chatty job emits thousands of events a second. The envelope and the bodies agents emit by
//! the thousand (`log`, `thought`, `status`, `metric`, `progress`) are written field by field
//! from borrowed values, exactly as prost writes the generated types; rarer payloads, and
//! bodies with nested messages (a metric's dimensions, a rotated credential), are converted to
//! the generated types and encoded by prost. The tests hold every kind of job frame to the
//! bytes the generated encoder produces.

use std::sync::Arc;

use prost::{
    bytes::BufMut,
    encoding::{
        decode_key, decode_varint, encode_key, encode_varint, encoded_len_varint, key_len, WireType,
    },
    Message,
};

use crate::{
    clock::Rfc3339,
    error::ArcpError,
    ids::TraceId,
    proto::{self, job_event::Body as ProtoBody},
    protocol::{
        event::EventBody,
        job_frame::{JobFrame, JobPayload},
        PROTOCOL_VERSION,
    },
};

use super::job_proto::{self, corrupt};

/// A job frame in its storage encoding. Cheap to clone: clones share the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredFrame {
    bytes: Arc<[u8]>,
    /// Where the `id` field ends and the `trace_id`/`job_id` fields begin.
    id_end: u32,
    /// Where the payload field begins.
    payload_start: u32,
}

// Field numbers, from `proto/arcp/v1/arcp.proto`.
const FRAME_ARCP: u32 = 1;
const FRAME_ID: u32 = 2;
const FRAME_SESSION_ID: u32 = 3;
pub(super) const FRAME_TRACE_ID: u32 = 4;
pub(super) const FRAME_JOB_ID: u32 = 5;
const FRAME_EVENT_SEQ: u32 = 6;
/// The job payloads' field numbers (`job_accepted` to `job_subscribed`).
const JOB_PAYLOADS: std::ops::RangeInclusive<u32> = 20..=25;
pub(super) const FRAME_JOB_EVENT: u32 = 21;
/// The payloads that end a job: `job_result`, `job_error` and `job_cancelled`.
const JOB_ENDS: std::ops::RangeInclusive<u32> = 22..=24;
pub(super) const EVENT_KIND: u32 = 1;
pub(super) const EVENT_TS: u32 = 2;
pub(super) const EVENT_LOG: u32 = 10;
pub(super) const EVENT_THOUGHT: u32 = 11;
pub(super) const EVENT_STATUS: u32 = 14;
pub(super) const EVENT_METRIC: u32 = 15;
pub(super) const EVENT_PROGRESS: u32 = 18;

impl StoredFrame {
    /// Encodes `frame` under a fresh envelope id.
    ///
    /// The frame is measured first and written straight into an allocation of exactly its
    /// size: a chatty job encodes thousands of frames a second, and writing each into a
    /// buffer to copy it out again cost a copy and a buffer's bookkeeping per frame.
    pub fn encode(frame: &JobFrame) -> StoredFrame {
        let mut id = [0; uuid::fmt::Hyphenated::LENGTH];
        let id = frame.envelope_id().hyphenated().encode_lower(&mut id);
        let trace_id = frame.trace_id.as_ref().map_or("", TraceId::as_str);
        let job_id = frame.job_id.as_str();
        let payload = Payload::of(frame);
        let id_end = str_len(FRAME_ID, id);
        let payload_start =
            id_end + str_len(FRAME_TRACE_ID, trace_id) + str_len(FRAME_JOB_ID, job_id);
        let mut bytes = Arc::<[u8]>::new_uninit_slice(payload_start + payload.len());
        let Some(mut buf) = Arc::get_mut(&mut bytes) else {
            unreachable!("a new allocation is not shared")
        };
        put_str(FRAME_ID, id, &mut buf);
        put_str(FRAME_TRACE_ID, trace_id, &mut buf);
        put_str(FRAME_JOB_ID, job_id, &mut buf);
        payload.put(&mut buf);
        // The lengths above are measured by the functions that write the fields, so nothing is
        // left; if a bug left something, it is zeroed rather than left uninitialised.
        debug_assert!(buf.is_empty(), "{} bytes not written", buf.len());
        for byte in buf.iter_mut() {
            byte.write(0);
        }
        // SAFETY: every byte was written above, by the fields or by the zeroing.
        let bytes = unsafe { bytes.assume_init() };
        StoredFrame {
            bytes,
            id_end: offset(id_end),
            payload_start: offset(payload_start),
        }
    }

    /// A frame read back from a store, checked to be in this encoding.
    pub fn from_bytes(bytes: impl Into<Arc<[u8]>>) -> Result<StoredFrame, ArcpError> {
        let bytes = bytes.into();
        let mut fields = Fields::new(&bytes);
        let id = fields.next_field()?;
        if id.tag != FRAME_ID {
            return Err(corrupt("the envelope id does not come first"));
        }
        let id_end = id.end;
        let mut field = fields.next_field()?;
        if field.tag == FRAME_TRACE_ID {
            field = fields.next_field()?;
        }
        if field.tag != FRAME_JOB_ID {
            return Err(corrupt("the job id does not follow the envelope id"));
        }
        let payload = fields.next_field()?;
        if !JOB_PAYLOADS.contains(&payload.tag) || payload.wire_type != WireType::LengthDelimited {
            return Err(corrupt("the payload is not a job payload"));
        }
        if payload.end != bytes.len() {
            return Err(corrupt("bytes follow the payload"));
        }
        let frame = StoredFrame {
            id_end: offset(id_end),
            payload_start: offset(field.end),
            bytes,
        };
        // The text fields are sent as they are, so they must be what protobuf requires.
        std::str::from_utf8(frame.id_field_text()).map_err(|_| corrupt("the id is not UTF-8"))?;
        frame.job_id()?;
        Ok(frame)
    }

    /// The encoding, for a store to keep.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How many bytes the encoding takes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the encoding is empty; it never is.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The job the frame belongs to.
    pub fn job_id(&self) -> Result<&str, ArcpError> {
        let mut fields = Fields::new(self.envelope_fields());
        loop {
            let field = fields.next_field()?;
            if field.tag == FRAME_JOB_ID {
                return std::str::from_utf8(field.value)
                    .map_err(|_| corrupt("the job id is not UTF-8"));
            }
        }
    }

    /// Whether the frame ends its job ([`JobPayload::is_terminal`]), read from the payload's
    /// field number alone.
    pub fn ends_job(&self) -> bool {
        let mut key = self.payload_field();
        decode_key(&mut key).is_ok_and(|(tag, _)| JOB_ENDS.contains(&tag))
    }

    /// The frame in domain types, with its envelope id.
    pub fn decode(&self) -> Result<(String, JobFrame), ArcpError> {
        let frame = proto::ServerFrame::decode(self.as_bytes())
            .map_err(|e| corrupt(&format!("not protobuf: {e}")))?;
        let id = frame.id.clone();
        Ok((id, job_proto::job_frame_from_proto(frame)?))
    }

    /// The encoded `id` field: tag, length and the id text.
    pub(crate) fn id_field(&self) -> &[u8] {
        &self.bytes[..self.id_end as usize]
    }

    /// The envelope id's text.
    pub(super) fn id_field_text(&self) -> &[u8] {
        let mut fields = Fields::new(self.id_field());
        fields.next_field().map_or(&[][..], |f| f.value)
    }

    /// The encoded `trace_id` and `job_id` fields.
    pub(crate) fn envelope_fields(&self) -> &[u8] {
        &self.bytes[self.id_end as usize..self.payload_start as usize]
    }

    /// The encoded payload field.
    pub(crate) fn payload_field(&self) -> &[u8] {
        &self.bytes[self.payload_start as usize..]
    }

    /// The whole `ServerFrame` for delivery with `session_id` and `event_seq`: its length, and
    /// the writer of its bytes.
    pub(crate) fn framed<'a>(&'a self, session_id: &'a str, event_seq: u64) -> Framed<'a> {
        Framed {
            frame: self,
            session_id,
            event_seq,
        }
    }
}

impl std::fmt::Debug for StoredFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The payload may hold credentials (§9.8): only the size is shown.
        f.debug_struct("StoredFrame")
            .field("job_id", &self.job_id().unwrap_or("?"))
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

/// A stored frame with the fields of one delivery around it: a whole `arcp.v1.ServerFrame`.
pub(crate) struct Framed<'a> {
    frame: &'a StoredFrame,
    session_id: &'a str,
    event_seq: u64,
}

impl Framed<'_> {
    /// The encoded length.
    pub(crate) fn len(&self) -> usize {
        str_len(FRAME_ARCP, PROTOCOL_VERSION)
            + str_len(FRAME_SESSION_ID, self.session_id)
            + u64_len(FRAME_EVENT_SEQ, self.event_seq)
            + self.frame.len()
    }

    /// Writes the frame: the delivery's fields in their places between the stored ones.
    pub(crate) fn put(&self, buf: &mut impl BufMut) {
        put_str(FRAME_ARCP, PROTOCOL_VERSION, buf);
        buf.put_slice(self.frame.id_field());
        put_str(FRAME_SESSION_ID, self.session_id, buf);
        buf.put_slice(self.frame.envelope_fields());
        put_u64(FRAME_EVENT_SEQ, self.event_seq, buf);
        buf.put_slice(self.frame.payload_field());
    }
}

fn offset(at: usize) -> u32 {
    // The envelope fields before the payload are a few ids long.
    u32::try_from(at).unwrap_or(u32::MAX)
}

/// The top-level fields of an encoding, one at a time.
struct Fields<'a> {
    rest: &'a [u8],
    /// Where `rest` starts in the encoding.
    at: usize,
}

struct Field<'a> {
    tag: u32,
    wire_type: WireType,
    value: &'a [u8],
    /// Where the field ends, from the start of the encoding it was read from.
    end: usize,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields { rest: bytes, at: 0 }
    }

    fn next_field(&mut self) -> Result<Field<'a>, ArcpError> {
        let truncated = || corrupt("truncated");
        let mut rest = self.rest;
        let (tag, wire_type) = decode_key(&mut rest).map_err(|_| truncated())?;
        if wire_type != WireType::LengthDelimited {
            return Err(corrupt("a top-level field is not length-delimited"));
        }
        let len = usize::try_from(decode_varint(&mut rest).map_err(|_| truncated())?)
            .map_err(|_| truncated())?;
        let value = rest.get(..len).ok_or_else(truncated)?;
        self.at += self.rest.len() - rest.len() + len;
        self.rest = &rest[len..];
        Ok(Field {
            tag,
            wire_type,
            value,
            end: self.at,
        })
    }
}

/// A job frame's payload: a `job_event` written here, or another payload prost writes.
enum Payload<'a> {
    /// A `job_event`, with the length of its content, measured once.
    Event {
        kind: &'static str,
        ts: Rfc3339,
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
        fields: [Scalar<'a>; 4],
        len: usize,
    },
    Other(ProtoBody),
}

/// A scalar field of a body.
#[derive(Clone, Copy)]
enum Scalar<'a> {
    Str(u32, &'a str),
    Double(u32, f64),
    /// `optional double`: present even when zero.
    OptionalDouble(u32, Option<f64>),
    /// Pads bodies with fewer than four fields.
    None,
}

impl<'a> Body<'a> {
    fn of(body: &'a EventBody) -> Body<'a> {
        use Scalar::{Double, OptionalDouble, Str};
        let text = |value: &'a Option<String>| value.as_deref().unwrap_or_default();
        let (tag, fields) = match body {
            EventBody::Log { level, message } => (
                EVENT_LOG,
                [
                    Str(1, level.as_str()),
                    Str(2, message),
                    Scalar::None,
                    Scalar::None,
                ],
            ),
            EventBody::Thought { text } => (
                EVENT_THOUGHT,
                [Str(1, text), Scalar::None, Scalar::None, Scalar::None],
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
                    Scalar::None,
                    Scalar::None,
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
                    Scalar::None,
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
            other => return Body::Other(job_proto::event_body(other)),
        };
        let len = fields.iter().map(Scalar::len).sum();
        Body::Fields { tag, fields, len }
    }

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

impl<'a> Payload<'a> {
    fn of(frame: &'a JobFrame) -> Payload<'a> {
        match &frame.payload {
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
            _ => Payload::Other(job_proto::job_payload(frame)),
        }
    }

    /// The encoded length of the payload field.
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

impl Scalar<'_> {
    fn len(&self) -> usize {
        match *self {
            Scalar::Str(tag, value) => str_len(tag, value),
            // prost leaves 0.0 (and -0.0, which equals it) off the wire.
            Scalar::Double(_, 0.0) => 0,
            Scalar::Double(tag, _) | Scalar::OptionalDouble(tag, Some(_)) => key_len(tag) + 8,
            Scalar::OptionalDouble(_, None) | Scalar::None => 0,
        }
    }

    fn put(&self, buf: &mut impl BufMut) {
        match *self {
            Scalar::Str(tag, value) => put_str(tag, value, buf),
            Scalar::Double(_, 0.0) => {}
            Scalar::Double(tag, value) | Scalar::OptionalDouble(tag, Some(value)) => {
                encode_key(tag, WireType::SixtyFourBit, buf);
                buf.put_f64_le(value);
            }
            Scalar::OptionalDouble(_, None) | Scalar::None => {}
        }
    }
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
    use serde_json::json;

    use super::*;
    use crate::{
        encoding::fixtures::payloads,
        ids::{JobId, SessionId},
        protocol::job_frame::ResultBody,
    };

    fn frames() -> Vec<JobFrame> {
        let traces = [None, Some(TraceId::new("4bf92f3577b34da6a3ce929d0e0e4736"))];
        payloads()
            .into_iter()
            .flat_map(|payload| {
                traces.clone().map(|trace_id| JobFrame {
                    job_id: JobId::new("job_1"),
                    trace_id,
                    payload: payload.clone(),
                })
            })
            .collect()
    }

    /// The generated type of `frame` as stored under `id`, with a delivery's fields.
    fn generated(frame: &JobFrame, id: &str, session: &str, seq: u64) -> proto::ServerFrame {
        proto::ServerFrame {
            arcp: if session.is_empty() {
                String::new()
            } else {
                PROTOCOL_VERSION.into()
            },
            id: id.into(),
            session_id: session.into(),
            trace_id: frame.trace_id.as_ref().map_or("", TraceId::as_str).into(),
            job_id: frame.job_id.as_str().into(),
            event_seq: seq,
            payload: Some(job_proto::job_payload(frame)),
        }
    }

    #[test]
    fn stored_and_delivered_frames_are_the_generated_encoders_bytes() {
        let session = SessionId::new("sess_01J");
        for frame in frames() {
            let stored = StoredFrame::encode(&frame);
            let (id, _) = stored.decode().expect("decodes");
            let expected = generated(&frame, &id, "", 0).encode_to_vec();
            assert_eq!(stored.as_bytes(), &expected[..], "{:?}", frame.payload);
            // 0 is left off the wire; 300 takes a two-byte varint.
            for seq in [0, 1, 300] {
                let framed = stored.framed(session.as_str(), seq);
                let mut written = Vec::new();
                framed.put(&mut written);
                assert_eq!(written.len(), framed.len());
                let mut expected = generated(&frame, &id, session.as_str(), seq);
                expected.arcp = PROTOCOL_VERSION.into();
                assert_eq!(written, expected.encode_to_vec(), "{:?}", frame.payload);
            }
        }
    }

    #[test]
    fn a_stored_frame_reads_back_as_the_frame_it_encodes() {
        for frame in frames() {
            let stored = StoredFrame::encode(&frame);
            let (id, decoded) = stored.decode().expect("decodes");
            assert_eq!(
                uuid::Uuid::parse_str(&id).map(|u| u.get_version_num()),
                Ok(7)
            );
            assert_eq!(decoded.job_id, frame.job_id);
            assert_eq!(decoded.trace_id, frame.trace_id);
            assert_eq!(stored.job_id(), Ok("job_1"));
            // Equal payloads encode to equal bytes; only the envelope id is drawn afresh.
            let again = StoredFrame::encode(&decoded);
            assert_eq!(again.envelope_fields(), stored.envelope_fields());
            assert_eq!(
                again.payload_field(),
                stored.payload_field(),
                "{:?}",
                frame.payload
            );
            match (decoded.payload, without_unsent_fields(frame.payload)) {
                // Compared as values: -0.0 reads back as the 0.0 it equals.
                (
                    JobPayload::Event { ts, body },
                    JobPayload::Event {
                        ts: sent_ts,
                        body: sent,
                    },
                ) => assert_eq!((ts, body), (sent_ts, sent)),
                (decoded, sent) => assert_eq!(format!("{decoded:?}"), format!("{sent:?}")),
            }
        }
    }

    /// `job.subscribed` carries neither the job's creation time nor its newest sequence number
    /// (`subscribed_from` stands for it), so they read back as the epoch and `subscribed_from`.
    fn without_unsent_fields(mut payload: JobPayload) -> JobPayload {
        if let JobPayload::Subscribed(s) = &mut payload {
            s.summary.created_at = crate::clock::Timestamp(std::time::UNIX_EPOCH);
            s.summary.last_event_seq = s.subscribed_from;
        }
        payload
    }

    #[test]
    fn a_stored_frame_knows_whether_it_ends_its_job() {
        for frame in frames() {
            let stored = StoredFrame::encode(&frame);
            assert_eq!(
                stored.ends_job(),
                frame.payload.is_terminal(),
                "{:?}",
                frame.payload
            );
        }
        assert!(frames().iter().any(|f| f.payload.is_terminal()));
    }

    #[test]
    fn json_in_a_stored_frame_keeps_its_value() {
        let result = json!({"count": 5, "ratio": 0.5, "neg": -3, "big": 9_007_199_254_740_992u64, "list": [true, null, "x"], "nested": {"a": {}}});
        let frame = JobFrame {
            job_id: JobId::new("job_1"),
            trace_id: None,
            payload: JobPayload::Result(crate::protocol::job_frame::JobResult {
                result: ResultBody::Inline(result.clone()),
                completed_at: crate::clock::Timestamp::now(),
            }),
        };
        let (_, decoded) = StoredFrame::encode(&frame).decode().expect("decodes");
        match decoded.payload {
            JobPayload::Result(r) => assert_eq!(r.result, ResultBody::Inline(result)),
            other => panic!("not a result: {other:?}"),
        }
    }

    #[test]
    fn bytes_from_a_store_are_checked_before_they_are_sent() {
        for frame in frames() {
            let stored = StoredFrame::encode(&frame);
            let back = StoredFrame::from_bytes(stored.as_bytes().to_vec()).expect("valid");
            assert_eq!(back, stored);
            for cut in [1, stored.len() / 2, stored.len() - 1] {
                assert!(StoredFrame::from_bytes(stored.as_bytes()[..cut].to_vec()).is_err());
            }
            let mut longer = stored.as_bytes().to_vec();
            longer.extend_from_slice(stored.id_field());
            assert!(
                StoredFrame::from_bytes(longer).is_err(),
                "bytes after the payload"
            );
        }
        let welcome = proto::ServerFrame {
            id: "x".into(),
            job_id: "job_1".into(),
            payload: Some(proto::server_frame::Payload::SessionClosed(
                proto::SessionClosed::default(),
            )),
            ..Default::default()
        };
        let error =
            StoredFrame::from_bytes(welcome.encode_to_vec()).expect_err("not a job payload");
        assert_eq!(error.code(), crate::error::ErrorCode::InternalError);
        assert!(StoredFrame::from_bytes(Vec::new()).is_err());
        assert!(StoredFrame::from_bytes(vec![0xff; 12]).is_err());
    }
}
