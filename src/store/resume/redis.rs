//! The resume registry in Redis, shared by every replica that connects to the same server.
//!
//! Each session's entry is one hash, `PREFIX:{SESSION}:resume` (the braces make the session
//! id the key's hash tag, so a session's keys share a Cluster slot): the token's digest, the
//! principal, the epoch of the attachment that registered it, and, once that attachment's
//! window started, the deadline in milliseconds since the Unix epoch. A sorted set,
//! `PREFIX:resume-expiring`, orders the detached sessions by deadline for the sweep.
//!
//! Digests are compared in this process, in constant time: a read fetches the entry and checks
//! it here. Every change is one Lua script, so it takes effect whole or not at all whether or not
//! the caller stays to see the answer. A rotation is a compare-and-swap on the digest the read
//! verified, so of two replicas presenting one token at once exactly one wins.
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
//! issue found, so an issue is one round trip, two the first time after a loss. The key must
//! not be deleted by hand, and, like every key, not evicted (`maxmemory-policy noeviction`).
//!
//! The sweep's script reaches every expired session from the sorted set, and the issue's the
//! incarnation, which on a Redis Cluster are in other slots than the sessions; this store is
//! for a single Redis (or a primary with replicas) until both are made slot-aware.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::{Script, Value};
use async_trait::async_trait;
use parking_lot::Mutex;

use crate::{
    error::ArcpError,
    ids::{Epoch, Principal, SessionId},
    store::redis::{unix_millis as millis, Redis, RedisConnection},
};

use super::{token_not_valid, verify_entry, ResumeRegistry, ResumeToken, TokenDigest};

/// The longest session id a presented token may name; longer ones are refused before they
/// become a key.
const MAX_SESSION_ID: usize = 128;

/// Registers a session's first token, replacing any entry it had, if the store's incarnation
/// is ARGV[5], the one the token names; a store with none begins incarnation ARGV[6]. Returns
/// 1, or the store's incarnation when the token names another.
/// KEYS: entry, expiring sessions, the store's incarnation.
const ISSUE: &str = r"
local incarnation = redis.call('GET', KEYS[3])
if not incarnation then
  incarnation = ARGV[6]
  redis.call('SET', KEYS[3], incarnation)
end
if incarnation ~= ARGV[5] then return incarnation end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'p', ARGV[2], 'e', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[4])
return 1
";

/// How many times an issue tries again with the incarnation the store answered: once is
/// enough unless the store loses its data again in between.
const ISSUE_ATTEMPTS: usize = 3;

/// Replaces the digest ARGV[1] with ARGV[2] for epoch ARGV[3] if the entry still holds ARGV[1],
/// has not expired by ARGV[5] and was registered by an older epoch; clears the window.
const ROTATE: &str = r"
local entry = redis.call('HMGET', KEYS[1], 'd', 'e', 'x')
if not entry[1] or entry[1] ~= ARGV[1] then return 0 end
if entry[3] and tonumber(entry[3]) <= tonumber(ARGV[5]) then return 0 end
if tonumber(ARGV[3]) <= tonumber(entry[2]) then return 0 end
redis.call('HSET', KEYS[1], 'd', ARGV[2], 'e', ARGV[3])
redis.call('HDEL', KEYS[1], 'x')
redis.call('ZREM', KEYS[2], ARGV[4])
return 1
";

/// Starts the window of epoch ARGV[1], ending at ARGV[2], if that epoch registered the entry.
const START_WINDOW: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch or epoch ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'x', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
";

/// Removes and returns the sessions whose deadline is at or before ARGV[1]; ARGV[2] is the key
/// prefix.
const TAKE_EXPIRED: &str = r"
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, session in ipairs(expired) do
  redis.call('ZREM', KEYS[1], session)
  redis.call('DEL', ARGV[2] .. ':{' .. session .. '}:resume')
end
return expired
";

/// Forgets a session's entry.
const REMOVE: &str = r"
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
";

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
    issue: Script,
    rotate: Script,
    start_window: Script,
    take_expired: Script,
    remove: Script,
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
                issue: Script::new(ISSUE),
                rotate: Script::new(ROTATE),
                start_window: Script::new(START_WINDOW),
                take_expired: Script::new(TAKE_EXPIRED),
                remove: Script::new(REMOVE),
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
            let answer: Value = self
                .scripts
                .issue
                .key(self.entry_key(session))
                .key(&self.expiring)
                .key(&self.incarnation_key)
                .arg(token.digest().as_bytes().as_slice())
                .arg(principal.as_str())
                .arg(epoch.0)
                .arg(session.as_str())
                .arg(&believed)
                .arg(&fresh)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.redis.unavailable(e))?;
            match answer {
                Value::Int(1) => {
                    *self.incarnation.lock() = Some(believed);
                    return Ok(token);
                }
                // Only an incarnation this store wrote can go into a token.
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
            .key(&self.expiring)
            .arg(held.as_bytes().as_slice())
            .arg(token.digest().as_bytes().as_slice())
            .arg(epoch.0)
            .arg(session.as_str())
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
        let started: i64 = self
            .scripts
            .start_window
            .key(self.entry_key(session))
            .key(&self.expiring)
            .arg(epoch.0)
            .arg(millis(deadline))
            .arg(session.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(started == 1)
    }

    async fn take_expired(&self, now: SystemTime) -> Result<Vec<SessionId>, ArcpError> {
        let mut conn = self.redis.get().await?;
        let expired: Vec<String> = self
            .scripts
            .take_expired
            .key(&self.expiring)
            .arg(millis(now))
            .arg(&self.prefix)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(expired.into_iter().map(SessionId::new).collect())
    }

    async fn remove(&self, session: &SessionId) -> Result<(), ArcpError> {
        let mut conn = self.redis.get().await?;
        let _: i64 = self
            .scripts
            .remove
            .key(self.entry_key(session))
            .key(&self.expiring)
            .arg(session.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(())
    }
}
