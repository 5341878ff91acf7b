//! The §5 JSON envelope decoder, from raw bytes and from envelopes built field by field.
//!
//! Raw bytes mostly stop at the JSON parser, so a second target builds envelopes from the
//! parts the decoder looks at: a `type` (known, unknown or not a string), envelope fields of
//! every JSON kind, and payload fields named as the schemas name them, each holding a value
//! that fits its schema or one that does not. For envelopes whose every field fits, the
//! outcome is predicted exactly; for the rest the decoder must still answer consistently.

use bolero::{check, generator::TypeGenerator};
use serde_json::{json, Map, Value};

use crate::{
    encoding::json_value::check_depth,
    error::ErrorCode,
    protocol::client::{ClientMessage, Inbound, RejectedFrame},
    transport::json::decode,
};

use super::corpus;

const BYTES_TARGET: &str = "json_envelope_bytes";
const TARGET: &str = "json_envelope";

/// Every client message type the decoder knows, `session.bye` (the Python SDK's close) too.
const KINDS: [&str; 12] = [
    "session.hello",
    "session.resume",
    "session.ping",
    "session.pong",
    "session.ack",
    "session.list_jobs",
    "session.close",
    "session.bye",
    "job.submit",
    "job.cancel",
    "job.subscribe",
    "job.unsubscribe",
];

/// The payload fields each message type's schema reads, and which of them it requires.
fn schema(kind: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match kind {
        "session.hello" => (
            &[
                "auth",
                "capabilities",
                "resume",
                "resume_token",
                "last_event_seq",
                "session_id",
            ],
            &[],
        ),
        "session.resume" => (
            &[
                "session_id",
                "resume_token",
                "last_event_seq",
                "auth",
                "capabilities",
            ],
            &["resume_token"],
        ),
        "session.ping" => (&["nonce"], &[]),
        "session.ack" => (&["last_processed_seq"], &["last_processed_seq"]),
        "session.list_jobs" => (&["filter", "limit", "cursor"], &[]),
        "session.close" | "session.bye" => (&["reason"], &[]),
        "job.submit" => (
            &[
                "agent",
                "input",
                "lease_request",
                "lease_constraints",
                "idempotency_key",
                "max_runtime_sec",
            ],
            &["agent"],
        ),
        "job.cancel" | "job.unsubscribe" => (&["job_id", "reason"], &[]),
        "job.subscribe" => (&["job_id", "from_event_seq", "history"], &[]),
        // `session.pong` reads no payload at all.
        _ => (&[], &[]),
    }
}

/// Every payload field name some schema reads, and a value that fits it.
const FIELDS: [&str; 24] = [
    "auth",
    "capabilities",
    "resume",
    "resume_token",
    "last_event_seq",
    "session_id",
    "nonce",
    "last_processed_seq",
    "filter",
    "limit",
    "cursor",
    "reason",
    "agent",
    "input",
    "lease_request",
    "lease_constraints",
    "idempotency_key",
    "max_runtime_sec",
    "job_id",
    "from_event_seq",
    "history",
    "client",
    "status",
    "ping_nonce",
];

fn fitting(name: &str) -> Value {
    match name {
        "auth" => json!({"scheme": "bearer", "token": "alice-token"}),
        "capabilities" => json!({"encodings": ["json"], "features": ["ack", "heartbeat"]}),
        "resume" => json!({"session_id": "sess_1", "resume_token": "tok", "last_event_seq": 7}),
        "resume_token" => json!("tok"),
        "last_event_seq" | "last_processed_seq" | "from_event_seq" => json!(7),
        "session_id" => json!("sess_1"),
        "nonce" | "cursor" | "reason" | "idempotency_key" | "ping_nonce" => json!("n-1"),
        "filter" => {
            json!({"status": ["running"], "agent": "echo", "created_after": "2026-01-01T00:00:00Z"})
        }
        "limit" | "max_runtime_sec" => json!(30),
        "agent" => json!("echo@1.0.0"),
        "input" => json!({"text": "hi", "n": [1, 2.5, null, true]}),
        "lease_request" => json!({"fs.read": ["/a/**"], "cost.budget": ["USD:5.00"]}),
        "lease_constraints" => json!({"expires_at": "2030-01-01T00:00:00Z"}),
        "job_id" => json!("job_1"),
        "history" => json!(true),
        _ => json!({"name": "fuzz", "version": "0"}),
    }
}

