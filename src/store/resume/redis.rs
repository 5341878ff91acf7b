//! The resume registry in Redis, shared by every replica that connects to the same server.
//!
//! Each session's entry is one hash, `PREFIX:{SESSION}:resume` (the braces make the session
//! id the key's hash tag, so a session's keys share a Cluster slot): the token's digest, the
//! principal, the epoch of the attachment that registered it, and, once that attachment's
//! window started, the deadline in milliseconds since the Unix epoch. A sorted set,
//! `PREFIX:resume-expiring`, indexes the sessions by deadline for the sweep.
//!
//! Digests are compared in this process, in constant time: a read fetches the entry and checks
//! it here. Every change of an entry is one Lua script on the entry alone, so it takes effect
//! whole or not at all whether or not the caller stays to see the answer. A rotation is a
//! compare-and-swap on the digest the read verified, so of two replicas presenting one token
//! at once exactly one wins.
//!
//! # The index, and the sweep
//!
//! The entry's deadline is the truth; the sorted set is an index that may name a session
//! early or in vain, never miss one whose window started. So a window joins the index
//! (`ZADD LT`: an earlier deadline already listed stays) before the entry takes its
//! deadline: a start lost between the two leaves a member the sweep visits for nothing. A
//! rotation or a removal changes the entry only, leaving its member for the sweep to drop.
//! The sweep takes the sessions due by the index, and for each looks at the entry: one whose
//! deadline passed it deletes and returns (the deletion is what makes a session taken once,
//! however many sweep at once); one with a later deadline it lists again at that deadline;
//! one without a window, or gone, it drops from the index. On a single Redis that is one
//! script; on a Cluster, where the entries are in other slots than the index, three steps:
//! read the due members, run the entries' script on each entry's slot (pipelined, sent to
//! every slot at once), then fix the index, each member only if its score is still the one
//! read, so that a window started meanwhile is not dropped. A sweep cut off between the
//! steps leaves members of taken sessions, which the next one drops.
//!
//! # Lost data
//!
//! `PREFIX:incarnation` holds a random id for the life of the store's data, set by the first
//! token issued into a store that has none, and every token issued names it
//! (`rt_SESSION.INCARNATION.SECRET`). A flush, or a restart or failover without persistence,
//! takes it away with everything else, and the next issue sets a new one. A presented token
//! whose entry is missing is then told apart: if the store's incarnation is not the one the
//! token names, the store lost the session (`RESUME_WINDOW_EXPIRED` saying so), rather than
//! the token being unknown or out of date. Each replica remembers the incarnation its last
//! issue found; an issue pipelines the entry's script with a read of the incarnation (set if
//! there is none), in its own slot on a Cluster, and when the incarnation is not the one the
//! token named it issues again with the one found, replacing the entry: one round trip, two
//! the first time after a loss. The key must not be deleted by hand, and, like every key,
//! not evicted (`maxmemory-policy noeviction`). On a Cluster the key lives on one node, so a
//! node that lost its data while that one kept the key makes its sessions' tokens read as
//! not valid rather than lost: the same refusal, with a vaguer reason.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::{Script, Value};
use async_trait::async_trait;
use parking_lot::Mutex;

use crate::{
    error::ArcpError,
    ids::{Epoch, Principal, SessionId},
    store::redis::{query_loading, unix_millis as millis, Connection, Redis, RedisConnection},
};

use super::{token_not_valid, verify_entry, ResumeRegistry, ResumeToken, TokenDigest};

/// The longest session id a presented token may name; longer ones are refused before they
/// become a key.
const MAX_SESSION_ID: usize = 128;

/// The store's incarnation KEYS[1], which a store with none begins as ARGV[1].
const INCARNATION: &str = r"
local incarnation = redis.call('GET', KEYS[1])
if not incarnation then
  incarnation = ARGV[1]
  redis.call('SET', KEYS[1], incarnation)
end
return incarnation
";

/// Registers a session's first token (digest ARGV[1], principal ARGV[2], epoch ARGV[3]) as
/// KEYS[1], replacing any entry it had.
const ISSUE: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'p', ARGV[2], 'e', ARGV[3])
return 1
";

/// How many times an issue tries again with the incarnation the store answered: once is
/// enough unless the store loses its data again in between.
const ISSUE_ATTEMPTS: usize = 3;

