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
        log::{redis::RedisEventLog, EventLog, LogLimits, SessionLog, Wait},
        redis::Redis,
    },
};

use contract::{frame, within};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_behind_what_a_replica_saw_fails_on_every_replica() {
    let prefix = fresh_prefix();
    let (a, b) = (replica(&prefix), replica(&prefix));
    let (id, on_a) = log_with(&a, 5).await;
    let on_b = b.open(&id).await.expect("the other replica opens the log");

    // What a failover to a replica that had received only the first three frames leaves.
    let base = format!("{prefix}:{{{id}}}:");
    let mut conn = raw().await;
    let _: () = ::redis::pipe()
        .atomic()
        .cmd("XDEL")
        .arg(format!("{base}log"))
        .arg("4-0")
        .arg("5-0")
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
