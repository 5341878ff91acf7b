//! [`StoredEvent`]: a logged `job.event` read in place from its [`StoredFrame`], for the
//! bodies agents emit by the thousand (`log`, `thought`, `status`, `metric`, `progress`).
//!
//! A text transport writes each frame it delivers from what the log holds. Decoding the
//! stored protobuf into the domain message allocated every string of the frame, parsed its
//! timestamp and formatted it again, only for the JSON encoder to copy the strings once more.
//! A [`StoredEvent`] borrows them instead. Only a frame that reads exactly as the domain
//! decoder would read it is given as one: any field this reader does not expect, a body
//! given twice, text that is not UTF-8 or a timestamp not in the form this runtime writes
//! leaves [`StoredFrame::event`] with `None`, and the caller decodes the frame in full, which
//! reports what is wrong with it.

use prost::encoding::{decode_key, decode_varint, WireType};

use crate::{clock::Timestamp, protocol::event::LogLevel};

use super::stored_frame::{
    StoredFrame, EVENT_KIND, EVENT_LOG, EVENT_METRIC, EVENT_PROGRESS, EVENT_STATUS, EVENT_THOUGHT,
    EVENT_TS, FRAME_JOB_EVENT, FRAME_JOB_ID, FRAME_TRACE_ID,
};

/// A logged event, its fields borrowed from the stored frame.
#[derive(Debug, PartialEq)]
pub struct StoredEvent<'a> {
    /// The envelope id.
    pub id: &'a str,
    /// The job's trace id, where it has one.
    pub trace_id: Option<&'a str>,
    /// The job.
    pub job_id: &'a str,
    /// When the event happened, as RFC 3339 text in the form [`Timestamp::rfc3339`] writes.
    pub ts: &'a str,
    /// The body.
    pub body: StoredBody<'a>,
}

/// The body of a [`StoredEvent`]. An optional text is `None` where it is absent or empty, as
/// the domain decoder reads it.
#[derive(Debug, PartialEq)]
pub enum StoredBody<'a> {
    /// `log`.
    Log {
        /// Its level.
        level: LogLevel,
        /// Its message.
        message: &'a str,
    },
    /// `thought`.
    Thought {
        /// Its text.
        text: &'a str,
    },
    /// `status` without a credential.
    Status {
        /// Its phase.
        phase: &'a str,
        /// Its message.
        message: Option<&'a str>,
    },
    /// `metric` without dimensions.
    Metric {
        /// Its name.
        name: &'a str,
        /// Its value.
        value: f64,
        /// Its unit.
        unit: Option<&'a str>,
    },
    /// `progress`.
    Progress {
        /// How far the job has come.
        current: f64,
        /// How far it has to go, where known.
        total: Option<f64>,
        /// The units of both.
        units: Option<&'a str>,
        /// Its message.
        message: Option<&'a str>,
    },
}

impl StoredBody<'_> {
    /// The event kind, as [`crate::protocol::event::EventBody::kind`] names it.
    pub fn kind(&self) -> &'static str {
        match self {
            StoredBody::Log { .. } => "log",
            StoredBody::Thought { .. } => "thought",
            StoredBody::Status { .. } => "status",
            StoredBody::Metric { .. } => "metric",
            StoredBody::Progress { .. } => "progress",
        }
    }
}

impl StoredFrame {
    /// The frame as a [`StoredEvent`], if it is one that reads in place (see the module).
    pub fn event(&self) -> Option<StoredEvent<'_>> {
        let (tag, Value::Bytes(event)) = single(self.payload_field())? else {
            return None;
        };
        if tag != FRAME_JOB_EVENT {
            return None;
        }
        let (mut ts, mut body) = ("", None);
        for field in Fields(event) {
            match field? {
                (EVENT_KIND, Value::Bytes(kind)) => {
                    // Not read (the body names the kind), but the domain decoder checks it.
                    text(kind)?;
                }
                (EVENT_TS, Value::Bytes(text_ts)) => ts = text(text_ts)?,
                (tag, Value::Bytes(fields)) if body.is_none() => {
                    body = Some(StoredBody::read(tag, fields)?)
                }
                _ => return None,
            }
        }
        if !Timestamp::is_as_written(ts) {
            return None;
        }
        let (mut trace_id, mut job_id) = (None, None);
        for field in Fields(self.envelope_fields()) {
            match field? {
                (FRAME_TRACE_ID, Value::Bytes(t)) => {
                    trace_id = Some(text(t)?).filter(|t| !t.is_empty())
                }
                (FRAME_JOB_ID, Value::Bytes(j)) => job_id = Some(text(j)?),
                _ => return None,
            }
        }
        Some(StoredEvent {
            id: text(self.id_field_text())?,
            trace_id,
            job_id: job_id?,
            ts,
            body: body?,
        })
    }
}

