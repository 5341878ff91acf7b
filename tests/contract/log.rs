//! The event log's contract (`SessionLog`, `EventLog`).

use std::{collections::BTreeSet, sync::Arc};

use arcp_gateway::{
    encoding::StoredFrame,
    error::ErrorCode,
    ids::{Epoch, EventSeq, ReplicaId, ReplicaInstance, SessionId},
    store::{
        log::{cursor::LogCursor, LogEntry, LogLimits, SessionLog, Wait},
        Stores,
    },
};

use super::{cancel_after, frame, text, within, Factory, LimitedFactory, Replicas};

async fn log_with(make: Factory, max_frames: usize, count: u64) -> Arc<dyn SessionLog> {
    let stores = make(max_frames);
    let log = stores
        .logs
        .create(&SessionId::generate())
        .await
        .expect("a log is created");
    for n in 1..=count {
        log.append(frame(&n.to_string())).await.expect("appends");
    }
    log
}

fn seqs(entries: &[LogEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq.get()).collect()
}

/// Sequence numbers start at 1 and have no gaps; a read from any position returns the frames
/// after it in order, at most `max` of them, with the bytes that were appended.
pub async fn numbers_frames_without_gaps_and_reads_from_any_position(make: Factory) {
    let log = log_with(make, 100, 0).await;
    let mut appended = Vec::new();
    for n in 1..=10u64 {
        let f = frame(&n.to_string());
        assert_eq!(log.append(f.clone()).await.unwrap(), EventSeq(n));
        appended.push(f);
    }
    let got = log.read(EventSeq(4), 3, Wait::No).await.unwrap();
    assert_eq!(seqs(&got), vec![5, 6, 7]);
    for entry in &got {
        assert_eq!(entry.frame, appended[entry.seq.get() as usize - 1]);
        assert_eq!(
            entry.frame.as_bytes(),
            appended[entry.seq.get() as usize - 1].as_bytes()
        );
    }
    assert!(log
        .read(EventSeq(10), 3, Wait::No)
        .await
        .unwrap()
        .is_empty());
    let bounds = log.bounds().await.unwrap();
    assert_eq!(
        (bounds.evicted_through, bounds.newest),
        (EventSeq::ZERO, EventSeq(10))
    );
}

/// Beyond its bound a log evicts its oldest frames, and a read that would skip one fails
/// with `RESUME_WINDOW_EXPIRED` rather than returning what follows.
pub async fn evicts_beyond_its_bound_and_never_skips(make: Factory) {
    let log = log_with(make, 3, 5).await;
    let bounds = log.bounds().await.unwrap();
    assert_eq!(
        (bounds.evicted_through, bounds.newest),
        (EventSeq(2), EventSeq(5))
    );
    let err = log.read(EventSeq(1), 10, Wait::No).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ResumeWindowExpired);
    let err = log.read(EventSeq(1), 10, Wait::ForMore).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ResumeWindowExpired);
    assert_eq!(
        seqs(&log.read(EventSeq(2), 10, Wait::No).await.unwrap()),
        vec![3, 4, 5]
    );
    assert!(bounds.check_resume_from(EventSeq(1)).is_err());
    assert!(bounds.check_resume_from(EventSeq(2)).is_ok());
    assert!(bounds.check_resume_from(EventSeq(6)).is_err());
}

/// Released frames are gone like evicted ones; a release from an attachment older than the
/// newest that fenced the log changes nothing.
pub async fn releases_early_only_for_the_newest_fenced_attachment(make: Factory) {
    let log = log_with(make, 100, 6).await;
    log.release_through(EventSeq(2), Epoch(1)).await.unwrap();
    assert_eq!(log.bounds().await.unwrap().evicted_through, EventSeq(2));
    log.fence(Epoch(3)).await.unwrap();
    log.release_through(EventSeq(5), Epoch(2)).await.unwrap();
    assert_eq!(
        log.bounds().await.unwrap().evicted_through,
        EventSeq(2),
        "a fenced-out attachment released frames"
    );
    assert_eq!(
        seqs(&log.read(EventSeq(2), 10, Wait::No).await.unwrap()),
        vec![3, 4, 5, 6]
    );
    // A fence never moves back.
    log.fence(Epoch(1)).await.unwrap();
    log.release_through(EventSeq(3), Epoch(2)).await.unwrap();
    assert_eq!(log.bounds().await.unwrap().evicted_through, EventSeq(2));
    log.release_through(EventSeq(4), Epoch(3)).await.unwrap();
    assert_eq!(log.bounds().await.unwrap().evicted_through, EventSeq(4));
    assert!(log.read(EventSeq(3), 10, Wait::No).await.is_err());
}

