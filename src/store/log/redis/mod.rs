//! The event log in Redis, shared by every replica that connects to the same server: a stream
//! appended on one replica is read, live, on another.
//!
//! # Layout
//!
//! - this file: [`RedisEventLog`], the store (create, open, remove, detach), and the keys.
//! - `session.rs`: one session's log as a replica holds it, the [`SessionLog`] handle: reads,
//!   live waiting, fences, releases.
//! - `commit.rs`: group commit, pipelined: one log's appends going to Redis in batches, a few
//!   batches on their way at once.
//! - `tail.rs`: the frames this replica appended last, which a reader here need not read back.
//! - `scripts.rs`: the Lua scripts, one per kind of change.
//! - `incarnation.rs`: the random id of each log's life, which exposes lost data.
//! - `budget.rs`: the store's budget, its keys and what a replica owes its count;
//!   `enforce.rs`: its steps, eviction from detached sessions and the recount.
//!
//! # Keys
//!
//! A session's keys share its hash tag, `PREFIX:{SESSION}:…`, so each script on one log touches
//! one Cluster slot:
//!
//! - `…:log`, a stream of the frames: the entry of frame `N` has the id `N-A`, `A` being the
//!   bytes appended to the log through frame `N` (so ranges by sequence number work as on `N-0`
//!   ids, and what lies between two frames is the difference of their ids), and one field,
//!   `f`, the [`StoredFrame`](crate::encoding::StoredFrame) bytes.
//! - `…:log-meta`, a hash: `id` the incarnation, `n` the newest sequence number, `e`
//!   `evicted_through`, `b` the bytes retained, `a` the bytes ever appended, `ws`/`we` the
//!   window's start and its offset (for `Appended::window_start`, moved on a frame at a time as
//!   the memory log moves it), `f` the newest fence, `d` absent while attached, `l`
//!   while detached and on the detached list, `u` while detached and holding nothing; and for
//!   each writer (a replica's handle) that appended, `w:WRITER`, the last few batches of its
//!   own it appended, `BATCH FIRST COUNT ...`, newest first, so that a batch sent again is not
//!   appended twice and batches sent behind one another are appended in order (see
//!   `commit.rs`). A removed log leaves `id` and `x = removed` for an hour, so that its handles
//!   can tell a removal from a loss; a log found to have lost events is marked `x = lost`.
//!   `lost:INSTANCE` marks each replica instance fenced out of the log
//!   (`SessionLog::fence_replica`).
//! - `…:log-newest`, a pub/sub channel: each append publishes `INCARNATION NEWEST`, a removal
//!   `INCARNATION -`, a create over an existing log `INCARNATION +`, and a log found to have
//!   lost events `INCARNATION !`.
//!
//! And across sessions, for the store's budget (`budget.rs`), under the hash tag
//! `{log-budget}`, a slot of their own: `PREFIX:{log-budget}:retained`, the bytes all logs
//! retain; `…:detached`, a sorted set of the detached sessions holding frames by the order
//! they detached in, drawn from the counter `…:detach-order`; and `…:logs`, a set of every
//! session with a log, which the recount reads.
//!
//! # Calls
//!
//! Every change to a log is one script on its session's slot, so a cancelled call took full
//! effect on the log or none; the sequence number is assigned in the append script, so
//! appends racing on several replicas never leave a gap or take a number twice. An append is
//! one round trip (a batch of them, see `commit.rs`, is one too, and a few batches may be on
//! their way at once): the script, which evicts beyond the log's bounds, moves the window and
//! publishes, pipelined with the budget's tally (below). A read is one (`MULTI`, the metadata,
//! `XRANGE`, `EXEC`; or, for frames this replica appended, see `tail.rs`, the metadata and
//! `XLEN`), as are `bounds`, `fence`, `release_through` and `remove`; `create` is one plus the
//! subscription, `open` two, `detached` one, or two when the log holds frames (it is listed).
//! Every append names the replica instance that sends it, and the append script refuses it
//! if that instance was fenced out of the log, in the same step that numbers the frames: the
//! fence and its check are in the session's slot, and cost the append no round trip. A fence
//! of a lost instance is the append script too, with the frames that end its jobs, so the
//! fence and those frames are one step, and a second fence of the same instance appends
//! nothing. A reader waiting for more listens on the channel and looks at Redis again each
//! second, so no lost message keeps it waiting.
//!
//! # The budget, on a single Redis and on a Cluster alike
//!
//! No script on a log touches the budget's keys, so every script keeps to one slot, and the
//! budget is a second step, the same code on a single Redis and on a Cluster:
//!
//! - An append's pipeline carries, beside the script, `INCRBY …:retained` by the batch's
//!   bytes and `ZRANGE …:detached 0 0`: the same round trip on a single Redis; on a Cluster
//!   the two go to the budget's slot at the moment the script goes to the session's. The
//!   script answers what it evicted by the log's own bounds (or that it kept nothing: a
//!   refused or replayed batch); the replica owes that back to the count, and adds what it
//!   owes to its next change of the count (the next tally, or its upkeep's, each second).
//! - Only when the count, less what this replica owes, is over the budget and a session is
//!   listed, the replica (one enforcement at a time per replica) evicts from the session that
//!   detached first with a script on that session's slot (`EVICT`: its oldest frames, as
//!   many as the excess; a listed log that is not detached any more loses nothing), then
//!   counts the freed bytes off, and takes the session off the list if it is empty or not
//!   detached (`ACCOUNT`, on the budget's slot), and so on until within the budget.
//! - `detached` marks the log (`d`), then, if it holds frames, lists it and enforces the
//!   budget; an append to a detached log that held nothing marks it, then lists it. `fence`
//!   only unmarks it: the list forgets it when the budget next reaches it. `create` and
//!   `remove` pipeline the script with `SADD`/`SREM …:logs` and `ZREM …:detached`; the bytes
//!   a removed or replaced log held, and those `release_through` frees, are owed back.
//!
//! So a change's second step may be missing (a call cancelled between the two, a crash with
//! bytes owed, a lost answer), or done twice (a batch tried again whose first tally Redis
//! counted): the count then holds bytes no log retains, which evicts from detached sessions
//! early, or misses bytes, which lets the store run over its budget; a log may be marked
//! detached and not listed (it loses nothing to the budget) or listed and not detached (it
//! loses nothing either, and the list drops it). Each log's metadata (`b`, `d`) stays the
//! truth, and the recount (every five minutes on each replica, and
//! [`RedisEventLog::recount`]) sets the count to the sum of the logs' `b` and the list to the
//! logs marked `l`, keeping the order of those listed. Changes racing with a recount may
//! leave the count off by what they changed, until the next. Replicas enforcing at once each
//! evict the excess they saw, so detached sessions may lose up to that much more than the
//! budget needed.