#[derive(Clone, Debug, TypeGenerator)]
enum Leaf {
    Null,
    Bool(bool),
    Int(i64),
    Unsigned(u64),
    Float(f64),
    Word(u8),
    Text(String),
    EmptyArray,
    EmptyObject,
}

const WORDS: [&str; 8] = [
    "",
    "job_1",
    "job_2",
    "sess_1",
    "echo",
    "tok",
    "0",
    "\u{0}\u{ffff}",
];

impl Leaf {
    fn value(&self) -> Value {
        match self {
            Leaf::Null => Value::Null,
            Leaf::Bool(b) => json!(b),
            Leaf::Int(i) => json!(i),
            Leaf::Unsigned(u) => json!(u),
            Leaf::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Leaf::Word(w) => json!(WORDS[usize::from(*w) % WORDS.len()]),
            Leaf::Text(s) => json!(s),
            Leaf::EmptyArray => json!([]),
            Leaf::EmptyObject => json!({}),
        }
    }
}

#[derive(Clone, Debug, TypeGenerator)]
enum FieldValue {
    /// A value that fits the field's schema.
    Fitting,
    Leaf(Leaf),
    Array(#[generator(bolero::produce::<Vec<Leaf>>().with().len(0..8usize))] Vec<Leaf>),
    Object(
        #[generator(bolero::produce::<Vec<(u8, Leaf)>>().with().len(0..8usize))] Vec<(u8, Leaf)>,
    ),
    /// `depth` levels of arrays around a number: past serde_json's limit of 128, the parser
    /// must refuse it rather than overflow the stack.
    Nested(u8),
}

impl FieldValue {
    fn value(&self, name: &str) -> Value {
        match self {
            FieldValue::Fitting => fitting(name),
            FieldValue::Leaf(leaf) => leaf.value(),
            FieldValue::Array(items) => Value::Array(items.iter().map(Leaf::value).collect()),
            FieldValue::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(n, v)| (field_name(*n), v.value()))
                    .collect(),
            ),
            FieldValue::Nested(depth) => {
                (0..*depth).fold(json!(1), |inner, _| Value::Array(vec![inner]))
            }
        }
    }
}

fn field_name(n: u8) -> String {
    FIELDS[usize::from(n) % FIELDS.len()].to_owned()
}

/// An envelope field (`id`, `session_id`, ...).
#[derive(Clone, Debug, TypeGenerator)]
enum Field {
    Absent,
    Word(u8),
    Other(Leaf),
}

impl Field {
    fn value(&self) -> Option<Value> {
        match self {
            Field::Absent => None,
            Field::Word(w) => Some(json!(WORDS[usize::from(*w) % WORDS.len()])),
            Field::Other(leaf) => Some(leaf.value()),
        }
    }
}

#[derive(Clone, Debug, TypeGenerator)]
enum Kind {
    Known(u8),
    Unknown,
    Field(Field),
}

#[derive(Clone, Debug, TypeGenerator)]
enum Payload {
    Absent,
    NotObject(Leaf),
    /// Fields named by the schemas (index into [`FIELDS`]) or freely, with their values.
    Object(
        #[generator(bolero::produce::<Vec<(Name, FieldValue)>>().with().len(0..12usize))]
        Vec<(Name, FieldValue)>,
    ),
}

#[derive(Clone, Debug, TypeGenerator)]
enum Name {
    Schema(u8),
    Free(String),
}

#[derive(Clone, Debug, TypeGenerator)]
struct Envelope {
    kind: Kind,
    id: Field,
    session_id: Field,
    job_id: Field,
    trace_id: Field,
    arcp: Field,
    payload: Payload,
}

