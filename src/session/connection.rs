//! One stream attached to a session.
//!
//! Two halves. The reader task takes client frames and acts on them (submit, cancel, ping,
//! close), answering with control frames through the stream's [`StreamControl`], which also
//! carries the order to stop. The outbound stream sends the
//! welcome, then interleaves those control frames with the session's event log read through one
//! [`LogCursor`] from the resume point: replayed frames and live frames come out of the same
//! loop, so they cannot overlap or leave a gap.
//!
//! Backpressure is end to end: the outbound stream produces a frame only when the transport
//! asks for one, and records what it delivered so the session's jobs stay within a window of
//! it (`Session::wait_for_reader`); the log absorbs the rest. A reader blocked on a full
//! reply queue stops reading the client.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::{stream::BoxStream, Stream, StreamExt};
use tokio::time::Instant;

use crate::{
    clock::Timestamp,
    error::ArcpError,
    event_log::LogCursor,
    gateway::{ConnectInfo, Gateway},
    job::Submitter,
    protocol::{
        client::{ClientMessage, Inbound, RejectedFrame},
        server::{Control, ControlMessage, Outbound, OutboundItem, StreamEnd},
        Features,
    },
};

use super::{
    handshake,
    stream_control::{Reply, StreamControl, StreamEvent},
    Session,
};

/// How many log frames one read takes; bounds the latency a control frame waits behind them.
const LOG_BATCH: usize = 256;

/// What the client sends, as the transport decoded it.
pub type InboundStream = BoxStream<'static, Result<Inbound, RejectedFrame>>;

/// Serves one stream: handshake, then frames both ways until the client leaves, closes, or is
/// taken over, or the gateway shuts down.
pub fn serve(
    gw: Arc<Gateway>,
    conn: ConnectInfo,
    mut inbound: InboundStream,
) -> impl Stream<Item = OutboundItem> + Send + 'static {
    async_stream::stream! {
        // A shutdown must not wait for streams that never said hello.
        let waited = tokio::select! {
            _ = gw.shutdown.cancelled() => {
                yield OutboundItem::End(StreamEnd::ShuttingDown);
                return;
            }
            waited = tokio::time::timeout(gw.config.hello_timeout, inbound.next()) => waited,
        };
        let first = match waited {
            Ok(Some(Ok(first))) => first,
            Ok(Some(Err(rejected))) => {
                yield error_frame(None, rejected.request_id, rejected.error);
                return;
            }
            Ok(None) => return,
            Err(_) => {
                let error = ArcpError::InvalidRequest(format!(
                    "no session.hello within {}s of opening the stream",
                    gw.config.hello_timeout.as_secs()
                ));
                yield error_frame(None, None, error);
                return;
            }
        };
        let request_id = first.id.clone();
        let opened = match handshake::open(&gw, &conn, first).await {
            Ok(opened) => opened,
            Err(error) => {
                tracing::info!(code = %error.code(), "handshake refused: {}", error.message());
                yield error_frame(None, request_id, error);
                return;
            }
        };
        let session = opened.session;
        let sid = Some(session.id.clone());
        let _detach = DetachOnDrop {
            gw: gw.clone(),
            session: session.clone(),
            generation: opened.attached.generation,
        };
        yield OutboundItem::Frame(sid.clone(), Outbound::Control(Box::new(Control {
            request_id,
            message: ControlMessage::Welcome(opened.welcome),
        })));

        let heard = Arc::new(LastHeard::new());
        let control = opened.attached.control.clone();
        let reader = tokio::spawn(read_loop(gw.clone(), session.clone(), heard.clone(), inbound, control.clone()));
        let _stop_reader = AbortOnDrop(reader);
        let mut reader_open = true;
        let mut cursor = LogCursor::new(session.log.clone(), opened.replay_after, LOG_BATCH);
        session.set_reader(Some(opened.replay_after));
        // §6.4: only with `heartbeat` negotiated does the runtime ping and declare loss.
        let heartbeat = session.features().has("heartbeat").then(|| {
            Duration::from_secs(u64::from(gw.config.heartbeat_interval_sec.max(1)))
        });
        let mut last_sent = Instant::now();
        let next_check = |last_sent: Instant| {
            heartbeat.map_or(last_sent, |interval| {
                (last_sent + interval).min(heard.last_seen() + 2 * interval)
            })
        };
        // The heartbeat timer is armed once and re-armed only when it fires, not once per
        // frame. Frames only move `last_sent` on, which makes the check due later, so a timer
        // armed earlier just checks, finds nothing due, and re-arms.
        let check = tokio::time::sleep_until(next_check(last_sent));
        tokio::pin!(check);

        loop {
            let step = tokio::select! {
                biased;
                event = control.next_event(reader_open) => match event {
                    StreamEvent::Stop(end) => Step::End(end),
                    StreamEvent::Reply(reply) => Step::Control(reply),
                    StreamEvent::ReaderDone => Step::ReaderDone,
                },
                frames = cursor.next_batch() => Step::Frames(frames),
                _ = &mut check, if heartbeat.is_some() => Step::Heartbeat,
            };
            match step {
                Step::End(reason) => {
                    yield OutboundItem::End(reason);
                    break;
                }
                Step::Control(Reply { control, then_close }) => {
                    yield OutboundItem::Frame(sid.clone(), Outbound::Control(Box::new(control)));
                    last_sent = Instant::now();
                    if then_close {
                        break;
                    }
                }
                // The client half-closed its side; it may still be reading, so keep delivering.
                Step::ReaderDone => reader_open = false,
                Step::Frames(Ok(frames)) => {
                    // Counted as delivered as soon as they are taken, so that a client's ack
                    // of the last frame it received can never get ahead of the count, and the
                    // jobs may produce the next batch while this one is sent.
                    if let Some(last) = frames.last() {
                        session.record_delivered(last.seq);
                    }
                    for frame in frames {
                        yield OutboundItem::Frame(sid.clone(), Outbound::Job(frame));
                    }
                    last_sent = Instant::now();
                }
                Step::Frames(Err(error)) => {
                    // The cursor fell behind eviction: continuing would hide a gap.
                    tracing::warn!(session = %session.id, "closing stream: {error}");
                    yield error_frame(sid.clone(), None, error);
                    break;
                }
                Step::Heartbeat => {
                    let Some(interval) = heartbeat else { continue };
                    let now = Instant::now();
                    if now >= heard.last_seen() + 2 * interval {
                        // The jobs run on and the session stays resumable; only this
                        // transport is given up.
                        tracing::info!(session = %session.id, "heartbeat lost; closing the transport");
                        let error = ArcpError::HeartbeatLost(format!(
                            "nothing received from the client for two heartbeat intervals ({}s)",
                            2 * interval.as_secs()
                        ));
                        yield error_frame(sid.clone(), None, error);
                        break;
                    }
                    if now >= last_sent + interval {
                        let ping = ControlMessage::Ping {
                            nonce: format!("p_{}", uuid::Uuid::now_v7().simple()),
                            sent_at: Timestamp::now(),
                        };
                        yield OutboundItem::Frame(sid.clone(), Outbound::Control(Box::new(Control {
                            request_id: None,
                            message: ping,
                        })));
                        last_sent = now;
                    }
                    check.as_mut().reset(next_check(last_sent));
                }
            }
        }
    }
}

