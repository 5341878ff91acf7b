//! gRPC client frames: bytes to `proto::ClientFrame` (prost) to the domain
//! (`convert::inbound`), from raw bytes and from frames built field by field.
//!
//! Built frames must survive their encoding unchanged, convert exactly when the schema's
//! rules say they should (a payload, an agent, a resume token, string lease patterns, one job
//! reference), and carry their fields into the domain message; free-form values must come
//! back from JSON as they went in.

use std::collections::HashMap;

use bolero::{check, generator::TypeGenerator};
use prost::Message;
use prost_types::{value::Kind as ValueKind, ListValue, Struct, Value};

use crate::{
    encoding::json_value::{check_depth, to_json, to_value, MAX_JSON_DEPTH},
    error::ErrorCode,
    proto::{self, client_frame::Payload as In},
    protocol::client::{ClientMessage, Inbound, RejectedFrame},
    transport::grpc::convert::inbound,
};

use super::{corpus, seed_dir};

const BYTES_TARGET: &str = "client_frame_bytes";
const TARGET: &str = "client_frame";

#[derive(Clone, Debug, TypeGenerator)]
enum Text {
    Empty,
    Word(u8),
    Free(String),
}

const WORDS: [&str; 6] = ["job_1", "job_2", "sess_1", "echo", "fs.read", "/a/**"];

impl Text {
    fn text(&self) -> String {
        match self {
            Text::Empty => String::new(),
            Text::Word(w) => WORDS[usize::from(*w) % WORDS.len()].to_owned(),
            Text::Free(s) => s.clone(),
        }
    }
}

#[derive(Clone, Debug, TypeGenerator)]
enum Leaf {
    Null,
    Bool(bool),
    Number(i32),
    Float(f64),
    Text(Text),
}

impl Leaf {
    fn value(&self) -> Value {
        let kind = match self {
            Leaf::Null => ValueKind::NullValue(0),
            Leaf::Bool(b) => ValueKind::BoolValue(*b),
            Leaf::Number(n) => ValueKind::NumberValue(f64::from(*n)),
            // NaN is the one number no decoder can give back equal; raw bytes cover it.
            Leaf::Float(f) if f.is_nan() => ValueKind::NullValue(0),
            Leaf::Float(f) => ValueKind::NumberValue(*f),
            Leaf::Text(t) => ValueKind::StringValue(t.text()),
        };
        Value { kind: Some(kind) }
    }
}

#[derive(Clone, Debug, TypeGenerator)]
enum ValueSpec {
    Leaf(Leaf),
    List(#[generator(bolero::produce::<Vec<Leaf>>().with().len(0..8usize))] Vec<Leaf>),
    Struct(
        #[generator(bolero::produce::<Vec<(Text, Leaf)>>().with().len(0..8usize))]
        Vec<(Text, Leaf)>,
    ),
    /// Lists `depth` deep around a number.
    Nested(u8),
}

impl ValueSpec {
    fn value(&self) -> Value {
        let kind = match self {
            ValueSpec::Leaf(leaf) => return leaf.value(),
            ValueSpec::List(items) => ValueKind::ListValue(ListValue {
                values: items.iter().map(Leaf::value).collect(),
            }),
            ValueSpec::Struct(fields) => ValueKind::StructValue(Struct {
                fields: fields.iter().map(|(k, v)| (k.text(), v.value())).collect(),
            }),
            ValueSpec::Nested(depth) => {
                return (0..*depth).fold(Leaf::Number(1).value(), |inner, _| Value {
                    kind: Some(ValueKind::ListValue(ListValue {
                        values: vec![inner],
                    })),
                })
            }
        };
        Value { kind: Some(kind) }
    }

