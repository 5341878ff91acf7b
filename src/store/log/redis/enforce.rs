//! The budget's steps: counting a change, listing a detached session, evicting from the
//! sessions that detached first while the store is over the budget, and the recount that
//! repairs the count and the list from the logs' metadata (see `budget.rs` for the keys, and
//! the module doc of `store::log::redis` for the order of the steps).

use std::{
    collections::BTreeSet,
    sync::{Arc, Weak},
    time::Duration,
};

use ::redis::Value;

use crate::{
    error::ArcpError,
    ids::SessionId,
    store::{log::Retention, redis::Connection},
};

use super::{
    budget::{Listing, Position},
    session::{number, unexpected, Store},
};

/// How often a replica adds what it owes to the count.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// How many flushes between two recounts of the budget from every log's metadata.
const RECOUNT_EVERY: u32 = 300;

/// How many logs' metadata a recount reads per round trip.
const RECOUNT_BATCH: usize = 256;

/// A hang guard on one enforcement: each step frees a frame or takes a session off the list.
const MAX_STEPS: usize = 100_000;

impl Store {
    /// Adds what this replica owes to the count and makes the `listing` change, in one script
    /// on the budget's slot; returns the position after it.
    pub(super) async fn account(&self, listing: Listing<'_>) -> Result<Position, ArcpError> {
        let budget = &self.budget;
        let script = &self.scripts.account;
        let (op, session) = match listing {
            Listing::Keep => ("", ""),
            Listing::List(session) => ("list", session),
            Listing::Unlist(session) => ("unlist", session),
        };
        let mut conn = self.redis.get().await?;
        let owed = budget.take();
        let mut cmd = script.call(3, 3, 128);
        cmd.arg(&budget.retained)
            .arg(&budget.detached)
            .arg(&budget.detach_order)
            .arg(owed)
            .arg(op)
            .arg(session);
        let answer = script.run(&mut conn, &cmd).await.map_err(|e| {
            // Not applied, or applied with its answer lost: owing it again is the safe error,
            // counting the bytes twice, which evicts early rather than never.
            budget.owe(owed);
            self.redis.unavailable(e)
        })?;
        let Value::Array(answer) = answer else {
            return Err(unexpected());
        };
        match answer.as_slice() {
            [Value::Int(total), Value::BulkString(oldest)] => {
                let oldest = (!oldest.is_empty())
                    .then(|| String::from_utf8(oldest.clone()).ok())
                    .flatten();
                Ok(budget.position(*total, oldest))
            }
            _ => Err(unexpected()),
        }
    }

    /// Lists `session`, which detached holding frames, and brings the store within the
    /// budget.
    pub(super) async fn list_detached(&self, session: &SessionId) -> Result<(), ArcpError> {
        let position = self.account(Listing::List(session.as_str())).await?;
        self.enforce(position).await;
        Ok(())
    }