/// What the two halves of a connection share.
struct LastHeard {
    opened: Instant,
    /// Milliseconds after `opened` at which the client last sent anything (§6.4).
    seen_ms: AtomicU64,
}

impl LastHeard {
    fn new() -> LastHeard {
        LastHeard {
            opened: Instant::now(),
            seen_ms: AtomicU64::new(0),
        }
    }

    fn saw_client(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.seen_ms.store(ms, Ordering::Release);
    }

    fn last_seen(&self) -> Instant {
        self.opened + Duration::from_millis(self.seen_ms.load(Ordering::Acquire))
    }
}

enum Step {
    End(StreamEnd),
    Control(Reply),
    ReaderDone,
    Heartbeat,
    Frames(Result<Vec<Arc<crate::protocol::server::LoggedFrame>>, ArcpError>),
}

fn error_frame(
    sid: Option<crate::ids::SessionId>,
    request_id: Option<String>,
    error: ArcpError,
) -> OutboundItem {
    OutboundItem::Frame(
        sid,
        Outbound::Control(Box::new(Control {
            request_id,
            message: ControlMessage::Error(error),
        })),
    )
}

/// Acts on client frames until the client stops sending or closes the session.
async fn read_loop(
    gw: Arc<Gateway>,
    session: Arc<Session>,
    heard: Arc<LastHeard>,
    mut inbound: InboundStream,
    control: Arc<StreamControl>,
) {
    read_frames(&gw, &session, &heard, &mut inbound, &control).await;
    control.reader_done();
}