impl<'a> StoredBody<'a> {
    /// The body in field `tag` of a `JobEvent`, whose fields are `fields`.
    fn read(tag: u32, fields: &'a [u8]) -> Option<StoredBody<'a>> {
        // Each field as it was given (the last time, if more than once, as protobuf reads it),
        // by field number.
        let mut strings = [None; 4];
        let mut doubles = [None; 2];
        for field in Fields(fields) {
            match field? {
                (n @ 1..=4, Value::Bytes(s)) => strings[n as usize - 1] = Some(text(s)?),
                (n @ 1..=2, Value::Double(d)) => doubles[n as usize - 1] = Some(d),
                _ => return None,
            }
        }
        // Whether the fields given are of the body's: its strings and its doubles.
        let shape_is = |string_fields: &[usize], double_fields: &[usize]| {
            (1..=4).all(|n| string_fields.contains(&n) || strings[n - 1].is_none())
                && (1..=2).all(|n| double_fields.contains(&n) || doubles[n - 1].is_none())
        };
        let optional = |s: Option<&'a str>| s.filter(|s| !s.is_empty());
        let [s1, s2, s3, s4] = strings;
        Some(match tag {
            EVENT_LOG if shape_is(&[1, 2], &[]) => StoredBody::Log {
                level: LogLevel::parse(s1.unwrap_or_default()).ok()?,
                message: s2.unwrap_or_default(),
            },
            EVENT_THOUGHT if shape_is(&[1], &[]) => StoredBody::Thought {
                text: s1.unwrap_or_default(),
            },
            EVENT_STATUS if shape_is(&[1, 2], &[]) => StoredBody::Status {
                phase: s1.unwrap_or_default(),
                message: optional(s2),
            },
            EVENT_METRIC if shape_is(&[1, 3], &[2]) => StoredBody::Metric {
                name: s1.unwrap_or_default(),
                value: doubles[1].unwrap_or_default(),
                unit: optional(s3),
            },
            EVENT_PROGRESS if shape_is(&[3, 4], &[1, 2]) => StoredBody::Progress {
                current: doubles[0].unwrap_or_default(),
                total: doubles[1],
                units: optional(s3),
                message: optional(s4),
            },
            _ => return None,
        })
    }
}

/// A field's value, of the wire types the bodies read here use.
enum Value<'a> {
    Bytes(&'a [u8]),
    Double(f64),
}

/// The fields of an encoded message, in order; an item is `None` where the encoding is not
/// one this reader takes, and nothing follows it.
///
/// Not `stored_frame`'s reader of top-level fields: made to take 64-bit fields too and used
/// here, it kept offsets and error messages this reader has no use for, and replay over
/// WebSocket fell 2 to 13% (BENCHMARKS.md).
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = Option<(u32, Value<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let field = self.field();
        if field.is_none() {
            self.0 = &[];
        }
        Some(field)
    }
}

impl<'a> Fields<'a> {
    fn field(&mut self) -> Option<(u32, Value<'a>)> {
        let mut rest = self.0;
        let (tag, wire_type) = decode_key(&mut rest).ok()?;
        let value = match wire_type {
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut rest).ok()?).ok()?;
                let value = rest.get(..len)?;
                rest = &rest[len..];
                Value::Bytes(value)
            }
            WireType::SixtyFourBit => {
                let (bytes, after) = rest.split_first_chunk::<8>()?;
                rest = after;
                Value::Double(f64::from_le_bytes(*bytes))
            }
            _ => return None,
        };
        self.0 = rest;
        Some((tag, value))
    }
}

/// The one field of `encoding`, if it has exactly one.
fn single(encoding: &[u8]) -> Option<(u32, Value<'_>)> {
    let mut fields = Fields(encoding);
    let only = fields.next()??;
    fields.next().is_none().then_some(only)
}

fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::{
        encoding::fixtures::{at, bodies},
        ids::{JobId, TraceId},
        proto,
        protocol::{
            event::EventBody,
            job_frame::{JobFrame, JobPayload},
        },
    };

    fn stored(body: EventBody, trace: bool) -> (JobFrame, StoredFrame) {
        let frame = JobFrame {
            job_id: JobId::new("job_1"),
            trace_id: trace.then(|| TraceId::new("4bf92f3577b34da6a3ce929d0e0e4736")),
            payload: JobPayload::Event {
                ts: at(1_764_000_123_456),
                body,
            },
        };
        let stored = StoredFrame::encode(&frame);
        (frame, stored)
    }

    #[test]
    fn the_common_bodies_read_in_place_as_the_domain_decoder_reads_them() {
        let mut kinds = std::collections::BTreeSet::new();
        for body in bodies() {
            for trace in [false, true] {
                let (frame, stored) = stored(body.clone(), trace);
                let (id, decoded) = stored.decode().expect("decodes");
                let in_place = stored.event();
                let JobPayload::Event {
                    ts,
                    body: decoded_body,
                } = &decoded.payload
                else {
                    panic!("an event");
                };
                let expected = match decoded_body {
                    EventBody::Log { level, message } => Some(StoredBody::Log {
                        level: *level,
                        message,
                    }),
                    EventBody::Thought { text } => Some(StoredBody::Thought { text }),
                    EventBody::Status {
                        phase,
                        message,
                        credential: None,
                    } => Some(StoredBody::Status {
                        phase,
                        message: message.as_deref(),
                    }),
                    EventBody::Metric {
                        name,
                        value,
                        unit,
                        dimensions: None,
                    } => Some(StoredBody::Metric {
                        name,
                        value: *value,
                        unit: unit.as_deref(),
                    }),
                    EventBody::Progress {
                        current,
                        total,
                        units,
                        message,
                    } => Some(StoredBody::Progress {
                        current: *current,
                        total: *total,
                        units: units.as_deref(),
                        message: message.as_deref(),
                    }),
                    _ => None,
                };
                let ts = ts.rfc3339();
                let expected = expected.map(|body| StoredEvent {
                    id: &id,
                    trace_id: decoded.trace_id.as_ref().map(TraceId::as_str),
                    job_id: decoded.job_id.as_str(),
                    ts: ts.as_str(),
                    body,
                });
                assert_eq!(in_place, expected, "{:?}", frame.payload);
                if let Some(event) = in_place {
                    assert_eq!(event.body.kind(), decoded_body.kind());
                    kinds.insert(event.body.kind());
                }
            }
        }
        assert_eq!(kinds.len(), 5, "every common body read in place: {kinds:?}");
    }

    /// `stored`'s encoding with its `job_event` replaced by `event`.
    fn with_event(stored: &StoredFrame, event: &proto::JobEvent) -> StoredFrame {
        let mut frame = proto::ServerFrame::decode(stored.as_bytes()).expect("decodes");
        frame.payload = Some(proto::server_frame::Payload::JobEvent(event.clone()));
        StoredFrame::from_bytes(frame.encode_to_vec()).expect("a stored frame")
    }

    #[test]
    fn a_frame_that_does_not_read_exactly_is_left_to_the_full_decoder() {
        let (_, stored) = stored(
            EventBody::Log {
                level: crate::protocol::event::LogLevel::Info,
                message: "hello".into(),
            },
            true,
        );
        assert!(stored.event().is_some());
        let proto::ServerFrame {
            payload: Some(proto::server_frame::Payload::JobEvent(event)),
            ..
        } = proto::ServerFrame::decode(stored.as_bytes()).expect("decodes")
        else {
            panic!("a job event");
        };
        let log = |level: &str| {
            Some(proto::job_event::Body::Log(proto::LogBody {
                level: level.into(),
                message: "hello".into(),
            }))
        };
        let variants = [
            // Timestamps this runtime does not write, though they may be RFC 3339.
            proto::JobEvent {
                ts: "2025-11-24T16:02:03.456+00:00".into(),
                ..event.clone()
            },
            proto::JobEvent {
                ts: "2025-11-24T16:02:03Z".into(),
                ..event.clone()
            },
            proto::JobEvent {
                ts: "2025-13-24T16:02:03.456Z".into(),
                ..event.clone()
            },
            proto::JobEvent {
                ts: String::new(),
                ..event.clone()
            },
            proto::JobEvent {
                body: log("loud"),
                ..event.clone()
            },
            proto::JobEvent {
                body: None,
                ..event.clone()
            },
        ];
        for variant in &variants {
            let frame = with_event(&stored, variant);
            assert_eq!(frame.event(), None, "{variant:?}");
        }
        // A body given twice (the protobuf decoder merges them) and an unknown field.
        let mut bytes = stored.as_bytes().to_vec();
        let mut twice = event.encode_to_vec();
        let body = proto::job_event::Body::Log(proto::LogBody {
            level: "info".into(),
            message: "again".into(),
        });
        let mut body_bytes = Vec::new();
        body.encode(&mut body_bytes);
        twice.extend_from_slice(&body_bytes);
        let mut unknown = event.encode_to_vec();
        unknown.extend_from_slice(&[9 << 3 | 2, 1, b'x']);
        for event in [twice, unknown] {
            let cut = stored.as_bytes().len() - stored.payload_field().len();
            bytes.truncate(cut);
            prost::encoding::encode_key(FRAME_JOB_EVENT, WireType::LengthDelimited, &mut bytes);
            prost::encoding::encode_varint(event.len() as u64, &mut bytes);
            bytes.extend_from_slice(&event);
            let frame = StoredFrame::from_bytes(bytes.clone()).expect("a stored frame");
            assert_eq!(frame.event(), None);
        }
    }
}
