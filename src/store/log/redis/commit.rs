//! Group commit, pipelined: the appends of one log on one replica go to Redis in batches, and a
//! few batches may be on their way at once, so a chatty job pays a round trip per batch rather
//! than per frame, and Redis is not idle while a batch's answer comes back.
//!
//! Callers queue their frame; a committer task takes what is queued, in order, sends it as one
//! script call, answers each caller, and goes on until the queue is empty. The committer is a
//! task of its own, not one of the callers, so a caller that gives up waiting cannot take a
//! batch of others' frames down with it.
//!
//! # Batches
//!
//! A batch carries at most [`MAX_BATCH_FRAMES`] frames and about [`MAX_BATCH_BYTES`]. With no
//! batch in flight, whatever is queued goes at once: a lone frame waits for nothing. While
//! batches are in flight, the next one goes as soon as a whole batch is queued, up to
//! [`MAX_IN_FLIGHT`] of them; a part batch waits for the batches in flight to come back, which
//! is its linger. Redis runs one connection's commands in order, so batches sent one after
//! another are numbered in that order, gap-free. All the logs of a store together have at most
//! [`MAX_STORE_IN_FLIGHT`] batches on their way ([`Sending`]).
//!
//! Every batch has a number of its own, which the append script records for the log's writer
//! (this replica's handle), with the numbers its frames got, for the last few batches it
//! applied: a second try of a batch that Redis had applied (only its answer was lost) answers
//! what the first did, and nothing is appended twice; a batch older than those is refused.
//!
//! # Order when a batch fails
//!
//! A batch that fails must not leave the batches sent behind it to be appended ahead of it,
//! were it tried again or sent again on a new connection. So each batch sent while another is
//! in flight names that one ([`Link::after`]), and the append script refuses it
//! ([`CommitError::OutOfOrder`]) unless that batch is the last this writer appended to the log.
//! A batch sent with none in flight starts a new chain: every batch before it has been
//! answered. A failed batch thus fails the ones chained behind it that it did not precede in
//! Redis; the committer waits for those before it sends more, so that the frames queued later
//! go in a new chain, after them all.
//!
//! # When Redis does not answer
//!
//! A batch Redis did not take ([`CommitError::Unreachable`]) is tried again, with back-off, as
//! the same batch, once every batch before it is answered; so is one refused as out of order
//! because the batch before it had not arrived yet, once that one is appended. The tries go on
//! for [`CommitBounds::retry_for`] from the first failure of the outage, so a short outage
//! costs the appends nothing but time. Meanwhile the appends that arrive queue up behind the
//! batch, up to the log's own bounds in frames and bytes; beyond them an append fails at once.
//!
//! Past the bound the batch fails, and so does every later one that Redis does not take at its
//! first try, until one goes through and the outage is over: the jobs whose emits fail end
//! with a retryable `INTERNAL_ERROR`. A batch holding a frame that ends a job is the
//! exception: it is tried until Redis answers (or the log is found gone), so the end of the
//! job reaches its client once Redis is back; while it waits past the bound, every frame that
//! does not end a job fails at once instead of queueing behind it. If Redis never comes back,
//! those ends are lost with the process, as a replica's crash would lose them.
//!
//! A batch that failed may have been applied all the same (its command reached Redis, the
//! answer never came back). Its frames are then in the log with the numbers they got, before
//! every later frame of this writer, as the chain keeps them.
//!
//! # Cancellation
//!
//! A caller of [`Commits::append`] cancelled while its frame is still queued takes it out:
//! that append had no effect. Once its frame was taken into a batch it will be appended (or
//! the batch fails as a whole), so the append took full effect; that the caller's later calls
//! see it is what [`Commits::settle`] is for. A frame queued with [`Commits::queue`] stays
//! queued whatever becomes of its answer.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use futures::{stream::FuturesOrdered, StreamExt};
use parking_lot::Mutex;
use tokio::{
    sync::{oneshot, OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use crate::{encoding::StoredFrame, error::ArcpError, store::log::Appended, sync::wakeup::Wakeup};

/// The most frames one batch carries, and about the most bytes: a script call holds Redis up
/// for everyone while it runs.
const MAX_BATCH_FRAMES: usize = 256;
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// The most batches of one log on their way to Redis at once: enough that Redis has the next
/// one while the answer to the last one travels back and is handed out. The append script
/// remembers one more batch of each writer than this, so that any batch in flight when Redis
/// stopped answering can be tried again.
pub(super) const MAX_IN_FLIGHT: usize = 3;

/// The most batches all the logs of one store have on their way at once (see [`Sending`]).
const MAX_STORE_IN_FLIGHT: usize = 64;

/// The wait before the first retry of a batch, doubling after each up to [`MAX_BACKOFF`]: a
/// Redis that is restarting answers within a few hundred milliseconds, and one that is down
/// is asked about once a second.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The batches a store's logs have on their way to Redis, together. Under more load than Redis
/// keeps up with, the batches beyond [`MAX_STORE_IN_FLIGHT`] wait in their logs' queues, where
/// their frames gather into larger batches, which Redis takes at less cost a frame, rather than
/// in Redis, where every call of every store behind them would wait (and time out).
#[derive(Clone)]
pub(super) struct Sending(Arc<Semaphore>);

impl Sending {
    /// No batch on its way yet.
    pub(super) fn new() -> Sending {
        Sending(Arc::new(Semaphore::new(MAX_STORE_IN_FLIGHT)))
    }
}

/// How long and how much one log's committer holds on to while Redis does not answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct CommitBounds {
    /// How long a batch is tried again, from the first failure of the outage.
    pub(super) retry_for: Duration,
    /// The most frames that may wait for Redis during an outage: the log keeps no more.
    pub(super) max_queued_frames: usize,
    /// The most bytes of frames that may wait for Redis during an outage.
    pub(super) max_queued_bytes: u64,
}

/// A batch's place among this handle's batches.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Link {
    /// The batch's number; this handle's batches are numbered from 1 in the order they go.
    pub(super) number: u64,
    /// The batch in flight when this one went, which Redis must have appended last for this
    /// writer; `None` for the first of a chain.
    pub(super) after: Option<u64>,
}