/// Replaces the digest ARGV[1] with ARGV[2] for epoch ARGV[3] if the entry still holds ARGV[1],
/// has not expired by ARGV[4] and was registered by an older epoch; clears the window.
const ROTATE: &str = r"
local entry = redis.call('HMGET', KEYS[1], 'd', 'e', 'x')
if not entry[1] or entry[1] ~= ARGV[1] then return 0 end
if entry[3] and tonumber(entry[3]) <= tonumber(ARGV[4]) then return 0 end
if tonumber(ARGV[3]) <= tonumber(entry[2]) then return 0 end
redis.call('HSET', KEYS[1], 'd', ARGV[2], 'e', ARGV[3])
redis.call('HDEL', KEYS[1], 'x')
return 1
";

/// Starts the window of epoch ARGV[1], ending at ARGV[2], if that epoch registered the entry.
const START_WINDOW: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch or epoch ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'x', ARGV[2])
return 1
";

/// What the sweep does with the entry `entry` as of `now`: deletes it and answers `1` if its
/// window ended, answers its deadline if it is later, `0` if it has none (or is gone).
const TAKE_ENTRY_FN: &str = r"
local function take(entry, now)
  local deadline = redis.call('HGET', entry, 'x')
  if not deadline then return 0 end
  if tonumber(deadline) <= tonumber(now) then
    redis.call('DEL', entry)
    return 1
  end
  return deadline
end
";

/// On a Cluster: [`TAKE_ENTRY_FN`] on the entry KEYS[1] as of ARGV[1].
const TAKE_ENTRY: &str = "return take(KEYS[1], ARGV[1])";

/// On a single Redis: takes the sessions of the index KEYS[1] whose deadline is at or before
/// ARGV[1], and returns them, fixing the index on the way; ARGV[2] is the key prefix.
const TAKE_EXPIRED: &str = r"
local taken = {}
for _, session in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do
  local outcome = take(ARGV[2] .. ':{' .. session .. '}:resume', ARGV[1])
  if outcome == 1 then table.insert(taken, session) end
  if outcome == 0 or outcome == 1 then
    redis.call('ZREM', KEYS[1], session)
  else
    redis.call('ZADD', KEYS[1], outcome, session)
  end
end
return taken
";

/// On a Cluster, after the entries' scripts: for each triple in ARGV (session, the score the
/// sweep read, the deadline to list it at, or `-` to drop it), fixes the index KEYS[1] if the
/// session's score is still the one read.
const FIX_INDEX: &str = r"
for i = 1, #ARGV, 3 do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) == tonumber(ARGV[i + 1]) then
    if ARGV[i + 2] == '-' then
      redis.call('ZREM', KEYS[1], ARGV[i])
    else
      redis.call('ZADD', KEYS[1], ARGV[i + 2], ARGV[i])
    end
  end
end
return 1
";

/// How many due sessions one sweep of a Cluster looks at, bounding its pipeline; the rest
/// wait for the next sweep.
const SWEEP_BATCH: usize = 256;

/// Resume tokens held in Redis.
pub struct RedisResumeRegistry {
    redis: RedisConnection,
    prefix: String,
    expiring: String,
    /// The key of the store's incarnation.
    incarnation_key: String,
    /// The incarnation the last issue found, which the next token names.
    incarnation: Mutex<Option<String>>,
    scripts: Scripts,
}

struct Scripts {
    incarnation: Script,
    issue: Script,
    rotate: Script,
    start_window: Script,
    take_expired: Script,
    fix_index: Script,
}

/// An entry as read back: digest, principal, epoch, deadline.
type Fields = (Option<Vec<u8>>, Option<String>, Option<u64>, Option<u64>);

impl RedisResumeRegistry {
    /// A registry in `redis`, under its prefix.
    pub fn new(redis: &Redis) -> Self {
        let prefix = redis.prefix();
        RedisResumeRegistry {
            redis: redis.for_store("resume store"),
            prefix: prefix.to_owned(),
            expiring: format!("{prefix}:resume-expiring"),
            incarnation_key: format!("{prefix}:incarnation"),
            incarnation: Mutex::new(None),
            scripts: Scripts {
                incarnation: Script::new(INCARNATION),
                issue: Script::new(ISSUE),
                rotate: Script::new(ROTATE),
                start_window: Script::new(START_WINDOW),
                take_expired: Script::new(&format!("{TAKE_ENTRY_FN}{TAKE_EXPIRED}")),
                fix_index: Script::new(FIX_INDEX),
            },
        }
    }

    fn entry_key(&self, session: &SessionId) -> String {
        format!("{}:{{{session}}}:resume", self.prefix)
    }

