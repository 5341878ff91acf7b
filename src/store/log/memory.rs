//! The embedded, in-process event log.
//!
//! Each session's log is a queue of frames under its own mutex, which an append takes once.
//! The store's budget is one atomic byte count that every append adds to; only an append that
//! finds the count over the budget takes the store's list of detached sessions and evicts from
//! them, oldest detached first. Lock order: the detached list, then a session's frames.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Weak,
    },
    time::Instant,
};

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};

use crate::{
    encoding::StoredFrame,
    error::ArcpError,
    ids::{Epoch, EventSeq, ReplicaInstance, SessionId},
    metrics::store_latency::{latency, Operation, Store},
    sync::wakeup::Wakeup,
};

use super::{
    evicted, Appended, EventLog, LogBounds, LogEntry, LogLimits, Retention, SessionLog, Wait,
};

/// Event logs held in this process's memory, within [`LogLimits`].
pub struct MemoryEventLog {
    sessions: RwLock<HashMap<SessionId, Arc<MemorySessionLog>>>,
    limits: LogLimits,
    budget: Arc<Budget>,
}

/// What every log of a store shares: the bytes they retain, and which give them up first.
struct Budget {
    limit: u64,
    /// Bytes of every log's retained frames.
    retained: AtomicU64,
    detached: Mutex<Detached>,
    /// How many logs `detached` lists, so that an append over the budget when only attached
    /// sessions hold frames finds nothing to do without taking the lock.
    listed: AtomicUsize,
}

/// Detached sessions' logs that hold frames, in the order they detached.
#[derive(Default)]
struct Detached {
    order: BTreeMap<u64, Weak<MemorySessionLog>>,
    next: u64,
}

/// One session's log in memory.
struct MemorySessionLog {
    session: SessionId,
    /// Itself, for the store's detached list.
    me: Weak<MemorySessionLog>,
    limits: LogLimits,
    budget: Arc<Budget>,
    frames: Mutex<Frames>,
    removed: AtomicBool,
    /// Wakes readers waiting at the end of the log when it grows or is removed.
    grew: Wakeup,
}

struct Frames {
    retained: VecDeque<Retained>,
    bounds: LogBounds,
    /// The newest attachment that fenced the log; older ones may not release frames.
    fence: Epoch,
    /// Bytes of the retained frames.
    bytes: u64,
    /// Bytes ever appended: where the newest frame ends, counting from the first.
    appended: u64,
    /// [`Appended::window_start`] of the newest frame, and where that frame ends. It only
    /// moves forward, so finding it costs each frame one step, once.
    window_start: EventSeq,
    window_start_end: u64,
    /// Whether the store's budget may evict from this log.
    listing: Listing,
    /// The replica instances fenced out, by name: only their first fence appends its frames.
    /// This store has no writer but its own process, so nothing else depends on it.
    lost: HashSet<Arc<str>>,
}

/// A retained frame, and where it ends in the bytes ever appended.
struct Retained {
    entry: LogEntry,
    end: u64,
}

impl Retained {
    fn bytes(&self) -> u64 {
        self.entry.frame.len() as u64
    }
}

/// A log's place in its store's [`Detached`] list.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Listing {
    /// A stream is attached: nothing goes to the budget.
    Attached,
    /// Detached, under this key of the list.
    Listed(u64),
    /// Detached but holding nothing, so off the list (which then lists only logs that can
    /// give something up); the next append puts it back.
    Unlisted,
}

/// Frames taken out of a log, to be freed once its lock is released. The first is held
/// without allocating, since an append usually evicts at most one.
#[derive(Default)]
struct Evicted {
    first: Option<Retained>,
    rest: Vec<Retained>,
    bytes: u64,
}

impl Evicted {
    fn push(&mut self, frame: Retained) {
        self.bytes += frame.bytes();
        match self.first {
            None => self.first = Some(frame),
            Some(_) => self.rest.push(frame),
        }
    }
}

impl MemoryEventLog {
    /// An empty store whose logs keep at most `max_frames` frames each, with no byte bound.
    pub fn new(max_frames: usize) -> Self {
        Self::with_limits(LogLimits::frames(max_frames))
    }