/// How a batch failed.
#[derive(Debug)]
pub(super) enum CommitError {
    /// Redis did not take the call, for now (`store::redis::is_transient`): it may have been
    /// applied, and trying the same batch again is safe.
    Unreachable(ArcpError),
    /// The batch named before it ([`Link::after`]) was not the last its writer appended, so
    /// it was not applied: that one failed, or has not arrived yet.
    OutOfOrder(ArcpError),
    /// Anything else (the log is gone, an unexpected answer): another try would fail alike.
    Failed(ArcpError),
}

impl CommitError {
    /// The error a caller that does not try again fails with.
    pub(super) fn into_error(self) -> ArcpError {
        match self {
            CommitError::Unreachable(e) | CommitError::OutOfOrder(e) | CommitError::Failed(e) => e,
        }
    }
}

/// What commits a batch: a log.
#[async_trait]
pub(super) trait Batcher: Send + Sync + 'static {
    /// The log's queue.
    fn commits(&self) -> &Commits;

    /// The log, as log lines name it.
    fn label(&self) -> &str;

    /// Appends `frames` in order, all or none, as batch `link` of this log's writer, and pushes
    /// what each append did onto `out`; with [`Link::after`], only if that batch is the last
    /// this writer appended. Called again with the same `link` and `frames` after an
    /// [`CommitError::Unreachable`], it appends them only if the first call did not, and
    /// answers either way with the numbers they got.
    async fn commit(
        &self,
        frames: &[StoredFrame],
        link: Link,
        out: &mut Vec<Appended>,
    ) -> Result<(), CommitError>;
}

/// One log's queue of appends, and what is known of the batches taken from it.
pub(super) struct Commits {
    queue: Mutex<Queue>,
    /// Its store's batches on their way.
    sending: Sending,
    /// The ticket of the last frame of the last batch answered.
    answered: AtomicU64,
    /// Wakes [`Commits::settle`] when a batch is answered.
    batch_done: Wakeup,
    /// Wakes the committer, waiting for batches in flight, when a whole batch is queued.
    batch_queued: Wakeup,
    bounds: CommitBounds,
}

type Answer = oneshot::Sender<Result<Appended, ArcpError>>;

#[derive(Default)]
struct Queue {
    /// Frames waiting for a batch, by ticket.
    waiting: VecDeque<Queued>,
    /// The bytes of the frames waiting.
    bytes: u64,
    /// The last ticket given out; tickets follow the order of the queue.
    issued: u64,
    /// The last ticket taken into a batch.
    taken: u64,
    /// Whether a committer task is running; it empties the queue before it stops.
    committing: bool,
    /// The last ticket whose caller stopped waiting after its frame was taken.
    abandoned: u64,
    /// The number of the last batch taken. Numbers are never reused, so that the append script
    /// can tell a second try of a batch from the next batch.
    batches: u64,
    /// Since when Redis has not taken this log's batches; `None` while it does.
    trouble: Option<Instant>,
    /// Whether the outage went past the bound (so batches fail after one try).
    gave_up: bool,
    /// Set while a batch that ends a job is tried past the bound: a frame that does not end a
    /// job fails at once, with this error, rather than wait behind it.
    refusing: Option<ArcpError>,
}

impl Queue {
    /// Whether a whole batch is waiting.
    fn has_batch(&self) -> bool {
        self.waiting.len() >= MAX_BATCH_FRAMES || self.bytes >= MAX_BATCH_BYTES as u64
    }
}

struct Queued {
    ticket: u64,
    frame: StoredFrame,
    answer: Answer,
}

/// A batch on its way: its frames' answers, its last ticket, and its place among the store's
/// batches on their way, held until it is answered.
struct Batch {
    frames: Vec<StoredFrame>,
    answers: Vec<Answer>,
    link: Link,
    last: u64,
    _sending: OwnedSemaphorePermit,
}

impl Commits {
    /// An empty queue of a log of the store whose batches on their way `sending` counts,
    /// riding out outages within `bounds`.
    pub(super) fn new(sending: &Sending, bounds: CommitBounds) -> Commits {
        Commits {
            queue: Mutex::default(),
            sending: sending.clone(),
            answered: AtomicU64::new(0),
            batch_done: Wakeup::default(),
            batch_queued: Wakeup::default(),
            bounds,
        }
    }

