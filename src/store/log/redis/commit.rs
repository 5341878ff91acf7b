//! Group commit: the appends of one log on one replica that arrive while a batch is on its way
//! to Redis go together in the next one, so a session whose jobs emit at once pays one round
//! trip per batch rather than per frame.
//!
//! Callers queue their frame and wait for its answer; a committer task takes what is queued, in
//! order, sends it as one script call, answers each caller, and goes on until the queue is
//! empty. The committer is a task of its own, not one of the callers, so a caller that gives up
//! waiting cannot take a batch of others' frames down with it.
//!
//! A caller cancelled while its frame is still queued takes it out: that append had no effect.
//! Once its frame was taken into a batch it will be appended (or the batch fails as a whole),
//! so the append took full effect; that the caller's later calls see it is what
//! [`Commits::settle`] is for.
//!
//! # When Redis does not answer
//!
//! A batch Redis did not take ([`CommitError::Unreachable`]) is tried again, with back-off, as
//! the same batch: every batch has a number of its own, which the append script records for
//! the log's writer (this replica's handle), so a second try of a batch that Redis had applied
//! (only its answer was lost) answers what the first did, and nothing is appended twice. The
//! tries go on for [`CommitBounds::retry_for`] from the first failure of the outage, so a
//! short outage costs the appends nothing but time. Meanwhile the appends that arrive queue up
//! behind the batch, up to the log's own bounds in frames and bytes; beyond them an append
//! fails at once.
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
//! every later frame of this writer: the script refuses a batch older than the last one it
//! applied for the writer, so one that arrives late (on a connection given up on) is never
//! applied out of order.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::{sync::oneshot, time::Instant};

use crate::{encoding::StoredFrame, error::ArcpError, store::log::Appended, sync::wakeup::Wakeup};

/// The most frames one batch carries, and about the most bytes: a script call holds Redis up
/// for everyone while it runs.
const MAX_BATCH_FRAMES: usize = 64;
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// The wait before the first retry of a batch, doubling after each up to [`MAX_BACKOFF`]: a
/// Redis that is restarting answers within a few hundred milliseconds, and one that is down
/// is asked about once a second.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

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

/// How a batch failed.
#[derive(Debug)]
pub(super) enum CommitError {
    /// Redis did not take the call, for now (`store::redis::is_transient`): it may have been
    /// applied, and trying the same batch again is safe.
    Unreachable(ArcpError),
    /// Anything else (the log is gone, an unexpected answer): another try would fail alike.
    Failed(ArcpError),
}

impl CommitError {
    /// The error a caller that does not try again fails with.
    pub(super) fn into_error(self) -> ArcpError {
        match self {
            CommitError::Unreachable(e) | CommitError::Failed(e) => e,
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

    /// Appends `frames` in order, all or none, as batch number `batch` of this log's writer,
    /// and pushes what each append did onto `out`. Called again with the same `batch` and
    /// `frames` after an [`CommitError::Unreachable`], it appends them only if the first call
    /// did not, and answers either way with the numbers they got.
    async fn commit(
        &self,
        batch: u64,
        frames: &[StoredFrame],
        out: &mut Vec<Appended>,
    ) -> Result<(), CommitError>;
}

/// One log's queue of appends, and what is known of the batches taken from it.
pub(super) struct Commits {
    queue: Mutex<Queue>,
    /// The ticket of the last frame of the last batch answered.
    answered: AtomicU64,
    /// Wakes [`Commits::settle`] when a batch is answered.
    batch_done: Wakeup,
    bounds: CommitBounds,
    /// The number of the last batch taken. Numbers are never reused, so that the append script
    /// can tell a second try of a batch from the next batch.
    batches: AtomicU64,
}

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
    /// Since when Redis has not taken this log's batches; `None` while it does.
    trouble: Option<Instant>,
    /// Whether the outage went past the bound (so batches fail after one try).
    gave_up: bool,
    /// Set while a batch that ends a job is tried past the bound: a frame that does not end a
    /// job fails at once, with this error, rather than wait behind it.
    refusing: Option<ArcpError>,
}

struct Queued {
    ticket: u64,
    frame: StoredFrame,
    answer: oneshot::Sender<Result<Appended, ArcpError>>,
}

impl Commits {
    /// An empty queue, riding out outages within `bounds`.
    pub(super) fn new(bounds: CommitBounds) -> Self {
        Commits {
            queue: Mutex::default(),
            answered: AtomicU64::new(0),
            batch_done: Wakeup::default(),
            bounds,
            batches: AtomicU64::new(0),
        }
    }