/// A read that waits returns the first frame appended after it began, and a waiting read
/// fails when the log is removed; a removed log takes no frames and cannot be opened.
pub async fn a_waiting_read_sees_the_next_append_or_the_removal(make: Factory) {
    let stores = make(100);
    let id = SessionId::generate();
    let log = stores.logs.create(&id).await.unwrap();
    let reader = {
        let log = log.clone();
        tokio::spawn(async move { log.read(EventSeq::ZERO, 10, Wait::ForMore).await })
    };
    log.append(frame("first")).await.unwrap();
    let got = within("the waiting read", reader).await.unwrap().unwrap();
    assert_eq!(seqs(&got), vec![1]);
    assert_eq!(text(&got[0].frame), "first");

    let waiting = {
        let log = log.clone();
        tokio::spawn(async move { log.read(EventSeq(1), 10, Wait::ForMore).await })
    };
    stores.logs.remove(&id).await;
    let outcome = within("the removal waking the reader", waiting)
        .await
        .unwrap();
    assert_eq!(outcome.unwrap_err().code(), ErrorCode::ResumeWindowExpired);
    assert!(
        log.append(frame("late")).await.is_err(),
        "a removed log takes no frames"
    );
    assert!(stores.logs.open(&id).await.is_err());
}

/// Appends racing from many tasks get every sequence number exactly once, each task's frames
/// in the order it appended them.
pub async fn concurrent_appends_get_distinct_gap_free_numbers(make: Factory) {
    const TASKS: u64 = 8;
    const EACH: u64 = 50;
    let log = log_with(make, 10_000, 0).await;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for n in 0..EACH {
                    got.push(log.append(frame(&format!("{t}/{n}"))).await.unwrap().get());
                }
                got
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    for task in tasks {
        let got = within("the appenders", task).await.unwrap();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "one task's frames out of order"
        );
        all.extend(got);
    }
    assert_eq!(all, (1..=TASKS * EACH).collect::<BTreeSet<_>>());
    let entries = log.read(EventSeq::ZERO, 10_000, Wait::No).await.unwrap();
    assert_eq!(seqs(&entries), (1..=TASKS * EACH).collect::<Vec<_>>());
    for t in 0..TASKS {
        let mine: Vec<u64> = entries
            .iter()
            .filter(|e| text(&e.frame).starts_with(&format!("{t}/")))
            .map(|e| text(&e.frame).split('/').nth(1).unwrap().parse().unwrap())
            .collect();
        assert_eq!(mine, (0..EACH).collect::<Vec<_>>());
    }
}

/// Calls dropped at any of their suspension points leave the log consistent: an append either
/// took its number or did not, nothing is numbered twice or skipped, and a dropped read loses
/// nothing for the next one.
pub async fn calls_cancelled_anywhere_leave_no_gap(make: Factory) {
    let log = log_with(make, 1000, 0).await;
    let mut appended = 0u64;
    for polls in 0..6 {
        for _ in 0..5 {
            if let Some(result) = cancel_after(polls, log.append(frame("c"))).await {
                assert_eq!(result.unwrap(), EventSeq(appended + 1));
            }
            // Whether or not the dropped call completed, the log says what it holds.
            appended = log.bounds().await.unwrap().newest.get();
            let _ = cancel_after(polls, log.read(EventSeq(appended), 10, Wait::ForMore)).await;
            let _ = cancel_after(polls, log.bounds()).await;
        }
    }
    let entries = log.read(EventSeq::ZERO, 1000, Wait::No).await.unwrap();
    assert_eq!(seqs(&entries), (1..=appended).collect::<Vec<_>>());
    // A read dropped while waiting does not stop the next from seeing the next frame.
    let _ = cancel_after(3, log.read(EventSeq(appended), 10, Wait::ForMore)).await;
    log.append(frame("after")).await.unwrap();
    let got = log
        .read(EventSeq(appended), 10, Wait::ForMore)
        .await
        .unwrap();
    assert_eq!(seqs(&got), vec![appended + 1]);
}

