//! One session's log in Redis as one replica holds it: the [`SessionLog`] every handle on this
//! replica shares, with the newest sequence number it has heard of and the subscription it
//! hears of appends on.
//!
//! A waiting read waits on that number, which grows with this replica's appends and with every
//! message on the log's channel. Pub/sub may drop messages while its connection is down, so a
//! resubscription wakes the readers to look again, and so does a timer, each second, for a
//! message lost any other way.
//!
//! The handle is also the log's writer on this replica: its appends go to Redis in numbered
//! batches (`commit.rs`) under a random writer id of its own, which the append script keys
//! the last few batches it applied by, so that a batch sent again after its answer was lost is
//! not appended twice, and batches sent behind one another are appended in order. The
//! handle's drop forgets that record. Frames it appended are kept in its tail (`tail.rs`) for
//! a reader on this replica.
//!
//! The [`Store`] every handle of a replica shares lives here too, with the table of the
//! handles it has, by session, so that the handles of one session share one subscription.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock, Weak,
    },
    time::{Duration, Instant},
};

use ::redis::{ErrorKind, ServerErrorKind, Value};
use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::{
    encoding::StoredFrame,
    error::ArcpError,
    ids::{Epoch, EventSeq, ReplicaInstance, SessionId},
    metrics::store_latency::{latency, Operation, Store as StoreKind},
    store::{
        log::{evicted, Appended, LogBounds, LogEntry, QueuedAppend, SessionLog, Wait},
        redis::{
            is_transient,
            notify::{Notice, Subscription},
            RedisConnection,
        },
    },
    sync::wakeup::Wakeup,
};

use super::{
    budget::{Budget, Listing},
    commit::{Batcher, CommitBounds, CommitError, Commits, Link, Sending},
    incarnation::{Gone, Incarnation},
    scripts::{Scripts, Standing, ALREADY_FENCED, FENCED, OUT_OF_ORDER, REPLAYED, STALE},
    tail::{Tail, Vouched},
};

/// What every log of a store shares.
pub(super) struct Store {
    pub(super) redis: RedisConnection,
    /// The limits, as the scripts take them.
    pub(super) limits: Limits,
    /// The store-wide budget: its keys, and what this replica owes its count.
    pub(super) budget: Budget,
    /// The replica instance this replica is, as its appends name it.
    pub(super) instance: String,
    /// How each log's committer rides out an outage.
    pub(super) commit_bounds: CommitBounds,
    /// The batches its logs have on their way to Redis.
    pub(super) sending: Sending,
    pub(super) scripts: Scripts,
    /// The logs this replica has handles on, so that the handles of one session share one
    /// subscription and one idea of the newest frame.
    pub(super) open: Mutex<HashMap<SessionId, Weak<RedisSessionLog>>>,
}

/// [`LogLimits`] as script arguments, written once.
pub(super) struct Limits {
    pub(super) max_frames: String,
    pub(super) max_bytes: String,
    pub(super) window_bytes: String,
}

/// One session's keys.
pub(super) struct LogKeys {
    pub(super) stream: String,
    pub(super) meta: String,
    pub(super) channel: String,
}

impl Store {
    pub(super) fn keys(&self, session: &SessionId) -> LogKeys {
        let base = format!("{}:{{{session}}}:", self.redis.prefix());
        LogKeys {
            stream: format!("{base}log"),
            meta: format!("{base}log-meta"),
            channel: format!("{base}log-newest"),
        }
    }

    /// This replica's handle on incarnation `incarnation` of `session`'s log, which holds
    /// frames through `newest`: the one it has, or a new one, subscribed.
    pub(super) async fn handle(
        self: &Arc<Self>,
        session: &SessionId,
        incarnation: Incarnation,
        newest: u64,
    ) -> Result<Arc<RedisSessionLog>, ArcpError> {
        // Another incarnation's handle is left alone: it may be older (it learns so on its next
        // call) or newer (a racing create here), and only its own calls can tell.
        let (log, _other) = {
            let mut open = self.open.lock();
            match open.get(session).and_then(Weak::upgrade) {
                Some(log) if log.incarnation() == &incarnation => (log, None),
                other => {
                    let log = RedisSessionLog::new(self.clone(), session.clone(), incarnation);
                    open.insert(session.clone(), Arc::downgrade(&log));
                    (log, other)
                }
            }
        };
        log.saw(newest);
        log.subscribed().await?;
        Ok(log)
    }

