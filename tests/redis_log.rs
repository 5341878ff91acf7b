//! The Redis event log when Redis loses what it held: a log whose keys are gone, or that is
//! behind what a replica saw in it, fails every call with `RESUME_WINDOW_EXPIRED` naming the
//! loss, never reads as an empty or partial log. The keys are deleted out from under the
//! store, as a flush, a restart without persistence or a failover would lose them; only this
//! test's own keys, since other tests share the server.

mod common;
mod contract;

use std::sync::Arc;

use ::redis::aio::MultiplexedConnection;
use arcp_gateway::{
    error::{ArcpError, ErrorCode},
    ids::{Epoch, EventSeq, ReplicaId, ReplicaInstance, SessionId},
    store::{
        log::{redis::RedisEventLog, EventLog, LogEntry, LogLimits, SessionLog, Wait},
        redis::Redis,
    },
};

use common::RedisServer;
use contract::{frame, text, within};

/// A replica's event log store under `prefix`.
fn replica(prefix: &str) -> RedisEventLog {
    let redis = Redis::open(common::redis_url(), prefix).expect("a redis address");
    let writer = ReplicaInstance::start(ReplicaId::new("replica-a"));
    RedisEventLog::new(&redis, LogLimits::frames(100), &writer)
}

fn fresh_prefix() -> String {
    format!("arcp-test-{}", SessionId::generate())
}

async fn raw() -> MultiplexedConnection {
    ::redis::Client::open(common::redis_url())
        .expect("a redis address")
        .get_multiplexed_async_connection()
        .await
        .expect("a connection to the test's redis")
}

/// A session's log with `count` frames, on `logs`.
async fn log_with(logs: &RedisEventLog, count: u64) -> (SessionId, Arc<dyn SessionLog>) {
    let id = SessionId::generate();
    let log = logs.create(&id).await.expect("a log is created");
    for n in 1..=count {
        log.append(frame(&n.to_string())).await.expect("appends");
    }
    (id, log)
}

/// Deletes every key under `prefix`, as a flush would.
async fn lose_everything_under(prefix: &str) {
    let mut conn = raw().await;
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert!(!keys.is_empty(), "the log left no keys under its prefix");
    let _: i64 = ::redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .expect("DEL");
}

/// Asserts that `outcome` failed with `RESUME_WINDOW_EXPIRED`, its message containing `says`.
#[track_caller]
fn assert_lost<T: std::fmt::Debug>(outcome: Result<T, ArcpError>, says: &str) {
    let err = outcome.expect_err("a call on a lost log succeeded");
    assert_eq!(err.code(), ErrorCode::ResumeWindowExpired, "{err}");
    assert!(
        err.to_string().contains(says),
        "{err:?} does not say {says:?}"
    );
}

const LOST: &str = "the store lost";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_whose_keys_are_gone_fails_every_call_naming_the_loss() {
    let prefix = fresh_prefix();
    let (a, b) = (replica(&prefix), replica(&prefix));
    let (id, on_a) = log_with(&a, 3).await;
    let on_b = b.open(&id).await.expect("the other replica opens the log");
    let waiting = {
        let on_b = on_b.clone();
        tokio::spawn(async move { on_b.read(EventSeq(3), 10, Wait::ForMore).await })
    };

    lose_everything_under(&prefix).await;

    // Nothing is published when keys vanish: the reader finds out on its next look at Redis.
    let outcome = within("the waiting reader learning of the loss", waiting).await;
    assert_lost(outcome.expect("the reader did not panic"), LOST);
    assert_lost(on_a.read(EventSeq::ZERO, 10, Wait::No).await, LOST);
    assert_lost(on_a.append(frame("4")).await, LOST);
    assert_lost(on_a.bounds().await, LOST);
    assert_lost(on_b.release_through(EventSeq(1), Epoch(1)).await, LOST);
    // Its replicas know the log existed; a replica that never saw it cannot tell a loss from
    // a removal, and says both.
    assert_lost(a.open(&id).await.map(|_| ()), LOST);
    assert_lost(b.open(&id).await.map(|_| ()), LOST);
    assert_lost(
        replica(&prefix).open(&id).await.map(|_| ()),
        "the store lost it",
    );
    // A new log of the session starts over, and the old handles stay failed.
    let again = a.create(&id).await.expect("a log is created again");
    assert_eq!(again.append(frame("1")).await.unwrap(), EventSeq(1));
    assert_lost(on_b.read(EventSeq::ZERO, 10, Wait::No).await, LOST);
}

