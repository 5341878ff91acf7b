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

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::{encoding::StoredFrame, error::ArcpError, store::log::Appended, sync::wakeup::Wakeup};

/// The most frames one batch carries, and about the most bytes: a script call holds Redis up
/// for everyone while it runs.
const MAX_BATCH_FRAMES: usize = 64;
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// What commits a batch: a log.
#[async_trait]
pub(super) trait Batcher: Send + Sync + 'static {
    /// The log's queue.
    fn commits(&self) -> &Commits;

    /// Appends `frames` in order, all or none, and pushes what each append did onto `out`.
    async fn commit(
        &self,
        frames: &[StoredFrame],
        out: &mut Vec<Appended>,
    ) -> Result<(), ArcpError>;
}

/// One log's queue of appends, and what is known of the batches taken from it.
#[derive(Default)]
pub(super) struct Commits {
    queue: Mutex<Queue>,
    /// The ticket of the last frame of the last batch answered.
    answered: AtomicU64,
    /// Wakes [`Commits::settle`] when a batch is answered.
    batch_done: Wakeup,
}

#[derive(Default)]
struct Queue {
    /// Frames waiting for a batch, by ticket.
    waiting: VecDeque<Queued>,
    /// The last ticket given out; tickets follow the order of the queue.
    issued: u64,
    /// The last ticket taken into a batch.
    taken: u64,
    /// Whether a committer task is running; it empties the queue before it stops.
    committing: bool,
    /// The last ticket whose caller stopped waiting after its frame was taken.
    abandoned: u64,
}

struct Queued {
    ticket: u64,
    frame: StoredFrame,
    answer: oneshot::Sender<Result<Appended, ArcpError>>,
}

impl Commits {
    /// Appends `frame` to `log` in the next batch, and returns what the append did.
    pub(super) async fn append<L: Batcher>(
        log: Arc<L>,
        frame: StoredFrame,
    ) -> Result<Appended, ArcpError> {
        let (answer, answered) = oneshot::channel();
        let (ticket, start) = {
            let mut queue = log.commits().queue.lock();
            queue.issued += 1;
            let ticket = queue.issued;
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
            commits: log.commits(),
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
        done.clear();
        let outcome = log.commit(&frames, &mut done).await;
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
                queue.waiting.remove(at);
            }
        } else {
            queue.abandoned = queue.abandoned.max(self.ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{future::Future, pin::pin, time::Duration};

    use tokio::sync::Semaphore;

    use super::*;
    use crate::{
        clock::Timestamp,
        ids::{EventSeq, JobId},
        protocol::{
            event::EventBody,
            job_frame::{JobFrame, JobPayload},
        },
    };

    /// A log in memory whose commits wait for a permit each, recording the batches.
    struct Recorder {
        commits: Commits,
        permits: Semaphore,
        batches: Mutex<Vec<Vec<String>>>,
    }

    impl Default for Recorder {
        fn default() -> Self {
            Recorder {
                commits: Commits::default(),
                permits: Semaphore::new(0),
                batches: Mutex::default(),
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
            out: &mut Vec<Appended>,
        ) -> Result<(), ArcpError> {
            let permit = self.permits.acquire().await;
            permit
                .map_err(|_| ArcpError::Internal("closed".into()))?
                .forget();
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
}