    /// Reads the entry `presented` names and checks it here: digest (in constant time),
    /// window, principal. Returns the session and the digest it holds.
    async fn verify(
        &self,
        presented: &str,
        principal: &Principal,
    ) -> Result<(SessionId, TokenDigest), ArcpError> {
        let session = ResumeToken::session_of(presented)
            .filter(|s| s.as_str().len() <= MAX_SESSION_ID)
            .ok_or_else(token_not_valid)?;
        let mut conn = self.redis.get().await?;
        let (digest, owner, _epoch, deadline): Fields = ::redis::cmd("HMGET")
            .arg(self.entry_key(&session))
            .arg(&["d", "p", "e", "x"])
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        let Some(stored) = digest
            .and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
            .map(TokenDigest::from_bytes)
        else {
            return Err(self.missing(presented, &session).await);
        };
        let owner = owner.map(Principal::new).ok_or_else(token_not_valid)?;
        let expires_at = deadline.map(|at| UNIX_EPOCH + Duration::from_millis(at));
        verify_entry(&stored, presented, expires_at, &owner, principal)?;
        Ok((session, stored))
    }

    /// Why the entry of `presented` is missing: the store lost it, if its incarnation is not
    /// the one the token names; else the token is merely not valid.
    async fn missing(&self, presented: &str, session: &SessionId) -> ArcpError {
        let Some(origin) = ResumeToken::origin_of(presented) else {
            return token_not_valid();
        };
        let current: Result<Option<String>, _> = match self.redis.get().await {
            Ok(mut conn) => {
                ::redis::cmd("GET")
                    .arg(&self.incarnation_key)
                    .query_async(&mut conn)
                    .await
            }
            Err(e) => return e,
        };
        match current {
            Ok(current) if current.as_deref() != Some(origin) => lost(session),
            Ok(_) => token_not_valid(),
            Err(e) => self.redis.unavailable(e),
        }
    }

