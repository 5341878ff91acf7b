//! One stream attached to a session.
//!
//! Two halves. The reader task (`dispatch`) takes client frames and acts on them (submit,
//! cancel, ping, close), answering with control frames through the stream's
//! [`StreamControl`], which also carries the order to stop; with `heartbeat` it also judges
//! whether the client is still there (`super::liveness`), since this half may wait on a stuck
//! transport for as long as the client does not read. The [`OutboundHalf`] sends the
//! welcome, then interleaves those control frames with the session's event log read through
//! one [`LogCursor`] from the resume point: replayed frames and live frames come out of the
//! same loop, so they cannot overlap or leave a gap.
//!
//! A read of the log that fails because the store did not answer (a retryable error) is tried
//! again, with back-off, for [`SessionSettings::store_retry`](super::SessionSettings) from the
//! first such failure: a short outage of a shared store leaves the stream open, silent, and
//! delivering again from where it was once the store answers; a longer one ends it with the
//! error, and the client resumes once the store is back.
//!
//! Backpressure is end to end: the outbound half produces a frame only when the transport asks
//! for one, and records what it delivered so the session's jobs stay within a window of it
//! (`DeliveryPolicy::pace`); the log absorbs the rest. A reader blocked on a full reply queue
//! stops reading the client.

use std::{collections::VecDeque, pin::Pin, sync::Arc, time::Duration};

use ::metrics::{counter, gauge, Counter, Gauge};
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::time::{Instant, Sleep};
use tracing::Instrument;

use crate::{
    clock::Timestamp,
    error::{ArcpError, ErrorCode},
    ids::{EventSeq, SessionId},
    metrics::{transport::Transport, FRAMES_DELIVERED, FRAMES_REPLAYED, STREAMS_OPEN},
    protocol::control::{Control, ControlMessage},
    store::log::{cursor::LogCursor, LogEntry},
};

use super::{
    attached::{AttachedStream, LastHeard},
    dispatch::read_loop,
    handshake::{self, log_batch, Attachment, DetachGuard},
    output::{Outbound as Frame, OutboundItem, StreamEnd},
    stream_control::{Reply, StreamEvent, Then},
    ConnectInfo, InboundStream, SessionServices,
};

/// Serves one stream: handshake, then frames both ways until the client leaves, closes, or is
/// taken over, or the gateway shuts down.
pub fn serve(
    services: Arc<SessionServices>,
    conn: ConnectInfo,
    mut inbound: InboundStream,
) -> impl Stream<Item = OutboundItem> + Send + 'static {
    async_stream::stream! {
        // A shutdown must not wait for streams that never said hello.
        let waited = tokio::select! {
            _ = services.shutdown.cancelled() => {
                yield OutboundItem::End(StreamEnd::ShuttingDown);
                return;
            }
            waited = tokio::time::timeout(services.settings.hello_timeout, inbound.next()) => waited,
        };
        let first = match waited {
            Ok(Some(Ok(first))) => first,
            Ok(Some(Err(rejected))) => {
                // Bytes the transport could not read end the stream with the transport's own
                // error (a gRPC status, a WebSocket close code), not as a clean end.
                let end = rejected.fault.map(StreamEnd::Unreadable);
                yield error_frame(None, rejected.request_id, rejected.error);
                if let Some(end) = end {
                    yield OutboundItem::End(end);
                }
                return;
            }
            Ok(None) => return,
            Err(_) => {
                let error = ArcpError::InvalidRequest(format!(
                    "no session.hello within {}s of opening the stream",
                    services.settings.hello_timeout.as_secs()
                ));
                yield error_frame(None, None, error);
                return;
            }
        };
        let request_id = first.id.clone();
        // Dropped with this stream, however it ends, even in the middle of the handshake.
        let mut guard = None;
        // Boxed: the handshake's future is large and over once the stream is attached; inline,
        // it would be part of every session's stream for its whole life (row 5 of
        // BENCHMARKS.md).
        let span = tracing::info_span!("arcp.session.open", session_id = tracing::field::Empty);
        let opened = Box::pin(
            handshake::open(&services, &conn, first, &mut guard).instrument(span.clone()),
        )
        .await;
        let attachment = match opened {
            Ok(attachment) => {
                span.record("session_id", attachment.record.id().as_str());
                // The span is the handshake's: it ends here, not with the stream.
                drop(span);
                attachment
            }
            Err(error) => {
                tracing::info!(code = %error.code(), "handshake refused: {}", error.message());
                drop(guard);
                yield error_frame(None, request_id, error);
                return;
            }
        };
        let mut outbound =
            OutboundHalf::start(services, &conn, attachment, request_id, inbound, guard);
        while let Some(item) = outbound.next().await {
            yield item;
        }
    }
}