/// Appends queued one after another (`SessionLog::queue_append`) are logged in that order,
/// gap-free and each once, whether or not anyone waits for their answers, and answered with the
/// numbers they got; a queueing dropped at one of its suspension points queued its frame or did
/// not, never twice; an append after them all is answered after theirs. A queued append to a
/// removed log fails.
pub async fn queued_appends_are_logged_once_each_in_queue_order(make: Factory) {
    // Several whole batches, so that a log that pipelines has some on their way at once.
    const FRAMES: usize = 1500;
    let stores = make(10_000);
    let id = SessionId::generate();
    let log = stores.logs.create(&id).await.unwrap();
    // The texts queued for certain, and those whose queueing was dropped, in queue order.
    let mut sure = BTreeSet::new();
    let mut order = Vec::new();
    let mut answers = Vec::new();
    for n in 0..FRAMES {
        let text = format!("q{n}");
        order.push(text.clone());
        let queued = if n % 10 == 0 {
            // Dropped after 0, 1, 2, ... polls.
            cancel_after(n / 10 % 4, log.queue_append(frame(&text))).await
        } else {
            Some(log.queue_append(frame(&text)).await)
        };
        let Some(queued) = queued else { continue };
        let answer = queued.expect("a frame is queued");
        sure.insert(text.clone());
        // Some answers nobody waits for: their frames are logged all the same.
        if n % 3 != 0 {
            answers.push((text, answer));
        }
    }
    let last = log.append(frame("last")).await.unwrap();
    let entries = log
        .read(EventSeq::ZERO, FRAMES + 10, Wait::No)
        .await
        .unwrap();
    assert_eq!(seqs(&entries), (1..=last.get()).collect::<Vec<_>>());
    let texts: Vec<String> = entries.iter().map(|e| text(&e.frame)).collect();
    assert_eq!(texts.last().map(String::as_str), Some("last"));
    let logged = &texts[..texts.len() - 1];
    let in_order: Vec<&String> = order.iter().filter(|t| logged.contains(t)).collect();
    assert_eq!(
        logged.iter().collect::<Vec<_>>(),
        in_order,
        "frames logged once each, in queue order"
    );
    for text in &sure {
        assert!(logged.contains(text), "{text} was queued and is not logged");
    }
    let mut previous = EventSeq::ZERO;
    for (text, answer) in answers {
        let appended = within("a queued append's answer", answer).await.unwrap();
        assert!(appended.seq > previous, "answers out of queue order");
        previous = appended.seq;
        assert_eq!(texts[appended.seq.get() as usize - 1], text);
    }

    stores.logs.remove(&id).await;
    let late = match log.queue_append(frame("late")).await {
        Ok(answer) => within("a queued append's answer", answer).await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert_eq!(late.unwrap_err().code(), ErrorCode::ResumeWindowExpired);
}

/// A second `create` for a session replaces its log: the old one's handles fail, its waiting
/// readers too, and the new one starts empty.
pub async fn a_log_created_again_replaces_the_old_one(make: Factory) {
    let stores = make(100);
    let id = SessionId::generate();
    let old = stores.logs.create(&id).await.unwrap();
    old.append(frame("old")).await.unwrap();
    let waiting = {
        let old = old.clone();
        tokio::spawn(async move { old.read(EventSeq(1), 10, Wait::ForMore).await })
    };
    let new = stores.logs.create(&id).await.unwrap();
    assert_eq!(new.bounds().await.unwrap().newest, EventSeq::ZERO);
    let outcome = within("the new log failing the old one's reader", waiting)
        .await
        .unwrap();
    assert_eq!(outcome.unwrap_err().code(), ErrorCode::ResumeWindowExpired);
    let err = old.read(EventSeq::ZERO, 10, Wait::No).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ResumeWindowExpired);
    assert!(old.append(frame("late")).await.is_err());
    assert_eq!(new.append(frame("new")).await.unwrap(), EventSeq(1));
    let opened = stores.logs.open(&id).await.unwrap();
    let got = opened.read(EventSeq::ZERO, 10, Wait::No).await.unwrap();
    assert_eq!(
        got.iter().map(|e| text(&e.frame)).collect::<Vec<_>>(),
        ["new"]
    );
}