    /// How many batches were taken so far.
    pub(super) fn batches_taken(&self) -> u64 {
        self.batches.load(Ordering::Acquire)
    }

    /// Appends `frame` to `log` in the next batch, and returns what the append did.
    pub(super) async fn append<L: Batcher>(
        log: Arc<L>,
        frame: StoredFrame,
    ) -> Result<Appended, ArcpError> {
        let (answer, answered) = oneshot::channel();
        let commits = log.commits();
        let (ticket, start) = {
            let mut queue = commits.queue.lock();
            if !frame.ends_job() {
                commits.check_room(&queue, &frame)?;
            }
            queue.issued += 1;
            let ticket = queue.issued;
            queue.bytes += frame.len() as u64;
            queue.waiting.push_back(Queued {
                ticket,
                frame,
                answer,
            });
            let start = !queue.committing;
            queue.committing = true;
            (ticket, start)
        };
        let mut waiting = Waiting {
            commits,
            ticket,
            answered: false,
        };
        if start {
            tokio::spawn(commit_all(log.clone()));
        }
        let outcome = answered.await;
        waiting.answered = true;
        outcome.unwrap_or_else(|_| {
            Err(ArcpError::Internal(
                "the event log's committer stopped before answering".into(),
            ))
        })
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

    /// Moves the next batch out of the queue into `frames` and `answers`; returns its last
    /// ticket, or `None` (and marks the committer stopped) if the queue is empty.
    fn take(
        &self,
        frames: &mut Vec<StoredFrame>,
        answers: &mut Vec<oneshot::Sender<Result<Appended, ArcpError>>>,
    ) -> Option<u64> {
        let mut queue = self.queue.lock();
        let mut bytes = 0;
        while let Some(next) = queue.waiting.front() {
            if !frames.is_empty()
                && (frames.len() == MAX_BATCH_FRAMES || bytes + next.frame.len() > MAX_BATCH_BYTES)
            {
                break;
            }
            let Some(next) = queue.waiting.pop_front() else {
                break;
            };
            bytes += next.frame.len();
            queue.bytes -= next.frame.len() as u64;
            queue.taken = next.ticket;
            frames.push(next.frame);
            answers.push(next.answer);
        }
        if frames.is_empty() {
            queue.committing = false;
            return None;
        }
        Some(queue.taken)
    }

    fn answered_through(&self, ticket: u64) {
        self.answered.fetch_max(ticket, Ordering::AcqRel);
        self.batch_done.notify();
    }

    /// Redis answered a batch: whatever outage there was is over. Returns whether it had gone
    /// past the bound.
    fn redis_answered(&self) -> bool {
        let mut queue = self.queue.lock();
        queue.trouble = None;
        queue.refusing = None;
        std::mem::take(&mut queue.gave_up)
    }

    /// Redis did not take a batch: since when it has not (now, if it did until now), and
    /// whether this is the first time the outage goes past the bound.
    fn redis_failed(&self) -> (Instant, bool) {
        let mut queue = self.queue.lock();
        let since = *queue.trouble.get_or_insert_with(Instant::now);
        let past = since.elapsed() >= self.bounds.retry_for;
        let first = past && !queue.gave_up;
        queue.gave_up |= past;
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

/// Commits batches until the queue is empty.
async fn commit_all<L: Batcher>(log: Arc<L>) {
    let commits = log.commits();
    // If this task is dropped (the runtime shutting down), the batch it held counts as
    // answered, its callers learn it failed, and the next append starts a committer again.
    let mut stopped = Stopped {
        commits,
        taken: 0,
        done: false,
    };
    let mut frames = Vec::new();
    let mut answers = Vec::new();
    let mut done = Vec::new();
    while let Some(last) = commits.take(&mut frames, &mut answers) {
        stopped.taken = last;
        let batch = commits.batches.fetch_add(1, Ordering::AcqRel) + 1;
        let outcome = commit_batch(&*log, batch, &frames, &mut done).await;
        frames.clear();
        match outcome {
            Ok(()) if done.len() == answers.len() => {
                for (answer, appended) in answers.drain(..).zip(done.drain(..)) {
                    let _ = answer.send(Ok(appended));
                }
            }
            Ok(()) => {
                let e = ArcpError::Internal("the event log answered for too few frames".into());
                for answer in answers.drain(..) {
                    let _ = answer.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for answer in answers.drain(..) {
                    let _ = answer.send(Err(e.clone()));
                }
            }
        }
        commits.answered_through(last);
    }
    stopped.done = true;
}

/// Commits batch `batch`, trying it again while Redis does not take it, within the bounds
/// (see the module documentation).
async fn commit_batch<L: Batcher>(
    log: &L,
    batch: u64,
    frames: &[StoredFrame],
    out: &mut Vec<Appended>,
) -> Result<(), ArcpError> {
    let commits = log.commits();
    let ends_job = frames.iter().any(StoredFrame::ends_job);
    let mut backoff = FIRST_BACKOFF;
    loop {
        out.clear();
        let error = match log.commit(batch, frames, out).await {
            Ok(()) => {
                if commits.redis_answered() {
                    tracing::info!(
                        log = log.label(),
                        "Redis takes the event log's appends again"
                    );
                }
                return Ok(());
            }
            Err(CommitError::Failed(e)) => {
                commits.redis_answered();
                return Err(e);
            }
            Err(CommitError::Unreachable(e)) => e,
        };
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
                if let Some(removed) = queue.waiting.remove(at) {
                    queue.bytes -= removed.frame.len() as u64;
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

    /// A log in memory whose commits wait for a permit each, recording the batches. Like the
    /// append script, it appends a batch once however often it is sent; the first `lose`
    /// tries are applied but answered as if Redis had not answered, and the `refuse` after
    /// them are not applied at all.
    struct Recorder {
        commits: Commits,
        permits: Semaphore,
        batches: Mutex<Vec<Vec<String>>>,
        applied: Mutex<HashMap<u64, u64>>,
        tries: Mutex<Vec<u64>>,
        lose: AtomicU64,
        refuse: AtomicU64,
    }

    impl Recorder {
        fn with(retry_for: Duration) -> Self {
            Recorder {
                commits: Commits::new(CommitBounds {
                    retry_for,
                    max_queued_frames: usize::MAX,
                    max_queued_bytes: u64::MAX,
                }),
                permits: Semaphore::new(0),
                batches: Mutex::default(),
                applied: Mutex::default(),
                tries: Mutex::default(),
                lose: AtomicU64::new(0),
                refuse: AtomicU64::new(0),
            }
        }
    }

    impl Default for Recorder {
        fn default() -> Self {
            Recorder::with(Duration::from_secs(10))
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
            batch: u64,
            frames: &[StoredFrame],
            out: &mut Vec<Appended>,
        ) -> Result<(), CommitError> {
            let permit = self.permits.acquire().await;
            permit
                .map_err(|_| CommitError::Failed(ArcpError::Internal("closed".into())))?
                .forget();
            self.tries.lock().push(batch);
            let unanswered = || CommitError::Unreachable(ArcpError::Internal("no answer".into()));
            if take_one(&self.refuse) {
                return Err(unanswered());
            }
            let first = {
                let mut batches = self.batches.lock();
                let mut applied = self.applied.lock();
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
            commits: Commits::new(CommitBounds {
                retry_for: Duration::from_secs(10),
                max_queued_frames: 2,
                max_queued_bytes: u64::MAX,
            }),
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
}
