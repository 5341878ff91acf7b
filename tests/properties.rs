//! Exact delivery as properties: whatever a client does, it gets every event of its session
//! exactly once, in order, or is told `RESUME_WINDOW_EXPIRED`; never a gap, never a duplicate.
//!
//! Three models, each checked against the real code on random sequences of operations that
//! `proptest` shrinks to the shortest failing one:
//!
//! - [`the_log_and_its_cursors_follow_the_model`]: one session's `MemoryEventLog` and cursors
//!   on it, under appends past a small frame bound, early releases by current and stale
//!   attachments, fences and reads from anywhere.
//! - [`the_resume_registry_follows_the_model`]: tokens issued, checked, rotated by current
//!   and stale attachments, windows started and swept.
//! - [`a_client_gets_every_event_once_in_order_or_is_told_the_window_expired`]: the whole
//!   session code in process, through `Gateway::connect` with no network, on one thread or
//!   two: a job emitting while its client reads some frames, acknowledges, drops the stream,
//!   resumes from where it was or from further back, or takes the session over from a live
//!   stream.

mod common;
mod contract;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use arcp_gateway::{
    agent::AgentRegistry,
    auth::Authenticator,
    config::GatewayConfig,
    error::ErrorCode,
    gateway::ConnectInfo,
    ids::{Epoch, EventSeq, Principal, SessionId},
    protocol::{
        client::{ClientMessage, Hello, Inbound, JobSubmit, RejectedFrame, ResumeRequest},
        control::ControlMessage,
        event::EventBody,
        job_frame::JobPayload,
    },
    session::output::{Outbound, OutboundItem, StreamEnd},
    store::{
        log::{cursor::LogCursor, memory::MemoryEventLog, EventLog, LogBounds, SessionLog, Wait},
        resume::{memory::MemoryResumeRegistry, ResumeRegistry},
        session::{Flow, SessionStore},
        MemoryStores,
    },
    ArcpError, Gateway,
};
use common::Pacer;
use futures::{stream::BoxStream, StreamExt};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