/// What `cursor` yields until it has yielded the frame numbered `through`.
async fn read_through(mut cursor: LogCursor, through: u64) -> Vec<LogEntry> {
    let mut got = Vec::new();
    while cursor.position().get() < through {
        got.extend(cursor.next_batch().await.expect("the cursor reads"));
    }
    got
}

/// Asserts that `entries`, a task's appends `0..each` among others, hold that task's frames
/// (texts `"TASK/N"`) once each and in order.
fn assert_each_task_in_order(entries: &[LogEntry], tasks: u64, each: u64) {
    for t in 0..tasks {
        let mine: Vec<u64> = entries
            .iter()
            .filter_map(|e| {
                let text = text(&e.frame);
                let (task, n) = text.split_once('/')?;
                (task == t.to_string()).then(|| n.parse().unwrap())
            })
            .collect();
        assert_eq!(mine, (0..each).collect::<Vec<_>>(), "task {t}'s frames");
    }
}

/// Readers on either replica, one from the start and others from the middle of what is there
/// (a replay, then live delivery, through one cursor), get every frame appended on both
/// replicas while they wait, in order, with no gap and no duplicate, as the log holds them.
pub async fn a_reader_on_one_replica_gets_every_append_of_both_live_in_order(make: Replicas) {
    const WRITERS: u64 = 3;
    const EACH: u64 = 40;
    const BEFORE: u64 = 10;
    const TOTAL: u64 = BEFORE + WRITERS * EACH;
    let (a, b) = make(10_000);
    let id = SessionId::generate();
    let on_a = a.logs.create(&id).await.unwrap();
    let on_b = b.logs.open(&id).await.unwrap();
    for n in 0..BEFORE {
        on_a.append(frame(&format!("before/{n}"))).await.unwrap();
    }
    let readers: Vec<_> = [
        (on_b.clone(), 0, 7),
        (on_b.clone(), BEFORE / 2, 3),
        (on_a.clone(), BEFORE / 2, 16),
    ]
    .into_iter()
    .map(|(log, from, batch)| {
        let cursor = LogCursor::new(log, EventSeq(from), batch);
        (from, tokio::spawn(read_through(cursor, TOTAL)))
    })
    .collect();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let log = if w % 2 == 0 { &on_a } else { &on_b }.clone();
            tokio::spawn(async move {
                for n in 0..EACH {
                    log.append(frame(&format!("{w}/{n}"))).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        within("the writers", writer).await.unwrap();
    }
    let all = on_a.read(EventSeq::ZERO, 10_000, Wait::No).await.unwrap();
    assert_eq!(seqs(&all), (1..=TOTAL).collect::<Vec<_>>());
    assert_each_task_in_order(&all, WRITERS, EACH);
    for (from, reader) in readers {
        let got = within("the readers", reader).await.unwrap();
        assert_eq!(
            got,
            all[from as usize..],
            "the reader from {from} missed, repeated or reordered frames"
        );
    }
}

/// A log removed through one replica fails the other's waiting reader, and the other's calls.
pub async fn a_log_removed_on_one_replica_fails_the_others_waiting_reader(make: Replicas) {
    let (a, b) = make(100);
    let id = SessionId::generate();
    let on_a = a.logs.create(&id).await.unwrap();
    on_a.append(frame("1")).await.unwrap();
    let on_b = b.logs.open(&id).await.unwrap();
    let waiting = {
        let on_b = on_b.clone();
        tokio::spawn(async move { on_b.read(EventSeq(1), 10, Wait::ForMore).await })
    };
    a.logs.remove(&id).await;
    let outcome = within("the removal failing the other replica's reader", waiting)
        .await
        .unwrap();
    assert_eq!(outcome.unwrap_err().code(), ErrorCode::ResumeWindowExpired);
    let err = on_b.append(frame("late")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ResumeWindowExpired);
    assert_eq!(
        on_b.bounds().await.unwrap_err().code(),
        ErrorCode::ResumeWindowExpired
    );
    let err = b
        .logs
        .open(&id)
        .await
        .err()
        .expect("a removed log does not open");
    assert_eq!(err.code(), ErrorCode::ResumeWindowExpired);
}

fn texts(entries: &[LogEntry]) -> Vec<String> {
    entries.iter().map(|e| text(&e.frame)).collect()
}

/// Fencing a replica instance out of a log appends the fence's frames, in order, once: a
/// second fence of the same instance appends nothing. The log goes on taking appends.
pub async fn a_replica_fence_appends_its_frames_once(make: Factory) {
    let log = log_with(make, 100, 2).await;
    let lost = ReplicaInstance::start(ReplicaId::new("lost"));
    let ends = log
        .fence_replica(&lost, vec![frame("end/1"), frame("end/2")])
        .await
        .unwrap();
    assert_eq!(ends, Some(vec![EventSeq(3), EventSeq(4)]));
    let again = log
        .fence_replica(&lost, vec![frame("again")])
        .await
        .unwrap();
    assert_eq!(again, None, "a repeated fence appends nothing");
    assert_eq!(log.append(frame("5")).await.unwrap(), EventSeq(5));
    let all = log.read(EventSeq::ZERO, 100, Wait::No).await.unwrap();
    assert_eq!(seqs(&all), vec![1, 2, 3, 4, 5]);
    assert_eq!(texts(&all), vec!["1", "2", "end/1", "end/2", "5"]);
}

/// Once replica B fenced replica A out of a log, the log refuses every append of A's, through
/// the handle A held and through one it opens afterwards, alone or batched, with
/// `INTERNAL_ERROR`; B's appends go on, and both read the same log, A's frames, the fence's,
/// then B's.
pub async fn a_fenced_replica_appends_nothing_more(make: Replicas) {
    let (a, b) = make(100);
    let id = SessionId::generate();
    let on_a = a.logs.create(&id).await.unwrap();
    on_a.append(frame("a/1")).await.unwrap();
    let on_b = b.logs.open(&id).await.unwrap();
    let ends = on_b
        .fence_replica(a.replicas.instance(), vec![frame("end")])
        .await
        .unwrap();
    assert_eq!(ends, Some(vec![EventSeq(2)]));

    let err = on_a.append(frame("a/late")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InternalError, "{err}");
    let batch: Vec<_> = (0..8)
        .map(|n| {
            let on_a = on_a.clone();
            tokio::spawn(async move { on_a.append(frame(&format!("a/batch/{n}"))).await })
        })
        .collect();
    for append in batch {
        let refused = within("a refused append", append).await.unwrap();
        assert_eq!(refused.unwrap_err().code(), ErrorCode::InternalError);
    }
    drop(on_a);
    let reopened = a.logs.open(&id).await.unwrap();
    let err = reopened.append(frame("a/reopened")).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InternalError, "{err}");

    assert_eq!(on_b.append(frame("b/1")).await.unwrap(), EventSeq(3));
    let again = on_b
        .fence_replica(a.replicas.instance(), vec![frame("again")])
        .await
        .unwrap();
    assert_eq!(again, None);
    for log in [&reopened, &on_b] {
        let all = log.read(EventSeq::ZERO, 100, Wait::No).await.unwrap();
        assert_eq!(seqs(&all), vec![1, 2, 3]);
        assert_eq!(texts(&all), vec!["a/1", "end", "b/1"]);
    }
}

/// Appends racing from tasks on both replicas get every sequence number exactly once, each
/// task's frames in the order it appended them, and both replicas read the same log.
pub async fn appends_racing_on_two_replicas_get_distinct_gap_free_numbers(make: Replicas) {
    const TASKS: u64 = 6;
    const EACH: u64 = 40;
    let (a, b) = make(10_000);
    let id = SessionId::generate();
    let on_a = a.logs.create(&id).await.unwrap();
    let on_b = b.logs.open(&id).await.unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let log = if t % 2 == 0 { &on_a } else { &on_b }.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                for n in 0..EACH {
                    got.push(log.append(frame(&format!("{t}/{n}"))).await.unwrap().get());
                }
                got
            })
        })
        .collect();
    let entries = racers_numbered_every_frame_once(tasks, &on_a, TASKS, EACH).await;
    assert_eq!(
        on_b.read(EventSeq::ZERO, 10_000, Wait::No).await.unwrap(),
        entries
    );
}