    /// This replica's live handle on `session`'s log, if it has one.
    pub(super) fn held(&self, session: &SessionId) -> Option<Arc<RedisSessionLog>> {
        let held = self.open.lock().get(session).cloned();
        held.and_then(|log| log.upgrade())
    }
}

/// How often a waiting reader looks at Redis even though it heard nothing.
const RECHECK: Duration = Duration::from_secs(1);

/// How many frames a reader that is behind takes per read: each read is a round trip, and so
/// is recording what it delivered, so a reader of a chatty job takes them a thousand at a time.
const READ_BATCH: usize = 1024;

/// One incarnation of a session's log, as this replica reaches it.
pub(super) struct RedisSessionLog {
    store: Arc<Store>,
    session: SessionId,
    incarnation: Incarnation,
    keys: LogKeys,
    /// Itself, for the committer task and the listener.
    me: Weak<RedisSessionLog>,
    /// The newest sequence number this replica knows the log reached.
    newest: AtomicU64,
    /// How many times the channel was (re)subscribed: messages may have been lost before each.
    subscriptions: AtomicU64,
    /// `subscriptions` when a read last looked at Redis: a newer one may have lost messages.
    looked_after: AtomicU64,
    /// Set once the log is known to be gone; every call fails from then on.
    gone: OnceLock<Gone>,
    /// Wakes waiting readers when `newest`, `subscriptions` or `gone` change.
    grew: Wakeup,
    subscription: OnceCell<Subscription>,
    commits: Commits,
    /// This handle as the log's writer, in the metadata field `w:WRITER` the append script
    /// keeps its last batches in.
    writer: String,
    /// The frames this handle appended last, for its reader.
    tail: parking_lot::Mutex<Tail>,
}

impl RedisSessionLog {
    /// A handle on incarnation `incarnation` of `session`'s log, not yet subscribed.
    pub(super) fn new(
        store: Arc<Store>,
        session: SessionId,
        incarnation: Incarnation,
    ) -> Arc<RedisSessionLog> {
        let keys = store.keys(&session);
        Arc::new_cyclic(|me| RedisSessionLog {
            session,
            incarnation,
            keys,
            me: me.clone(),
            newest: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            looked_after: AtomicU64::new(0),
            gone: OnceLock::new(),
            grew: Wakeup::default(),
            subscription: OnceCell::new(),
            commits: Commits::new(&store.sending, store.commit_bounds),
            writer: format!("{:016x}", rand::random::<u64>()),
            tail: parking_lot::Mutex::default(),
            store,
        })
    }

    /// The incarnation of the log this handle reaches.
    pub(super) fn incarnation(&self) -> &Incarnation {
        &self.incarnation
    }

    /// The log's keys.
    pub(super) fn keys(&self) -> &LogKeys {
        &self.keys
    }

    /// The session detached: no stream here reads the log live any more.
    pub(super) fn unread(&self) {
        self.tail.lock().stop();
    }

    /// Records that the log reached `newest`, and wakes readers.
    pub(super) fn saw(&self, newest: u64) {
        if self.newest.fetch_max(newest, Ordering::AcqRel) < newest {
            self.grew.notify();
        }
    }

