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
//! everything on the frame path uses. [`memory::MemoryEventLog`] is the embedded store.

pub mod cursor;
pub mod memory;

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    encoding::StoredFrame,
    error::ArcpError,
    ids::{Epoch, EventSeq, SessionId},
};

/// A frame as a log holds it: its place in the session's sequence, and the frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The session-scoped sequence number (§8.3).
    pub seq: EventSeq,
    /// The frame.
    pub frame: StoredFrame,
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
    /// handle to it.
    async fn remove(&self, session: &SessionId);
}

/// One session's append-only, bounded log of job frames. The session's stream, its jobs and
/// the jobs it subscribed to each hold a handle, so the frame path never looks the session up.
///
/// Every call may suspend (a shared store is a network away) and may be cancelled by dropping
/// its future; a dropped call has either taken full effect or none.
#[async_trait]
pub trait SessionLog: Send + Sync + 'static {
    /// Appends `frame`, assigning the session's next sequence number, and wakes readers.
    /// Evicts the oldest frames beyond the log's bound.
    async fn append(&self, frame: StoredFrame) -> Result<EventSeq, ArcpError>;

    /// Up to `max` frames with sequence numbers above `after`, in order; with
    /// [`Wait::ForMore`], waits until there is at least one. Fails with
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
    /// cannot free them after the check.
    async fn fence(&self, epoch: Epoch) -> Result<(), ArcpError>;

    /// Frees the frames up to `through` early, because the client of attachment `epoch`
    /// acknowledged them (§6.5). A no-op if the log was fenced by a newer epoch. A resume from
    /// before `through` then fails as if they had been evicted.
    async fn release_through(&self, through: EventSeq, epoch: Epoch) -> Result<(), ArcpError>;

    /// The log's current bounds.
    async fn bounds(&self) -> Result<LogBounds, ArcpError>;
}