/// Appends queued from tasks on both replicas, each task queueing several batches' worth
/// without waiting, get every sequence number exactly once, each task's frames in the order it
/// queued them.
pub async fn queued_appends_racing_on_two_replicas_get_distinct_gap_free_numbers(make: Replicas) {
    const TASKS: u64 = 4;
    const EACH: u64 = 600;
    let (a, b) = make(10_000);
    let id = SessionId::generate();
    let on_a = a.logs.create(&id).await.unwrap();
    let on_b = b.logs.open(&id).await.unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let log = if t % 2 == 0 { &on_a } else { &on_b }.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for n in 0..EACH {
                    answers.push(log.queue_append(frame(&format!("{t}/{n}"))).await.unwrap());
                }
                let mut got = Vec::new();
                for answer in answers {
                    got.push(answer.await.unwrap().seq.get());
                }
                got
            })
        })
        .collect();
    racers_numbered_every_frame_once(tasks, &on_a, TASKS, EACH).await;
}

/// Waits for `tasks`, each of which appended `each` frames and returns the numbers they got, in
/// the order it appended them: every number from 1 on was got once, each task's in order, and
/// `log` holds them so; returns what it holds.
async fn racers_numbered_every_frame_once(
    tasks: Vec<tokio::task::JoinHandle<Vec<u64>>>,
    log: &Arc<dyn SessionLog>,
    count: u64,
    each: u64,
) -> Vec<LogEntry> {
    let mut all = BTreeSet::new();
    for task in tasks {
        let got = within("the appenders", task).await.unwrap();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "one task's frames out of order"
        );
        all.extend(got);
    }
    assert_eq!(all, (1..=count * each).collect::<BTreeSet<_>>());
    let entries = log.read(EventSeq::ZERO, 10_000, Wait::No).await.unwrap();
    assert_eq!(seqs(&entries), (1..=count * each).collect::<Vec<_>>());
    assert_each_task_in_order(&entries, count, each);
    entries
}