    /// Subscribes to the log's channel, once; returns when Redis confirmed it.
    pub(super) async fn subscribed(&self) -> Result<(), ArcpError> {
        let notifier = self.store.redis.notifier();
        self.subscription
            .get_or_try_init(|| {
                let me = self.me.clone();
                notifier.subscribe(
                    self.keys.channel.as_bytes(),
                    Arc::new(move |notice: Notice<'_>| {
                        if let Some(log) = me.upgrade() {
                            log.heard(notice);
                        }
                    }),
                )
            })
            .await
            .map(|_| ())
            .map_err(|e| self.store.redis.unavailable(e))
    }

    /// A notice on the log's channel. Messages of other incarnations are another log's.
    fn heard(&self, notice: Notice<'_>) {
        let message = match notice {
            Notice::Subscribed => {
                self.subscriptions.fetch_add(1, Ordering::AcqRel);
                self.grew.notify();
                return;
            }
            Notice::Message(message) => message,
        };
        let Some(space) = message.iter().position(|&b| b == b' ') else {
            return;
        };
        let (incarnation, news) = (&message[..space], &message[space + 1..]);
        if !self.incarnation.is(incarnation) {
            return;
        }
        match news {
            b"-" => {
                self.lose(Gone::Removed);
            }
            b"+" => {
                self.lose(Gone::Replaced);
            }
            b"!" => {
                self.lose(Gone::LostEvents);
            }
            digits => {
                if let Some(newest) = parse_u64(digits) {
                    self.saw(newest);
                }
            }
        }
    }

    /// Records that the log is gone (the first reason found stands), wakes its readers, and
    /// returns the error calls fail with.
    pub(super) fn lose(&self, gone: Gone) -> ArcpError {
        let gone = *self.gone.get_or_init(|| gone);
        self.grew.notify();
        gone.error(&self.session)
    }

    fn check_present(&self) -> Result<(), ArcpError> {
        match self.gone.get() {
            Some(gone) => Err(gone.error(&self.session)),
            None => Ok(()),
        }
    }

    /// The log's bounds from its metadata fields `id`, `x`, `n`, `e`, checked against this
    /// handle: the incarnation, and `known`, the newest number heard of before they were read.
    async fn check_meta(&self, fields: &[Value], known: u64) -> Result<LogBounds, ArcpError> {
        let [id, tomb, newest, evicted_through] = fields else {
            return Err(unexpected());
        };
        let standing = match (id, tomb) {
            (Value::BulkString(id), _) if !self.incarnation.is(id) => Standing::Replaced,
            (Value::BulkString(_), Value::Nil) => Standing::Present,
            (Value::BulkString(_), Value::BulkString(tomb)) if tomb == b"lost" => {
                Standing::LostEvents
            }
            (Value::BulkString(_), _) => Standing::Removed,
            _ => Standing::Missing,
        };
        if let Some(gone) = standing.gone() {
            return Err(self.lose(gone));
        }
        let (Some(newest), Some(evicted_through)) = (number(newest), number(evicted_through))
        else {
            return Err(unexpected());
        };
        if newest < known {
            return Err(self.lost_events(known).await);
        }
        self.saw(newest);
        Ok(LogBounds {
            evicted_through: EventSeq(evicted_through),
            newest: EventSeq(newest),
        })
    }

    /// Marks the log in Redis as having lost events, unless it holds `at_least` frames (so
    /// that every handle fails, not only this one), and fails this handle.
    async fn lost_events(&self, at_least: u64) -> ArcpError {
        let store = &self.store;
        let script = &store.scripts.poison;
        let mut cmd = script.call(1, 3, 128);
        cmd.arg(&self.keys.meta)
            .arg(self.incarnation.as_str())
            .arg(at_least)
            .arg(&self.keys.channel);
        if let Ok(mut conn) = store.redis.get().await {
            // Best effort: this handle fails either way, and the others on their next check.
            let _ = script.run(&mut conn, &cmd).await;
        }
        self.lose(Gone::LostEvents)
    }

    /// Up to `max` frames after `after`, as Redis holds them now: from the tail when it holds
    /// them, once Redis vouches for them (the newest append's answer did, unless a newer frame
    /// is known of; else its metadata); else from the stream.
    async fn read_now(&self, after: EventSeq, max: usize) -> Result<Vec<LogEntry>, ArcpError> {
        self.check_present()?;
        let known = self.newest.load(Ordering::Acquire);
        let (mut held, live) = {
            let tail = self.tail.lock();
            (tail.read(after, max), tail.is_live())
        };
        if held.is_none() && live {
            // Redis's message about this handle's own batch may come before Redis's answer to
            // it, which brings the frames to the tail; that answer is a moment away, and a read
            // of the stream a round trip.
            self.commits.landed().await;
            held = self.tail.lock().read(after, max);
        }
        let vouched = self.tail.lock().vouched(known);
        match (held, vouched) {
            (Some(_), Some(vouched)) if after < vouched.evicted_through => {
                Err(evicted(after, vouched.evicted_through))
            }
            (Some(held), Some(_)) => Ok(held),
            (Some(held), None) => self.read_held(after, known, held).await,
            (None, _) => self.read_stream(after, max, known).await,
        }
    }

    /// `held`, frames after `after` as the tail holds them, once the log's metadata says Redis
    /// holds them too: the log is this handle's, holds every frame up to `known` (the newest
    /// this handle heard of) and none after `after` was evicted, and its stream has as many
    /// entries as the metadata counts. One round trip that brings no frame back. Frames after
    /// the tail's are left for the next read.
    async fn read_held(
        &self,
        after: EventSeq,
        known: u64,
        held: Vec<LogEntry>,
    ) -> Result<Vec<LogEntry>, ArcpError> {
        let mut conn = self.store.redis.get().await?;
        let reply: Vec<Value> = ::redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(&self.keys.meta)
            .arg(&["id", "x", "n", "e"])
            .cmd("XLEN")
            .arg(&self.keys.stream)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.store.redis.unavailable(e))?;
        let [Value::Array(meta), Value::Int(entries)] =
            <[Value; 2]>::try_from(reply).map_err(|_| unexpected())?
        else {
            return Err(unexpected());
        };
        let bounds = self.check_meta(&meta, known).await?;
        if after < bounds.evicted_through {
            return Err(evicted(after, bounds.evicted_through));
        }
        let counted = bounds.newest.get() - bounds.evicted_through.get();
        if u64::try_from(entries).ok() != Some(counted) {
            // The metadata says the frames are there and the stream does not have them.
            return Err(self.lost_events(u64::MAX).await);
        }
        Ok(held)
    }

    /// Up to `max` frames after `after`, read from the stream.
    async fn read_stream(
        &self,
        after: EventSeq,
        max: usize,
        known: u64,
    ) -> Result<Vec<LogEntry>, ArcpError> {
        let mut conn = self.store.redis.get().await?;
        let reply: Vec<Value> = ::redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(&self.keys.meta)
            .arg(&["id", "x", "n", "e"])
            .cmd("XRANGE")
            .arg(&self.keys.stream)
            .arg(after.get().saturating_add(1))
            .arg("+")
            .arg("COUNT")
            .arg(max.min(i64::MAX as usize))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.store.redis.unavailable(e))?;
        let [Value::Array(meta), Value::Array(entries)] =
            <[Value; 2]>::try_from(reply).map_err(|_| unexpected())?
        else {
            return Err(unexpected());
        };
        let bounds = self.check_meta(&meta, known).await?;
        if after < bounds.evicted_through {
            return Err(evicted(after, bounds.evicted_through));
        }
        let expected = (bounds.newest.get().saturating_sub(after.get())).min(max as u64);
        let mut read = Vec::with_capacity(entries.len());
        let mut next = after.next();
        for entry in entries {
            let Some((seq, frame)) = entry_parts(entry) else {
                return Err(unexpected());
            };
            if seq != next {
                return Err(self.lost_events(u64::MAX).await);
            }
            read.push(LogEntry {
                seq,
                frame: StoredFrame::from_bytes(frame)?,
            });
            next = next.next();
        }
        if (read.len() as u64) < expected {
            // The metadata says the frames are there and the stream does not have them.
            return Err(self.lost_events(u64::MAX).await);
        }
        Ok(read)
    }

    /// Runs one of the scripts answering with a standing alone.
    async fn run_standing(
        &self,
        script: &super::scripts::LuaScript,
        cmd: &::redis::Cmd,
    ) -> Result<(), ArcpError> {
        let mut conn = self.store.redis.get().await?;
        let reply = script
            .run(&mut conn, cmd)
            .await
            .map_err(|e| self.store.redis.unavailable(e))?;
        let Value::Int(code) = reply else {
            return Err(unexpected());
        };
        match Standing::from_code(code).ok_or_else(unexpected)?.gone() {
            Some(gone) => Err(self.lose(gone)),
            None => Ok(()),
        }
    }
}