async fn read_frames(
    gw: &Arc<Gateway>,
    session: &Arc<Session>,
    heard: &LastHeard,
    inbound: &mut InboundStream,
    control: &StreamControl,
) {
    while let Some(frame) = inbound.next().await {
        heard.saw_client();
        let (request_id, outcome) = match frame {
            Ok(frame) => (frame.id.clone(), dispatch(gw, session, frame).await),
            Err(rejected) => (rejected.request_id, Err(rejected.error)),
        };
        let reply = match outcome {
            Ok(None) => continue,
            Ok(Some(message)) => Reply {
                then_close: matches!(message, ControlMessage::Closed { .. }),
                control: Control {
                    request_id,
                    message,
                },
            },
            Err(error) => Reply {
                control: Control {
                    request_id,
                    message: ControlMessage::Error(error),
                },
                then_close: false,
            },
        };
        let closing = reply.then_close;
        control.send(reply).await;
        if closing {
            return;
        }
    }
}

/// Handles one client frame of an open session; returns the control frame to answer with.
async fn dispatch(
    gw: &Gateway,
    session: &Arc<Session>,
    frame: Inbound,
) -> Result<Option<ControlMessage>, ArcpError> {
    if let Some(claimed) = &frame.session_id {
        if claimed != &session.id {
            return Err(ArcpError::InvalidRequest(format!(
                "frame names session {claimed}, but this stream carries {}",
                session.id
            )));
        }
    }
    match frame.message {
        ClientMessage::Hello(_) | ClientMessage::Resume(_) => Err(ArcpError::InvalidRequest(
            "the session is already open; open a new stream to start or resume another".into(),
        )),
        ClientMessage::Ping { nonce } => Ok(Some(ControlMessage::Pong {
            ping_nonce: nonce,
            received_at: Timestamp::now(),
        })),
        ClientMessage::Pong => Ok(None),
        ClientMessage::Close { reason } => {
            tracing::info!(session = %session.id, reason = reason.as_deref().unwrap_or(""), "session closed by client; jobs continue");
            Ok(Some(ControlMessage::Closed { reason }))
        }
        ClientMessage::Submit(submit) => {
            let by = Submitter {
                session,
                features: session.features(),
                request_id: frame.id,
                trace_id: frame.trace_id,
            };
            // Boxed, like `subscribe`: inline, the largest branch's future would be part of
            // every session's task for its whole life, idle or not (row 5 of BENCHMARKS.md).
            Box::pin(gw.jobs.submit(by, submit)).await.map(|_| None)
        }
        ClientMessage::Cancel { job_id, reason } => {
            gw.jobs.cancel(session, &job_id, reason).map(|_| None)
        }
        ClientMessage::Ack { last_processed_seq } => {
            require(session, "ack")?;
            let delivered = session.delivered();
            if last_processed_seq > delivered {
                return Err(ArcpError::InvalidRequest(format!(
                    "session.ack names event {last_processed_seq}, but only events up to {delivered} were delivered"
                )));
            }
            let newest = session.log.bounds().await?.newest;
            session.record_ack(last_processed_seq, newest, gw.config.back_pressure_lag);
            session.log.release_through(last_processed_seq).await?;
            Ok(None)
        }
        ClientMessage::ListJobs(request) => {
            require(session, "list_jobs")?;
            let (jobs, next_cursor) = gw.jobs.list(&session.principal, request)?;
            Ok(Some(ControlMessage::Jobs { jobs, next_cursor }))
        }
        ClientMessage::Subscribe(request) => {
            let features = require(session, "subscribe")?;
            Box::pin(gw.jobs.subscribe(session, features, request, frame.id))
                .await
                .map(|_| None)
        }
        ClientMessage::Unsubscribe { job_id } => {
            require(session, "subscribe")?;
            gw.jobs.unsubscribe(session, &job_id).await.map(|_| None)
        }
    }
}

/// The session's features, if `feature` is among them; §6.2 forbids using any other.
fn require(session: &Session, feature: &str) -> Result<Features, ArcpError> {
    let features = session.features();
    if features.has(feature) {
        Ok(features)
    } else {
        Err(not_negotiated(feature))
    }
}

fn not_negotiated(feature: &str) -> ArcpError {
    ArcpError::InvalidRequest(format!(
        "feature {feature:?} is not in this session's effective feature set (§6.2)"
    ))
}

/// Starts the resume window when the stream goes away, however it goes.
struct DetachOnDrop {
    gw: Arc<Gateway>,
    session: Arc<Session>,
    generation: u64,
}

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        let gw = self.gw.clone();
        let session = self.session.clone();
        let generation = self.generation;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { handshake::detach(&gw, &session, generation).await });
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