/// A frame of [`numbered`]'s size, so that byte bounds can be counted in frames.
fn numbered(n: u64) -> StoredFrame {
    frame(&format!("{n:06}"))
}

/// The bytes a [`numbered`] frame takes.
fn frame_bytes() -> u64 {
    numbered(0).len() as u64
}

/// Limits in bytes, with frames bounded generously.
fn bytes_limits(max_bytes: u64, budget_bytes: u64) -> LogLimits {
    LogLimits {
        max_frames: 10_000,
        max_bytes,
        budget_bytes,
    }
}

/// A log of `stores` with `count` [`numbered`] frames.
async fn filled(stores: &Stores, count: u64) -> (SessionId, Arc<dyn SessionLog>) {
    let id = SessionId::generate();
    let log = stores.logs.create(&id).await.expect("a log is created");
    append_numbered(&log, count).await;
    (id, log)
}

async fn append_numbered(log: &Arc<dyn SessionLog>, count: u64) {
    for _ in 0..count {
        let next = log.bounds().await.unwrap().newest.get() + 1;
        log.append(numbered(next)).await.expect("appends");
    }
}

async fn evicted_through(log: &Arc<dyn SessionLog>) -> u64 {
    log.bounds().await.unwrap().evicted_through.get()
}

/// Beyond its byte bound a log evicts its oldest frames, and a read that would skip one fails
/// with `RESUME_WINDOW_EXPIRED`; the newest frame stays whatever its size.
pub async fn evicts_beyond_its_byte_bound_and_never_skips(make: LimitedFactory) {
    let size = frame_bytes();
    let stores = make(bytes_limits(3 * size + size / 2, u64::MAX));
    let (_, log) = filled(&stores, 5).await;
    let bounds = log.bounds().await.unwrap();
    assert_eq!(
        (bounds.evicted_through, bounds.newest),
        (EventSeq(2), EventSeq(5))
    );
    let err = log.read(EventSeq(1), 10, Wait::No).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ResumeWindowExpired);
    assert!(bounds.check_resume_from(EventSeq(1)).is_err());
    let got = log.read(EventSeq(2), 10, Wait::No).await.unwrap();
    assert_eq!(seqs(&got), vec![3, 4, 5]);
    assert_eq!(text(&got[0].frame), "000003");

    // A frame larger than the whole bound evicts everything before it, and stays.
    let big = frame(&"b".repeat(4 * size as usize));
    assert_eq!(log.append(big.clone()).await.unwrap(), EventSeq(6));
    assert_eq!(evicted_through(&log).await, 5);
    let got = log.read(EventSeq(5), 10, Wait::No).await.unwrap();
    assert_eq!(seqs(&got), vec![6]);
    assert_eq!(got[0].frame, big);
}