impl Envelope {
    fn to_json(&self) -> Map<String, Value> {
        let mut frame = Map::new();
        let mut put = |name: &str, value: Option<Value>| {
            if let Some(value) = value {
                frame.insert(name.to_owned(), value);
            }
        };
        put(
            "type",
            match &self.kind {
                Kind::Known(k) => Some(json!(KINDS[usize::from(*k) % KINDS.len()])),
                Kind::Unknown => Some(json!("job.explode")),
                Kind::Field(field) => field.value(),
            },
        );
        put("id", self.id.value());
        put("session_id", self.session_id.value());
        put("job_id", self.job_id.value());
        put("trace_id", self.trace_id.value());
        put("arcp", self.arcp.value());
        put(
            "payload",
            match &self.payload {
                Payload::Absent => None,
                Payload::NotObject(leaf) => Some(leaf.value()),
                Payload::Object(fields) => Some(Value::Object(
                    fields
                        .iter()
                        .map(|(name, value)| {
                            let name = match name {
                                Name::Schema(n) => field_name(*n),
                                Name::Free(s) => s.clone(),
                            };
                            let value = value.value(&name);
                            (name, value)
                        })
                        .collect(),
                )),
            },
        );
        frame
    }
}

/// What an envelope field means: a non-empty string, nothing (absent, null or empty), or a
/// type error.
fn envelope_text(frame: &Map<String, Value>, name: &str) -> Result<Option<String>, ()> {
    match frame.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok((!s.is_empty()).then(|| s.clone())),
        Some(_) => Err(()),
    }
}

/// The request id the decoder must report for an object frame, whatever else is wrong.
fn request_id(frame: &Map<String, Value>) -> Option<String> {
    match frame.get("id") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// The outcome of decoding `frame` where it can be told without the decoder: `Some(Ok(kind))`
/// or `Some(Err(()))`, or `None` where a payload field's value may or may not fit.
fn predict(
    frame: &Map<String, Value>,
    fits: &dyn Fn(&str) -> bool,
) -> Option<Result<&'static str, ()>> {
    // serde_json refuses text nested deeper than 128 containers, wherever the nesting is.
    match depth(&Value::Object(frame.clone())) {
        d if d > 130 => return Some(Err(())),
        d if d >= 126 => return None,
        _ => {}
    }
    let Ok(Some(kind)) = envelope_text(frame, "type") else {
        return Some(Err(()));
    };
    let fields_ok = ["session_id", "trace_id", "job_id"]
        .iter()
        .all(|name| envelope_text(frame, name).is_ok());
    if !fields_ok {
        return Some(Err(()));
    }
    let Some(&kind) = KINDS.iter().find(|k| **k == kind) else {
        return Some(Err(()));
    };
    let payload = match frame.get("payload") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p.clone(),
        Some(_) => return Some(Err(())),
    };
    let (reads, required) = schema(kind);
    // Fields the schema does not read are ignored, whatever they hold (§5).
    if !reads
        .iter()
        .all(|name| !payload.contains_key(*name) || fits(name))
    {
        return None;
    }
    if !required.iter().all(|name| payload.contains_key(*name)) {
        return Some(Err(()));
    }
    let scoped = matches!(kind, "job.cancel" | "job.subscribe" | "job.unsubscribe");
    if scoped {
        let payload_job = payload.get("job_id").and_then(Value::as_str);
        let envelope_job = envelope_text(frame, "job_id").ok().flatten();
        match (payload_job, envelope_job.as_deref()) {
            (Some(p), Some(e)) if p != e => return Some(Err(())),
            (None, None) => return Some(Err(())),
            _ => {}
        }
    }
    Some(Ok(kind))
}

/// How many containers deep `value` nests.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// `session.bye` is a close.
fn decoded_kind(kind: &str) -> &str {
    if kind == "session.bye" {
        "session.close"
    } else {
        kind
    }
}

