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
//! # Order when a batch fails
//!
//! A batch that fails (a dropped connection, a script Redis lost and has to load again) must not
//! leave the batches sent behind it to be appended ahead of it, were it tried again or sent
//! again on a new connection. So each batch sent while another is in flight names that one
//! ([`Link::after`]), and the append script refuses it unless that batch is the last this
//! writer appended to the log. A batch sent with none in flight starts a new chain: every batch
//! before it has been answered. A failed batch thus fails the ones chained behind it that it
//! did not precede in Redis; the committer waits for those before it sends more, so that the
//! frames queued later go in a new chain, after them all.
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
};

use async_trait::async_trait;
use futures::{stream::FuturesOrdered, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::{encoding::StoredFrame, error::ArcpError, store::log::Appended, sync::wakeup::Wakeup};

/// The most frames one batch carries, and about the most bytes: a script call holds Redis up
/// for everyone while it runs.
const MAX_BATCH_FRAMES: usize = 256;
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// The most batches of one log on their way to Redis at once: enough that Redis has the next
/// one while the answer to the last one travels back and is handed out.
const MAX_IN_FLIGHT: usize = 3;

/// The most batches all the logs of one store have on their way at once (see [`Sending`]).
const MAX_STORE_IN_FLIGHT: usize = 64;

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

/// A batch's place among this handle's batches.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Link {
    /// The batch's number; this handle's batches are numbered from 1 in the order they go.
    pub(super) number: u64,
    /// The batch in flight when this one went, which Redis must have appended last for this
    /// writer; `None` for the first of a chain.
    pub(super) after: Option<u64>,
}

/// What commits a batch: a log.
#[async_trait]
pub(super) trait Batcher: Send + Sync + 'static {
    /// The log's queue.
    fn commits(&self) -> &Commits;

    /// Appends `frames` in order, all or none, and pushes what each append did onto `out`;
    /// with [`Link::after`], only if that batch is the last this writer appended.
    async fn commit(
        &self,
        frames: &[StoredFrame],
        link: Link,
        out: &mut Vec<Appended>,
    ) -> Result<(), ArcpError>;
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
}

type Answer = oneshot::Sender<Result<Appended, ArcpError>>;

#[derive(Default)]
struct Queue {
    /// Frames waiting for a batch, by ticket.
    waiting: VecDeque<Queued>,
    /// The bytes of the frames waiting.
    bytes: usize,
    /// The last ticket given out; tickets follow the order of the queue.
    issued: u64,
    /// The last ticket taken into a batch.
    taken: u64,
    /// Whether a committer task is running; it empties the queue before it stops.
    committing: bool,
    /// The last ticket whose caller stopped waiting after its frame was taken.
    abandoned: u64,
    /// The number of the last batch taken.
    batches: u64,
}

impl Queue {
    /// Whether a whole batch is waiting.
    fn has_batch(&self) -> bool {
        self.waiting.len() >= MAX_BATCH_FRAMES || self.bytes >= MAX_BATCH_BYTES
    }
}

struct Queued {
    ticket: u64,
    frame: StoredFrame,
    answer: Answer,
}

/// A batch on its way: its frames' answers, and its last ticket.
struct Batch {
    frames: Vec<StoredFrame>,
    answers: Vec<Answer>,
    link: Link,
    last: u64,
}

impl Commits {
    /// An empty queue of a log of the store whose batches on their way `sending` counts.
    pub(super) fn new(sending: &Sending) -> Commits {
        Commits {
            queue: Mutex::default(),
            sending: sending.clone(),
            answered: AtomicU64::new(0),
            batch_done: Wakeup::default(),
            batch_queued: Wakeup::default(),
        }
    }

