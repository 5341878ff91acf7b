//! The per-session event log: every job frame of a session, in `event_seq` order, bounded.
//!
//! The log is the single source of what a connection delivers. A [`LogCursor`] reads it from a
//! position onward, first what is already there (a replay, after a resume) and then whatever
//! is appended (live delivery), through the same loop; there is no separate broadcast to race.
//! Because a sequence number is assigned inside `append`, in the same critical section that
//! stores the frame, readers see frames exactly in sequence order with no gaps.
//!
//! The traits let a shared store (Redis) stand in for the in-memory [`memory::MemoryEventLog`]
//! without the session code changing: [`EventLog`] creates, opens and removes sessions' logs,
//! and a [`SessionLog`] handle is what everything on the frame path uses.

pub mod memory;

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    error::ArcpError,
    ids::{EventSeq, SessionId},
    protocol::server::{LoggedFrame, NewFrame},
};

/// What a log holds for one session, by sequence number.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LogBounds {
    /// The highest sequence number evicted so far (`ZERO` if none): a reader positioned before
    /// it has lost frames.
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
            return Err(ArcpError::ResumeWindowExpired(format!(
                "events after {last} are no longer buffered (oldest retained is {})",
                self.evicted_through.next()
            )));
        }
        Ok(())
    }
}

/// The store of every session's log.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Creates the empty log of a new session.
    async fn create(&self, session: &SessionId) -> Result<Arc<dyn SessionLog>, ArcpError>;

    /// The log of an existing session. Fails with `RESUME_WINDOW_EXPIRED` once it was removed.
    async fn open(&self, session: &SessionId) -> Result<Arc<dyn SessionLog>, ArcpError>;

    /// Drops the session's log: waiting readers fail, and so does every later call through a
    /// handle to it.
    async fn remove(&self, session: &SessionId);
}

/// One session's append-only, bounded log of job frames. The session, its jobs and its
/// stream each hold a handle, so the frame path never looks the session up again.
#[async_trait]
pub trait SessionLog: Send + Sync + 'static {
    /// Appends `frame`, assigning the session's next sequence number, and wakes readers.
    /// Evicts the oldest frames beyond the log's bound.
    ///
    /// The frame comes as the entry it becomes, as it travels from the job: every async layer
    /// it passes through then holds a pointer rather than the whole frame, so the futures stay
    /// small to move, and the in-memory log stores it without copying it.
    async fn append(&self, frame: NewFrame) -> Result<EventSeq, ArcpError>;

    /// Up to `max` frames with sequence numbers above `after`, in order. Fails with
    /// `RESUME_WINDOW_EXPIRED` if any frame after `after` has been evicted, so a reader can never
    /// skip a frame unknowingly.
    async fn read_after(
        &self,
        after: EventSeq,
        max: usize,
    ) -> Result<Vec<Arc<LoggedFrame>>, ArcpError>;

    /// Resolves once the log holds a frame above `after`. Fails when the log is removed.
    async fn wait_beyond(&self, after: EventSeq) -> Result<(), ArcpError>;

    /// Frees the frames up to `through` early, because the client acknowledged them (§6.5).
    /// A resume from before `through` then fails as if they had been evicted.
    async fn release_through(&self, through: EventSeq) -> Result<(), ArcpError>;

    /// The log's current bounds.
    async fn bounds(&self) -> Result<LogBounds, ArcpError>;
}

/// Reads a session's log from a position onward: replay and live delivery in one loop.
pub struct LogCursor {
    log: Arc<dyn SessionLog>,
    position: EventSeq,
    batch: usize,
}

impl LogCursor {
    /// A cursor that will yield the frames after `after`.
    pub fn new(log: Arc<dyn SessionLog>, after: EventSeq, batch: usize) -> Self {
        LogCursor {
            log,
            position: after,
            batch: batch.max(1),
        }
    }

    /// The sequence number of the last frame yielded.
    pub fn position(&self) -> EventSeq {
        self.position
    }

    /// The next frames in order, waiting for the log to grow when the cursor is at its end.
    ///
    /// Cancel-safe: the position only moves when a batch is returned, so dropping the future
    /// (e.g. in a `select!`) loses nothing.
    pub async fn next_batch(&mut self) -> Result<Vec<Arc<LoggedFrame>>, ArcpError> {
        loop {
            let frames = self.log.read_after(self.position, self.batch).await?;
            if let Some(last) = frames.last() {
                self.position = last.seq;
                return Ok(frames);
            }
            self.log.wait_beyond(self.position).await?;
        }
    }
}