    fn is_string(&self) -> bool {
        matches!(self, ValueSpec::Leaf(Leaf::Text(_)))
    }
}

#[derive(Clone, Debug, TypeGenerator)]
struct ResumeSpec {
    session_id: Text,
    token: Text,
    last: u64,
}

#[derive(Clone, Debug, TypeGenerator)]
enum PayloadSpec {
    Hello {
        token: Option<Text>,
        #[generator(bolero::produce::<Option<Vec<Text>>>().with().value(bolero::produce::<Vec<Text>>().with().len(0..6usize)))]
        features: Option<Vec<Text>>,
        resume: Option<ResumeSpec>,
    },
    Resume {
        resume: ResumeSpec,
        token: Option<Text>,
    },
    Ping(Text),
    Pong,
    Ack(u64),
    ListJobs {
        #[generator(bolero::produce::<Vec<Text>>().with().len(0..4usize))]
        status: Vec<Text>,
        agent: Text,
        limit: u32,
        cursor: Text,
    },
    Close(Text),
    Submit {
        agent: Text,
        input: Option<ValueSpec>,
        #[generator(bolero::produce::<Vec<(Text, Vec<ValueSpec>)>>().with().len(0..4usize).values((bolero::produce::<Text>(), bolero::produce::<Vec<ValueSpec>>().with().len(0..4usize))))]
        lease: Vec<(Text, Vec<ValueSpec>)>,
        expires_at: Option<Text>,
        key: Text,
        max_runtime_sec: u32,
    },
    Cancel {
        job_id: Text,
        reason: Text,
    },
    Subscribe {
        job_id: Text,
        from: Option<u64>,
        history: bool,
    },
    Unsubscribe(Text),
}

#[derive(Clone, Debug, TypeGenerator)]
struct FrameSpec {
    id: Text,
    session_id: Text,
    trace_id: Text,
    job_id: Text,
    event_seq: u64,
    payload: Option<PayloadSpec>,
}

fn auth(token: &Option<Text>) -> Option<proto::Auth> {
    token.as_ref().map(|t| proto::Auth {
        scheme: "bearer".into(),
        token: t.text(),
    })
}

fn resume_info(r: &ResumeSpec) -> proto::ResumeInfo {
    proto::ResumeInfo {
        session_id: r.session_id.text(),
        resume_token: r.token.text(),
        last_event_seq: r.last,
    }
}

impl FrameSpec {
    fn frame(&self) -> proto::ClientFrame {
        proto::ClientFrame {
            arcp: "1.1".into(),
            id: self.id.text(),
            session_id: self.session_id.text(),
            trace_id: self.trace_id.text(),
            job_id: self.job_id.text(),
            event_seq: self.event_seq,
            payload: self.payload.as_ref().map(payload),
        }
    }

    /// Whether the frame converts, by the schema's rules (`convert` module doc).
    fn converts(&self) -> bool {
        let Some(spec) = &self.payload else {
            return false;
        };
        let envelope_job = self.job_id.text();
        let job_ref = |payload_job: &Text| {
            let p = payload_job.text();
            match (p.is_empty(), envelope_job.is_empty()) {
                (true, true) => false,
                (false, false) => p == envelope_job,
                _ => true,
            }
        };
        match spec {
            PayloadSpec::Hello { resume, .. } => {
                resume.as_ref().is_none_or(|r| !r.token.text().is_empty())
            }
            PayloadSpec::Resume { resume, .. } => !resume.token.text().is_empty(),
            PayloadSpec::Submit {
                agent,
                lease,
                input,
                ..
            } => {
                let too_deep =
                    matches!(input, Some(ValueSpec::Nested(d)) if usize::from(*d) > MAX_JSON_DEPTH);
                // A namespace named twice is a map entry written twice: the last one counts.
                let by_namespace: HashMap<String, &Vec<ValueSpec>> = lease
                    .iter()
                    .map(|(ns, values)| (ns.text(), values))
                    .collect();
                !too_deep
                    && !agent.text().is_empty()
                    && by_namespace
                        .values()
                        .all(|values| values.iter().all(ValueSpec::is_string))
            }
            PayloadSpec::Cancel { job_id, .. }
            | PayloadSpec::Subscribe { job_id, .. }
            | PayloadSpec::Unsubscribe(job_id) => job_ref(job_id),
            _ => true,
        }
    }