    /// Brings the store within the budget, from `position`, evicting from the sessions that
    /// detached first. Best effort: what it leaves undone, the next change over the budget
    /// does.
    pub(super) async fn enforce(&self, position: Position) {
        let budget = &self.budget;
        if !budget.over(&position) {
            return;
        }
        let mut position = position;
        let _enforcing = match budget.enforcing.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // Another enforcement on this replica went first: what it left is looked at anew.
                let guard = budget.enforcing.lock().await;
                match self.account(Listing::Keep).await {
                    Ok(now) => position = now,
                    Err(e) => {
                        tracing::warn!("event log budget not enforced: {e}");
                        return;
                    }
                }
                guard
            }
        };
        for _ in 0..MAX_STEPS {
            if !budget.over(&position) {
                return;
            }
            let Some(session) = position.oldest.take() else {
                return;
            };
            match self
                .evict_step(&session, position.total - budget.bytes)
                .await
            {
                Ok(next) => position = next,
                Err(e) => {
                    tracing::warn!(session = %session, "event log budget not enforced: {e}");
                    return;
                }
            }
        }
    }

    /// Evicts up to `excess` bytes of `session`'s oldest frames (its slot), then counts them
    /// off and, if it holds no more or is not detached, takes it off the list (the budget's).
    async fn evict_step(&self, session: &str, excess: i64) -> Result<Position, ArcpError> {
        let keys = self.keys(&SessionId::new(session.to_owned()));
        let script = &self.scripts.evict;
        let mut cmd = script.call(2, 1, 128);
        cmd.arg(&keys.stream).arg(&keys.meta).arg(excess);
        let mut conn = self.redis.get().await?;
        let answer = script
            .run(&mut conn, &cmd)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        let Value::Array(answer) = answer else {
            return Err(unexpected());
        };
        let [Value::Int(freed), Value::Int(unlist)] = answer.as_slice() else {
            return Err(unexpected());
        };
        self.budget.owe(-freed);
        let listing = if *unlist == 1 {
            Listing::Unlist(session)
        } else {
            Listing::Keep
        };
        self.account(listing).await
    }

    /// Adds what this replica owes to the count, if anything, and enforces the budget.
    async fn flush(&self) {
        if !self.budget.owes() {
            return;
        }
        match self.account(Listing::Keep).await {
            Ok(position) => self.enforce(position).await,
            Err(e) => tracing::debug!("event log budget count not updated: {e}"),
        }
    }

    /// Sets the count and the detached list to what the logs' metadata says: each log's `b`,
    /// and the logs whose `d` is `l`. The repair of a second step that a cancelled call, a
    /// crash or a lost answer left undone or did twice. Changes racing with it may leave the
    /// count off by what they changed, until the next recount.
    pub(super) async fn recount(&self) -> Result<(), ArcpError> {
        let budget = &self.budget;
        let _enforcing = budget.enforcing.lock().await;
        let mut conn = self.redis.get().await?;
        // What is owed is in the logs' metadata already, which the walk reads.
        budget.take();
        let walked = self.walk(&mut conn, true).await?;
        if !walked.gone.is_empty() {
            let _: Value = ::redis::cmd("SREM")
                .arg(&budget.logs)
                .arg(&walked.gone)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis.unavailable(e))?;
        }
        let detached = &walked.detached;
        let script = &self.scripts.recount;
        let mut cmd = script.call(3, 1 + detached.len(), 64 * (1 + detached.len()));
        cmd.arg(&budget.retained)
            .arg(&budget.detached)
            .arg(&budget.detach_order)
            .arg(walked.retention.bytes);
        for session in detached {
            cmd.arg(session);
        }
        script
            .run(&mut conn, &cmd)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(())
    }

    /// What all logs retain, read from every log's metadata, changing nothing: the frames and
    /// bytes the metrics show.
    pub(super) async fn survey(&self) -> Result<Retention, ArcpError> {
        let mut conn = self.redis.get().await?;
        Ok(self.walk(&mut conn, false).await?.retention)
    }

    /// Reads the metadata of every log the budget lists (of the detached sessions too, with
    /// `listed`), a chunk at a time so that a store of many logs does not hold Redis up.
    async fn walk(&self, conn: &mut Connection, listed: bool) -> Result<Walked, ArcpError> {
        let budget = &self.budget;
        let mut sessions = BTreeSet::new();
        if listed {
            let detached: Vec<String> = ::redis::cmd("ZRANGE")
                .arg(&budget.detached)
                .arg(0)
                .arg(-1)
                .query_async(conn)
                .await
                .map_err(|e| self.redis.unavailable(e))?;
            sessions.extend(detached);
        }
        let mut cursor = 0u64;
        loop {
            let (next, members): (u64, Vec<String>) = ::redis::cmd("SSCAN")
                .arg(&budget.logs)
                .arg(cursor)
                .arg("COUNT")
                .arg(RECOUNT_BATCH)
                .query_async(conn)
                .await
                .map_err(|e| self.redis.unavailable(e))?;
            sessions.extend(members);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let sessions: Vec<String> = sessions.into_iter().collect();
        let mut walked = Walked::default();
        for chunk in sessions.chunks(RECOUNT_BATCH) {
            let mut pipe = ::redis::pipe();
            for session in chunk {
                let keys = self.keys(&SessionId::new(session.clone()));
                pipe.cmd("HMGET")
                    .arg(&keys.meta)
                    .arg(&["id", "x", "b", "d", "n", "e"]);
            }
            let metas: Vec<Vec<Value>> = pipe
                .query_async(conn)
                .await
                .map_err(|e| self.redis.unavailable(e))?;
            for (session, meta) in chunk.iter().zip(metas) {
                match meta.as_slice() {
                    [Value::BulkString(_), tomb, bytes, listing, newest, evicted] if !matches!(tomb, Value::BulkString(t) if t == b"removed") =>
                    {
                        walked.retention.bytes += number(bytes).unwrap_or(0);
                        walked.retention.frames += number(newest)
                            .unwrap_or(0)
                            .saturating_sub(number(evicted).unwrap_or(0));
                        if matches!(listing, Value::BulkString(d) if d == b"l") {
                            walked.detached.push(session.clone());
                        }
                    }
                    _ => walked.gone.push(session.clone()),
                }
            }
        }
        Ok(walked)
    }
}

/// What a walk over the logs' metadata found.
#[derive(Default)]
struct Walked {
    /// The frames and bytes the logs retain.
    retention: Retention,
    /// The logs marked detached and holding frames.
    detached: Vec<String>,
    /// The sessions listed whose logs are gone.
    gone: Vec<String>,
}

/// The store's upkeep while it lives: what it owes the count, added each second, and a
/// recount every few minutes.
pub(super) async fn upkeep(store: Weak<Store>) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else {
            return;
        };
        ticks = ticks.wrapping_add(1);
        if ticks % RECOUNT_EVERY == 0 {
            if let Err(e) = store.recount().await {
                tracing::debug!("event log budget not recounted: {e}");
            }
        } else {
            store.flush().await;
        }
        drop::<Arc<Store>>(store);
    }
}