    /// How many batches were taken so far.
    pub(super) fn batches_taken(&self) -> u64 {
        self.queue.lock().batches
    }

    /// Appends `frame` to `log` in the next batch, and returns what the append did.
    pub(super) async fn append<L: Batcher>(
        log: Arc<L>,
        frame: StoredFrame,
    ) -> Result<Appended, ArcpError> {
        let (ticket, answered) = Commits::enqueue(&log, frame)?;
        let mut waiting = Waiting {
            commits: log.commits(),
            ticket,
            answered: false,
        };
        let outcome = answered.await;
        waiting.answered = true;
        outcome.unwrap_or_else(|_| Err(stopped()))
    }

    /// Queues `frame` for `log`'s next batch and returns at once; the receiver gets what the
    /// append did. Dropping it leaves the frame queued. Fails at once where
    /// [`Commits::append`] would.
    pub(super) fn queue<L: Batcher>(
        log: Arc<L>,
        frame: StoredFrame,
    ) -> Result<oneshot::Receiver<Result<Appended, ArcpError>>, ArcpError> {
        Ok(Commits::enqueue(&log, frame)?.1)
    }

    /// Puts `frame` at the end of the queue, starting a committer if none runs; returns its
    /// ticket and where its answer comes.
    fn enqueue<L: Batcher>(
        log: &Arc<L>,
        frame: StoredFrame,
    ) -> Result<(u64, oneshot::Receiver<Result<Appended, ArcpError>>), ArcpError> {
        let (answer, answered) = oneshot::channel();
        let commits = log.commits();
        let (ticket, start, whole) = {
            let mut queue = commits.queue.lock();
            if !frame.ends_job() {
                commits.check_room(&queue, &frame)?;
            }
            let had_batch = queue.has_batch();
            queue.issued += 1;
            queue.bytes += frame.len() as u64;
            let ticket = queue.issued;
            queue.waiting.push_back(Queued {
                ticket,
                frame,
                answer,
            });
            let start = !queue.committing;
            queue.committing = true;
            (ticket, start, !had_batch && queue.has_batch())
        };
        if start {
            tokio::spawn(commit_all(log.clone()));
        } else if whole {
            commits.batch_queued.notify();
        }
        Ok((ticket, answered))
    }

    /// Whether `frame`, which does not end a job, may queue up: always, unless Redis is not
    /// answering and the queue is full, or a job's end waits past the bound.
    fn check_room(&self, queue: &Queue, frame: &StoredFrame) -> Result<(), ArcpError> {
        if let Some(refused) = &queue.refusing {
            return Err(refused.clone());
        }
        let full = queue.waiting.len() >= self.bounds.max_queued_frames
            || queue.bytes + frame.len() as u64 > self.bounds.max_queued_bytes;
        if queue.trouble.is_some() && !queue.waiting.is_empty() && full {
            return Err(ArcpError::Internal(format!(
                "the event log is unavailable: {} frames ({} bytes) already wait for Redis to \
                 answer, as many as the log holds",
                queue.waiting.len(),
                queue.bytes
            )));
        }
        Ok(())
    }

    /// Returns once every append whose caller stopped waiting after its frame went into a
    /// batch has been answered by Redis, so that a call made after a cancelled append sees it.
    /// Costs one lock when no append was abandoned.
    pub(super) async fn settle(&self) {
        let abandoned = self.queue.lock().abandoned;
        if self.answered.load(Ordering::Acquire) >= abandoned {
            return;
        }
        self.batch_done
            .wait_until(|| self.answered.load(Ordering::Acquire) >= abandoned)
            .await;
    }

    /// Returns once every frame taken into a batch so far has been answered, or Redis is found
    /// not to answer (then the answers may be long in coming): at once when no batch is on its
    /// way.
    pub(super) async fn landed(&self) {
        let taken = self.queue.lock().taken;
        let landed = || {
            self.answered.load(Ordering::Acquire) >= taken || self.queue.lock().trouble.is_some()
        };
        if landed() {
            return;
        }
        self.batch_done.wait_until(landed).await;
    }

    /// Whether a batch may go: any frames when `alone` (no batch is in flight), else only a
    /// whole batch. Marks the committer stopped when the queue is empty and it is `alone`.
    fn has_next(&self, alone: bool) -> bool {
        let mut queue = self.queue.lock();
        if queue.waiting.is_empty() {
            if alone {
                queue.committing = false;
            }
            return false;
        }
        alone || queue.has_batch()
    }

    /// Moves the next batch out of the queue, if [`Commits::has_next`]. `after` is the batch
    /// in flight last sent; `sending` is the batch's place among the store's.
    fn take(
        &self,
        alone: bool,
        after: Option<u64>,
        sending: OwnedSemaphorePermit,
    ) -> Option<Batch> {
        if !self.has_next(alone) {
            return None;
        }
        let mut queue = self.queue.lock();
        let mut batch = Batch {
            frames: Vec::new(),
            answers: Vec::new(),
            link: Link {
                number: 0,
                after: if alone { None } else { after },
            },
            last: 0,
            _sending: sending,
        };
        let mut bytes = 0;
        while let Some(next) = queue.waiting.front() {
            if !batch.frames.is_empty()
                && (batch.frames.len() == MAX_BATCH_FRAMES
                    || bytes + next.frame.len() > MAX_BATCH_BYTES)
            {
                break;
            }
            let Some(next) = queue.waiting.pop_front() else {
                break;
            };
            bytes += next.frame.len();
            queue.taken = next.ticket;
            batch.frames.push(next.frame);
            batch.answers.push(next.answer);
        }
        queue.bytes -= bytes as u64;
        queue.batches += 1;
        batch.link.number = queue.batches;
        batch.last = queue.taken;
        Some(batch)
    }