/// The outbound half of an attached stream.
struct OutboundHalf {
    stream: Arc<AttachedStream>,
    session: Option<SessionId>,
    cursor: LogCursor,
    /// The rest of the batch being sent.
    pending: VecDeque<LogEntry>,
    /// The welcome, until it is sent.
    welcome: Option<Control>,
    reader_open: bool,
    /// §6.4: only with `heartbeat` negotiated does the runtime ping (and the reader's side
    /// declare loss, `super::liveness`).
    heartbeat: Option<Duration>,
    last_sent: Instant,
    /// Armed once and re-armed only when it fires, not once per frame: frames only move
    /// `last_sent` on, which makes the ping due later, so a timer armed earlier just checks,
    /// finds nothing due, and re-arms.
    check: Pin<Box<Sleep>>,
    done: bool,
    /// How the stream ends once `done` and the rest of the batch is sent, if not cleanly.
    end: Option<StreamEnd>,
    /// Since when reads of the log have failed because the store did not answer.
    read_trouble: Option<Instant>,
    /// The stream's metrics, looked up once here so that a batch costs an atomic add each.
    counted: StreamCounters,
    _reader: AbortOnDrop,
}

impl Drop for OutboundHalf {
    fn drop(&mut self) {
        // However the stream ends, unless the client was declared lost first.
        self.stream.release();
        self.counted.open.decrement(1.0);
    }
}

/// An attached stream's metrics.
struct StreamCounters {
    delivered: Counter,
    replayed: Counter,
    /// Frames through this one were logged before the stream resumed.
    replay_through: EventSeq,
    open: Gauge,
}

impl StreamCounters {
    fn start(transport: Transport, replay_through: EventSeq) -> StreamCounters {
        let transport = transport.as_str();
        let open = gauge!(STREAMS_OPEN, "transport" => transport);
        open.increment(1.0);
        StreamCounters {
            delivered: counter!(FRAMES_DELIVERED, "transport" => transport),
            replayed: counter!(FRAMES_REPLAYED, "transport" => transport),
            replay_through,
            open,
        }
    }

    /// Counts a batch taken from the log, in order.
    fn taken(&mut self, frames: &[LogEntry]) {
        self.delivered.increment(frames.len() as u64);
        if self.replay_through == EventSeq::ZERO {
            return;
        }
        let replayed = frames
            .iter()
            .take_while(|f| f.seq <= self.replay_through)
            .count();
        self.replayed.increment(replayed as u64);
        if replayed < frames.len() {
            // Caught up: every later frame is live.
            self.replay_through = EventSeq::ZERO;
        }
    }
}

enum Step {
    End(StreamEnd),
    Control(Reply),
    ReaderDone,
    Heartbeat,
    Frames(Result<Vec<LogEntry>, ArcpError>),
}