    /// The domain message type the payload becomes.
    fn type_name(&self) -> Option<&'static str> {
        Some(match self.payload.as_ref()? {
            PayloadSpec::Hello { .. } => "session.hello",
            PayloadSpec::Resume { .. } => "session.resume",
            PayloadSpec::Ping(_) => "session.ping",
            PayloadSpec::Pong => "session.pong",
            PayloadSpec::Ack(_) => "session.ack",
            PayloadSpec::ListJobs { .. } => "session.list_jobs",
            PayloadSpec::Close(_) => "session.close",
            PayloadSpec::Submit { .. } => "job.submit",
            PayloadSpec::Cancel { .. } => "job.cancel",
            PayloadSpec::Subscribe { .. } => "job.subscribe",
            PayloadSpec::Unsubscribe(_) => "job.unsubscribe",
        })
    }
}

fn payload(spec: &PayloadSpec) -> In {
    match spec {
        PayloadSpec::Hello {
            token,
            features,
            resume,
        } => In::SessionHello(proto::SessionHello {
            client: Some(proto::ClientInfo {
                name: "fuzz".into(),
                version: "0".into(),
            }),
            auth: auth(token),
            capabilities: features.as_ref().map(|f| proto::Capabilities {
                encodings: vec!["protobuf".into()],
                features: f.iter().map(Text::text).collect(),
                agents: vec![],
            }),
            resume: resume.as_ref().map(resume_info),
        }),
        PayloadSpec::Resume { resume, token } => In::SessionResume(proto::SessionResume {
            session_id: resume.session_id.text(),
            resume_token: resume.token.text(),
            last_event_seq: resume.last,
            client: None,
            auth: auth(token),
            capabilities: None,
        }),
        PayloadSpec::Ping(nonce) => In::SessionPing(proto::SessionPing {
            nonce: nonce.text(),
            sent_at: String::new(),
        }),
        PayloadSpec::Pong => In::SessionPong(proto::SessionPong::default()),
        PayloadSpec::Ack(seq) => In::SessionAck(proto::SessionAck {
            last_processed_seq: *seq,
        }),
        PayloadSpec::ListJobs {
            status,
            agent,
            limit,
            cursor,
        } => In::SessionListJobs(proto::SessionListJobs {
            filter: Some(proto::JobFilter {
                status: status.iter().map(Text::text).collect(),
                agent: agent.text(),
                created_after: String::new(),
            }),
            limit: *limit,
            cursor: cursor.text(),
        }),
        PayloadSpec::Close(reason) => In::SessionClose(proto::SessionClose {
            reason: reason.text(),
        }),
        PayloadSpec::Submit {
            agent,
            input,
            lease,
            expires_at,
            key,
            max_runtime_sec,
        } => In::JobSubmit(proto::JobSubmit {
            agent: agent.text(),
            input: input.as_ref().map(ValueSpec::value),
            lease_request: lease
                .iter()
                .map(|(ns, values)| {
                    let values = values.iter().map(ValueSpec::value).collect();
                    (ns.text(), ListValue { values })
                })
                .collect::<HashMap<_, _>>(),
            lease_constraints: expires_at.as_ref().map(|at| proto::LeaseConstraints {
                expires_at: at.text(),
            }),
            idempotency_key: key.text(),
            max_runtime_sec: *max_runtime_sec,
            ..Default::default()
        }),
        PayloadSpec::Cancel { job_id, reason } => In::JobCancel(proto::JobCancel {
            job_id: job_id.text(),
            reason: reason.text(),
        }),
        PayloadSpec::Subscribe {
            job_id,
            from,
            history,
        } => In::JobSubscribe(proto::JobSubscribe {
            job_id: job_id.text(),
            from_event_seq: *from,
            history: *history,
        }),
        PayloadSpec::Unsubscribe(job_id) => In::JobUnsubscribe(proto::JobUnsubscribe {
            job_id: job_id.text(),
        }),
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// What holds of every conversion, whatever went in.
fn check_outcome(frame: &proto::ClientFrame, outcome: &Result<Inbound, RejectedFrame>) {
    match outcome {
        Ok(inbound) => {
            assert_eq!(inbound.id.as_deref(), non_empty(&frame.id));
            let session = inbound.session_id.as_ref().map(|s| s.as_str());
            assert_eq!(session, non_empty(&frame.session_id));
            let trace = inbound.trace_id.as_ref().map(|t| t.as_str());
            assert_eq!(trace, non_empty(&frame.trace_id));
            let job = inbound.job_id.as_ref().map(|j| j.as_str());
            assert_eq!(job, non_empty(&frame.job_id));
            check_message(frame, &inbound.message);
        }
        Err(rejected) => {
            assert_eq!(rejected.error.code(), ErrorCode::InvalidRequest);
            assert_eq!(rejected.request_id.as_deref(), non_empty(&frame.id));
        }
    }
}

/// The payload's fields, carried into the message.
fn check_message(frame: &proto::ClientFrame, message: &ClientMessage) {
    match (&frame.payload, message) {
        (Some(In::SessionAck(ack)), ClientMessage::Ack { last_processed_seq }) => {
            assert_eq!(last_processed_seq.get(), ack.last_processed_seq)
        }
        (Some(In::JobSubmit(s)), ClientMessage::Submit(submit)) => {
            assert_eq!(submit.agent, s.agent);
            assert!(!submit.agent.is_empty());
            assert_eq!(
                submit.idempotency_key.as_deref(),
                non_empty(&s.idempotency_key)
            );
            assert_eq!(
                submit.max_runtime_sec,
                (s.max_runtime_sec > 0).then_some(s.max_runtime_sec)
            );
            assert_eq!(submit.lease_request.len(), s.lease_request.len());
            assert_eq!(check_depth(&submit.input, "input"), Ok(()));
            // Free-form input comes back from JSON as it went in, but for the null a missing
            // value stands for.
            let input = s.input.clone().unwrap_or(Value {
                kind: Some(ValueKind::NullValue(0)),
            });
            if !has_no_json_form(&input) && input.kind.is_some() {
                assert_eq!(to_value(&submit.input), input);
            }
        }
        (Some(In::SessionResume(r)), ClientMessage::Resume(hello)) => {
            let resume = hello.resume.as_ref().expect("a resume carries coordinates");
            assert_eq!(resume.token, r.resume_token);
            assert_eq!(resume.last_event_seq.get(), r.last_event_seq);
        }
        (Some(In::JobCancel(_)), ClientMessage::Cancel { job_id, .. })
        | (Some(In::JobUnsubscribe(_)), ClientMessage::Unsubscribe { job_id }) => {
            assert!(!job_id.as_str().is_empty())
        }
        (Some(In::JobSubscribe(sub)), ClientMessage::Subscribe(s)) => {
            assert!(!s.job_id.as_str().is_empty());
            assert_eq!(s.from_event_seq.map(|e| e.get()), sub.from_event_seq);
            assert_eq!(s.history, sub.history);
        }
        (Some(In::SessionListJobs(list)), ClientMessage::ListJobs(l)) => {
            assert_eq!(l.limit, (list.limit > 0).then_some(list.limit))
        }
        (Some(_), m) => {
            let kind = frame.payload.as_ref().map(payload_name);
            assert_eq!(kind, Some(m.type_name()), "{frame:?}");
        }
        (None, m) => panic!("a frame without payload became {m:?}"),
    }
}

fn payload_name(p: &In) -> &'static str {
    match p {
        In::SessionHello(_) => "session.hello",
        In::SessionResume(_) => "session.resume",
        In::SessionPing(_) => "session.ping",
        In::SessionPong(_) => "session.pong",
        In::SessionAck(_) => "session.ack",
        In::SessionListJobs(_) => "session.list_jobs",
        In::SessionClose(_) => "session.close",
        In::JobSubmit(_) => "job.submit",
        In::JobCancel(_) => "job.cancel",
        In::JobSubscribe(_) => "job.subscribe",
        In::JobUnsubscribe(_) => "job.unsubscribe",
    }
}

fn has_no_json_form(v: &Value) -> bool {
    match &v.kind {
        // JSON has no NaN or infinity: they become null.
        Some(ValueKind::NumberValue(n)) => !n.is_finite(),
        Some(ValueKind::ListValue(l)) => l.values.iter().any(has_no_json_form),
        Some(ValueKind::StructValue(s)) => s.fields.values().any(has_no_json_form),
        // A null of another enum value reads back as the null, `NullValue(0)`.
        Some(ValueKind::NullValue(n)) => *n != 0,
        Some(_) => false,
        None => true,
    }
}

fn check_bytes(bytes: &[u8]) -> Option<Result<Inbound, RejectedFrame>> {
    let frame = proto::ClientFrame::decode(bytes).ok()?;
    // What decoded encodes to bytes that decode to the same frame.
    let again = proto::ClientFrame::decode(frame.encode_to_vec().as_slice())
        .expect("an encoded frame decodes");
    let outcome = inbound(frame.clone());
    check_outcome(&frame, &outcome);
    let kind = |o: &Result<Inbound, RejectedFrame>| {
        o.as_ref()
            .map(|i| i.message.type_name())
            .map_err(|r| r.error.code())
    };
    assert_eq!(kind(&inbound(again)), kind(&outcome));
    Some(outcome)
}

fn check_spec(spec: &FrameSpec) {
    let frame = spec.frame();
    let bytes = frame.encode_to_vec();
    match proto::ClientFrame::decode(bytes.as_slice()) {
        Ok(decoded) => assert_eq!(decoded, frame),
        // prost refuses messages nested more than 100 deep: only a deeply nested value does.
        Err(e) => {
            assert!(e.to_string().contains("recursion limit"), "{e}: {frame:?}");
            return;
        }
    }
    let outcome = check_bytes(&bytes).expect("decoded above");
    let got = outcome.as_ref().map(|i| i.message.type_name()).ok();
    let want = spec.converts().then(|| spec.type_name()).flatten();
    assert_eq!(got, want, "{frame:?}");
}

/// The valid seed frames: one per payload, the richer ones twice.
fn valid_seeds() -> Vec<(&'static str, proto::ClientFrame)> {
    let frame = |id: &str, job_id: &str, payload: In| proto::ClientFrame {
        arcp: "1.1".into(),
        id: id.into(),
        trace_id: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        job_id: job_id.into(),
        payload: Some(payload),
        ..Default::default()
    };
    let spec = |s: PayloadSpec| payload(&s);
    let word = |w: &str| Text::Free(w.to_owned());
    vec![
        (
            "hello",
            frame(
                "c1",
                "",
                spec(PayloadSpec::Hello {
                    token: Some(word("alice-token")),
                    features: Some(vec![word("ack"), word("heartbeat"), word("subscribe")]),
                    resume: None,
                }),
            ),
        ),
        (
            "hello-resume",
            frame(
                "c1",
                "",
                spec(PayloadSpec::Hello {
                    token: Some(word("alice-token")),
                    features: None,
                    resume: Some(ResumeSpec {
                        session_id: word("sess_1"),
                        token: word("rt_sess_1.secret"),
                        last: 41,
                    }),
                }),
            ),
        ),
        (
            "resume",
            frame(
                "c1",
                "",
                spec(PayloadSpec::Resume {
                    resume: ResumeSpec {
                        session_id: word("sess_1"),
                        token: word("rt_sess_1.secret"),
                        last: 0,
                    },
                    token: Some(word("alice-token")),
                }),
            ),
        ),
        (
            "ping",
            frame("c2", "", spec(PayloadSpec::Ping(word("n-1")))),
        ),
        ("pong", frame("c3", "", spec(PayloadSpec::Pong))),
        ("ack", frame("c4", "", spec(PayloadSpec::Ack(u64::MAX)))),
        (
            "list-jobs",
            frame(
                "c5",
                "",
                spec(PayloadSpec::ListJobs {
                    status: vec![word("running"), word("success")],
                    agent: word("echo@1.0.0"),
                    limit: 10,
                    cursor: word("c_2"),
                }),
            ),
        ),
        (
            "close",
            frame("c6", "", spec(PayloadSpec::Close(word("bye")))),
        ),
        (
            "submit",
            frame(
                "c7",
                "",
                spec(PayloadSpec::Submit {
                    agent: word("echo"),
                    input: Some(ValueSpec::Struct(vec![
                        (word("text"), Leaf::Text(word("hi"))),
                        (word("n"), Leaf::Float(2.5)),
                        (word("big"), Leaf::Float(9_007_199_254_740_993.0)),
                    ])),
                    lease: vec![],
                    expires_at: None,
                    key: Text::Empty,
                    max_runtime_sec: 0,
                }),
            ),
        ),
        (
            "submit-leased",
            frame(
                "c8",
                "",
                spec(PayloadSpec::Submit {
                    agent: word("spender@1.0.0"),
                    input: Some(ValueSpec::List(vec![Leaf::Null, Leaf::Bool(true)])),
                    lease: vec![
                        (
                            word("fs.read"),
                            vec![ValueSpec::Leaf(Leaf::Text(word("/a/**")))],
                        ),
                        (
                            word("cost.budget"),
                            vec![ValueSpec::Leaf(Leaf::Text(word("USD:5.00")))],
                        ),
                        (word("model.use"), vec![]),
                    ],
                    expires_at: Some(word("2030-01-01T00:00:00Z")),
                    key: word("key-1"),
                    max_runtime_sec: 30,
                }),
            ),
        ),
        (
            "submit-input-at-depth-limit",
            frame(
                "c7",
                "",
                spec(PayloadSpec::Submit {
                    agent: word("echo"),
                    input: Some(ValueSpec::Nested(MAX_JSON_DEPTH as u8)),
                    lease: vec![],
                    expires_at: None,
                    key: Text::Empty,
                    max_runtime_sec: 0,
                }),
            ),
        ),
        (
            "cancel",
            frame(
                "c9",
                "",
                spec(PayloadSpec::Cancel {
                    job_id: word("job_1"),
                    reason: word("enough"),
                }),
            ),
        ),
        (
            "cancel-envelope-job",
            frame(
                "c10",
                "job_1",
                spec(PayloadSpec::Cancel {
                    job_id: Text::Empty,
                    reason: Text::Empty,
                }),
            ),
        ),
        (
            "subscribe",
            frame(
                "c11",
                "",
                spec(PayloadSpec::Subscribe {
                    job_id: word("job_1"),
                    from: Some(3),
                    history: true,
                }),
            ),
        ),
        (
            "unsubscribe",
            frame(
                "c12",
                "job_1",
                spec(PayloadSpec::Unsubscribe(word("job_1"))),
            ),
        ),
    ]
}

/// Seeds the conversion refuses or prost cannot decode, as bytes.
fn bad_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let submit = |input: Value| proto::ClientFrame {
        id: "c1".into(),
        payload: Some(In::JobSubmit(proto::JobSubmit {
            agent: "echo".into(),
            input: Some(input),
            ..Default::default()
        })),
        ..Default::default()
    };
    let deep = ValueSpec::Nested(120).value();
    let too_deep = ValueSpec::Nested(MAX_JSON_DEPTH as u8 + 1).value();
    let mut truncated = valid_seeds()[0].1.encode_to_vec();
    truncated.truncate(truncated.len() / 2);
    vec![
        ("bad-empty", Vec::new()),
        (
            "bad-no-payload",
            proto::ClientFrame {
                id: "c1".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("bad-truncated", truncated),
        ("bad-deep-input", submit(deep).encode_to_vec()),
        ("bad-input-too-deep", submit(too_deep).encode_to_vec()),
        // Field 2 (id) as a length far past the end.
        (
            "bad-long-length",
            vec![0x12, 0xff, 0xff, 0xff, 0xff, 0x0f, b'x'],
        ),
        // Field 10 (session_hello) with the varint wire type.
        ("bad-wire-type", vec![0x50, 0x01]),
        (
            "bad-lease-number",
            proto::ClientFrame {
                payload: Some(In::JobSubmit(proto::JobSubmit {
                    agent: "echo".into(),
                    lease_request: HashMap::from([(
                        "fs.read".to_owned(),
                        ListValue {
                            values: vec![Leaf::Number(5).value()],
                        },
                    )]),
                    ..Default::default()
                })),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    ]
}

/// Writes the generated seeds when `ARCP_BLESS_CORPUS` is set; otherwise checks that the
/// committed ones are what this file generates, so the corpus cannot drift from the code.
#[test]
fn client_frame_seeds_are_current() {
    let dir = seed_dir(BYTES_TARGET).join("corpus");
    let bless = std::env::var_os("ARCP_BLESS_CORPUS").is_some();
    let valid = valid_seeds()
        .into_iter()
        .map(|(n, f)| (n, f.encode_to_vec()));
    for (name, bytes) in valid.chain(bad_seeds()) {
        let path = dir.join(format!("{name}.pb"));
        if bless {
            std::fs::create_dir_all(&dir).expect("the corpus directory");
            std::fs::write(&path, &bytes).expect("a written seed");
            continue;
        }
        let committed = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (ARCP_BLESS_CORPUS=1 writes it)", path.display()));
        // Maps encode in any order, so compare what the bytes mean.
        assert_eq!(
            proto::ClientFrame::decode(committed.as_slice()).ok(),
            proto::ClientFrame::decode(bytes.as_slice()).ok(),
            "{} is stale (ARCP_BLESS_CORPUS=1 rewrites it)",
            path.display()
        );
        if proto::ClientFrame::decode(bytes.as_slice()).is_err() {
            assert_eq!(committed, bytes, "{} is stale", path.display());
        }
    }
}

#[test]
fn client_frame_bytes() {
    // The seeds are what they claim: `bad-*` ones are refused by prost or by the conversion,
    // the others convert, and between them they hold every payload.
    let mut kinds = std::collections::BTreeSet::new();
    for (name, bytes) in corpus(BYTES_TARGET) {
        match (name.starts_with("bad-"), check_bytes(&bytes)) {
            (false, Some(Ok(inbound))) => {
                kinds.insert(inbound.message.type_name());
            }
            (true, None | Some(Err(_))) => {}
            (bad, outcome) => panic!("seed {name} (bad: {bad}) converted to {outcome:?}"),
        }
    }
    assert_eq!(kinds.len(), 11, "every payload has a valid seed: {kinds:?}");

    check!(name = BYTES_TARGET).for_each(|bytes: &[u8]| {
        check_bytes(bytes);
    });
}

#[test]
fn client_frame() {
    check!(name = TARGET)
        .with_type::<FrameSpec>()
        .for_each(check_spec);
}

/// JSON values as the job path carries them: through `google.protobuf.Value` and back.
#[test]
fn json_values_round_trip_through_protobuf() {
    check!(name = "json_value")
        .with_type::<ValueSpec>()
        .for_each(|spec: &ValueSpec| {
            let value = spec.value();
            if has_no_json_form(&value) {
                return;
            }
            assert_eq!(to_value(&to_json(value.clone())), value);
        });
}