/// A stream entry as `XRANGE` answers it: the id, then the fields and their values.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_behind_what_a_replica_saw_fails_on_every_replica() {
    let prefix = fresh_prefix();
    let (a, b) = (replica(&prefix), replica(&prefix));
    let (id, on_a) = log_with(&a, 5).await;
    let on_b = b.open(&id).await.expect("the other replica opens the log");

    // What a failover to a replica that had received only the first three frames leaves.
    let base = format!("{prefix}:{{{id}}}:");
    let mut conn = raw().await;
    let newest: Vec<StreamEntry> = ::redis::cmd("XREVRANGE")
        .arg(format!("{base}log"))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(2)
        .query_async(&mut conn)
        .await
        .expect("the newest two entries");
    let ids: Vec<&str> = newest.iter().map(|(id, _)| id.as_str()).collect();
    assert!(
        ids[0].starts_with("5-") && ids[1].starts_with("4-"),
        "entries 5 and 4 are the newest: {ids:?}"
    );
    let _: () = ::redis::pipe()
        .atomic()
        .cmd("XDEL")
        .arg(format!("{base}log"))
        .arg(&ids)
        .ignore()
        .cmd("HSET")
        .arg(format!("{base}log-meta"))
        .arg("n")
        .arg(3)
        .ignore()
        .query_async(&mut conn)
        .await
        .expect("the log cut back");

    // Appending would number frames 4 and 5 again; the replica that saw them refuses.
    assert_lost(on_a.append(frame("4 again")).await, "lost events");
    // And marked the log, so that the replicas that did not see them fail too.
    assert_lost(on_b.read(EventSeq::ZERO, 10, Wait::No).await, "lost events");
    assert_lost(replica(&prefix).open(&id).await.map(|_| ()), "lost events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_missing_from_a_log_are_never_read_as_the_whole_log() {
    let prefix = fresh_prefix();
    let logs = replica(&prefix);
    let (id, log) = log_with(&logs, 4).await;
    let mut conn = raw().await;
    let _: i64 = ::redis::cmd("DEL")
        .arg(format!("{prefix}:{{{id}}}:log"))
        .query_async(&mut conn)
        .await
        .expect("DEL");
    // A fresh replica, which has seen no frame, still sees that the stream lacks the frames
    // its metadata counts.
    let fresh = replica(&prefix)
        .open(&id)
        .await
        .expect("the metadata is there");
    assert_lost(fresh.read(EventSeq(2), 10, Wait::No).await, "lost events");
    assert_lost(log.read(EventSeq::ZERO, 10, Wait::No).await, "lost events");
}

/// The frames of `log`, read to its end; a read may bring fewer than there are.
async fn read_all(log: &Arc<dyn SessionLog>) -> Vec<LogEntry> {
    let mut all: Vec<LogEntry> = Vec::new();
    loop {
        let after = all.last().map_or(EventSeq::ZERO, |e| e.seq);
        let read = log
            .read(after, 10_000, Wait::No)
            .await
            .expect("the log reads");
        if read.is_empty() {
            return all;
        }
        all.extend(read);
    }
}

/// Queues `count` frames `TAG/N` on `log` without waiting, then waits for every answer.
async fn queue_and_answer(
    log: Arc<dyn SessionLog>,
    tag: &'static str,
    count: u64,
) -> Vec<(u64, Result<EventSeq, ArcpError>)> {
    let mut answers = Vec::new();
    for n in 0..count {
        let queued = log.queue_append(frame(&format!("{tag}/{n}"))).await;
        answers.push((n, queued));
    }
    let mut outcomes = Vec::new();
    for (n, queued) in answers {
        let outcome = match queued {
            Ok(answer) => answer.await.map(|appended| appended.seq),
            Err(e) => Err(e),
        };
        outcomes.push((n, outcome));
    }
    outcomes
}