//! # When Redis does not answer
//!
//! An append that Redis does not answer is tried again by the log's committer, as the same
//! numbered batch, for `RedisSettings::append_retry` (10 s by default); past that appends
//! fail, except a job's end, which waits for Redis (see `commit.rs`). A read that fails is the
//! caller's to try again: the sessions' streams wait for their log as long as the committer
//! does. A log that Redis lost meanwhile (restarted or flushed without persistence) fails
//! every call with `RESUME_WINDOW_EXPIRED`, as above, once it answers again.
//!
//! Redis must not evict keys itself (`maxmemory-policy noeviction`): a log whose keys Redis
//! dropped is reported lost, but the byte count would still hold its bytes.

mod budget;
mod commit;
mod enforce;
mod incarnation;
mod scripts;
mod session;
mod tail;

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::time::Instant;

use ::redis::Value;
use async_trait::async_trait;
use parking_lot::Mutex;

use crate::{
    error::ArcpError,
    ids::{Epoch, ReplicaInstance, SessionId},
    store::redis::{millis, query_loading, Redis},
};

use self::{
    budget::Budget,
    commit::{CommitBounds, Sending},
    incarnation::{no_log, Gone, Incarnation},
    scripts::Scripts,
    session::{Limits, RedisSessionLog, Store},
};

use super::{EventLog, LogLimits, Retention, SessionLog};

/// How long a removed log's tombstone stays, telling its handles it was removed, not lost.
const TOMBSTONE: Duration = Duration::from_secs(3600);

/// How old the retention a scrape shows may be: a scrape walks every log's metadata again
/// only when the last walk is older, so that scrapes in quick succession cost Redis one walk.
const SURVEY_EVERY: Duration = Duration::from_secs(10);

/// How long a scrape waits for a walk, lest a Redis that does not answer hold the scrape up.
const SURVEY_TIMEOUT: Duration = Duration::from_secs(2);