    /// Appends `frame` to `log` in the next batch, and returns what the append did.
    pub(super) async fn append<L: Batcher>(
        log: Arc<L>,
        frame: StoredFrame,
    ) -> Result<Appended, ArcpError> {
        let (ticket, answered) = Commits::enqueue(&log, frame);
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
    /// append did. Dropping it leaves the frame queued.
    pub(super) fn queue<L: Batcher>(
        log: Arc<L>,
        frame: StoredFrame,
    ) -> oneshot::Receiver<Result<Appended, ArcpError>> {
        Commits::enqueue(&log, frame).1
    }

    /// Puts `frame` at the end of the queue, starting a committer if none runs; returns its
    /// ticket and where its answer comes.
    fn enqueue<L: Batcher>(
        log: &Arc<L>,
        frame: StoredFrame,
    ) -> (u64, oneshot::Receiver<Result<Appended, ArcpError>>) {
        let (answer, answered) = oneshot::channel();
        let commits = log.commits();
        let (ticket, start, whole) = {
            let mut queue = commits.queue.lock();
            let had_batch = queue.has_batch();
            queue.issued += 1;
            queue.bytes += frame.len();
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
        (ticket, answered)
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

    /// Returns once every frame taken into a batch so far has been answered: at once when no
    /// batch is on its way.
    pub(super) async fn landed(&self) {
        let taken = self.queue.lock().taken;
        if self.answered.load(Ordering::Acquire) >= taken {
            return;
        }
        self.batch_done
            .wait_until(|| self.answered.load(Ordering::Acquire) >= taken)
            .await;
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
    /// in flight last sent.
    fn take(&self, alone: bool, after: Option<u64>) -> Option<Batch> {
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
        queue.bytes -= bytes;
        queue.batches += 1;
        batch.link.number = queue.batches;
        batch.last = queue.taken;
        Some(batch)
    }

    fn answered_through(&self, ticket: u64) {
        self.answered.fetch_max(ticket, Ordering::AcqRel);
        self.batch_done.notify();
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
            let Some(batch) = commits.take(in_flight.is_empty(), last_sent) else {
                break;
            };
            stopped.taken = batch.last;
            last_sent = Some(batch.link.number);
            in_flight.push_back(send(log.clone(), batch, sending));
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
                    let last = batch.last;
                    failed |= outcome.is_err();
                    answer(batch, outcome);
                    commits.answered_through(last);
                }
            }
            sending = sendable, if held_up => {
                let batch = sending.ok().and_then(|sending| {
                    Some((commits.take(in_flight.is_empty(), last_sent)?, sending))
                });
                if let Some((batch, sending)) = batch {
                    stopped.taken = batch.last;
                    last_sent = Some(batch.link.number);
                    in_flight.push_back(send(log.clone(), batch, sending));
                }
            }
            () = whole_batch, if room && !failed && !held_up => {}
        }
    }
    stopped.done = true;
}

/// Sends `batch` to `log`'s store, counted among the store's batches on their way until it is
/// answered; resolves to it with what each append did.
async fn send<L: Batcher>(
    log: Arc<L>,
    batch: Batch,
    _sending: OwnedSemaphorePermit,
) -> (Batch, Result<Vec<Appended>, ArcpError>) {
    let mut done = Vec::with_capacity(batch.frames.len());
    let outcome = log.commit(&batch.frames, batch.link, &mut done).await;
    (batch, outcome.map(|()| done))
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
                    queue.bytes -= gone.frame.len();
                }
            }
        } else {
            queue.abandoned = queue.abandoned.max(self.ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{future::Future, pin::pin, time::Duration};

    use super::*;
    use crate::{
        clock::Timestamp,
        ids::{EventSeq, JobId},
        protocol::{
            event::EventBody,
            job_frame::{JobFrame, JobPayload},
        },
    };

    /// A log in memory whose commits wait for a permit each, recording the batches and their
    /// links in the order they got their permits, as Redis takes them in the order they came.
    struct Recorder {
        commits: Commits,
        permits: Semaphore,
        batches: Mutex<Vec<Vec<String>>>,
        links: Mutex<Vec<Link>>,
    }

    impl Default for Recorder {
        fn default() -> Self {
            Recorder {
                commits: Commits::new(&Sending::new()),
                permits: Semaphore::new(0),
                batches: Mutex::default(),
                links: Mutex::default(),
            }
        }
    }

    #[async_trait]
    impl Batcher for Recorder {
        fn commits(&self) -> &Commits {
            &self.commits
        }

        async fn commit(
            &self,
            frames: &[StoredFrame],
            link: Link,
            out: &mut Vec<Appended>,
        ) -> Result<(), ArcpError> {
            let permit = self.permits.acquire().await;
            permit
                .map_err(|_| ArcpError::Internal("closed".into()))?
                .forget();
            self.links.lock().push(link);
            let mut batches = self.batches.lock();
            let before: usize = batches.iter().map(Vec::len).sum();
            batches.push(frames.iter().map(text).collect());
            for n in 0..frames.len() {
                let seq = EventSeq((before + n + 1) as u64);
                out.push(Appended {
                    seq,
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

    fn text(frame: &StoredFrame) -> String {
        match frame.decode().map(|(_, f)| f.payload) {
            Ok(JobPayload::Event {
                body: EventBody::Thought { text },
                ..
            }) => text,
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
    }

    #[tokio::test]
    async fn whole_batches_go_while_others_are_in_flight_chained_behind_them() {
        let log = Arc::new(Recorder::default());
        let mut answers = vec![Commits::queue(log.clone(), frame("0"))];
        until_batches_taken(&log, 1).await;
        let behind = 3 * MAX_BATCH_FRAMES + 10;
        for n in 1..=behind {
            answers.push(Commits::queue(log.clone(), frame(&n.to_string())));
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
                    commits: Commits::new(&sending),
                    ..Recorder::default()
                })
            })
            .collect();
        let answers: Vec<_> = logs
            .iter()
            .map(|log| Commits::queue(log.clone(), frame("f")))
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