    fn answered_through(&self, ticket: u64) {
        self.answered.fetch_max(ticket, Ordering::AcqRel);
        self.batch_done.notify();
    }

    /// Redis answered a batch: whatever outage there was is over. Returns whether it had gone
    /// past the bound.
    fn redis_answered(&self) -> bool {
        let mut queue = self.queue.lock();
        if queue.trouble.is_none() && queue.refusing.is_none() && !queue.gave_up {
            return false;
        }
        queue.trouble = None;
        queue.refusing = None;
        std::mem::take(&mut queue.gave_up)
    }

    /// Redis did not take a batch: since when it has not (now, if it did until now), and
    /// whether this is the first time the outage goes past the bound.
    fn redis_failed(&self) -> (Instant, bool) {
        let (since, first) = {
            let mut queue = self.queue.lock();
            let since = *queue.trouble.get_or_insert_with(Instant::now);
            let past = since.elapsed() >= self.bounds.retry_for;
            let first = past && !queue.gave_up;
            queue.gave_up |= past;
            (since, first)
        };
        // A reader waiting for the batches on their way to land waits no more.
        self.batch_done.notify();
        (since, first)
    }

    /// While a job's end waits past the bound: fails the frames queued behind it that do not
    /// end a job, and every one that comes until Redis answers, with `error`.
    fn refuse_events(&self, error: &ArcpError) {
        let refused: VecDeque<Queued> = {
            let mut queue = self.queue.lock();
            queue.refusing = Some(error.clone());
            let (ends, events): (VecDeque<Queued>, VecDeque<Queued>) =
                std::mem::take(&mut queue.waiting)
                    .into_iter()
                    .partition(|q| q.frame.ends_job());
            queue.waiting = ends;
            let freed: u64 = events.iter().map(|q: &Queued| q.frame.len() as u64).sum();
            queue.bytes -= freed;
            events
        };
        for queued in refused {
            let _ = queued.answer.send(Err(error.clone()));
        }
    }
}

fn stopped() -> ArcpError {
    ArcpError::Internal("the event log's committer stopped before answering".into())
}

/// Commits batches, a few at a time, until the queue is empty and every batch is answered.
async fn commit_all<L: Batcher>(log: Arc<L>) {
    let commits = log.commits();
    // If this task is dropped (the runtime shutting down), the batches it held count as
    // answered, their callers learn they failed, and the next append starts a committer again.
    let mut stopped = Stopped {
        commits,
        taken: 0,
        done: false,
    };
    let mut in_flight = FuturesOrdered::new();
    let mut last_sent = None;
    // The last batch answered as appended, which a batch chained behind it and refused as out
    // of order had overtaken on its way, and may be tried again after.
    let mut last_appended = None;
    // Set when a batch failed: the batches chained behind it fail too unless it was appended
    // after all, so the next batch waits for them and starts a chain of its own.
    let mut failed = false;
    loop {
        failed &= !in_flight.is_empty();
        // Set when a batch may go but the store has as many on their way as it may.
        let mut held_up = false;
        while in_flight.len() < MAX_IN_FLIGHT && !failed && commits.has_next(in_flight.is_empty()) {
            let Ok(sending) = commits.sending.0.clone().try_acquire_owned() else {
                held_up = true;
                break;
            };
            let Some(batch) = commits.take(in_flight.is_empty(), last_sent, sending) else {
                break;
            };
            stopped.taken = batch.last;
            last_sent = Some(batch.link.number);
            in_flight.push_back(send(log.clone(), batch));
        }
        if in_flight.is_empty() && !held_up {
            break;
        }
        let room = in_flight.len() < MAX_IN_FLIGHT;
        let whole_batch = commits
            .batch_queued
            .wait_until(|| commits.queue.lock().has_batch());
        let sendable = commits.sending.0.clone().acquire_owned();
        tokio::select! {
            biased;
            answered = in_flight.next(), if !in_flight.is_empty() => {
                if let Some((batch, outcome)) = answered {
                    let outcome = match outcome {
                        Err(CommitError::Unreachable(e)) => retry(&*log, &batch, e).await,
                        Err(CommitError::OutOfOrder(e))
                            if batch.link.after.is_some() && batch.link.after == last_appended =>
                        {
                            retry(&*log, &batch, e).await
                        }
                        Err(e) => Err(e.into_error()),
                        Ok(done) => {
                            if commits.redis_answered() {
                                tracing::info!(log = log.label(), "Redis takes the event log's appends again");
                            }
                            Ok(done)
                        }
                    };
                    let last = batch.last;
                    failed |= outcome.is_err();
                    last_appended = outcome.is_ok().then_some(batch.link.number);
                    answer(batch, outcome);
                    commits.answered_through(last);
                }
            }
            sending = sendable, if held_up => {
                let batch = sending
                    .ok()
                    .and_then(|sending| commits.take(in_flight.is_empty(), last_sent, sending));
                if let Some(batch) = batch {
                    stopped.taken = batch.last;
                    last_sent = Some(batch.link.number);
                    in_flight.push_back(send(log.clone(), batch));
                }
            }
            () = whole_batch, if room && !failed && !held_up => {}
        }
    }
    stopped.done = true;
}