/// Runs `test` on `cases` inputs from `strategy`, shrinking a failure to its smallest form.
/// `PROPTEST_CASES` overrides the count for a longer run.
fn run<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(cases);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    if let Err(failure) = TestRunner::new(config).run(&strategy, test) {
        panic!("{failure}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A guard against hangs, not a timing assertion: everything waited for here is due at once.
const DEADLINE: Duration = Duration::from_secs(10);

/// Waits until `done` holds, letting the runtime's other tasks run in between.
async fn until(what: impl Fn() -> String, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    let mut spins = 0u32;
    while !done().await {
        assert!(start.elapsed() < DEADLINE, "{} within {DEADLINE:?}", what());
        spins += 1;
        if spins < 64 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The log and its cursors
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum LogOp {
    Append(u8),
    /// A release through `back` frames before the newest, by the attachment `epoch`.
    Release {
        back: u8,
        epoch: u8,
    },
    Fence(u8),
    /// A read of at most `max` frames after `back` frames before the newest.
    Read {
        back: u8,
        max: u8,
    },
    /// A new cursor `back` frames before the newest.
    Cursor(u8),
    /// The next batch of cursor `which`, when it has frames to give (it would wait otherwise).
    Next(u8),
}

fn log_op() -> impl Strategy<Value = LogOp> {
    prop_oneof![
        3 => (1..6u8).prop_map(LogOp::Append),
        1 => (0..8u8, 0..4u8).prop_map(|(back, epoch)| LogOp::Release { back, epoch }),
        1 => (0..4u8).prop_map(LogOp::Fence),
        2 => (0..10u8, 1..6u8).prop_map(|(back, max)| LogOp::Read { back, max }),
        1 => (0..10u8).prop_map(LogOp::Cursor),
        2 => any::<u8>().prop_map(LogOp::Next),
    ]
}

/// What the log must hold: frames `evicted_through + 1 ..= newest`.
struct LogModel {
    bound: u64,
    newest: u64,
    evicted_through: u64,
    fence: u64,
}

impl LogModel {
    fn bounds(&self) -> LogBounds {
        LogBounds {
            evicted_through: EventSeq(self.evicted_through),
            newest: EventSeq(self.newest),
        }
    }

    /// What a read of at most `max` frames after `after` returns.
    fn read(&self, after: u64, max: u64) -> Result<Vec<u64>, ErrorCode> {
        if after < self.evicted_through {
            return Err(ErrorCode::ResumeWindowExpired);
        }
        Ok((after + 1..=self.newest).take(max as usize).collect())
    }
}

fn seqs_and_texts(entries: &[arcp_gateway::store::log::LogEntry]) -> Vec<u64> {
    for entry in entries {
        assert_eq!(
            contract::text(&entry.frame),
            entry.seq.get().to_string(),
            "frame {} holds what was appended as it",
            entry.seq
        );
    }
    entries.iter().map(|e| e.seq.get()).collect()
}

async fn check_log(bound: u64, ops: Vec<LogOp>) {
    let logs = MemoryEventLog::new(bound as usize);
    let log = logs
        .create(&SessionId::new("sess_model"))
        .await
        .expect("a log");
    let mut model = LogModel {
        bound,
        newest: 0,
        evicted_through: 0,
        fence: 0,
    };
    let mut cursors: Vec<(LogCursor, u64)> = Vec::new();
    for op in ops {
        match op {
            LogOp::Append(n) => {
                for _ in 0..n {
                    let seq = log
                        .append(contract::frame(&(model.newest + 1).to_string()))
                        .await
                        .expect("appends");
                    model.newest += 1;
                    assert_eq!(seq.get(), model.newest);
                    if model.newest - model.evicted_through > model.bound {
                        model.evicted_through = model.newest - model.bound;
                    }
                }
            }
            LogOp::Release { back, epoch } => {
                let through = model.newest.saturating_sub(u64::from(back));
                let epoch = u64::from(epoch);
                log.release_through(EventSeq(through), Epoch(epoch))
                    .await
                    .expect("releases");
                if epoch >= model.fence {
                    model.evicted_through = model.evicted_through.max(through);
                }
            }
            LogOp::Fence(epoch) => {
                log.fence(Epoch(u64::from(epoch))).await.expect("fences");
                model.fence = model.fence.max(u64::from(epoch));
            }
            LogOp::Read { back, max } => {
                let after = model.newest.saturating_sub(u64::from(back));
                let got = log
                    .read(EventSeq(after), usize::from(max), Wait::No)
                    .await
                    .map(|entries| seqs_and_texts(&entries))
                    .map_err(|e| e.code());
                assert_eq!(got, model.read(after, u64::from(max)), "read after {after}");
            }
            LogOp::Cursor(back) => {
                let after = model.newest.saturating_sub(u64::from(back));
                cursors.push((LogCursor::new(log.clone(), EventSeq(after), 3), after));
            }
            LogOp::Next(which) => {
                if cursors.is_empty() {
                    continue;
                }
                let i = usize::from(which) % cursors.len();
                let (cursor, position) = &mut cursors[i];
                let expected = model.read(*position, 3);
                if expected.as_ref().is_ok_and(Vec::is_empty) {
                    continue;
                }
                let got = cursor
                    .next_batch()
                    .await
                    .map(|entries| seqs_and_texts(&entries))
                    .map_err(|e| e.code());
                assert_eq!(got, expected, "cursor at {position}");
                if let Ok(seqs) = &got {
                    *position = *seqs.last().expect("a batch");
                    assert_eq!(cursor.position().get(), *position);
                } else {
                    // A cursor that fell behind stays behind: it never skips ahead.
                    assert_eq!(cursor.position().get(), *position);
                }
            }
        }
        assert_eq!(log.bounds().await.expect("bounds"), model.bounds());
        let resumable = log
            .bounds()
            .await
            .expect("bounds")
            .check_resume_from(EventSeq(model.evicted_through));
        assert_eq!(resumable, Ok(()));
    }
}

#[test]
fn the_log_and_its_cursors_follow_the_model() {
    let rt = runtime();
    let strategy = (1..8u64, proptest::collection::vec(log_op(), 1..60));
    run(256, strategy, |(bound, ops)| {
        rt.block_on(check_log(bound, ops));
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------------
// The resume registry
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum RegistryOp {
    Issue {
        session: u8,
        principal: bool,
    },
    /// Presents token number `token` of all tokens handed out so far (or garbage).
    Check {
        token: u8,
        principal: bool,
    },
    Rotate {
        token: u8,
        principal: bool,
        epoch: u8,
    },
    StartWindow {
        session: u8,
        epoch: u8,
        expired: bool,
    },
    /// Sweeps as of now, or as of two hours from now.
    TakeExpired {
        later: bool,
    },
    Remove {
        session: u8,
    },
}

fn registry_op() -> impl Strategy<Value = RegistryOp> {
    let session = 0..3u8;
    prop_oneof![
        1 => (session.clone(), any::<bool>())
            .prop_map(|(session, principal)| RegistryOp::Issue { session, principal }),
        3 => (any::<u8>(), any::<bool>())
            .prop_map(|(token, principal)| RegistryOp::Check { token, principal }),
        3 => (any::<u8>(), any::<bool>(), 0..5u8)
            .prop_map(|(token, principal, epoch)| RegistryOp::Rotate { token, principal, epoch }),
        2 => (session.clone(), 0..5u8, any::<bool>())
            .prop_map(|(session, epoch, expired)| RegistryOp::StartWindow { session, epoch, expired }),
        1 => any::<bool>().prop_map(|later| RegistryOp::TakeExpired { later }),
        1 => session.prop_map(|session| RegistryOp::Remove { session }),
    ]
}

struct Entry {
    token: String,
    principal: Principal,
    epoch: u64,
    /// `Some(true)`: the window closed an hour ago; `Some(false)`: it closes in an hour.
    expired: Option<bool>,
}

fn principal(alice: bool) -> Principal {
    Principal::new(if alice { "alice" } else { "bob" })
}

/// What checking `token` as `who` must give, by the registry's rules.
fn verdict(
    entries: &BTreeMap<SessionId, Entry>,
    token: &str,
    who: &Principal,
) -> Result<SessionId, ErrorCode> {
    let current = entries.iter().find(|(_, e)| e.token == token);
    match current {
        None
        | Some((
            _,
            Entry {
                expired: Some(true),
                ..
            },
        )) => Err(ErrorCode::ResumeWindowExpired),
        Some((_, e)) if &e.principal != who => Err(ErrorCode::PermissionDenied),
        Some((session, _)) => Ok(session.clone()),
    }
}

async fn check_registry(ops: Vec<RegistryOp>) {
    let registry = MemoryResumeRegistry::new();
    let sessions: Vec<SessionId> = (0..3)
        .map(|i| SessionId::new(format!("sess_{i}")))
        .collect();
    let mut entries: BTreeMap<SessionId, Entry> = BTreeMap::new();
    // Every token ever handed out, and some that never were.
    let mut tokens = vec!["garbage".to_owned(), String::new()];
    let now = SystemTime::now();
    for op in ops {
        match op {
            RegistryOp::Issue {
                session,
                principal: alice,
            } => {
                let session = &sessions[usize::from(session)];
                let token = registry
                    .issue(session, &principal(alice), Epoch(1))
                    .await
                    .expect("issues");
                let token = token.expose().to_owned();
                tokens.push(token.clone());
                entries.insert(
                    session.clone(),
                    Entry {
                        token,
                        principal: principal(alice),
                        epoch: 1,
                        expired: None,
                    },
                );
            }
            RegistryOp::Check {
                token,
                principal: alice,
            } => {
                let token = &tokens[usize::from(token) % tokens.len()];
                let got = registry
                    .check(token, &principal(alice))
                    .await
                    .map_err(|e| e.code());
                assert_eq!(got, verdict(&entries, token, &principal(alice)));
            }
            RegistryOp::Rotate {
                token,
                principal: alice,
                epoch,
            } => {
                let token = tokens[usize::from(token) % tokens.len()].clone();
                let who = principal(alice);
                let epoch = u64::from(epoch);
                let want = verdict(&entries, &token, &who).and_then(|session| {
                    if epoch <= entries[&session].epoch {
                        Err(ErrorCode::ResumeWindowExpired)
                    } else {
                        Ok(session)
                    }
                });
                let got = registry.rotate(&token, &who, Epoch(epoch)).await;
                match (want, got) {
                    (Ok(session), Ok(fresh)) => {
                        let fresh = fresh.expose().to_owned();
                        assert_ne!(fresh, token, "a rotation mints a new token");
                        tokens.push(fresh.clone());
                        let entry = entries.get_mut(&session).expect("the entry");
                        entry.token = fresh;
                        entry.epoch = epoch;
                        entry.expired = None;
                    }
                    (Err(code), Err(e)) => assert_eq!(e.code(), code),
                    (want, got) => panic!(
                        "rotate: wanted {want:?}, got {:?}",
                        got.map(|t| t.expose().to_owned())
                    ),
                }
            }
            RegistryOp::StartWindow {
                session,
                epoch,
                expired,
            } => {
                let session = &sessions[usize::from(session)];
                let deadline = if expired {
                    now - Duration::from_secs(3600)
                } else {
                    now + Duration::from_secs(3600)
                };
                let epoch = u64::from(epoch);
                let started = registry
                    .start_window(session, Epoch(epoch), deadline)
                    .await
                    .expect("starts");
                let want = entries.get_mut(session).filter(|e| e.epoch == epoch);
                assert_eq!(
                    started,
                    want.is_some(),
                    "only the entry's own attachment starts its window"
                );
                if let Some(entry) = want {
                    entry.expired = Some(expired);
                }
            }
            RegistryOp::TakeExpired { later } => {
                let at = if later {
                    now + Duration::from_secs(7200)
                } else {
                    now
                };
                let mut taken = registry.take_expired(at).await.expect("sweeps");
                taken.sort();
                let want: Vec<SessionId> = entries
                    .iter()
                    .filter(|(_, e)| e.expired.is_some_and(|past| past || later))
                    .map(|(s, _)| s.clone())
                    .collect();
                assert_eq!(taken, want);
                for s in &want {
                    entries.remove(s);
                }
            }
            RegistryOp::Remove { session } => {
                let session = &sessions[usize::from(session)];
                registry.remove(session).await.expect("removes");
                entries.remove(session);
            }
        }
        assert_eq!(registry.len(), entries.len());
        let attached = entries.values().filter(|e| e.expired.is_none()).count();
        assert_eq!(registry.attached(), attached);
    }
}

#[test]
fn the_resume_registry_follows_the_model() {
    let rt = runtime();
    run(
        256,
        proptest::collection::vec(registry_op(), 1..50),
        |ops| {
            rt.block_on(check_registry(ops));
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Sessions, end to end in process
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum SessionOp {
    /// The job logs this many lines.
    Emit(u8),
    /// The client reads up to this many frames, of those already logged.
    Read(u8),
    /// The client acknowledges everything it has read (with `ack` negotiated).
    Ack,
    /// The client's transport goes away.
    Detach,
    /// A new stream resumes from `back` frames before what the client has read: while the
    /// session is detached a resume, while a stream holds it a takeover.
    Resume(u8),
}

fn session_op() -> impl Strategy<Value = SessionOp> {
    prop_oneof![
        3 => (1..12u8).prop_map(SessionOp::Emit),
        3 => (1..12u8).prop_map(SessionOp::Read),
        1 => Just(SessionOp::Ack),
        2 => Just(SessionOp::Detach),
        2 => prop_oneof![3 => Just(0u8), 1 => 1..6u8].prop_map(SessionOp::Resume),
    ]
}

#[derive(Debug)]
struct SessionCase {
    bound: u64,
    acks: bool,
    /// Two worker threads, so the job, the stream's reader and the client really run at once;
    /// otherwise one thread, where every interleaving replays exactly and shrinks well.
    parallel: bool,
    ops: Vec<SessionOp>,
}

fn session_case() -> impl Strategy<Value = SessionCase> {
    (
        2..12u64,
        any::<bool>(),
        any::<bool>(),
        proptest::collection::vec(session_op(), 1..40),
    )
        .prop_map(|(bound, acks, parallel, ops)| SessionCase {
            bound,
            acks,
            parallel,
            ops,
        })
}

const TOKEN: &str = "alice-token";

/// How often each outcome occurred over all cases, so a run that never reached one fails
/// rather than passing vacuously.
struct Seen {
    resumed: AtomicUsize,
    taken_over: AtomicUsize,
    refused: AtomicUsize,
    lost: AtomicUsize,
    released: AtomicUsize,
    evicted: AtomicUsize,
    completed: AtomicUsize,
}

impl Seen {
    fn note(counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

type Inbox = mpsc::UnboundedSender<Result<Inbound, RejectedFrame>>;

/// One client stream: what it sends, and what the gateway yields for it.
struct Stream {
    tx: Inbox,
    rx: BoxStream<'static, OutboundItem>,
}

impl Stream {
    fn open(gateway: &Gateway) -> Stream {
        let (tx, rx) = mpsc::unbounded_channel();
        let inbound = UnboundedReceiverStream::new(rx).boxed();
        let rx = gateway.connect(ConnectInfo::default(), inbound).boxed();
        Stream { tx, rx }
    }

    fn send(&self, id: &str, message: ClientMessage) {
        let frame = Inbound {
            id: Some(id.to_owned()),
            session_id: None,
            trace_id: None,
            job_id: None,
            message,
        };
        self.tx
            .send(Ok(frame))
            .expect("the stream reads its client");
    }

    async fn next(&mut self) -> Option<OutboundItem> {
        tokio::time::timeout(DEADLINE, self.rx.next())
            .await
            .expect("the stream yields within the deadline")
    }
}

fn hello(acks: bool, resume: Option<ResumeRequest>) -> ClientMessage {
    ClientMessage::Hello(Hello {
        token: Some(TOKEN.to_owned()),
        scheme: Some("bearer".to_owned()),
        features: Some(if acks { vec!["ack".to_owned()] } else { vec![] }),
        resume,
    })
}

/// The client side of one session, and the model of its log.
struct Client {
    gateway: Arc<Gateway>,
    stores: MemoryStores,
    steps: mpsc::UnboundedSender<u64>,
    acks: bool,
    bound: u64,
    /// How far a job may run ahead of its attached reader before it waits.
    window: u64,
    session: SessionId,
    token: String,
    stream: Option<Stream>,
    /// The last event the client processed, in order.
    position: u64,
    /// The frames the job logs once it has caught up: the acceptance and every line asked for.
    asked: u64,
    /// The lines asked for so far.
    lines: u64,
    /// How many of them the job's emits returned for.
    returned: Arc<AtomicU64>,
    /// The model of the log.
    newest: u64,
    /// The frame the job logged last, while it still waits for its stream to take it.
    paced: Option<u64>,
    evicted_through: u64,
}

impl Client {
    async fn start(bound: u64, acks: bool) -> Client {
        let (stepper, steps) = Pacer::new();
        let returned = stepper.returned();
        let mut agents = AgentRegistry::with_builtins();
        agents
            .register("stepper", "1.0.0", stepper)
            .expect("registers");
        let config = GatewayConfig {
            max_log_frames: bound as usize,
            // No back_pressure status among the job's frames.
            back_pressure_lag: u64::MAX,
            ..GatewayConfig::default()
        };
        let window = config.flow_window.min(bound / 2).max(1);
        let stores = MemoryStores::new(config.max_log_frames);
        let gateway = Gateway::builder(config)
            .auth(Authenticator::from_pairs([(
                TOKEN.to_owned(),
                Principal::new("alice"),
            )]))
            .agents(agents)
            .stores(stores.stores())
            .build();
        let mut stream = Stream::open(&gateway);
        stream.send("h", hello(acks, None));
        let (session, token) = match stream.next().await {
            Some(OutboundItem::Frame(Some(session), Outbound::Control(c))) => match c.message {
                ControlMessage::Welcome(w) => (session, w.resume_token),
                other => panic!("expected a welcome, got {other:?}"),
            },
            other => panic!("expected a welcome, got {other:?}"),
        };
        stream.send(
            "s",
            ClientMessage::Submit(JobSubmit {
                agent: "stepper".into(),
                input: serde_json::Value::Null,
                lease_request: Default::default(),
                expires_at: None,
                idempotency_key: None,
                max_runtime_sec: None,
            }),
        );
        let mut client = Client {
            gateway,
            stores,
            steps,
            acks,
            bound,
            window,
            session,
            token,
            stream: Some(stream),
            position: 0,
            asked: 1,
            lines: 0,
            returned,
            newest: 0,
            paced: None,
            evicted_through: 0,
        };
        client.settle().await;
        client
    }

    async fn log(&self) -> Arc<dyn SessionLog> {
        self.stores
            .logs
            .open(&self.session)
            .await
            .expect("the session has a log")
    }

    async fn bounds(&self) -> LogBounds {
        self.log().await.bounds().await.expect("readable bounds")
    }

    async fn flow(&self) -> Flow {
        self.stores
            .sessions
            .open(&self.session)
            .await
            .expect("the session is recorded")
            .flow()
    }

    /// Waits for the job to log what it can now, and checks the log holds what the model says.
    ///
    /// The job logs a frame, then waits while a stream is attached and that frame is more than
    /// `window` frames past what the stream took; once that wait is over it logs the next.
    async fn settle(&mut self) {
        let flow = self.flow().await;
        loop {
            if let Some(waiting) = self.paced {
                if flow.attached && waiting.saturating_sub(flow.delivered.get()) > self.window {
                    break;
                }
                self.paced = None;
            }
            if self.newest == self.asked {
                break;
            }
            self.newest += 1;
            self.paced = Some(self.newest);
            if self.newest - self.evicted_through > self.bound {
                self.evicted_through = self.newest - self.bound;
                Seen::note(&SEEN.evicted);
            }
        }
        // Frame `n + 1` is line `n`: the lines whose emit returned are those before the frame
        // the job waits on, or all it logged.
        let target = self.newest;
        let returned = match self.paced {
            Some(waiting) => waiting.saturating_sub(2),
            None => target.saturating_sub(1),
        }
        .min(self.lines);
        let log = self.log().await;
        let count = self.returned.clone();
        until(
            || format!("the log to reach {target} and {returned} emits to return"),
            async || {
                log.bounds().await.expect("bounds").newest.get() >= target
                    && count.load(Ordering::Acquire) >= returned
            },
        )
        .await;
        let bounds = self.bounds().await;
        assert_eq!(
            (bounds.newest.get(), bounds.evicted_through.get()),
            (self.newest, self.evicted_through),
            "the log holds what the model says (newest, evicted through)"
        );
    }

    /// Reads the next job frame, which must be the one after the client's position, and
    /// checks it is the frame logged there.
    async fn read_one(&mut self) {
        let stream = self.stream.as_mut().expect("attached");
        let entry = match stream.next().await {
            Some(OutboundItem::Frame(_, Outbound::Job(entry))) => entry,
            Some(OutboundItem::Frame(_, Outbound::Control(c))) => {
                panic!("control frame while reading events: {c:?}")
            }
            other => panic!("the stream ended while reading events: {other:?}"),
        };
        assert_eq!(
            entry.seq.get(),
            self.position + 1,
            "events arrive in order, with no gap and no duplicate"
        );
        self.position += 1;
        let (_, frame) = entry.frame.decode().expect("a logged frame decodes");
        match (self.position, frame.payload) {
            (1, JobPayload::Accepted(_)) => {}
            (
                seq,
                JobPayload::Event {
                    body: EventBody::Log { message, .. },
                    ..
                },
            ) => {
                assert_eq!(message, format!("line {}", seq - 1), "frame {seq}")
            }
            (seq, JobPayload::Result(_)) => assert_eq!(seq, self.asked, "the result comes last"),
            (seq, other) => panic!("frame {seq} is {other:?}"),
        }
    }

    async fn read(&mut self, n: u64) {
        for _ in 0..n.min(self.newest - self.position) {
            self.read_one().await;
        }
        self.settle().await;
    }

    async fn ack(&mut self) {
        if !self.acks {
            return;
        }
        let stream = self.stream.as_ref().expect("attached");
        stream.send(
            "a",
            ClientMessage::Ack {
                last_processed_seq: EventSeq(self.position),
            },
        );
        if self.position > self.evicted_through {
            self.evicted_through = self.position;
            Seen::note(&SEEN.released);
        }
        let through = self.evicted_through;
        let log = self.log().await;
        until(
            || format!("the ack to release through {through}"),
            async || log.bounds().await.expect("bounds").evicted_through.get() >= through,
        )
        .await;
        self.settle().await;
    }

    async fn detach(&mut self) {
        self.stream = None;
        let stores = self.stores.clone();
        let session = self.session.clone();
        until(
            || "the stream to detach".to_owned(),
            async || {
                !stores
                    .sessions
                    .open(&session)
                    .await
                    .expect("recorded")
                    .flow()
                    .attached
            },
        )
        .await;
        self.settle().await;
    }

    /// Resumes (or takes over) from `back` frames before the client's position; `false` once
    /// the session can no longer be resumed from where the client is.
    async fn resume(&mut self, back: u8) -> bool {
        let from = self.position.saturating_sub(u64::from(back));
        let mut stream = Stream::open(&self.gateway);
        stream.send(
            "r",
            hello(
                self.acks,
                Some(ResumeRequest {
                    session_id: Some(self.session.clone()),
                    token: self.token.clone(),
                    last_event_seq: EventSeq(from),
                }),
            ),
        );
        let first = stream.next().await;
        let expect_resumed = from >= self.evicted_through;
        match first {
            Some(OutboundItem::Frame(Some(_), Outbound::Control(c))) if expect_resumed => {
                let ControlMessage::Welcome(w) = c.message else {
                    panic!(
                        "a resume from {from} (evicted through {}) got {c:?}",
                        self.evicted_through
                    );
                };
                self.token = w.resume_token;
            }
            Some(OutboundItem::Frame(None, Outbound::Control(c))) if !expect_resumed => {
                match &c.message {
                    ControlMessage::Error(ArcpError::ResumeWindowExpired(_)) => {}
                    other => panic!(
                        "a resume from {from} (evicted through {}) got {other:?}",
                        self.evicted_through
                    ),
                }
                assert!(
                    stream.next().await.is_none(),
                    "a refused resume ends its stream"
                );
                Seen::note(&SEEN.refused);
                // The stream that holds the session, if any, is undisturbed and the client
                // reads on; without one, the client can still try from where it is.
                return self.stream.is_some() || self.position >= self.evicted_through;
            }
            other => panic!(
                "a resume from {from} (evicted through {}) got {other:?}",
                self.evicted_through
            ),
        }
        if let Some(mut old) = self.stream.take() {
            // The stream taken over ends, after at most the frames it had already taken.
            loop {
                match old.next().await {
                    Some(OutboundItem::Frame(_, Outbound::Job(_))) => continue,
                    Some(OutboundItem::End(StreamEnd::Superseded)) | None => break,
                    other => panic!("a superseded stream yielded {other:?}"),
                }
            }
            Seen::note(&SEEN.taken_over);
        } else {
            Seen::note(&SEEN.resumed);
        }
        self.stream = Some(stream);
        self.position = from;
        self.settle().await;
        true
    }

    /// Ends the job and reads everything to its result: the client must end with exactly the
    /// events `1..=N` of the session behind it.
    async fn finish(&mut self) -> bool {
        if self.stream.is_none() && !self.resume(0).await {
            return false;
        }
        if self.stream.is_none() {
            // The resume from the client's position was refused: the window expired for it.
            return false;
        }
        self.steps.send(0).expect("the job runs");
        self.asked += 1;
        while self.position < self.asked {
            self.settle().await;
            self.read(self.asked).await;
        }
        assert_eq!(self.position, self.asked);
        Seen::note(&SEEN.completed);
        true
    }
}

static SEEN: Seen = Seen {
    resumed: AtomicUsize::new(0),
    taken_over: AtomicUsize::new(0),
    refused: AtomicUsize::new(0),
    lost: AtomicUsize::new(0),
    released: AtomicUsize::new(0),
    evicted: AtomicUsize::new(0),
    completed: AtomicUsize::new(0),
};

async fn check_session(case: SessionCase) {
    let mut client = Client::start(case.bound, case.acks).await;
    for op in case.ops {
        match op {
            SessionOp::Emit(n) => {
                client.steps.send(u64::from(n)).expect("the job runs");
                client.asked += u64::from(n);
                client.lines += u64::from(n);
                client.settle().await;
            }
            SessionOp::Read(n) if client.stream.is_some() => client.read(u64::from(n)).await,
            SessionOp::Ack if client.stream.is_some() => client.ack().await,
            SessionOp::Detach if client.stream.is_some() => client.detach().await,
            SessionOp::Resume(back) => {
                let resumable = client.resume(back).await;
                if !resumable {
                    Seen::note(&SEEN.lost);
                    return;
                }
            }
            _ => {}
        }
    }
    if !client.finish().await {
        Seen::note(&SEEN.lost);
    }
}

#[test]
fn a_client_gets_every_event_once_in_order_or_is_told_the_window_expired() {
    run(128, session_case(), |case| {
        let runtime = if case.parallel {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime")
        } else {
            runtime()
        };
        runtime.block_on(check_session(case));
        Ok(())
    });
    let seen = |c: &AtomicUsize| c.load(Ordering::Relaxed);
    let counts = [
        ("resumed", seen(&SEEN.resumed)),
        ("taken over", seen(&SEEN.taken_over)),
        ("refused", seen(&SEEN.refused)),
        ("lost", seen(&SEEN.lost)),
        ("released by an ack", seen(&SEEN.released)),
        ("evicted", seen(&SEEN.evicted)),
        ("completed", seen(&SEEN.completed)),
    ];
    let missing: Vec<_> = counts.iter().filter(|(_, n)| *n == 0).collect();
    assert!(
        missing.is_empty(),
        "outcomes no case reached: {missing:?} of {counts:?}"
    );
}