impl OutboundHalf {
    fn start(
        services: Arc<SessionServices>,
        conn: &ConnectInfo,
        attachment: Attachment,
        request_id: Option<String>,
        inbound: InboundStream,
        detach: Option<DetachGuard>,
    ) -> OutboundHalf {
        let heartbeat = attachment.record.features().has("heartbeat").then(|| {
            Duration::from_secs(u64::from(services.settings.heartbeat_interval_sec.max(1)))
        });
        let stream = Arc::new(AttachedStream {
            services,
            record: attachment.record,
            log: attachment.log.clone(),
            epoch: attachment.epoch,
            control: attachment.control,
            heard: LastHeard::new(),
            heartbeat,
            detach: Mutex::new(detach),
            lost: conn.lost.clone(),
        });
        let reader = tokio::spawn(read_loop(stream.clone(), inbound));
        let batch = log_batch(&*attachment.log);
        let cursor = LogCursor::with_first(
            attachment.log,
            attachment.replay_after,
            batch,
            attachment.first,
        );
        let last_sent = Instant::now();
        let mut outbound = OutboundHalf {
            session: Some(stream.record.id().clone()),
            stream,
            cursor,
            pending: VecDeque::new(),
            welcome: Some(Control {
                request_id,
                message: ControlMessage::Welcome(attachment.welcome),
            }),
            reader_open: true,
            heartbeat,
            last_sent,
            check: Box::pin(tokio::time::sleep_until(last_sent)),
            done: false,
            end: None,
            read_trouble: None,
            counted: StreamCounters::start(conn.transport, attachment.replay_through),
            _reader: AbortOnDrop(reader),
        };
        let due = outbound.next_check();
        outbound.check.as_mut().reset(due);
        outbound
    }

    /// The next item for the transport; `None` once the stream is over.
    async fn next(&mut self) -> Option<OutboundItem> {
        if let Some(welcome) = self.welcome.take() {
            return Some(self.control(welcome));
        }
        loop {
            if let Some(entry) = self.pending.pop_front() {
                return Some(OutboundItem::Frame(self.session.clone(), Frame::Job(entry)));
            }
            if self.done {
                return self.end.take().map(OutboundItem::End);
            }
            if let Some(item) = self.step().await {
                return Some(item);
            }
        }
    }

    /// Waits for the next thing to do and does it; returns the item it produced, if any.
    async fn step(&mut self) -> Option<OutboundItem> {
        let control = self.stream.control.clone();
        let frames = next_frames(
            &mut self.cursor,
            &mut self.read_trouble,
            self.stream.services.settings.store_retry,
            self.stream.record.id(),
        );
        let step = tokio::select! {
            biased;
            event = control.next_event(self.reader_open) => match event {
                StreamEvent::Stop(end) => Step::End(end),
                StreamEvent::Reply(reply) => Step::Control(reply),
                StreamEvent::ReaderDone => Step::ReaderDone,
            },
            frames = frames => Step::Frames(frames),
            _ = &mut self.check, if self.heartbeat.is_some() => Step::Heartbeat,
        };
        match step {
            Step::End(reason) => {
                self.done = true;
                Some(OutboundItem::End(reason))
            }
            Step::Control(Reply { control, then }) => {
                match then {
                    Then::Continue => {}
                    Then::Close => self.done = true,
                    Then::End(end) => {
                        self.done = true;
                        self.end = Some(end);
                    }
                }
                Some(self.control(control))
            }
            // The client half-closed its side; it may still be reading, so keep delivering.
            Step::ReaderDone => {
                self.reader_open = false;
                None
            }
            Step::Frames(Ok(frames)) => self.take(frames).await,
            Step::Frames(Err(error)) => {
                // The cursor fell behind eviction, or the log is gone: continuing would hide a
                // gap. Or the store has not answered for too long.
                tracing::warn!(session = %self.stream.record.id(), "closing stream: {error}");
                self.done = true;
                Some(error_frame(self.session.clone(), None, error))
            }
            Step::Heartbeat => self.heartbeat(),
        }
    }