/// Event logs held in Redis, within [`LogLimits`].
pub struct RedisEventLog {
    store: Arc<Store>,
    /// The latest walk of the logs for the metrics, and when it ended.
    surveyed: tokio::sync::Mutex<Option<(Instant, Retention)>>,
}

impl RedisEventLog {
    /// A store in `redis`, under its prefix, within `limits`, as replica instance `instance`
    /// appends to it, riding out outages as `redis`'s settings say.
    pub fn new(redis: &Redis, limits: LogLimits, instance: &ReplicaInstance) -> Self {
        let limits = LogLimits {
            max_frames: limits.max_frames.max(1),
            ..limits
        };
        let prefix = redis.prefix();
        let store = Arc::new(Store {
            redis: redis.for_store("event log"),
            limits: Limits {
                max_frames: limits.max_frames.to_string(),
                max_bytes: limits.max_bytes.to_string(),
                window_bytes: limits.window_bytes().to_string(),
            },
            commit_bounds: CommitBounds {
                retry_for: redis.settings().append_retry,
                max_queued_frames: limits.max_frames,
                max_queued_bytes: limits.max_bytes,
            },
            budget: Budget::new(prefix, limits.budget_bytes),
            instance: instance.as_str().to_owned(),
            scripts: Scripts::new(),
            sending: Sending::new(),
            open: Mutex::new(HashMap::new()),
        });
        // Outside a runtime (a store built for a test of its construction) there is no upkeep:
        // the count is then only as exact as its steps.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(enforce::upkeep(Arc::downgrade(&store)));
        }
        RedisEventLog {
            store,
            surveyed: tokio::sync::Mutex::new(None),
        }
    }

    /// Sets the budget's count of the bytes all logs retain, and its list of the detached
    /// sessions, to what each log's metadata says. The store does it itself every few
    /// minutes; this is the repair of what a cancelled call, a crash or a lost answer left
    /// between a log's change and the count's.
    pub async fn recount(&self) -> Result<(), ArcpError> {
        self.store.recount().await
    }
}

#[async_trait]
impl EventLog for RedisEventLog {
    async fn create(&self, session: &SessionId) -> Result<Arc<dyn SessionLog>, ArcpError> {
        let store = &self.store;
        let log = RedisSessionLog::new(store.clone(), session.clone(), Incarnation::random());
        let keys = log.keys();
        let script = &store.scripts.create;
        let mut cmd = script.call(2, 2, 256);
        cmd.arg(&keys.stream)
            .arg(&keys.meta)
            .arg(log.incarnation().as_str())
            .arg(&keys.channel);
        // The budget's steps go first: a log it names that is not there is dropped by the
        // recount, and one it does not name would be missed.
        let mut pipe = ::redis::pipe();
        pipe.cmd("SADD")
            .arg(&store.budget.logs)
            .arg(session.as_str())
            .cmd("ZREM")
            .arg(&store.budget.detached)
            .arg(session.as_str())
            .add_command(cmd);
        let created = async {
            let mut conn = store.redis.get().await?;
            let answers: Vec<Value> = query_loading(&mut conn, &pipe, &[script.script()])
                .await
                .map_err(|e| store.redis.unavailable(e))?;
            match answers.as_slice() {
                [_, _, Value::Int(replaced)] => store.budget.owe(-replaced),
                _ => return Err(session::unexpected()),
            }
            Ok::<_, ArcpError>(())
        };
        // Subscribed while the log is created: nothing published before it exists matters.
        tokio::try_join!(created, log.subscribed())?;
        let replaced = store
            .open
            .lock()
            .insert(session.clone(), Arc::downgrade(&log));
        if let Some(old) = replaced.and_then(|old| old.upgrade()) {
            old.lose(Gone::Replaced);
        }
        Ok(log)
    }