    /// The sweep on a Cluster, slot by slot: the due members of the index, each one's entry
    /// on its own slot, then the index fixed for what the entries said.
    async fn take_expired_in_steps(
        &self,
        conn: &mut Connection,
        now: u64,
    ) -> Result<Vec<String>, ArcpError> {
        let due: Vec<(String, f64)> = ::redis::cmd("ZRANGEBYSCORE")
            .arg(&self.expiring)
            .arg("-inf")
            .arg(now)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(SWEEP_BATCH)
            .query_async(conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        // As EVAL, which no node refuses for a missing script: a pipeline sent again because
        // one node lacked it would find the entries the others took gone, and lose them.
        let take = format!("{TAKE_ENTRY_FN}{TAKE_ENTRY}");
        let mut pipe = ::redis::pipe();
        for (session, _) in &due {
            pipe.cmd("EVAL")
                .arg(&take)
                .arg(1)
                .arg(format!("{}:{{{session}}}:resume", self.prefix))
                .arg(now);
        }
        let outcomes: Vec<Value> = pipe
            .query_async(conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        let mut taken = Vec::new();
        let mut fix = self.scripts.fix_index.key(&self.expiring);
        for ((session, score), outcome) in due.into_iter().zip(outcomes) {
            let relist = match outcome {
                Value::Int(1) => {
                    taken.push(session.clone());
                    None
                }
                Value::BulkString(deadline) => {
                    Some(String::from_utf8_lossy(&deadline).into_owned())
                }
                _ => None,
            };
            fix.arg(&session)
                .arg(score)
                .arg(relist.as_deref().unwrap_or("-"));
        }
        // Best effort: members left behind, the next sweep drops.
        if let Err(e) = fix.invoke_async::<i64>(conn).await {
            tracing::debug!("resume index not fixed after a sweep: {e}");
        }
        Ok(taken)
    }

    /// A new incarnation, for a store that has none.
    fn fresh_incarnation() -> String {
        format!("{:016x}", rand::random::<u64>())
    }
}

/// The error for a token whose store lost its data since it issued it.
fn lost(session: &SessionId) -> ArcpError {
    ArcpError::ResumeWindowExpired(format!(
        "the store lost session {session}: Redis no longer holds the data the session's resume \
         token was issued with (it was flushed, or restarted or failed over without \
         persistence); start a new session"
    ))
}

#[async_trait]
impl ResumeRegistry for RedisResumeRegistry {
    async fn issue(
        &self,
        session: &SessionId,
        principal: &Principal,
        epoch: Epoch,
    ) -> Result<ResumeToken, ArcpError> {
        let mut conn = self.redis.get().await?;
        let fresh = Self::fresh_incarnation();
        let mut believed = self
            .incarnation
            .lock()
            .clone()
            .unwrap_or_else(|| fresh.clone());
        for _ in 0..ISSUE_ATTEMPTS {
            let token = ResumeToken::generate_in(session, Some(&believed));
            let mut pipe = ::redis::pipe();
            // Both scripts are idempotent: a retry of the pipeline for a missing one is
            // harmless.
            pipe.invoke_script(
                self.scripts
                    .incarnation
                    .key(&self.incarnation_key)
                    .arg(&fresh),
            )
            .invoke_script(
                self.scripts
                    .issue
                    .key(self.entry_key(session))
                    .arg(token.digest().as_bytes().as_slice())
                    .arg(principal.as_str())
                    .arg(epoch.0),
            )
            .ignore();
            let (current,): (Value,) = query_loading(
                &mut conn,
                &pipe,
                &[&self.scripts.incarnation, &self.scripts.issue],
            )
            .await
            .map_err(|e| self.redis.unavailable(e))?;
            match current {
                Value::BulkString(current) if current == believed.as_bytes() => {
                    *self.incarnation.lock() = Some(believed);
                    return Ok(token);
                }
                // Only an incarnation this store wrote can go into a token; the entry just
                // written names one the store does not have, so it is written again.
                Value::BulkString(current)
                    if (1..=64).contains(&current.len())
                        && current.iter().all(u8::is_ascii_alphanumeric) =>
                {
                    believed = String::from_utf8_lossy(&current).into_owned();
                }
                _ => break,
            }
        }
        Err(ArcpError::Internal(
            "the resume store gave an unexpected answer to a new session's token".into(),
        ))
    }

    async fn check(&self, token: &str, principal: &Principal) -> Result<SessionId, ArcpError> {
        self.verify(token, principal)
            .await
            .map(|(session, _)| session)
    }

    async fn rotate(
        &self,
        presented: &str,
        principal: &Principal,
        epoch: Epoch,
    ) -> Result<ResumeToken, ArcpError> {
        let (session, held) = self.verify(presented, principal).await?;
        // The entry is in the incarnation the presented token names; so is its successor.
        let origin = ResumeToken::origin_of(presented)
            .map(str::to_owned)
            .or_else(|| self.incarnation.lock().clone());
        let token = ResumeToken::generate_in(&session, origin.as_deref());
        let mut conn = self.redis.get().await?;
        let swapped: i64 = self
            .scripts
            .rotate
            .key(self.entry_key(&session))
            .arg(held.as_bytes().as_slice())
            .arg(token.digest().as_bytes().as_slice())
            .arg(epoch.0)
            .arg(millis(SystemTime::now()))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        if swapped == 1 {
            Ok(token)
        } else {
            Err(token_not_valid())
        }
    }

    async fn start_window(
        &self,
        session: &SessionId,
        epoch: Epoch,
        deadline: SystemTime,
    ) -> Result<bool, ArcpError> {
        let mut conn = self.redis.get().await?;
        let deadline = millis(deadline);
        // The index first, so that no window is ever missing from it.
        let mut listed = ::redis::cmd("ZADD");
        listed
            .arg(&self.expiring)
            .arg("LT")
            .arg(deadline)
            .arg(session.as_str());
        let mut start = self.scripts.start_window.key(self.entry_key(session));
        start.arg(epoch.0).arg(deadline);
        let started: i64 = match conn {
            // One server runs a pipeline in order: one round trip.
            Connection::Single(_) => {
                let mut pipe = ::redis::pipe();
                pipe.add_command(listed).ignore().invoke_script(&start);
                query_loading(&mut conn, &pipe, &[&self.scripts.start_window])
                    .await
                    .map(|(started,): (i64,)| started)
            }
            // A Cluster sends the commands of two slots at once: the index must answer first.
            Connection::Cluster(_) => match listed.query_async::<i64>(&mut conn).await {
                Ok(_) => start.invoke_async(&mut conn).await,
                Err(e) => Err(e),
            },
        }
        .map_err(|e| self.redis.unavailable(e))?;
        Ok(started == 1)
    }

    async fn take_expired(&self, now: SystemTime) -> Result<Vec<SessionId>, ArcpError> {
        let mut conn = self.redis.get().await?;
        let now = millis(now);
        let expired: Vec<String> = match conn {
            Connection::Single(_) => self
                .scripts
                .take_expired
                .key(&self.expiring)
                .arg(now)
                .arg(&self.prefix)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.redis.unavailable(e))?,
            Connection::Cluster(_) => self.take_expired_in_steps(&mut conn, now).await?,
        };
        Ok(expired.into_iter().map(SessionId::new).collect())
    }

    async fn remove(&self, session: &SessionId) -> Result<(), ArcpError> {
        // Its member in the index, if any, the sweep drops.
        let mut conn = self.redis.get().await?;
        let _: i64 = ::redis::cmd("DEL")
            .arg(self.entry_key(session))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(())
    }
}
