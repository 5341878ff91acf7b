//! The embedded, in-process event log.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};

use crate::{
    encoding::StoredFrame,
    error::ArcpError,
    ids::{Epoch, EventSeq, SessionId},
    sync::wakeup::Wakeup,
};

use super::{evicted, EventLog, LogBounds, LogEntry, SessionLog, Wait};

/// Event logs held in this process's memory, each bounded to `max_frames` frames.
pub struct MemoryEventLog {
    sessions: RwLock<HashMap<SessionId, Arc<MemorySessionLog>>>,
    max_frames: usize,
}

/// One session's log in memory.
struct MemorySessionLog {
    session: SessionId,
    max_frames: usize,
    frames: Mutex<Frames>,
    removed: AtomicBool,
    /// Wakes readers waiting at the end of the log when it grows or is removed.
    grew: Wakeup,
}

struct Frames {
    retained: VecDeque<LogEntry>,
    bounds: LogBounds,
    /// The newest attachment that fenced the log; older ones may not release frames.
    fence: Epoch,
}

impl MemoryEventLog {
    /// An empty store whose logs keep at most `max_frames` frames each.
    pub fn new(max_frames: usize) -> Self {
        MemoryEventLog {
            sessions: RwLock::new(HashMap::new()),
            max_frames: max_frames.max(1),
        }
    }

    /// How many sessions have a log.
    pub fn len(&self) -> usize {
        self.sessions.read().len()
    }

    /// Whether no session has a log.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl EventLog for MemoryEventLog {
    async fn create(&self, session: &SessionId) -> Result<Arc<dyn SessionLog>, ArcpError> {
        let log = Arc::new(MemorySessionLog {
            session: session.clone(),
            max_frames: self.max_frames,
            frames: Mutex::new(Frames {
                retained: VecDeque::new(),
                bounds: LogBounds {
                    evicted_through: EventSeq::ZERO,
                    newest: EventSeq::ZERO,
                },
                fence: Epoch::ZERO,
            }),
            removed: AtomicBool::new(false),
            grew: Wakeup::default(),
        });
        self.sessions.write().insert(session.clone(), log.clone());
        Ok(log)
    }

    async fn open(&self, session: &SessionId) -> Result<Arc<dyn SessionLog>, ArcpError> {
        match self.sessions.read().get(session) {
            Some(log) => Ok(log.clone()),
            None => Err(no_log(session)),
        }
    }

    async fn remove(&self, session: &SessionId) {
        let removed = self.sessions.write().remove(session);
        if let Some(log) = removed {
            log.removed.store(true, Ordering::Release);
            log.grew.notify();
        }
    }
}

fn no_log(session: &SessionId) -> ArcpError {
    ArcpError::ResumeWindowExpired(format!("session {session} has no event log"))
}

impl MemorySessionLog {
    /// Fails once the log was removed, so that nothing is added to a log no one can read.
    fn check_present(&self) -> Result<(), ArcpError> {
        if self.removed.load(Ordering::Acquire) {
            return Err(no_log(&self.session));
        }
        Ok(())
    }

    fn read_now(&self, after: EventSeq, max: usize) -> Result<Vec<LogEntry>, ArcpError> {
        self.check_present()?;
        let frames = self.frames.lock();
        if after < frames.bounds.evicted_through {
            return Err(evicted(after, frames.bounds.evicted_through));
        }
        // Retained frames are contiguous from `evicted_through + 1`, so the index is arithmetic.
        let first_retained = frames.bounds.evicted_through.get() + 1;
        let start = (after.get() + 1).saturating_sub(first_retained) as usize;
        Ok(frames
            .retained
            .range(start.min(frames.retained.len())..)
            .take(max)
            .cloned()
            .collect())
    }
}

#[async_trait]
impl SessionLog for MemorySessionLog {
    async fn append(&self, frame: StoredFrame) -> Result<EventSeq, ArcpError> {
        self.check_present()?;
        // Evicted frames are freed after the lock is released.
        let mut evicted = None;
        let seq = {
            let mut frames = self.frames.lock();
            let seq = frames.bounds.newest.next();
            frames.bounds.newest = seq;
            frames.retained.push_back(LogEntry { seq, frame });
            if frames.retained.len() > self.max_frames {
                evicted = frames.retained.pop_front();
                if let Some(entry) = &evicted {
                    frames.bounds.evicted_through = entry.seq;
                }
            }
            seq
        };
        drop(evicted);
        self.grew.notify();
        Ok(seq)
    }

    async fn read(
        &self,
        after: EventSeq,
        max: usize,
        wait: Wait,
    ) -> Result<Vec<LogEntry>, ArcpError> {
        let max = max.max(1);
        let frames = self.read_now(after, max)?;
        if !frames.is_empty() || wait == Wait::No {
            return Ok(frames);
        }
        self.grew
            .wait_until(|| {
                self.frames.lock().bounds.newest > after || self.removed.load(Ordering::Acquire)
            })
            .await;
        self.read_now(after, max)
    }

    async fn fence(&self, epoch: Epoch) -> Result<(), ArcpError> {
        self.check_present()?;
        let mut frames = self.frames.lock();
        frames.fence = frames.fence.max(epoch);
        Ok(())
    }

    async fn release_through(&self, through: EventSeq, epoch: Epoch) -> Result<(), ArcpError> {
        self.check_present()?;
        // Freed after the lock is released: dropping a thousand acknowledged frames must not
        // hold up the job appending the next one.
        let released: Vec<LogEntry> = {
            let mut frames = self.frames.lock();
            if epoch < frames.fence {
                return Ok(());
            }
            let count = frames.retained.partition_point(|f| f.seq <= through);
            let released: Vec<_> = frames.retained.drain(..count).collect();
            if let Some(last) = released.last() {
                frames.bounds.evicted_through = last.seq;
            }
            released
        };
        drop(released);
        Ok(())
    }

    async fn bounds(&self) -> Result<LogBounds, ArcpError> {
        self.check_present()?;
        Ok(self.frames.lock().bounds)
    }
}
