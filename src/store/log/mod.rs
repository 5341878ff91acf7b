//! The per-session event log: every job frame of a session, in `event_seq` order, bounded.
//!
//! The log is the single source of what a connection delivers. A [`cursor::LogCursor`] reads it from a
//! position onward, first what is already there (a replay, after a resume) and then whatever
//! is appended (live delivery), through the same call; there is no separate broadcast to race.
//! Because a sequence number is assigned inside `append`, in the same step that stores the
//! frame, readers see frames exactly in sequence order with no gaps.
//!
//! Frames cross the trait in their storage encoding ([`StoredFrame`]), so every store keeps
//! and returns the same bytes, and nothing on the frame path depends on where the log lives.
//! [`EventLog`] creates, opens and removes sessions' logs; a [`SessionLog`] handle is what
//! everything on the frame path uses. [`memory::MemoryEventLog`] is the embedded store;
//! [`redis::RedisEventLog`] one that replicas share.
//!
//! A shared store's appends name the replica instance that writes them, so that a replica
//! declared lost can be fenced out of a log ([`SessionLog::fence_replica`]) while another ends
//! its jobs there.
//!
//! Memory is bounded by [`LogLimits`]: each log keeps at most so many frames and so many bytes
//! of them, and a store keeps at most a budget of bytes across all its logs. Beyond a log's own
//! bounds its oldest frames go. Beyond the budget the frames of detached sessions go first:
//! the session detached longest ago loses its oldest frames first. A session whose stream is
//! attached loses nothing to the budget, because its reader may still need every frame it has
//! not taken; its own bounds hold it, and its jobs are paced to its reader in frames and in
//! bytes (see [`Appended::window_start`]), so its reader is never overtaken by eviction. So the
//! budget can be exceeded by attached sessions only, by at most their own bounds. Eviction of
//! any kind moves `evicted_through`, so a reader that needs an evicted frame always gets
//! `RESUME_WINDOW_EXPIRED`, never a gap.

pub mod cursor;
pub mod memory;
pub mod redis;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use ::metrics::gauge;
use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::{
    encoding::StoredFrame,
    error::ArcpError,
    ids::{Epoch, EventSeq, ReplicaInstance, SessionId},
    metrics::{LOG_RETAINED_BYTES, LOG_RETAINED_FRAMES},
};

/// A frame as a log holds it: its place in the session's sequence, and the frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The session-scoped sequence number (§8.3).
    pub seq: EventSeq,
    /// The frame.
    pub frame: StoredFrame,
}

/// How much a store's logs may hold.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LogLimits {
    /// The most frames one session's log keeps.
    pub max_frames: usize,
    /// The most bytes of frames (their [`StoredFrame::len`]) one session's log keeps; the
    /// newest frame is kept whatever its size.
    pub max_bytes: u64,
    /// The most bytes of frames all the store's logs keep together, as far as evicting
    /// detached sessions' frames can keep them (see the module documentation).
    pub budget_bytes: u64,
}

impl LogLimits {
    /// Logs bounded to `max_frames` frames each, and in nothing else.
    pub fn frames(max_frames: usize) -> LogLimits {
        LogLimits {
            max_frames,
            max_bytes: u64::MAX,
            budget_bytes: u64::MAX,
        }
    }

    /// How many bytes a reader may fall behind the newest frame: half the byte bound, so that
    /// the frames jobs append while they are being paced fit in the other half.
    pub fn window_bytes(&self) -> u64 {
        self.max_bytes / 2
    }
}

/// The frames, and their bytes, an event log's sessions retain together.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Retention {
    /// Frames retained.
    pub frames: u64,
    /// Their bytes, as the store's budget counts them.
    pub bytes: u64,
}

impl Retention {
    /// Sets the retention gauges to this.
    pub fn gauge(self) {
        gauge!(LOG_RETAINED_FRAMES).set(self.frames as f64);
        gauge!(LOG_RETAINED_BYTES).set(self.bytes as f64);
    }
}

/// What an append did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Appended {
    /// The sequence number the frame got.
    pub seq: EventSeq,
    /// The oldest position a reader may be at with the frames after it, through this one,
    /// within [`LogLimits::window_bytes`]: a job that waits until its session's reader has
    /// taken the frames through `window_start` leaves that reader at most half the log's byte
    /// bound behind, which eviction by bytes does not reach. `ZERO` while the whole log is
    /// within the window.
    pub window_start: EventSeq,
}