    /// An empty store within `limits`.
    pub fn with_limits(limits: LogLimits) -> Self {
        let limits = LogLimits {
            max_frames: limits.max_frames.max(1),
            ..limits
        };
        MemoryEventLog {
            sessions: RwLock::new(HashMap::new()),
            limits,
            budget: Arc::new(Budget {
                limit: limits.budget_bytes,
                retained: AtomicU64::new(0),
                detached: Mutex::new(Detached::default()),
                listed: AtomicUsize::new(0),
            }),
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

    /// The bytes of frames all the logs retain together, what the budget bounds.
    pub fn retained_bytes(&self) -> u64 {
        self.budget.retained.load(Ordering::Acquire)
    }

    /// The frames all the logs retain together.
    pub fn retained_frames(&self) -> u64 {
        let logs: Vec<_> = self.sessions.read().values().cloned().collect();
        logs.iter()
            .map(|log| log.frames.lock().retained.len() as u64)
            .sum()
    }

    /// The bytes of frames the session's log retains, if it has one.
    pub fn session_bytes(&self, session: &SessionId) -> Option<u64> {
        let log = self.sessions.read().get(session).cloned()?;
        let bytes = log.frames.lock().bytes;
        Some(bytes)
    }

    /// Whether the session's log counts it as detached, if it has one.
    pub fn is_detached(&self, session: &SessionId) -> Option<bool> {
        let log = self.sessions.read().get(session).cloned()?;
        let listing = log.frames.lock().listing;
        Some(listing != Listing::Attached)
    }
}

#[async_trait]
impl EventLog for MemoryEventLog {
    async fn create(&self, session: &SessionId) -> Result<Arc<dyn SessionLog>, ArcpError> {
        let log = Arc::new_cyclic(|me| MemorySessionLog {
            session: session.clone(),
            me: me.clone(),
            limits: self.limits,
            budget: self.budget.clone(),
            frames: Mutex::new(Frames {
                retained: VecDeque::new(),
                bounds: LogBounds {
                    evicted_through: EventSeq::ZERO,
                    newest: EventSeq::ZERO,
                },
                fence: Epoch::ZERO,
                bytes: 0,
                appended: 0,
                window_start: EventSeq::ZERO,
                window_start_end: 0,
                listing: Listing::Attached,
                lost: HashSet::new(),
            }),
            removed: AtomicBool::new(false),
            grew: Wakeup::default(),
        });
        let replaced = self.sessions.write().insert(session.clone(), log.clone());
        if let Some(old) = replaced {
            old.remove();
        }
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
            log.remove();
        }
    }

    async fn detached(&self, session: &SessionId, epoch: Epoch) {
        let log = self.sessions.read().get(session).cloned();
        if let Some(log) = log {
            log.detach(epoch);
            if self.budget.retained.load(Ordering::Acquire) > self.budget.limit {
                self.budget.enforce();
            }
        }
    }

    async fn retention(&self) -> Option<Retention> {
        Some(Retention {
            frames: self.retained_frames(),
            bytes: self.retained_bytes(),
        })
    }
}

fn no_log(session: &SessionId) -> ArcpError {
    ArcpError::ResumeWindowExpired(format!("session {session} has no event log"))
}

impl Budget {
    /// Evicts detached sessions' oldest frames, the session detached longest ago first, until
    /// the store is within its budget or no detached session holds a frame.
    fn enforce(&self) {
        if self.listed.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut freed = Vec::new();
        {
            let mut detached = self.detached.lock();
            loop {
                let retained = self.retained.load(Ordering::Acquire);
                if retained <= self.limit {
                    break;
                }
                let Some((&key, log)) = detached.order.first_key_value() else {
                    break;
                };
                let Some(log) = log.upgrade() else {
                    self.unlist(&mut detached, key);
                    continue;
                };
                let mut frames = log.frames.lock();
                let mut evicted = Evicted::default();
                while evicted.bytes < retained - self.limit {
                    let Some(oldest) = frames.retained.pop_front() else {
                        break;
                    };
                    frames.evict(oldest, &mut evicted);
                }
                if frames.retained.is_empty() {
                    self.unlist(&mut detached, key);
                    frames.listing = Listing::Unlisted;
                }
                drop(frames);
                self.retained.fetch_sub(evicted.bytes, Ordering::AcqRel);
                freed.push(evicted);
            }
        }
        // Freed with no lock held.
        drop(freed);
    }