    /// Queues a batch read from the log. Counted as delivered as soon as it is taken, so that a
    /// client's ack of the last frame it received can never get ahead of the count, and the
    /// jobs may produce the next batch while this one is sent.
    async fn take(&mut self, frames: Vec<LogEntry>) -> Option<OutboundItem> {
        let last = frames.last()?.seq;
        match self
            .stream
            .record
            .record_delivered(self.stream.epoch, last)
            .await
        {
            Ok(true) => {}
            // Another stream holds the session now, perhaps on another replica, and its client
            // gets these frames from it. Or the store lost the session's record, and then its
            // log too (flushed, say): the log says which, so the client learns of the loss.
            Ok(false) => {
                self.done = true;
                if let Err(lost) = self.stream.log.bounds().await {
                    if lost.code() == ErrorCode::ResumeWindowExpired {
                        return Some(error_frame(self.session.clone(), None, lost));
                    }
                }
                return Some(OutboundItem::End(StreamEnd::Superseded));
            }
            Err(error) => {
                self.done = true;
                return Some(error_frame(self.session.clone(), None, error));
            }
        }
        self.counted.taken(&frames);
        self.pending = frames.into();
        self.last_sent = Instant::now();
        None
    }

    fn heartbeat(&mut self) -> Option<OutboundItem> {
        let interval = self.heartbeat?;
        let now = Instant::now();
        let ping = (now >= self.last_sent + interval).then(|| Control {
            request_id: None,
            message: ControlMessage::Ping {
                nonce: format!("p_{}", uuid::Uuid::now_v7().simple()),
                sent_at: Timestamp::now(),
            },
        });
        let item = ping.map(|ping| self.control(ping));
        let due = self.next_check();
        self.check.as_mut().reset(due);
        item
    }

    /// When a ping is next due: an interval after the last frame sent.
    fn next_check(&self) -> Instant {
        self.heartbeat
            .map_or(self.last_sent, |interval| self.last_sent + interval)
    }

    fn control(&mut self, control: Control) -> OutboundItem {
        self.last_sent = Instant::now();
        OutboundItem::Frame(self.session.clone(), Frame::Control(Box::new(control)))
    }
}

/// The cursor's next frames; a read that failed because the store did not answer
/// (`INTERNAL_ERROR`, retryable) is tried again, with back-off, until reads have failed for
/// `bound` since `trouble`, the first failure (kept by the caller, so that a read cancelled to
/// send a control frame does not start the count over). Cancel-safe, as the cursor is.
async fn next_frames(
    cursor: &mut LogCursor,
    trouble: &mut Option<Instant>,
    bound: Duration,
    session: &SessionId,
) -> Result<Vec<LogEntry>, ArcpError> {
    let mut backoff = READ_FIRST_BACKOFF;
    loop {
        match cursor.next_batch().await {
            Ok(frames) => {
                if trouble.take().is_some() {
                    tracing::info!(session = %session, "the event log answers again; delivery goes on");
                }
                return Ok(frames);
            }
            Err(error) if error.code() == ErrorCode::InternalError => {
                let since = *trouble.get_or_insert_with(|| {
                    tracing::warn!(session = %session, "the event log does not answer; delivery waits for it for up to {bound:?}: {error}");
                    Instant::now()
                });
                if since.elapsed() >= bound {
                    return Err(error);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(READ_MAX_BACKOFF);
            }
            Err(error) => return Err(error),
        }
    }
}

/// The wait before a failed read of the log is tried again, doubling up to the most.
const READ_FIRST_BACKOFF: Duration = Duration::from_millis(50);
const READ_MAX_BACKOFF: Duration = Duration::from_secs(1);

fn error_frame(
    sid: Option<SessionId>,
    request_id: Option<String>,
    error: ArcpError,
) -> OutboundItem {
    OutboundItem::Frame(
        sid,
        Frame::Control(Box::new(Control {
            request_id,
            message: ControlMessage::Error(error),
        })),
    )
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