/// While Redis keeps forgetting the append script (`SCRIPT FLUSH`, as a restart or a failover
/// does) and another replica keeps loading it again, batches in flight fail here and there:
/// a batch sent behind one that failed must not be appended ahead of it when that one is sent
/// again. Each log holds its frames once each, in the order they were queued, and every frame
/// answered as appended is where its answer said. On a `redis-server` of the test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_behind_a_failed_one_are_never_appended_ahead_of_it() {
    const FRAMES: u64 = 20_000;
    let server = RedisServer::start();
    let prefix = fresh_prefix();
    let open = || {
        let redis = Redis::open(server.url(), &prefix).expect("a redis address");
        let instance = ReplicaInstance::start(ReplicaId::generate());
        RedisEventLog::new(&redis, LogLimits::frames(100_000), &instance)
    };
    let (a, b) = (open(), open());
    let on_a = a.create(&SessionId::generate()).await.unwrap();
    let on_b = b.create(&SessionId::generate()).await.unwrap();
    let appending = [
        tokio::spawn(queue_and_answer(on_a.clone(), "a", FRAMES)),
        tokio::spawn(queue_and_answer(on_b.clone(), "b", FRAMES)),
    ];
    let flushing = {
        let url = server.url().to_owned();
        let appenders: Vec<_> = appending.iter().map(|t| t.abort_handle()).collect();
        tokio::spawn(async move {
            let client = ::redis::Client::open(url).expect("a redis address");
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let mut flushes = 0u64;
            while appenders.iter().any(|t| !t.is_finished()) {
                let () = ::redis::cmd("SCRIPT")
                    .arg("FLUSH")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                flushes += 1;
                // Spread out, so that most batches get through between flushes.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            flushes
        })
    };
    let mut failed = 0;
    for (log, appended) in [on_a, on_b].into_iter().zip(appending) {
        let outcomes = within("the appends' answers", appended).await.unwrap();
        let entries = read_all(&log).await;
        let queued: Vec<u64> = entries
            .iter()
            .map(|e| text(&e.frame).split('/').nth(1).unwrap().parse().unwrap())
            .collect();
        assert!(
            queued.windows(2).all(|w| w[0] < w[1]),
            "frames out of queue order, or logged twice"
        );
        for (n, outcome) in outcomes {
            match outcome {
                Ok(seq) => assert_eq!(queued[seq.get() as usize - 1], n, "frame {n}"),
                Err(_) => failed += 1,
            }
        }
    }
    let flushes = within("the flusher", flushing).await.unwrap();
    eprintln!(
        "{flushes} flushes; {failed} of {} appends failed",
        2 * FRAMES
    );
}

/// A log read live on the replica that writes it, whose reads take the frames it wrote from
/// memory rather than from the stream, once Redis vouched for them in its answer to their
/// append: frames missing from the stream, or the whole log gone, fail the next append and
/// every read after it, as they fail reads of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_of_frames_its_replica_wrote_still_sees_them_lost() {
    for lose_all in [false, true] {
        let prefix = fresh_prefix();
        let logs = replica(&prefix);
        let id = SessionId::generate();
        let log = logs.create(&id).await.unwrap();
        log.append(frame("1")).await.unwrap();
        // A live read: from now on the frames this replica appends are kept for the reader.
        let first = log.read(EventSeq::ZERO, 10, Wait::ForMore).await.unwrap();
        assert_eq!(first.len(), 1);
        for n in 2..=3 {
            log.append(frame(&n.to_string())).await.unwrap();
        }
        let got = log.read(EventSeq(1), 10, Wait::ForMore).await.unwrap();
        assert_eq!(
            got.iter().map(|e| text(&e.frame)).collect::<Vec<_>>(),
            ["2", "3"]
        );
        if lose_all {
            lose_everything_under(&prefix).await;
        } else {
            let mut conn = raw().await;
            let _: i64 = ::redis::cmd("DEL")
                .arg(format!("{prefix}:{{{id}}}:log"))
                .query_async(&mut conn)
                .await
                .expect("DEL");
        }
        let says = if lose_all { LOST } else { "lost events" };
        assert_lost(log.append(frame("4")).await, says);
        assert_lost(log.read(EventSeq(1), 10, Wait::No).await, says);
        assert_lost(log.read(EventSeq(3), 10, Wait::No).await, says);
    }
}