/// An append queued with [`SessionLog::queue_append`]: resolves to what the append did once the
/// store answered. Dropping it does not take the frame back; it is appended all the same.
#[must_use = "an append's answer says whether the frame was logged"]
pub struct QueuedAppend(Answer);

enum Answer {
    /// Answered when it was queued; taken by the first poll.
    Now(Option<Result<Appended, ArcpError>>),
    /// Answered by whoever appends it.
    Later(oneshot::Receiver<Result<Appended, ArcpError>>),
}

impl QueuedAppend {
    /// An append that is over: `outcome` is what it did.
    pub fn answered(outcome: Result<Appended, ArcpError>) -> QueuedAppend {
        QueuedAppend(Answer::Now(Some(outcome)))
    }

    /// An append whose answer comes through `answer`; one whose sender is dropped unanswered
    /// failed.
    pub(crate) fn answered_by(
        answer: oneshot::Receiver<Result<Appended, ArcpError>>,
    ) -> QueuedAppend {
        QueuedAppend(Answer::Later(answer))
    }
}

impl Future for QueuedAppend {
    type Output = Result<Appended, ArcpError>;

    /// Polled again after it returned its answer, it fails rather than panicking.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            Answer::Now(outcome) => {
                Poll::Ready(outcome.take().unwrap_or_else(|| Err(unanswered())))
            }
            Answer::Later(answer) => Pin::new(answer)
                .poll(cx)
                .map(|answered| answered.unwrap_or_else(|_| Err(unanswered()))),
        }
    }
}

fn unanswered() -> ArcpError {
    ArcpError::Internal("the event log stopped before answering an append".into())
}

/// What a log holds for one session, by sequence number.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LogBounds {
    /// The highest sequence number evicted or released so far (`ZERO` if none): a reader
    /// positioned before it has lost frames.
    pub evicted_through: EventSeq,
    /// The highest sequence number assigned so far (`ZERO` if none).
    pub newest: EventSeq,
}

impl LogBounds {
    /// Checks that a client that has processed everything up to `last` can continue with no gap
    /// and no duplicate: the frames after `last` must all still be retained, and `last` must not
    /// be in the future.
    pub fn check_resume_from(&self, last: EventSeq) -> Result<(), ArcpError> {
        if last > self.newest {
            return Err(ArcpError::InvalidRequest(format!(
                "last_event_seq {last} is beyond the newest event {} of this session",
                self.newest
            )));
        }
        if last < self.evicted_through {
            return Err(evicted(last, self.evicted_through));
        }
        Ok(())
    }
}

/// The error for a read from a position whose next frames are gone.
pub fn evicted(after: EventSeq, evicted_through: EventSeq) -> ArcpError {
    ArcpError::ResumeWindowExpired(format!(
        "events after {after} are no longer buffered (oldest retained is {})",
        evicted_through.next()
    ))
}

/// Whether a read returns at once or waits for the log to grow.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Wait {
    /// Return what is there now, possibly nothing.
    No,
    /// Wait until there is at least one frame to return (or the log is removed).
    ForMore,
}

/// The store of every session's log.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Creates the empty log of a new session.
    async fn create(&self, session: &SessionId) -> Result<Arc<dyn SessionLog>, ArcpError>;

    /// The log of an existing session. Fails with `RESUME_WINDOW_EXPIRED` once it was removed.
    async fn open(&self, session: &SessionId) -> Result<Arc<dyn SessionLog>, ArcpError>;

    /// Drops the session's log: waiting readers fail, and so does every later call through a
    /// handle to it. Its frames no longer count against the store's budget.
    async fn remove(&self, session: &SessionId);

    /// What the logs retain together, for the metrics; `None` when the store cannot say now.
    async fn retention(&self) -> Option<Retention>;

    /// Attachment `epoch`'s stream of `session` is gone. Unless a newer attachment has fenced
    /// the log since (see [`SessionLog::fence`]), the session is detached from now on, and its
    /// frames are among the first the store's budget evicts. A no-op for a removed log.
    async fn detached(&self, session: &SessionId, epoch: Epoch);
}