/// Each append says where a reader must be for the frames after it, through the new one, to
/// fit in half the byte bound; with no byte bound, anywhere will do.
pub async fn append_measures_how_far_a_reader_may_fall_behind(make: LimitedFactory) {
    let size = frame_bytes();
    let stores = make(bytes_limits(8 * size, u64::MAX));
    assert_eq!(
        LogLimits::frames(10).window_bytes(),
        u64::MAX / 2,
        "no byte bound, no byte window"
    );
    let log = stores.logs.create(&SessionId::generate()).await.unwrap();
    for n in 1..=12u64 {
        let appended = log.append_measured(numbered(n)).await.unwrap();
        assert_eq!(appended.seq, EventSeq(n));
        assert_eq!(
            appended.window_start,
            EventSeq(n.saturating_sub(4)),
            "the frames after the window's start fit in 4 frames' bytes"
        );
    }
    // Released frames move the window with them.
    log.release_through(EventSeq(10), Epoch(1)).await.unwrap();
    let appended = log.append_measured(numbered(13)).await.unwrap();
    assert_eq!(appended.window_start, EventSeq(10));

    let unbounded = make(LogLimits::frames(100));
    let log = unbounded.logs.create(&SessionId::generate()).await.unwrap();
    for n in 1..=20u64 {
        let appended = log.append_measured(numbered(n)).await.unwrap();
        assert_eq!(appended.window_start, EventSeq::ZERO);
    }
}

/// Beyond the store's budget, detached sessions lose their oldest frames, the session that
/// detached first first; an attached session loses none however far over the budget it
/// takes the store, until it detaches, when it is brought within the budget at once.
pub async fn the_budget_evicts_detached_sessions_first_and_never_attached_ones(
    make: LimitedFactory,
) {
    let size = frame_bytes();
    let stores = make(bytes_limits(u64::MAX, 10 * size));
    let (first, first_log) = filled(&stores, 4).await;
    let (second, second_log) = filled(&stores, 4).await;
    let (attached, attached_log) = filled(&stores, 0).await;
    stores.logs.detached(&first, Epoch(1)).await;
    stores.logs.detached(&second, Epoch(1)).await;
    assert_eq!(evicted_through(&first_log).await, 0, "within the budget");

    // 12 frames' bytes: the session detached first gives up its two oldest.
    append_numbered(&attached_log, 4).await;
    assert_eq!(evicted_through(&first_log).await, 2);
    assert_eq!(evicted_through(&second_log).await, 0);
    let err = first_log.read(EventSeq(1), 10, Wait::No).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::ResumeWindowExpired);
    assert_eq!(
        seqs(&first_log.read(EventSeq(2), 10, Wait::No).await.unwrap()),
        vec![3, 4]
    );

    // 13: the first gives up the rest, then the second its oldest.
    append_numbered(&attached_log, 3).await;
    assert_eq!(evicted_through(&first_log).await, 4);
    assert_eq!(evicted_through(&second_log).await, 1);

    // Only the attached session is left to evict from: it keeps every frame.
    append_numbered(&attached_log, 5).await;
    assert_eq!(evicted_through(&second_log).await, 4);
    assert_eq!(evicted_through(&attached_log).await, 0);
    let all = attached_log
        .read(EventSeq::ZERO, 100, Wait::No)
        .await
        .unwrap();
    assert_eq!(seqs(&all), (1..=12).collect::<Vec<_>>());

    // Detached, it is brought within the budget.
    stores.logs.detached(&attached, Epoch(1)).await;
    assert_eq!(evicted_through(&attached_log).await, 2);
    assert_eq!(
        seqs(&attached_log.read(EventSeq(2), 100, Wait::No).await.unwrap()),
        (3..=12).collect::<Vec<_>>()
    );
}

