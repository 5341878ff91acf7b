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
//! The sweep's script reaches every expired session from the sorted set, which on a Redis
//! Cluster is in another slot than the sessions; this store is for a single Redis (or a primary
//! with replicas) until the sweep is made slot-aware.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::Script;
use async_trait::async_trait;

use crate::{
    error::ArcpError,
    ids::{Epoch, Principal, SessionId},
    store::redis::{unix_millis as millis, Redis, RedisConnection},
};

use super::{token_not_valid, verify_entry, ResumeRegistry, ResumeToken, TokenDigest};

/// The longest session id a presented token may name; longer ones are refused before they
/// become a key.
const MAX_SESSION_ID: usize = 128;

/// Registers a session's first token, replacing any entry it had.
const ISSUE: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'd', ARGV[1], 'p', ARGV[2], 'e', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[4])
return 1
";

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
        let stored = digest
            .and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
            .map(TokenDigest::from_bytes)
            .ok_or_else(token_not_valid)?;
        let owner = owner.map(Principal::new).ok_or_else(token_not_valid)?;
        let expires_at = deadline.map(|at| UNIX_EPOCH + Duration::from_millis(at));
        verify_entry(&stored, presented, expires_at, &owner, principal)?;
        Ok((session, stored))
    }
}

#[async_trait]
impl ResumeRegistry for RedisResumeRegistry {
    async fn issue(
        &self,
        session: &SessionId,
        principal: &Principal,
        epoch: Epoch,
    ) -> Result<ResumeToken, ArcpError> {
        let token = ResumeToken::generate(session);
        let mut conn = self.redis.get().await?;
        let _: i64 = self
            .scripts
            .issue
            .key(self.entry_key(session))
            .key(&self.expiring)
            .arg(token.digest().as_bytes().as_slice())
            .arg(principal.as_str())
            .arg(epoch.0)
            .arg(session.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(token)
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
        let token = ResumeToken::generate(&session);
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