    /// Puts a detached log that was off the list because it held nothing back on it, now that
    /// it holds a frame again.
    fn relist(&self, log: &MemorySessionLog) {
        let mut detached = self.detached.lock();
        let mut frames = log.frames.lock();
        if frames.listing == Listing::Unlisted && !frames.retained.is_empty() {
            frames.listing = Listing::Listed(self.list(&mut detached, log));
        }
    }

    /// Adds `log` at the end of the detached list; returns its key.
    fn list(&self, detached: &mut Detached, log: &MemorySessionLog) -> u64 {
        let key = detached.next;
        detached.next += 1;
        detached.order.insert(key, log.me.clone());
        self.listed.store(detached.order.len(), Ordering::Release);
        key
    }

    fn unlist(&self, detached: &mut Detached, key: u64) {
        detached.order.remove(&key);
        self.listed.store(detached.order.len(), Ordering::Release);
    }
}

impl Frames {
    /// Takes `oldest`, just popped from the front, out of the count.
    fn evict(&mut self, oldest: Retained, into: &mut Evicted) {
        self.bytes -= oldest.bytes();
        self.bounds.evicted_through = oldest.entry.seq;
        into.push(oldest);
    }

    /// Moves the window's start on until the frames after it fit in `window` bytes.
    fn advance_window(&mut self, window: u64) -> EventSeq {
        if self.window_start < self.bounds.evicted_through {
            self.window_start = self.bounds.evicted_through;
            self.window_start_end = self.appended - self.bytes;
        }
        while self.appended - self.window_start_end > window {
            // Retained frames are contiguous from `evicted_through + 1`.
            let next = (self.window_start.get() - self.bounds.evicted_through.get()) as usize;
            let Some(frame) = self.retained.get(next) else {
                break;
            };
            self.window_start = frame.entry.seq;
            self.window_start_end = frame.end;
        }
        self.window_start
    }
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
            .map(|r| r.entry.clone())
            .collect())
    }

    /// Marks the log removed and frees its frames. The flag is set under the frames' lock,
    /// which every append checks it under, so no frame is added after the frames are freed.
    fn remove(&self) {
        let freed = {
            let mut detached = self.budget.detached.lock();
            let mut frames = self.frames.lock();
            self.removed.store(true, Ordering::Release);
            if let Listing::Listed(key) = frames.listing {
                self.budget.unlist(&mut detached, key);
            }
            frames.listing = Listing::Attached;
            frames.bytes = 0;
            std::mem::take(&mut frames.retained)
        };
        let bytes: u64 = freed.iter().map(Retained::bytes).sum();
        self.budget.retained.fetch_sub(bytes, Ordering::AcqRel);
        drop(freed);
        self.grew.notify();
    }

    /// Marks the session detached, unless a newer attachment than `epoch` fenced the log.
    fn detach(&self, epoch: Epoch) {
        let mut detached = self.budget.detached.lock();
        let mut frames = self.frames.lock();
        if self.removed.load(Ordering::Acquire)
            || epoch < frames.fence
            || frames.listing != Listing::Attached
        {
            return;
        }
        frames.listing = if frames.retained.is_empty() {
            Listing::Unlisted
        } else {
            Listing::Listed(self.budget.list(&mut detached, self))
        };
    }
}

impl Drop for MemorySessionLog {
    fn drop(&mut self) {
        // A log dropped without being removed (its store dropped first) still gives its bytes
        // back.
        let bytes = self.frames.get_mut().bytes;
        self.budget.retained.fetch_sub(bytes, Ordering::AcqRel);
    }
}

impl MemorySessionLog {
    /// [`MemorySessionLog::read_now`], timed in the store latency metrics.
    fn read_timed(&self, after: EventSeq, max: usize) -> Result<Vec<LogEntry>, ArcpError> {
        let started = Instant::now();
        let read = self.read_now(after, max);
        latency(Store::Memory, Operation::LogRead).record(started.elapsed());
        read
    }
}