/// A fence by a newer attachment makes the session attached again, and the detach of an
/// older attachment, arriving late, changes nothing; only the newest attachment's detach
/// exposes the log to the budget again.
pub async fn a_newer_fence_reattaches_and_an_older_detach_changes_nothing(make: LimitedFactory) {
    let size = frame_bytes();
    let stores = make(bytes_limits(u64::MAX, 4 * size));
    let (id, log) = filled(&stores, 4).await;
    stores.logs.detached(&id, Epoch(1)).await;
    log.fence(Epoch(2)).await.unwrap();
    stores.logs.detached(&id, Epoch(1)).await;
    let (_, other) = filled(&stores, 2).await;
    assert_eq!(
        evicted_through(&log).await,
        0,
        "an attached log lost frames"
    );
    assert_eq!(evicted_through(&other).await, 0);

    stores.logs.detached(&id, Epoch(2)).await;
    assert_eq!(evicted_through(&log).await, 2);
    assert_eq!(evicted_through(&other).await, 0);
}

/// A removed log's frames no longer count against the budget.
pub async fn a_removed_log_gives_back_its_bytes(make: LimitedFactory) {
    let size = frame_bytes();
    let stores = make(bytes_limits(u64::MAX, 6 * size));
    let (gone, _) = filled(&stores, 5).await;
    stores.logs.remove(&gone).await;
    let (id, log) = filled(&stores, 5).await;
    stores.logs.detached(&id, Epoch(1)).await;
    append_numbered(&log, 1).await;
    assert_eq!(
        evicted_through(&log).await,
        0,
        "the removed log's frames still counted"
    );
    append_numbered(&log, 1).await;
    assert_eq!(evicted_through(&log).await, 1, "the budget still holds");
}

/// Released frames no longer count against the budget, to the byte: a release through part
/// of a log gives back those frames' bytes and no more.
pub async fn released_frames_give_back_their_bytes(make: LimitedFactory) {
    let size = frame_bytes();
    let stores = make(bytes_limits(u64::MAX, 6 * size));
    let (_, attached) = filled(&stores, 5).await;
    attached
        .release_through(EventSeq(3), Epoch(1))
        .await
        .unwrap();
    // The attached log holds 2 frames; 4 more in a detached log bring the store to 6.
    let (id, log) = filled(&stores, 4).await;
    stores.logs.detached(&id, Epoch(1)).await;
    assert_eq!(
        evicted_through(&log).await,
        0,
        "the released frames still counted"
    );
    append_numbered(&log, 1).await;
    assert_eq!(
        evicted_through(&log).await,
        1,
        "the frames the release kept no longer counted"
    );
}

/// Frames queued together, which a pipelining store appends in one batch, are measured and
/// evicted frame by frame as if appended one at a time: each says where its own window
/// starts, and the bounds hold after every one.
pub async fn frames_queued_together_are_measured_one_by_one(make: LimitedFactory) {
    let size = frame_bytes();
    let stores = make(bytes_limits(8 * size, u64::MAX));
    let log = stores.logs.create(&SessionId::generate()).await.unwrap();
    append_numbered(&log, 3).await;
    let mut queued = Vec::new();
    for n in 4..=20u64 {
        queued.push(log.queue_append(numbered(n)).await.unwrap());
    }
    for (n, answer) in (4..=20u64).zip(queued) {
        let appended = answer.await.unwrap();
        assert_eq!(appended.seq, EventSeq(n));
        assert_eq!(
            appended.window_start,
            EventSeq(n - 4),
            "the frames after frame {n}'s window start fit in 4 frames' bytes"
        );
    }
    assert_eq!(evicted_through(&log).await, 12, "8 frames' bytes are kept");
    let got = log.read(EventSeq(12), 100, Wait::No).await.unwrap();
    assert_eq!(seqs(&got), (13..=20).collect::<Vec<_>>());
    assert_eq!(text(&got[0].frame), "000013");
}