impl Drop for RedisSessionLog {
    fn drop(&mut self) {
        {
            let mut open = self.store.open.lock();
            if open
                .get(&self.session)
                .is_some_and(|entry| Weak::ptr_eq(entry, &self.me))
            {
                open.remove(&self.session);
            }
        }
        // No batch of this writer can be sent again now: its record in the metadata goes. Best
        // effort; one left behind (a crash, Redis down) is a few bytes, gone with the log.
        if self.commits.batches_taken() == 0 {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, meta) = (self.store.clone(), self.keys.meta.clone());
        let field = format!("w:{}", self.writer);
        runtime.spawn(async move {
            if let Ok(mut conn) = store.redis.get().await {
                let _: Result<Value, _> = ::redis::cmd("HDEL")
                    .arg(&meta)
                    .arg(&field)
                    .query_async(&mut conn)
                    .await;
            }
        });
    }
}

/// What the append script did with a batch.
enum Append {
    /// Appended, now or, for a batch sent again, before.
    Appended,
    /// Nothing: the instance to fence was fenced out already.
    AlreadyFenced,
}

impl RedisSessionLog {
    /// Runs the append script on `frames` as batch `link` of this handle's writer, or, with
    /// `fence`, as the fence of that lost instance, which its own record makes safe to send
    /// again; one round trip. Pushes what each append did onto `out`.
    async fn run_append(
        &self,
        link: Option<Link>,
        frames: &[StoredFrame],
        fence: Option<&str>,
        out: &mut Vec<Appended>,
    ) -> Result<Append, CommitError> {
        self.check_present().map_err(CommitError::Failed)?;
        let store = &self.store;
        let known = self.newest.load(Ordering::Acquire);
        let script = &store.scripts.append;
        let added = frames.iter().map(StoredFrame::len).sum::<usize>();
        let mut cmd = script.call(2, 11 + frames.len(), added + 512);
        cmd.arg(&self.keys.stream)
            .arg(&self.keys.meta)
            .arg(self.incarnation.as_str())
            .arg(known)
            .arg(&store.limits.max_frames)
            .arg(&store.limits.max_bytes)
            .arg(&store.limits.window_bytes)
            .arg(&self.keys.channel)
            .arg(&store.instance)
            .arg(fence.unwrap_or(""));
        match link {
            Some(link) => cmd.arg(&self.writer).arg(link.number).arg(
                link.after
                    .map(|after| after.to_string())
                    .unwrap_or_default(),
            ),
            None => cmd.arg("").arg("").arg(""),
        };
        for frame in frames {
            cmd.arg(frame.as_bytes());
        }
        let added = i64::try_from(added).unwrap_or(i64::MAX);
        // The budget's count goes up by the batch's bytes in the same round trip (on a
        // Cluster, the same moment, to its own slot); what the script did not keep of them is
        // owed back below.
        let mut pipe = ::redis::pipe();
        pipe.add_command(cmd);
        store.budget.tally(&mut pipe, added);
        let failed = |e: ::redis::RedisError| {
            let transient = is_transient(&e);
            let error = store.redis.unavailable(e);
            if transient {
                CommitError::Unreachable(error)
            } else {
                CommitError::Failed(error)
            }
        };
        // Not connected is not answered: nothing was sent.
        let mut conn = store.redis.get().await.map_err(CommitError::Unreachable)?;
        let (reply, tally) = match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Ok(mut answers) => {
                let tally = answers.split_off(1.min(answers.len()));
                let reply = answers
                    .pop()
                    .ok_or_else(|| CommitError::Failed(unexpected()))?;
                (reply, Budget::tallied(&tally))
            }
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                // Redis lost the script, so nothing was appended, but the tally beside it
                // counted the batch: the script alone follows, with the count already up.
                let retried = pipe
                    .cmd_iter()
                    .next()
                    .ok_or_else(|| CommitError::Failed(unexpected()))?;
                (script.run(&mut conn, retried).await.map_err(failed)?, None)
            }
            Err(e) => return Err(failed(e)),
        };
        let Value::Array(reply) = reply else {
            return Err(CommitError::Failed(unexpected()));
        };
        let mut reply = reply.iter().map(|v| match v {
            Value::Int(n) => Some(*n),
            _ => None,
        });
        let code = reply.next().flatten().ok_or_else(unexpected);
        let code = code.map_err(CommitError::Failed)?;
        if code != 1 {
            // Nothing of the batch was kept: the tally counted it for nothing.
            store.budget.owe(-added);
        }
        let batch = link.map(|link| link.number);
        match code {
            FENCED => return Err(CommitError::Failed(self.fenced())),
            ALREADY_FENCED => return Ok(Append::AlreadyFenced),
            OUT_OF_ORDER => {
                return Err(CommitError::OutOfOrder(ArcpError::Internal(format!(
                    "the event log did not append batch {} of session {}: the batch before it \
                     was not appended",
                    batch.unwrap_or_default(),
                    self.session
                ))))
            }
            STALE => {
                return Err(CommitError::Failed(ArcpError::Internal(format!(
                    "the event log did not append batch {} of session {}: a later batch went \
                     first",
                    batch.unwrap_or_default(),
                    self.session
                ))))
            }
            REPLAYED => tracing::info!(
                session = %self.session,
                batch,
                "Redis had appended a batch of the event log whose answer was lost; its frames \
                 keep the numbers they got"
            ),
            code => {
                let standing = Standing::from_code(code).ok_or_else(unexpected);
                if let Some(gone) = standing.map_err(CommitError::Failed)?.gone() {
                    return Err(CommitError::Failed(self.lose(gone)));
                }
            }
        }
        let (Some(Some(freed)), Some(Some(listed)), Some(Some(evicted_through))) =
            (reply.next(), reply.next(), reply.next())
        else {
            return Err(CommitError::Failed(unexpected()));
        };
        store.budget.owe(-freed);
        let first =
            numbered(reply, frames.len(), out).ok_or_else(|| CommitError::Failed(unexpected()))?;
        if !frames.is_empty() {
            let newest = EventSeq(first.get() + frames.len() as u64 - 1);
            let vouched = Vouched {
                newest,
                evicted_through: EventSeq(u64::try_from(evicted_through).unwrap_or_default()),
            };
            self.tail.lock().appended(first, frames, vouched);
            self.saw(newest.get());
        }
        self.budgeted(tally, listed == 1).await;
        Ok(Append::Appended)
    }

    /// After an append: lists the log if it was detached and empty and now holds frames, and
    /// brings the store within the budget from the count the append's tally answered (or, if
    /// it answered none, as Redis has it now). Best effort: the frames are in, and what this
    /// leaves undone the next change over the budget does.
    async fn budgeted(&self, tally: Option<(i64, Option<String>)>, listed: bool) {
        let store = &self.store;
        let position = match (tally, listed) {
            (Some((total, oldest)), false) => Ok(store.budget.position(total, oldest)),
            (_, true) => store.account(Listing::List(self.session.as_str())).await,
            (None, false) => store.account(Listing::Keep).await,
        };
        match position {
            Ok(position) => store.enforce(position).await,
            Err(e) => tracing::warn!(session = %self.session, "event log budget not counted: {e}"),
        }
    }

    /// The error for an append by this replica once it was fenced out of the log.
    fn fenced(&self) -> ArcpError {
        ArcpError::Internal(format!(
            "replica {} was declared lost; session {}'s log takes nothing more from it",
            self.store.instance, self.session
        ))
    }
}