#[async_trait]
impl SessionLog for MemorySessionLog {
    async fn append_measured(&self, frame: StoredFrame) -> Result<Appended, ArcpError> {
        let started = Instant::now();
        let size = frame.len() as u64;
        // Evicted frames are freed after the lock is released.
        let mut evicted = Evicted::default();
        let (appended, relist) = {
            let mut frames = self.frames.lock();
            self.check_present()?;
            let seq = frames.bounds.newest.next();
            frames.bounds.newest = seq;
            frames.appended += size;
            frames.bytes += size;
            let end = frames.appended;
            frames.retained.push_back(Retained {
                entry: LogEntry { seq, frame },
                end,
            });
            while frames.retained.len() > self.limits.max_frames
                || (frames.bytes > self.limits.max_bytes && frames.retained.len() > 1)
            {
                let Some(oldest) = frames.retained.pop_front() else {
                    break;
                };
                frames.evict(oldest, &mut evicted);
            }
            let window_start = frames.advance_window(self.limits.window_bytes());
            (
                Appended { seq, window_start },
                frames.listing == Listing::Unlisted,
            )
        };
        // One atomic add in the common case; the budget is looked at only when it is exceeded.
        let retained = if evicted.bytes <= size {
            let added = size - evicted.bytes;
            self.budget.retained.fetch_add(added, Ordering::AcqRel) + added
        } else {
            let freed = evicted.bytes - size;
            self.budget.retained.fetch_sub(freed, Ordering::AcqRel) - freed
        };
        drop(evicted);
        self.grew.notify();
        if relist {
            self.budget.relist(self);
        }
        if retained > self.budget.limit {
            self.budget.enforce();
        }
        latency(Store::Memory, Operation::LogAppend).record(started.elapsed());
        Ok(appended)
    }

    async fn read(
        &self,
        after: EventSeq,
        max: usize,
        wait: Wait,
    ) -> Result<Vec<LogEntry>, ArcpError> {
        let max = max.max(1);
        let frames = self.read_timed(after, max)?;
        if !frames.is_empty() || wait == Wait::No {
            return Ok(frames);
        }
        self.grew
            .wait_until(|| {
                self.frames.lock().bounds.newest > after || self.removed.load(Ordering::Acquire)
            })
            .await;
        self.read_timed(after, max)
    }

    async fn fence(&self, epoch: Epoch) -> Result<(), ArcpError> {
        self.check_present()?;
        let mut detached = self.budget.detached.lock();
        let mut frames = self.frames.lock();
        if epoch > frames.fence {
            frames.fence = epoch;
            if let Listing::Listed(key) = frames.listing {
                self.budget.unlist(&mut detached, key);
            }
            frames.listing = Listing::Attached;
        }
        Ok(())
    }

    async fn fence_replica(
        &self,
        lost: &ReplicaInstance,
        frames: Vec<StoredFrame>,
    ) -> Result<Option<Vec<EventSeq>>, ArcpError> {
        self.check_present()?;
        if !self.frames.lock().lost.insert(lost.as_str().into()) {
            return Ok(None);
        }
        let mut seqs = Vec::with_capacity(frames.len());
        for frame in frames {
            seqs.push(self.append(frame).await?);
        }
        Ok(Some(seqs))
    }

    async fn release_through(&self, through: EventSeq, epoch: Epoch) -> Result<(), ArcpError> {
        self.check_present()?;
        // Freed after the lock is released: dropping a thousand acknowledged frames must not
        // hold up the job appending the next one.
        let released: Vec<Retained> = {
            let mut frames = self.frames.lock();
            if epoch < frames.fence {
                return Ok(());
            }
            let count = frames.retained.partition_point(|f| f.entry.seq <= through);
            let released: Vec<_> = frames.retained.drain(..count).collect();
            if let Some(last) = released.last() {
                frames.bounds.evicted_through = last.entry.seq;
            }
            let bytes: u64 = released.iter().map(Retained::bytes).sum();
            frames.bytes -= bytes;
            released
        };
        let bytes: u64 = released.iter().map(Retained::bytes).sum();
        self.budget.retained.fetch_sub(bytes, Ordering::AcqRel);
        drop(released);
        Ok(())
    }

    async fn bounds(&self) -> Result<LogBounds, ArcpError> {
        self.check_present()?;
        Ok(self.frames.lock().bounds)
    }
}