/// A store on `url` whose budget holds `frames` one-byte-text frames, and a raw connection to
/// change its keys behind its back.
async fn budgeted(url: &str, frames: u64) -> (String, RedisEventLog, Box<dyn RawSet>) {
    let prefix = fresh_prefix();
    let redis = Redis::open(url, &prefix).expect("a redis address");
    let writer = ReplicaInstance::start(ReplicaId::new("replica-a"));
    let size = frame("x").len() as u64;
    let limits = LogLimits {
        max_frames: 10_000,
        max_bytes: u64::MAX,
        budget_bytes: frames * size,
    };
    let raw: Box<dyn RawSet> = match url.strip_prefix("redis-cluster://") {
        Some(nodes) => {
            let nodes: Vec<String> = nodes.split(',').map(|n| format!("redis://{n}")).collect();
            let client = ::redis::cluster::ClusterClient::new(nodes).expect("cluster nodes");
            Box::new(
                client
                    .get_async_connection()
                    .await
                    .expect("a cluster connection"),
            )
        }
        None => Box::new(raw().await),
    };
    (prefix, RedisEventLog::new(&redis, limits, &writer), raw)
}

/// A connection to run one command on, to a single Redis or a Cluster.
#[async_trait::async_trait]
trait RawSet: Send {
    async fn run(&mut self, cmd: ::redis::Cmd);
}

#[async_trait::async_trait]
impl<C: ::redis::aio::ConnectionLike + Send> RawSet for C {
    async fn run(&mut self, cmd: ::redis::Cmd) {
        let _: ::redis::Value = cmd.query_async(self).await.expect("the raw command");
    }
}

async fn appended(log: &Arc<dyn SessionLog>, count: u64) {
    for _ in 0..count {
        log.append(frame("x")).await.expect("appends");
    }
}

async fn evicted_through(log: &Arc<dyn SessionLog>) -> u64 {
    log.bounds().await.unwrap().evicted_through.get()
}

/// The budget's count and detached list are a second step after each log's change; one that
/// never came (a cancelled call, a crash between the two) leaves them wrong, and a recount
/// from the logs' metadata sets them right: here a count that forgot a detached log's bytes
/// and a list that forgot the log, so that the budget would never evict from it.
async fn a_recount_repairs_what_the_budget_missed(url: &str) {
    let (prefix, logs, mut raw) = budgeted(url, 6).await;
    let detached_id = SessionId::generate();
    let detached = logs.create(&detached_id).await.unwrap();
    appended(&detached, 4).await;
    logs.detached(&detached_id, Epoch(1)).await;
    raw.run(
        ::redis::cmd("SET")
            .arg(format!("{prefix}:{{log-budget}}:retained"))
            .arg(0)
            .clone(),
    )
    .await;
    raw.run(
        ::redis::cmd("DEL")
            .arg(format!("{prefix}:{{log-budget}}:detached"))
            .clone(),
    )
    .await;

    let attached = logs.create(&SessionId::generate()).await.unwrap();
    appended(&attached, 4).await;
    assert_eq!(
        evicted_through(&detached).await,
        0,
        "the budget saw 4 frames, not 8"
    );

    logs.recount().await.expect("the recount");
    assert_eq!(
        evicted_through(&detached).await,
        0,
        "a recount evicts nothing itself"
    );
    appended(&attached, 1).await;
    assert_eq!(
        evicted_through(&detached).await,
        3,
        "9 frames against a budget of 6: the detached log gives up 3"
    );
    assert_eq!(evicted_through(&attached).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recount_repairs_what_the_budget_missed_on_a_redis() {
    a_recount_repairs_what_the_budget_missed(common::redis_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recount_repairs_what_the_budget_missed_on_a_cluster() {
    a_recount_repairs_what_the_budget_missed(common::redis_cluster_url()).await;
}