/// Reads the rest of an append script's answer for `count` frames, the first number and then
/// window starts as `(frame, start)` where they change (nearly always once a batch), onto
/// `out`; returns the first number, or `None` for an answer that does not say so.
fn numbered(
    mut reply: impl Iterator<Item = Option<i64>>,
    count: usize,
    out: &mut Vec<Appended>,
) -> Option<EventSeq> {
    let first = reply.next().flatten().and_then(|n| u64::try_from(n).ok())?;
    let mut changes = Vec::new();
    while let Some(frame) = reply.next() {
        let frame = frame.and_then(|f| usize::try_from(f).ok())?;
        let start = reply.next().flatten().and_then(|s| u64::try_from(s).ok())?;
        changes.push((frame, start));
    }
    let mut changes = changes.into_iter().peekable();
    let mut window_start = None;
    for n in 0..count {
        if let Some((_, start)) = changes.next_if(|&(at, _)| at == n) {
            window_start = Some(start);
        }
        out.push(Appended {
            seq: EventSeq(first + n as u64),
            window_start: EventSeq(window_start?),
        });
    }
    changes.next().is_none().then_some(EventSeq(first))
}

#[async_trait]
impl Batcher for RedisSessionLog {
    fn commits(&self) -> &Commits {
        &self.commits
    }