/// One session's append-only, bounded log of job frames. The session's stream, its jobs and
/// the jobs it subscribed to each hold a handle, so the frame path never looks the session up.
///
/// Every call may suspend (a shared store is a network away) and may be cancelled by dropping
/// its future; a dropped call has either taken full effect or none.
#[async_trait]
pub trait SessionLog: Send + Sync + 'static {
    /// Appends `frame`, assigning the session's next sequence number, and wakes readers.
    /// Evicts the oldest frames beyond the log's bounds, and, while the store is over its
    /// budget, detached sessions' oldest frames. Returns where a reader must be to stay clear
    /// of eviction ([`Appended::window_start`]).
    async fn append_measured(&self, frame: StoredFrame) -> Result<Appended, ArcpError>;

    /// [`SessionLog::append_measured`], for callers that need only the sequence number.
    async fn append(&self, frame: StoredFrame) -> Result<EventSeq, ArcpError> {
        Ok(self.append_measured(frame).await?.seq)
    }

    /// Whether [`SessionLog::queue_append`] returns before the store answered, so that a
    /// caller gains by queueing frames ahead of their answers; `false` for a log that appends
    /// at once, where it is [`SessionLog::append_measured`] by another name.
    fn pipelines(&self) -> bool {
        false
    }

    /// Queues `frame` for [`SessionLog::append_measured`] and returns once its place is fixed,
    /// behind every frame queued or appended through this handle before it, with what
    /// resolves to the append's answer. Frames queued one after another are appended in that
    /// order; one that fails may leave frames queued after it unappended too, never appended
    /// ahead of it. Answers come in queue order, and an append's answer comes after those of
    /// every frame queued before it. By default the frame is appended before this returns.
    async fn queue_append(&self, frame: StoredFrame) -> Result<QueuedAppend, ArcpError> {
        Ok(QueuedAppend::answered(self.append_measured(frame).await))
    }

    /// How many frames a reader that is behind should ask for per read, when this log would
    /// have it ask for more than it would by itself: a read of a shared store is a round trip.
    fn read_batch(&self) -> Option<usize> {
        None
    }

    /// Up to `max` frames with sequence numbers above `after`, in order from the first; with
    /// [`Wait::ForMore`], waits until there is at least one. A shared store may return fewer
    /// than it holds when some were appended meanwhile, never with a gap. Fails with
    /// `RESUME_WINDOW_EXPIRED` if a frame after `after` has been evicted or released, so a
    /// reader can never skip a frame unknowingly, and once the log is removed.
    async fn read(
        &self,
        after: EventSeq,
        max: usize,
        wait: Wait,
    ) -> Result<Vec<LogEntry>, ArcpError>;

    /// Refuses early releases from attachments older than `epoch` from now on (see
    /// [`SessionLog::release_through`]). A resuming stream fences the log before it checks
    /// that the frames it needs are there, so a superseded stream still handling an ack
    /// cannot free them after the check. A fence by a newer epoch than any before also marks
    /// the session attached: its frames are no longer evicted for the store's budget, and a
    /// later [`EventLog::detached`] of an older attachment changes nothing.
    async fn fence(&self, epoch: Epoch) -> Result<(), ArcpError>;

    /// Fences replica instance `lost` out of this log, for good: every append it sends from
    /// now on is refused, through any of its handles, so a replica that was declared lost
    /// while it was only paused cannot write after the frames that ended its jobs. The first
    /// fence of `lost` also appends `frames`, in order, in the same step, and returns their
    /// sequence numbers; a repeated one appends nothing and returns `None`, so a takeover done
    /// twice (its first claimant died) writes its frames once. A store of one process has no
    /// other writer to refuse: for it only the frames matter.
    async fn fence_replica(
        &self,
        lost: &ReplicaInstance,
        frames: Vec<StoredFrame>,
    ) -> Result<Option<Vec<EventSeq>>, ArcpError>;

    /// Frees the frames up to `through` early, because the client of attachment `epoch`
    /// acknowledged them (§6.5). A no-op if the log was fenced by a newer epoch. A resume from
    /// before `through` then fails as if they had been evicted.
    async fn release_through(&self, through: EventSeq, epoch: Epoch) -> Result<(), ArcpError>;

    /// The log's current bounds.
    async fn bounds(&self) -> Result<LogBounds, ArcpError>;
}