/// Sends `batch` to `log`'s store once; resolves to it with what each append did.
async fn send<L: Batcher>(
    log: Arc<L>,
    batch: Batch,
) -> (Batch, Result<Vec<Appended>, CommitError>) {
    let mut done = Vec::with_capacity(batch.frames.len());
    let outcome = log.commit(&batch.frames, batch.link, &mut done).await;
    (batch, outcome.map(|()| done))
}

/// Tries `batch` again after its try failed with `error`, while Redis does not take it, within
/// the bounds (see the module documentation). Every batch before it has been answered.
async fn retry<L: Batcher>(
    log: &L,
    batch: &Batch,
    mut error: ArcpError,
) -> Result<Vec<Appended>, ArcpError> {
    let commits = log.commits();
    let ends_job = batch.frames.iter().any(StoredFrame::ends_job);
    let mut backoff = FIRST_BACKOFF;
    let mut done = Vec::with_capacity(batch.frames.len());
    loop {
        let (since, first_past) = commits.redis_failed();
        let waited = since.elapsed();
        let bound = commits.bounds.retry_for;
        if waited >= bound {
            let e = ArcpError::Internal(format!(
                "{} (Redis has not taken this session's events for {waited:.1?}, past the \
                 {bound:?} they are tried for)",
                error.message()
            ));
            if first_past {
                tracing::warn!(log = log.label(), "Redis has not taken the event log's appends for {waited:.1?}: they fail until it does, but the ends of jobs wait for it: {error}");
            }
            if !ends_job {
                return Err(e);
            }
            commits.refuse_events(&e);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        done.clear();
        error = match log.commit(&batch.frames, batch.link, &mut done).await {
            Ok(()) => {
                if commits.redis_answered() {
                    tracing::info!(
                        log = log.label(),
                        "Redis takes the event log's appends again"
                    );
                }
                return Ok(done);
            }
            Err(CommitError::Unreachable(e)) => e,
            // Every batch before this one is answered, so this one is not out of order any
            // more: it was refused for another reason.
            Err(e @ (CommitError::OutOfOrder(_) | CommitError::Failed(_))) => {
                commits.redis_answered();
                return Err(e.into_error());
            }
        };
    }
}

/// Hands each caller of `batch` what its append did.
fn answer(batch: Batch, outcome: Result<Vec<Appended>, ArcpError>) {
    match outcome {
        Ok(done) if done.len() == batch.answers.len() => {
            for (answer, appended) in batch.answers.into_iter().zip(done) {
                let _ = answer.send(Ok(appended));
            }
        }
        Ok(_) => {
            let e = ArcpError::Internal("the event log answered for too few frames".into());
            for answer in batch.answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
        Err(e) => {
            for answer in batch.answers {
                let _ = answer.send(Err(e.clone()));
            }
        }
    }
}

/// A committer's end, however it ends.
struct Stopped<'a> {
    commits: &'a Commits,
    taken: u64,
    done: bool,
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.commits.queue.lock().committing = false;
            self.commits.answered_through(self.taken);
        }
    }
}