/// What holds of every decode, whatever went in.
fn check_outcome(text: &str, outcome: &Result<Inbound, RejectedFrame>) {
    let object = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(frame)) => Some(frame),
        _ => None,
    };
    match (outcome, &object) {
        (Ok(inbound), Some(frame)) => {
            let kind = envelope_text(frame, "type").ok().flatten();
            assert_eq!(
                Some(inbound.message.type_name()),
                kind.as_deref().map(decoded_kind),
                "{text}"
            );
            assert_eq!(inbound.id, request_id(frame), "{text}");
            let text_of = |name| envelope_text(frame, name).ok().flatten();
            assert_eq!(
                inbound.session_id.as_ref().map(|s| s.as_str().to_owned()),
                text_of("session_id")
            );
            assert_eq!(
                inbound.trace_id.as_ref().map(|t| t.as_str().to_owned()),
                text_of("trace_id")
            );
            assert_eq!(
                inbound.job_id.as_ref().map(|j| j.as_str().to_owned()),
                text_of("job_id")
            );
            check_message(&inbound.message);
        }
        (Ok(inbound), None) => panic!("{text:?} is no JSON object but decoded to {inbound:?}"),
        (Err(rejected), frame) => {
            assert_eq!(rejected.error.code(), ErrorCode::InvalidRequest, "{text}");
            let expected = frame.as_ref().and_then(request_id);
            assert_eq!(rejected.request_id, expected, "{text}");
        }
    }
}

/// What a decoded message promises the session code.
fn check_message(message: &ClientMessage) {
    match message {
        ClientMessage::Submit(submit) => {
            assert!(!submit.agent.is_empty());
            assert_eq!(check_depth(&submit.input, "input"), Ok(()));
        }
        ClientMessage::Resume(hello) => assert!(hello.resume.is_some()),
        ClientMessage::ListJobs(list) => assert_ne!(list.limit, Some(0)),
        _ => {}
    }
}

fn check_text(text: &str) -> Result<Inbound, RejectedFrame> {
    let outcome = decode(text);
    check_outcome(text, &outcome);
    outcome
}

fn check_envelope(envelope: &Envelope) {
    let frame = envelope.to_json();
    let text = Value::Object(frame.clone()).to_string();
    let outcome = check_text(&text);
    let fitting_fields = |name: &str| {
        let payload = frame.get("payload").and_then(Value::as_object);
        payload.and_then(|p| p.get(name)) == Some(&fitting(name))
    };
    if let Some(expected) = predict(&frame, &fitting_fields) {
        let got = outcome
            .as_ref()
            .map(|inbound| inbound.message.type_name())
            .map_err(|_| ());
        assert_eq!(got, expected.map(decoded_kind), "{text}");
    }
}

#[test]
fn json_envelope_bytes() {
    // The seeds are what they claim: `bad-*` ones are refused, the others decode, and between
    // them they hold every message type.
    let mut kinds = std::collections::BTreeSet::new();
    for (name, bytes) in corpus(BYTES_TARGET) {
        let text = std::str::from_utf8(&bytes).expect("JSON seeds are UTF-8");
        match (name.starts_with("bad-"), check_text(text)) {
            (false, Ok(inbound)) => {
                let frame: Value = serde_json::from_str(text).expect("a JSON seed");
                kinds.insert(frame["type"].as_str().unwrap_or_default().to_owned());
                check_message(&inbound.message);
            }
            (true, Err(_)) => {}
            (bad, outcome) => panic!("seed {name} (bad: {bad}) decoded to {outcome:?}"),
        }
    }
    let missing: Vec<_> = KINDS.iter().filter(|k| !kinds.contains(**k)).collect();
    assert!(missing.is_empty(), "no valid seed of {missing:?}");

    check!(name = BYTES_TARGET).for_each(|bytes: &[u8]| {
        if let Ok(text) = std::str::from_utf8(bytes) {
            let _ = check_text(text);
        }
        let _ = check_text(&String::from_utf8_lossy(bytes));
    });
}

#[test]
fn json_envelope() {
    check!(name = TARGET)
        .with_type::<Envelope>()
        .for_each(check_envelope);
}
