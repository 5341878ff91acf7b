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
    error::ArcpError,
    ids::{EventSeq, SessionId},
    protocol::server::{LoggedFrame, NewFrame},
    sync::wakeup::Wakeup,
};

use super::{EventLog, LogBounds, SessionLog};

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
    retained: VecDeque<Arc<LoggedFrame>>,
    bounds: LogBounds,
}

impl MemoryEventLog {
    /// An empty store whose logs keep at most `max_frames` frames each.
    pub fn new(max_frames: usize) -> Self {
        MemoryEventLog {
            sessions: RwLock::new(HashMap::new()),
            max_frames: max_frames.max(1),
        }
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
}

#[async_trait]
impl SessionLog for MemorySessionLog {
    async fn append(&self, frame: NewFrame) -> Result<EventSeq, ArcpError> {
        self.check_present()?;
        let seq = {
            let mut frames = self.frames.lock();
            let seq = frames.bounds.newest.next();
            frames.bounds.newest = seq;
            frames.retained.push_back(frame.logged(seq));
            while frames.retained.len() > self.max_frames {
                if let Some(evicted) = frames.retained.pop_front() {
                    frames.bounds.evicted_through = evicted.seq;
                }
            }
            seq
        };
        self.grew.notify();
        Ok(seq)
    }

    async fn read_after(
        &self,
        after: EventSeq,
        max: usize,
    ) -> Result<Vec<Arc<LoggedFrame>>, ArcpError> {
        self.check_present()?;
        let frames = self.frames.lock();
        if after < frames.bounds.evicted_through {
            return Err(ArcpError::ResumeWindowExpired(format!(
                "events after {after} were evicted from the buffer (oldest retained is {})",
                frames.bounds.evicted_through.next()
            )));
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

    async fn wait_beyond(&self, after: EventSeq) -> Result<(), ArcpError> {
        self.grew
            .wait_until(|| {
                self.frames.lock().bounds.newest > after || self.removed.load(Ordering::Acquire)
            })
            .await;
        self.check_present()
    }

    async fn release_through(&self, through: EventSeq) -> Result<(), ArcpError> {
        self.check_present()?;
        // Freed after the lock is released: dropping a thousand acknowledged frames must not
        // hold up the job appending the next one.
        let released: Vec<Arc<LoggedFrame>> = {
            let mut frames = self.frames.lock();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        clock::Timestamp,
        event_log::LogCursor,
        ids::JobId,
        protocol::{
            event::EventBody,
            server::{JobFrame, JobPayload},
        },
    };

    fn frame(n: u64) -> NewFrame {
        NewFrame::new(JobFrame {
            job_id: JobId::new("job_t"),
            trace_id: None,
            payload: JobPayload::Event {
                ts: Timestamp::now(),
                body: EventBody::Thought {
                    text: n.to_string(),
                },
            },
        })
    }

    /// A log keeping at most `max_frames` frames, after `count` appends.
    async fn log_after_appends(max_frames: usize, count: u64) -> Arc<dyn SessionLog> {
        let log = MemoryEventLog::new(max_frames)
            .create(&SessionId::generate())
            .await
            .unwrap();
        for n in 1..=count {
            log.append(frame(n)).await.unwrap();
        }
        log
    }

    /// The sequence numbers of the frames after `after`.
    async fn seqs_after(log: &dyn SessionLog, after: u64) -> Vec<u64> {
        let frames = log.read_after(EventSeq(after), 10).await.unwrap();
        frames.iter().map(|f| f.seq.get()).collect()
    }

    #[tokio::test]
    async fn assigns_gap_free_sequence_and_reads_from_any_position() {
        let log = MemoryEventLog::new(100)
            .create(&SessionId::generate())
            .await
            .unwrap();
        for n in 1..=10 {
            assert_eq!(log.append(frame(n)).await.unwrap(), EventSeq(n));
        }
        let got = log.read_after(EventSeq(4), 3).await.unwrap();
        let seqs: Vec<u64> = got.iter().map(|f| f.seq.get()).collect();
        assert_eq!(seqs, vec![5, 6, 7]);
        assert!(log.read_after(EventSeq(10), 3).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn eviction_is_reported_never_skipped() {
        let log = log_after_appends(3, 5).await;
        let bounds = log.bounds().await.unwrap();
        assert_eq!(bounds.evicted_through, EventSeq(2));
        assert_eq!(bounds.newest, EventSeq(5));
        let err = log.read_after(EventSeq(1), 10).await.unwrap_err();
        assert_eq!(err.code(), crate::error::ErrorCode::ResumeWindowExpired);
        assert_eq!(seqs_after(log.as_ref(), 2).await, vec![3, 4, 5]);
        assert!(bounds.check_resume_from(EventSeq(1)).is_err());
        assert!(bounds.check_resume_from(EventSeq(2)).is_ok());
        assert!(bounds.check_resume_from(EventSeq(6)).is_err());
    }

    #[tokio::test]
    async fn released_frames_are_gone_like_evicted_ones() {
        let log = log_after_appends(100, 5).await;
        log.release_through(EventSeq(3)).await.unwrap();
        assert_eq!(log.bounds().await.unwrap().evicted_through, EventSeq(3));
        assert!(log.read_after(EventSeq(2), 10).await.is_err());
        assert_eq!(seqs_after(log.as_ref(), 3).await, vec![4, 5]);
    }

    #[tokio::test]
    async fn cursor_moves_from_replay_to_live() {
        let store = MemoryEventLog::new(100);
        let s = SessionId::generate();
        let log = store.create(&s).await.unwrap();
        log.append(frame(1)).await.unwrap();
        let mut cursor = LogCursor::new(log.clone(), EventSeq::ZERO, 16);
        assert_eq!(cursor.next_batch().await.unwrap()[0].seq, EventSeq(1));
        let writer = {
            let log = log.clone();
            tokio::spawn(async move { log.append(frame(2)).await })
        };
        assert_eq!(cursor.next_batch().await.unwrap()[0].seq, EventSeq(2));
        writer.await.unwrap().unwrap();
        store.remove(&s).await;
        assert!(cursor.next_batch().await.is_err());
        assert!(
            log.append(frame(3)).await.is_err(),
            "a removed log takes no frames"
        );
        assert!(store.open(&s).await.is_err());
    }

    #[tokio::test]
    async fn a_reader_waiting_at_the_end_fails_when_the_log_is_removed() {
        let store = MemoryEventLog::new(100);
        let s = SessionId::generate();
        let mut cursor = LogCursor::new(store.create(&s).await.unwrap(), EventSeq::ZERO, 16);
        let reader = tokio::spawn(async move { cursor.next_batch().await });
        // On this single-threaded runtime, one yield runs the reader until it waits.
        tokio::task::yield_now().await;
        assert!(!reader.is_finished());
        store.remove(&s).await;
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("the waiting reader was woken")
            .unwrap();
        assert_eq!(
            outcome.unwrap_err().code(),
            crate::error::ErrorCode::ResumeWindowExpired
        );
    }
}