/// A caller waiting for its frame's answer; dropped before the answer, it takes its frame out
/// of the queue if it is still there, or else records that it was abandoned in a batch.
struct Waiting<'a> {
    commits: &'a Commits,
    ticket: u64,
    answered: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let mut queue = self.commits.queue.lock();
        if self.ticket > queue.taken {
            // Tickets are in queue order, and only the front is ever taken.
            if let Ok(at) = queue
                .waiting
                .binary_search_by_key(&self.ticket, |q| q.ticket)
            {
                if let Some(gone) = queue.waiting.remove(at) {
                    queue.bytes -= gone.frame.len() as u64;
                }
            }
        } else {
            queue.abandoned = queue.abandoned.max(self.ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, future::Future, pin::pin, time::Duration};

    use tokio::sync::Semaphore;

    use super::*;
    use crate::{
        clock::Timestamp,
        ids::{EventSeq, JobId},
        protocol::{
            event::EventBody,
            job_frame::{JobError, JobFrame, JobPayload},
        },
    };

    /// A log in memory whose commits wait for a permit each, recording the batches and their
    /// links in the order they got their permits, as Redis takes them in the order they came.
    /// Like the append script, it appends a batch once however often it is sent; the first
    /// `lose` tries are applied but answered as if Redis had not answered, and the `refuse`
    /// after them are not applied at all. A batch chained behind one it has not applied is
    /// refused as out of order.
    struct Recorder {
        commits: Commits,
        permits: Semaphore,
        batches: Mutex<Vec<Vec<String>>>,
        links: Mutex<Vec<Link>>,
        applied: Mutex<HashMap<u64, u64>>,
        tries: Mutex<Vec<u64>>,
        lose: AtomicU64,
        refuse: AtomicU64,
        /// A batch whose first try waits for `gate`, as one whose script Redis had to load
        /// again does, so that the batches behind it overtake it.
        gated: AtomicU64,
        gate: Semaphore,
    }

    impl Recorder {
        fn with(retry_for: Duration) -> Self {
            Recorder {
                commits: Commits::new(&Sending::new(), unbounded(retry_for)),
                permits: Semaphore::new(0),
                batches: Mutex::default(),
                links: Mutex::default(),
                applied: Mutex::default(),
                tries: Mutex::default(),
                lose: AtomicU64::new(0),
                refuse: AtomicU64::new(0),
                gated: AtomicU64::new(0),
                gate: Semaphore::new(0),
            }
        }
    }

    impl Default for Recorder {
        fn default() -> Self {
            Recorder::with(Duration::from_secs(10))
        }
    }

    fn unbounded(retry_for: Duration) -> CommitBounds {
        CommitBounds {
            retry_for,
            max_queued_frames: usize::MAX,
            max_queued_bytes: u64::MAX,
        }
    }

    fn take_one(counter: &AtomicU64) -> bool {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    #[async_trait]
    impl Batcher for Recorder {
        fn commits(&self) -> &Commits {
            &self.commits
        }

        fn label(&self) -> &str {
            "test"
        }

        async fn commit(
            &self,
            frames: &[StoredFrame],
            link: Link,
            out: &mut Vec<Appended>,
        ) -> Result<(), CommitError> {
            let permit = self.permits.acquire().await;
            permit
                .map_err(|_| CommitError::Failed(ArcpError::Internal("closed".into())))?
                .forget();
            let batch = link.number;
            if self
                .gated
                .compare_exchange(batch, 0, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let opened = self.gate.acquire().await;
                opened
                    .map_err(|_| CommitError::Failed(ArcpError::Internal("closed".into())))?
                    .forget();
            }
            self.tries.lock().push(batch);
            self.links.lock().push(link);
            let unanswered = || CommitError::Unreachable(ArcpError::Internal("no answer".into()));
            if take_one(&self.refuse) {
                return Err(unanswered());
            }
            let first = {
                let mut batches = self.batches.lock();
                let mut applied = self.applied.lock();
                let last = applied.keys().max().copied();
                if !applied.contains_key(&batch) && link.after.is_some() && link.after != last {
                    return Err(CommitError::OutOfOrder(ArcpError::Internal(
                        "out of order".into(),
                    )));
                }
                *applied.entry(batch).or_insert_with(|| {
                    let before: usize = batches.iter().map(Vec::len).sum();
                    batches.push(frames.iter().map(text).collect());
                    before as u64 + 1
                })
            };
            if take_one(&self.lose) {
                return Err(unanswered());
            }
            for n in 0..frames.len() {
                out.push(Appended {
                    seq: EventSeq(first + n as u64),
                    window_start: EventSeq::ZERO,
                });
            }
            Ok(())
        }
    }

    fn frame(text: &str) -> StoredFrame {
        StoredFrame::encode(&JobFrame {
            job_id: JobId::new("job_c"),
            trace_id: None,
            payload: JobPayload::Event {
                ts: Timestamp::now(),
                body: EventBody::Thought { text: text.into() },
            },
        })
    }

    /// A frame that ends its job, which reads back as `text`.
    fn end(text: &str) -> StoredFrame {
        StoredFrame::encode(&JobFrame {
            job_id: JobId::new("job_c"),
            trace_id: None,
            payload: JobPayload::Error(JobError::from_error(&ArcpError::Internal(text.into()))),
        })
    }

    fn text(frame: &StoredFrame) -> String {
        match frame.decode().map(|(_, f)| f.payload) {
            Ok(JobPayload::Event {
                body: EventBody::Thought { text },
                ..
            }) => text,
            Ok(JobPayload::Error(error)) => error.message,
            other => panic!("not a thought: {other:?}"),
        }
    }

    async fn within<T>(future: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), future)
            .await
            .expect("in time")
    }

    /// Waits until the committer holds a batch, waiting for its permit.
    async fn until_batches_taken(log: &Recorder, ticket: u64) {
        within(async {
            while log.commits.queue.lock().taken < ticket {
                tokio::task::yield_now().await;
            }
        })
        .await
    }

    /// Waits until the log was sent `n` tries in all; sleeps between looks, so that paused
    /// time moves on to the committer's back-off.
    async fn until_tried(log: &Recorder, n: usize) {
        within(async {
            while log.tries.lock().len() < n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    #[tokio::test]
    async fn appends_queued_behind_a_batch_go_together_in_order() {
        let log = Arc::new(Recorder::default());
        let first = tokio::spawn(Commits::append(log.clone(), frame("a")));
        until_batches_taken(&log, 1).await;
        let rest: Vec<_> = ["b", "c", "d"]
            .into_iter()
            .map(|t| tokio::spawn(Commits::append(log.clone(), frame(t))))
            .collect();
        within(async {
            while log.commits.queue.lock().issued < 4 {
                tokio::task::yield_now().await;
            }
        })
        .await;
        log.permits.add_permits(2);
        assert_eq!(within(first).await.unwrap().unwrap().seq, EventSeq(1));
        let mut seqs = Vec::new();
        for task in rest {
            seqs.push(within(task).await.unwrap().unwrap().seq.get());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, vec![2, 3, 4]);
        let batches = log.batches.lock().clone();
        assert_eq!(batches.len(), 2, "one batch while the first was in flight");
        assert_eq!(batches[0], vec!["a"]);
        let mut second = batches[1].clone();
        second.sort();
        assert_eq!(second, vec!["b", "c", "d"]);
        assert_eq!(
            *log.tries.lock(),
            vec![1, 2],
            "every batch has a number of its own"
        );
    }

    #[tokio::test]
    async fn a_cancelled_queued_append_is_left_out_and_an_abandoned_one_settles() {
        let log = Arc::new(Recorder::default());
        // Taken into a batch, then abandoned: it is still appended.
        let mut abandoned = Box::pin(Commits::append(log.clone(), frame("taken")));
        assert!(futures::poll!(abandoned.as_mut()).is_pending());
        until_batches_taken(&log, 1).await;
        drop(abandoned);
        // Queued behind it, then cancelled: it is not.
        let mut queued = Box::pin(Commits::append(log.clone(), frame("queued")));
        assert!(futures::poll!(queued.as_mut()).is_pending());
        drop(queued);
        let kept = tokio::spawn(Commits::append(log.clone(), frame("kept")));
        let mut settled = pin!(log.commits.settle());
        assert!(
            futures::poll!(settled.as_mut()).is_pending(),
            "settled before the abandoned append was answered"
        );
        log.permits.add_permits(2);
        within(settled).await;
        assert_eq!(within(kept).await.unwrap().unwrap().seq, EventSeq(2));
        assert_eq!(
            log.batches.lock().clone(),
            vec![vec!["taken".to_owned()], vec!["kept".to_owned()]]
        );
        assert_eq!(log.commits.queue.lock().bytes, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_redis_did_not_answer_is_tried_again_as_the_same_batch() {
        let log = Arc::new(Recorder::default());
        // Not applied; then applied, its answer lost; then answered.
        log.lose.store(1, Ordering::Release);
        log.refuse.store(1, Ordering::Release);
        log.permits.add_permits(3);
        let first = within(Commits::append(log.clone(), frame("a"))).await;
        assert_eq!(first.unwrap().seq, EventSeq(1));
        assert_eq!(*log.tries.lock(), vec![1, 1, 1], "three tries of batch 1");
        assert_eq!(log.batches.lock().clone(), vec![vec!["a".to_owned()]]);
        log.permits.add_permits(1);
        let next = within(Commits::append(log.clone(), frame("b"))).await;
        assert_eq!(next.unwrap().seq, EventSeq(2));
        assert_eq!(*log.tries.lock(), vec![1, 1, 1, 2]);
        assert!(
            log.commits.queue.lock().trouble.is_none(),
            "the outage is over"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_bound_events_fail_and_a_jobs_end_waits_for_redis() {
        let bound = Duration::from_secs(2);
        let log = Arc::new(Recorder::with(bound));
        log.refuse.store(u64::MAX, Ordering::Release);
        log.permits.add_permits(10_000);
        let started = Instant::now();
        let failed = within(Commits::append(log.clone(), frame("a")))
            .await
            .expect_err("fails past the bound");
        assert!(started.elapsed() >= bound, "tried for the bound first");
        assert!(failed.retryable());
        assert!(failed.message().contains("past the 2s"), "{failed}");
        // Past the bound, a batch is tried once.
        let tries = log.tries.lock().len();
        within(Commits::append(log.clone(), frame("b")))
            .await
            .expect_err("still no Redis");
        assert_eq!(log.tries.lock().len(), tries + 1);

        // A job's end is tried until Redis answers; an event meanwhile fails at once.
        let ended = tokio::spawn(Commits::append(log.clone(), end("over")));
        until_tried(&log, tries + 3).await;
        let refused = within(Commits::append(log.clone(), frame("c"))).await;
        assert!(
            refused.is_err(),
            "an event behind a waiting end fails at once"
        );
        tokio::time::sleep(bound * 10).await;
        assert!(!ended.is_finished(), "the end is still tried");
        log.refuse.store(0, Ordering::Release);
        let appended = within(ended).await.unwrap().expect("the end is appended");
        assert_eq!(appended.seq, EventSeq(1));
        assert_eq!(log.batches.lock().clone(), vec![vec!["over".to_owned()]]);
        // Redis answered: the outage is over, and events go through again.
        let after = within(Commits::append(log.clone(), frame("d"))).await;
        assert_eq!(after.unwrap().seq, EventSeq(2));
    }

    #[tokio::test(start_paused = true)]
    async fn during_an_outage_the_queue_holds_no_more_than_the_log() {
        let log = Arc::new(Recorder {
            commits: Commits::new(
                &Sending::new(),
                CommitBounds {
                    max_queued_frames: 2,
                    ..unbounded(Duration::from_secs(10))
                },
            ),
            ..Recorder::default()
        });
        log.refuse.store(u64::MAX, Ordering::Release);
        log.permits.add_permits(10_000);
        let in_flight = tokio::spawn(Commits::append(log.clone(), frame("a")));
        until_tried(&log, 2).await;
        let queued: Vec<_> = ["b", "c"]
            .into_iter()
            .map(|t| tokio::spawn(Commits::append(log.clone(), frame(t))))
            .collect();
        within(async {
            while log.commits.queue.lock().waiting.len() < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        let full = within(Commits::append(log.clone(), frame("d")))
            .await
            .expect_err("the queue is full");
        assert!(full.message().contains("2 frames"), "{full}");
        log.refuse.store(0, Ordering::Release);
        assert_eq!(within(in_flight).await.unwrap().unwrap().seq, EventSeq(1));
        for task in queued {
            within(task)
                .await
                .unwrap()
                .expect("queued appends go through");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_that_overtook_the_one_before_them_are_tried_again_after_it_in_order() {
        let log = Arc::new(Recorder::default());
        // Batch 1 is held up on its way; batches 2 and 3, sent behind it, overtake it and are
        // refused as out of order; each is tried again once the one before it is in.
        log.gated.store(1, Ordering::Release);
        let mut answers = vec![Commits::queue(log.clone(), frame("0")).unwrap()];
        until_batches_taken(&log, 1).await;
        let behind = 2 * MAX_BATCH_FRAMES;
        for n in 1..=behind {
            answers.push(Commits::queue(log.clone(), frame(&n.to_string())).unwrap());
        }
        until_batches_taken(&log, 1 + behind as u64).await;
        log.permits.add_permits(100);
        within(async {
            while log.tries.lock().len() < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        log.gate.add_permits(1);
        for (n, answer) in answers.into_iter().enumerate() {
            let appended = within(answer).await.unwrap().expect("appended in the end");
            assert_eq!(
                appended.seq,
                EventSeq(n as u64 + 1),
                "answers in queue order"
            );
        }
        assert_eq!(*log.tries.lock(), vec![2, 3, 1, 2, 3]);
        let flat: Vec<String> = log.batches.lock().concat();
        let queued: Vec<String> = (0..=behind).map(|n| n.to_string()).collect();
        assert_eq!(flat, queued, "appended once each, in queue order");
    }

    #[tokio::test]
    async fn whole_batches_go_while_others_are_in_flight_chained_behind_them() {
        let log = Arc::new(Recorder::default());
        let mut answers = vec![Commits::queue(log.clone(), frame("0")).unwrap()];
        until_batches_taken(&log, 1).await;
        let behind = 3 * MAX_BATCH_FRAMES + 10;
        for n in 1..=behind {
            answers.push(Commits::queue(log.clone(), frame(&n.to_string())).unwrap());
        }
        // Two whole batches join the first in flight; the third waits for room, the rest for
        // every batch in flight to come back.
        until_batches_taken(&log, 1 + 2 * MAX_BATCH_FRAMES as u64).await;
        assert_eq!(log.commits.queue.lock().batches, 3);
        log.permits.add_permits(5);
        for (n, answer) in answers.into_iter().enumerate() {
            let appended = within(answer).await.unwrap().unwrap();
            assert_eq!(
                appended.seq,
                EventSeq(n as u64 + 1),
                "answers in queue order"
            );
        }
        let sizes: Vec<usize> = log.batches.lock().iter().map(Vec::len).collect();
        let whole = MAX_BATCH_FRAMES;
        assert_eq!(sizes, vec![1, whole, whole, whole, 10]);
        let links = log.links.lock().clone();
        let after: Vec<Option<u64>> = links.iter().map(|l| l.after).collect();
        assert_eq!(
            links.iter().map(|l| l.number).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(after, vec![None, Some(1), Some(2), Some(3), None]);
        let flat: Vec<String> = log.batches.lock().concat();
        let queued: Vec<String> = (0..=behind).map(|n| n.to_string()).collect();
        assert_eq!(flat, queued, "batches in queue order");
    }

    #[tokio::test]
    async fn a_store_has_a_bounded_number_of_batches_on_their_way() {
        let sending = Sending::new();
        let logs: Vec<Arc<Recorder>> = (0..=MAX_STORE_IN_FLIGHT)
            .map(|_| {
                Arc::new(Recorder {
                    commits: Commits::new(&sending, unbounded(Duration::from_secs(10))),
                    ..Recorder::default()
                })
            })
            .collect();
        let answers: Vec<_> = logs
            .iter()
            .map(|log| Commits::queue(log.clone(), frame("f")).unwrap())
            .collect();
        let (first, rest) = logs.split_at(MAX_STORE_IN_FLIGHT);
        for log in first {
            until_batches_taken(log, 1).await;
        }
        assert_eq!(sending.0.available_permits(), 0);
        let last = &rest[0];
        assert_eq!(
            last.commits.queue.lock().taken,
            0,
            "a batch beyond the bound went"
        );
        // One answered, the last goes.
        first[0].permits.add_permits(1);
        until_batches_taken(last, 1).await;
        for log in &logs[1..] {
            log.permits.add_permits(1);
        }
        for answer in answers {
            assert_eq!(within(answer).await.unwrap().unwrap().seq, EventSeq(1));
        }
        assert_eq!(sending.0.available_permits(), MAX_STORE_IN_FLIGHT);
    }
}
