//! [`LogCursor`]: replay and live delivery in one loop.

use std::{collections::VecDeque, sync::Arc};

use crate::{error::ArcpError, ids::EventSeq};

use super::{LogEntry, SessionLog, Wait};

/// Reads a session's log from a position onward: what is there, then what is appended.
pub struct LogCursor {
    log: Arc<dyn SessionLog>,
    position: EventSeq,
    batch: usize,
    /// Frames read but not yet handed out: a resume's first read, taken when it was checked.
    ahead: VecDeque<LogEntry>,
}

impl LogCursor {
    /// A cursor that will yield the frames after `after`, `batch` at a time at most.
    pub fn new(log: Arc<dyn SessionLog>, after: EventSeq, batch: usize) -> Self {
        LogCursor {
            log,
            position: after,
            batch: batch.max(1),
            ahead: VecDeque::new(),
        }
    }

    /// A cursor whose first frames were already read: `first`, the frames right after
    /// `after`, in order.
    pub fn with_first(
        log: Arc<dyn SessionLog>,
        after: EventSeq,
        batch: usize,
        first: Vec<LogEntry>,
    ) -> Self {
        let mut cursor = LogCursor::new(log, after, batch);
        cursor.ahead = first.into();
        cursor
    }

    /// The sequence number of the last frame yielded.
    pub fn position(&self) -> EventSeq {
        self.position
    }

    /// The next frames in order, waiting for the log to grow when the cursor is at its end.
    ///
    /// Cancel-safe: the position only moves when a batch is returned, so dropping the future
    /// (e.g. in a `select!`) loses nothing.
    pub async fn next_batch(&mut self) -> Result<Vec<LogEntry>, ArcpError> {
        let frames = if self.ahead.is_empty() {
            self.log
                .read(self.position, self.batch, Wait::ForMore)
                .await?
        } else {
            let take = self.batch.min(self.ahead.len());
            self.ahead.drain(..take).collect()
        };
        if let Some(last) = frames.last() {
            self.position = last.seq;
        }
        Ok(frames)
    }
}
