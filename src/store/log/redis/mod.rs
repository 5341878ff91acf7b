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
//!
//! # Keys
//!
//! A session's keys share its hash tag, `PREFIX:{SESSION}:…`, so each script on one log touches
//! one Cluster slot:
//!
//! - `…:log`, a stream of the frames: the entry of frame `N` has the id `N-0` and one field,
//!   `f`, the [`StoredFrame`](crate::encoding::StoredFrame) bytes.
//! - `…:log-meta`, a hash: `id` the incarnation, `n` the newest sequence number, `e`
//!   `evicted_through`, `b` the bytes retained, `a` the bytes ever appended, `ws`/`we` the
//!   window's start and where it ends in `a` (for `Appended::window_start`, moved on a frame at
//!   a time as the memory log moves it), `f` the newest fence, `d` absent while attached, `l`
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
//! And across sessions, for the store's budget: `PREFIX:log-retained`, the bytes all logs
//! retain; `PREFIX:log-detached`, a sorted set of the detached sessions holding frames by
//! the order they detached in, drawn from the counter `PREFIX:log-detach-order`.
//!
//! # Calls
//!
//! Every change is one script, so a cancelled call took full effect or none; the sequence
//! number is assigned in the append script, so appends racing on several replicas never leave
//! a gap or take a number twice. An append is one round trip (a batch of them, see `commit.rs`,
//! is one too, and a few batches may be on their way at once), and evicts, moves the window,
//! enforces the budget and publishes in that same script; a read is one (`MULTI`, the
//! metadata, `XRANGE`, `EXEC`; or, for frames this replica appended, see `tail.rs`, the
//! metadata and `XLEN`), as are `bounds`, `fence`,
//! `release_through`, `detached` and `remove`; `create` is one plus the subscription, `open`
//! two. Every append names the replica instance that sends it, and the append script refuses
//! it if that instance was fenced out of the log, in the same step that numbers the frames:
//! the fence and its check are in the session's slot, and cost the append no round trip. A
//! fence of a lost instance is the append script too, with the frames that end its jobs, so
//! the fence and those frames are one step, and a second fence of the same instance appends
//! nothing. A reader waiting for more listens on the channel and looks at Redis again each second,
//! so no lost message keeps it waiting.
//!
//! # When Redis does not answer
//!
//! An append that Redis does not answer is tried again by the log's committer, as the same
//! numbered batch, for `RedisSettings::append_retry` (10 s by default); past that appends
//! fail, except a job's end, which waits for Redis (see `commit.rs`). A read that fails is the
//! caller's to try again: the sessions' streams wait for their log as long as the committer
//! does. A log that Redis lost meanwhile (restarted or flushed without persistence) fails
//! every call with `RESUME_WINDOW_EXPIRED`, as above, once it answers again.
//!
//! # A single Redis, for now
//!
//! The budget makes the append, detach and remove scripts reach the store-wide keys and other
//! sessions' logs, which on a Redis Cluster live in other slots. To make the store
//! Cluster-safe, the budget would become a second step: the append script changes only its
//! session's slot and returns the bytes it added; the replica adds them to the byte counter
//! (its own slot, sent alongside the append, so still one round trip) and, only when the
//! counter is over the budget, takes the oldest detached session from the sorted set and
//! evicts from it with a script on that session's slot, subtracting what it freed. Detaching,
//! fencing and removing likewise change the session's metadata in one script and the sorted
//! set in a second command. The two steps are not atomic, so a call cancelled between them
//! leaves the store-wide keys off by what it did; each session's metadata (`b`, `d`) stays the
//! truth, and a periodic recount from it would repair them.
//!
//! Redis must not evict keys itself (`maxmemory-policy noeviction`): a log whose keys Redis
//! dropped is reported lost, but the byte count would still hold its bytes.

mod commit;
mod incarnation;
mod scripts;
mod session;
mod tail;

use std::{collections::HashMap, sync::Arc, time::Duration};

use ::redis::Value;
use async_trait::async_trait;
use parking_lot::Mutex;

use crate::{
    error::ArcpError,
    ids::{Epoch, ReplicaInstance, SessionId},
    store::redis::{millis, Redis},
};

use self::{
    commit::{CommitBounds, Sending},
    incarnation::{no_log, Gone, Incarnation},
    scripts::Scripts,
    session::{Limits, RedisSessionLog, Store},
};

use super::{EventLog, LogLimits, SessionLog};

/// How long a removed log's tombstone stays, telling its handles it was removed, not lost.
const TOMBSTONE: Duration = Duration::from_secs(3600);

/// Event logs held in Redis, within [`LogLimits`].
pub struct RedisEventLog {
    store: Arc<Store>,
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
        RedisEventLog {
            store: Arc::new(Store {
                redis: redis.for_store("event log"),
                limits: Limits {
                    max_frames: limits.max_frames.to_string(),
                    max_bytes: limits.max_bytes.to_string(),
                    window_bytes: limits.window_bytes().to_string(),
                    budget_bytes: limits.budget_bytes.to_string(),
                },
                commit_bounds: CommitBounds {
                    retry_for: redis.settings().append_retry,
                    max_queued_frames: limits.max_frames,
                    max_queued_bytes: limits.max_bytes,
                },
                retained: format!("{prefix}:log-retained"),
                detached: format!("{prefix}:log-detached"),
                detach_order: format!("{prefix}:log-detach-order"),
                instance: instance.as_str().to_owned(),
                scripts: Scripts::new(),
                sending: Sending::new(),
                open: Mutex::new(HashMap::new()),
            }),
        }
    }
}

#[async_trait]
impl EventLog for RedisEventLog {
    async fn create(&self, session: &SessionId) -> Result<Arc<dyn SessionLog>, ArcpError> {
        let store = &self.store;
        let log = RedisSessionLog::new(store.clone(), session.clone(), Incarnation::random());
        let keys = log.keys();
        let script = &store.scripts.create;
        let mut cmd = script.call(4, 3, 256);
        cmd.arg(&keys.stream)
            .arg(&keys.meta)
            .arg(&store.retained)
            .arg(&store.detached)
            .arg(log.incarnation().as_str())
            .arg(session.as_str())
            .arg(&keys.channel);
        let created = async {
            let mut conn = store.redis.get().await?;
            script
                .run(&mut conn, &cmd)
                .await
                .map_err(|e| store.redis.unavailable(e))?;
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
        let mut cmd = script.call(4, 3, 256);
        cmd.arg(&keys.stream)
            .arg(&keys.meta)
            .arg(&store.retained)
            .arg(&store.detached)
            .arg(session.as_str())
            .arg(&keys.channel)
            .arg(millis(TOMBSTONE));
        let removed = async {
            let mut conn = store.redis.get().await?;
            script
                .run(&mut conn, &cmd)
                .await
                .map_err(|e| store.redis.unavailable(e))
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
        let mut cmd = script.call(4, 4, 256);
        cmd.arg(&keys.meta)
            .arg(&store.retained)
            .arg(&store.detached)
            .arg(&store.detach_order)
            .arg(epoch.0)
            .arg(session.as_str())
            .arg(&store.limits.budget_bytes)
            .arg(store.redis.prefix());
        let detached = async {
            let mut conn = store.redis.get().await?;
            script
                .run(&mut conn, &cmd)
                .await
                .map_err(|e| store.redis.unavailable(e))
        };
        if let Err(e) = detached.await {
            // Still counted attached: its frames are safe, and the budget may stay exceeded.
            tracing::warn!(session = %session, "event log not marked detached: {e}");
        }
        if let Some(log) = store.held(session) {
            log.unread();
        }
    }
}