    async fn open(&self, session: &SessionId) -> Result<Arc<dyn SessionLog>, ArcpError> {
        let store = &self.store;
        let keys = store.keys(session);
        let mut conn = store.redis.get().await?;
        let meta: Vec<Value> = ::redis::cmd("HMGET")
            .arg(&keys.meta)
            .arg(&["id", "x", "n"])
            .query_async(&mut conn)
            .await
            .map_err(|e| store.redis.unavailable(e))?;
        let (id, tomb, newest) = match meta.as_slice() {
            [id, tomb, newest] => (id, tomb, newest),
            _ => return Err(session::unexpected()),
        };
        let Value::BulkString(id) = id else {
            // A handle here shows that there was a log, so it is the store that lost it.
            return Err(match store.held(session) {
                Some(log) => log.lose(Gone::Lost),
                None => no_log(session),
            });
        };
        match tomb {
            Value::Nil => {}
            Value::BulkString(tomb) if tomb == b"lost" => {
                return Err(Gone::LostEvents.error(session))
            }
            _ => return Err(Gone::Removed.error(session)),
        }
        let incarnation = Incarnation::parse(id).ok_or_else(|| Gone::Lost.error(session))?;
        let newest = session::number(newest).ok_or_else(session::unexpected)?;
        let log = store.handle(session, incarnation, newest).await?;
        Ok(log)
    }

    async fn remove(&self, session: &SessionId) {
        let store = &self.store;
        let keys = store.keys(session);
        let script = &store.scripts.remove;
        let mut cmd = script.call(2, 2, 256);
        cmd.arg(&keys.stream)
            .arg(&keys.meta)
            .arg(&keys.channel)
            .arg(millis(TOMBSTONE));
        let mut pipe = ::redis::pipe();
        pipe.add_command(cmd)
            .cmd("ZREM")
            .arg(&store.budget.detached)
            .arg(session.as_str())
            .cmd("SREM")
            .arg(&store.budget.logs)
            .arg(session.as_str());
        let removed = async {
            let mut conn = store.redis.get().await?;
            let answers: Vec<Value> = query_loading(&mut conn, &pipe, &[script.script()])
                .await
                .map_err(|e| store.redis.unavailable(e))?;
            match answers.first() {
                Some(Value::Int(freed)) => store.budget.owe(-(*freed).max(0)),
                _ => return Err(session::unexpected()),
            }
            Ok(())
        };
        if let Err(e) = removed.await {
            // Left as it was: the frames stay counted until a later removal or create.
            tracing::warn!(session = %session, "event log not removed: {e}");
            return;
        }
        let held = store.open.lock().remove(session);
        if let Some(log) = held.and_then(|log| log.upgrade()) {
            log.lose(Gone::Removed);
        }
    }

    async fn detached(&self, session: &SessionId, epoch: Epoch) {
        let store = &self.store;
        let keys = store.keys(session);
        let script = &store.scripts.detach;
        let mut cmd = script.call(1, 1, 128);
        cmd.arg(&keys.meta).arg(epoch.0);
        let detached = async {
            let mut conn = store.redis.get().await?;
            let listed = script
                .run(&mut conn, &cmd)
                .await
                .map_err(|e| store.redis.unavailable(e))?;
            // Marked detached, then listed: a log marked and not listed loses nothing to the
            // budget until the recount lists it.
            if listed == Value::Int(1) {
                store.list_detached(session).await?;
            }
            Ok::<_, ArcpError>(())
        };
        if let Err(e) = detached.await {
            // Still counted attached: its frames are safe, and the budget may stay exceeded.
            tracing::warn!(session = %session, "event log not marked detached: {e}");
        }
        if let Some(log) = store.held(session) {
            log.unread();
        }
    }

    /// Deployment-wide: what every replica's sessions retain, as the logs' metadata says, at
    /// most [`SURVEY_EVERY`] old. A walk that fails, or takes longer than [`SURVEY_TIMEOUT`],
    /// shows the last one's (none before one succeeded); one cut short changed nothing.
    async fn retention(&self) -> Option<Retention> {
        let mut surveyed = self.surveyed.lock().await;
        if let Some((at, retention)) = *surveyed {
            if at.elapsed() < SURVEY_EVERY {
                return Some(retention);
            }
        }
        match tokio::time::timeout(SURVEY_TIMEOUT, self.store.survey()).await {
            Ok(Ok(retention)) => {
                *surveyed = Some((Instant::now(), retention));
                Some(retention)
            }
            Ok(Err(e)) => {
                tracing::debug!("event log retention not surveyed: {e}");
                surveyed.map(|(_, retention)| retention)
            }
            Err(_) => {
                tracing::debug!("event log retention not surveyed within {SURVEY_TIMEOUT:?}");
                surveyed.map(|(_, retention)| retention)
            }
        }
    }
}