    fn label(&self) -> &str {
        self.session.as_str()
    }

    async fn commit(
        &self,
        frames: &[StoredFrame],
        link: Link,
        out: &mut Vec<Appended>,
    ) -> Result<(), CommitError> {
        let started = Instant::now();
        let appended = self.run_append(Some(link), frames, None, out).await;
        latency(StoreKind::Redis, Operation::LogCommit).record(started.elapsed());
        match appended? {
            Append::Appended => Ok(()),
            Append::AlreadyFenced => Err(CommitError::Failed(unexpected())),
        }
    }
}

#[async_trait]
impl SessionLog for RedisSessionLog {
    async fn append_measured(&self, frame: StoredFrame) -> Result<Appended, ArcpError> {
        self.check_present()?;
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| Gone::Removed.error(&self.session))?;
        let started = Instant::now();
        let appended = Commits::append(me, frame).await;
        latency(StoreKind::Redis, Operation::LogAppend).record(started.elapsed());
        appended
    }

    fn pipelines(&self) -> bool {
        true
    }

    fn read_batch(&self) -> Option<usize> {
        Some(READ_BATCH)
    }

    async fn queue_append(&self, frame: StoredFrame) -> Result<QueuedAppend, ArcpError> {
        self.check_present()?;
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| Gone::Removed.error(&self.session))?;
        Ok(QueuedAppend::answered_by(Commits::queue(me, frame)?))
    }

    async fn read(
        &self,
        after: EventSeq,
        max: usize,
        wait: Wait,
    ) -> Result<Vec<LogEntry>, ArcpError> {
        let max = max.max(1);
        self.commits.settle().await;
        if wait == Wait::ForMore {
            // A waiting read is a stream's, which has every frame through `after`.
            self.tail.lock().taken(after);
        }
        // A waiting reader that knows of nothing after `after`, with no message lost since the
        // last look (a resubscription), waits before it looks: a look would find nothing, and
        // a reader that keeps up would pay a round trip for it after every batch.
        let mut look = wait == Wait::No
            || self.newest.load(Ordering::Acquire) > after.get()
            || self.subscriptions.load(Ordering::Acquire)
                != self.looked_after.load(Ordering::Acquire);
        loop {
            let subscriptions = self.subscriptions.load(Ordering::Acquire);
            if look {
                let started = Instant::now();
                let read = self.read_now(after, max).await;
                latency(StoreKind::Redis, Operation::LogRead).record(started.elapsed());
                let read = read?;
                self.looked_after.store(subscriptions, Ordering::Release);
                if !read.is_empty() || wait == Wait::No {
                    return Ok(read);
                }
            }
            look = true;
            let news = self.grew.wait_until(|| {
                self.newest.load(Ordering::Acquire) > after.get()
                    || self.gone.get().is_some()
                    || self.subscriptions.load(Ordering::Acquire) != subscriptions
            });
            // Timing out is the periodic look at Redis, not a failure.
            let _ = tokio::time::timeout(RECHECK, news).await;
        }
    }

    async fn fence(&self, epoch: Epoch) -> Result<(), ArcpError> {
        self.commits.settle().await;
        self.check_present()?;
        let store = &self.store;
        let script = &store.scripts.fence;
        let mut cmd = script.call(1, 2, 128);
        cmd.arg(&self.keys.meta)
            .arg(self.incarnation.as_str())
            .arg(epoch.0);
        self.run_standing(script, &cmd).await
    }

    async fn fence_replica(
        &self,
        lost: &ReplicaInstance,
        frames: Vec<StoredFrame>,
    ) -> Result<Option<Vec<EventSeq>>, ArcpError> {
        self.commits.settle().await;
        let mut appended = Vec::with_capacity(frames.len());
        let fenced = self
            .run_append(None, &frames, Some(lost.as_str()), &mut appended)
            .await;
        Ok(match fenced.map_err(CommitError::into_error)? {
            Append::Appended => Some(appended.into_iter().map(|a| a.seq).collect()),
            Append::AlreadyFenced => None,
        })
    }

    async fn release_through(&self, through: EventSeq, epoch: Epoch) -> Result<(), ArcpError> {
        self.commits.settle().await;
        self.check_present()?;
        let store = &self.store;
        let script = &store.scripts.release;
        let mut cmd = script.call(2, 3, 128);
        cmd.arg(&self.keys.stream)
            .arg(&self.keys.meta)
            .arg(self.incarnation.as_str())
            .arg(through.get())
            .arg(epoch.0);
        let mut conn = store.redis.get().await?;
        let reply = script
            .run(&mut conn, &cmd)
            .await
            .map_err(|e| store.redis.unavailable(e))?;
        let Value::Array(reply) = reply else {
            return Err(unexpected());
        };
        let [Value::Int(code), Value::Int(freed)] = reply.as_slice() else {
            return Err(unexpected());
        };
        store.budget.owe(-freed);
        match Standing::from_code(*code).ok_or_else(unexpected)?.gone() {
            Some(gone) => Err(self.lose(gone)),
            None => Ok(()),
        }
    }

    async fn bounds(&self) -> Result<LogBounds, ArcpError> {
        self.commits.settle().await;
        self.check_present()?;
        let known = self.newest.load(Ordering::Acquire);
        let mut conn = self.store.redis.get().await?;
        let meta: Vec<Value> = ::redis::cmd("HMGET")
            .arg(&self.keys.meta)
            .arg(&["id", "x", "n", "e"])
            .query_async(&mut conn)
            .await
            .map_err(|e| self.store.redis.unavailable(e))?;
        self.check_meta(&meta, known).await
    }
}

/// A stream entry's sequence number and frame bytes: `[N-0, [f, bytes]]`.
fn entry_parts(entry: Value) -> Option<(EventSeq, Vec<u8>)> {
    let Value::Array(entry) = entry else {
        return None;
    };
    let [Value::BulkString(id), Value::Array(fields)] = <[Value; 2]>::try_from(entry).ok()? else {
        return None;
    };
    let seq = id.split(|&b| b == b'-').next().and_then(parse_u64)?;
    let [_, Value::BulkString(frame)] = <[Value; 2]>::try_from(fields).ok()? else {
        return None;
    };
    Some((EventSeq(seq), frame))
}

/// A number as Redis returns a hash field: a decimal string, or absent.
pub(super) fn number(value: &Value) -> Option<u64> {
    match value {
        Value::BulkString(digits) => parse_u64(digits),
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Redis answered in a shape no script or command of this store produces.
pub(super) fn unexpected() -> ArcpError {
    ArcpError::Internal("the event log store gave an unexpected answer".into())
}
