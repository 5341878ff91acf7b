//! Idempotency keys in Redis, shared by every replica that connects to the same server.
//!
//! A principal's keys share one hash tag, `PREFIX:{idem:PRINCIPAL}`, so every script touches
//! one Cluster slot. Each key is a hash (`…:key:KEY`: the job, the fingerprint and, once
//! accepted, the `job.accepted` frame) that Redis expires at the end of its window, and the
//! principal's sorted set (`…:order`) ranks its keys by claim order for the bound on how many
//! it holds. Claiming is one script, so of two replicas racing with a new key exactly one
//! wins. A repeat racing the first acceptance on another replica polls the key until it is
//! accepted or released.
//!
//! # The sweep
//!
//! Redis expires every key at the end of its window by itself; the sweep forgets keys as of a
//! time of its choosing, ahead of that. Its list, `PREFIX:idem-expiring`, a sorted set of
//! entries by the end of their windows, spans principals, so it is in a slot of its own: a
//! claim lists its key there after the claim's script, as a command of its own (a key this
//! misses still expires on time). On a single Redis the sweep is one script. On a Cluster it
//! goes slot by slot: the due entries from the list, then each entry's script on its own slot
//! (pipelined, sent to every slot at once), which deletes it if its window ended, then the
//! entries off the list. A sweep cut off before the last step leaves entries listed, which
//! the next one looks at again and finds gone; an entry claimed again between the steps is
//! taken off the list with the old one and still expires in Redis.

use std::time::{Duration, SystemTime};

use ::redis::{Script, Value};
use async_trait::async_trait;

use crate::{
    encoding::StoredFrame,
    error::ArcpError,
    ids::{JobId, Principal},
    store::redis::{millis, unix_millis, Connection, Redis, RedisConnection},
};

use super::{Claim, Fingerprint, IdempotencyKey, IdempotencyStore, KeyTerms};

/// Claims KEYS[1] for job ARGV[2] with fingerprint ARGV[1] for ARGV[3] ms (until ARGV[7] ms
/// since the Unix epoch), within ARGV[4] keys of the principal (KEYS[2], ranked by the counter
/// KEYS[3]); ARGV[5] is the prefix of the principal's key names and ARGV[6] the key itself.
const CLAIM: &str = r"
local held = redis.call('HMGET', KEYS[1], 'j', 'f', 'a')
if held[1] then
  if held[2] ~= ARGV[1] then return {'conflict', held[1]} end
  if held[3] then return {'accepted', held[1], held[3]} end
  return {'pending', held[1]}
end
local max = tonumber(ARGV[4])
if redis.call('ZCARD', KEYS[2]) >= max then
  for _, name in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    local other = ARGV[5] .. name
    if redis.call('EXISTS', other) == 0 then
      redis.call('ZREM', KEYS[2], name)
    end
  end
  while redis.call('ZCARD', KEYS[2]) >= max do
    local forgot = false
    for _, name in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
      local other = ARGV[5] .. name
      if redis.call('HEXISTS', other, 'a') == 1 then
        redis.call('DEL', other)
        redis.call('ZREM', KEYS[2], name)
        forgot = true
        break
      end
    end
    if not forgot then return {'full'} end
  end
end
redis.call('HSET', KEYS[1], 'j', ARGV[2], 'f', ARGV[1], 'x', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return {'new'}
";

/// Records the acceptance ARGV[2] of KEYS[1] if job ARGV[1] still holds it.
const ACCEPTED: &str = r"
if redis.call('HGET', KEYS[1], 'j') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'a', ARGV[2])
return 1
";

/// Frees KEYS[1] (ARGV[2] in the principal's ranking KEYS[2]) if job ARGV[1] holds it and it
/// was never accepted.
const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], 'j') ~= ARGV[1] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'a') == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
";

/// Deletes the entry `name` if its window ended by `now`.
const FORGET_FN: &str = r"
local function forget(name, now)
  local until_ms = redis.call('HGET', name, 'x')
  if not until_ms or tonumber(until_ms) <= tonumber(now) then
    redis.call('DEL', name)
  end
end
";

/// On a single Redis: deletes the keys listed in KEYS[1] whose window ended by ARGV[1] ms since
/// the Unix epoch.
const SWEEP: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, name in ipairs(due) do
  forget(name, ARGV[1])
  redis.call('ZREM', KEYS[1], name)
end
return #due
";

/// On a Cluster: [`FORGET_FN`] on the entry KEYS[1] as of ARGV[1].
const FORGET: &str = r"
forget(KEYS[1], ARGV[1])
return 1
";

/// How many due entries one sweep of a Cluster looks at, bounding its pipeline; the rest
/// wait for the next sweep.
const SWEEP_BATCH: usize = 256;

/// How often a repeat waiting on another submission's acceptance looks again, at first and at
/// most.
const POLL_FIRST: Duration = Duration::from_millis(2);
const POLL_MOST: Duration = Duration::from_millis(100);

/// Idempotency keys held in Redis.
pub struct RedisIdempotencyStore {
    redis: RedisConnection,
    prefix: String,
    /// Every key by the end of its window, for sweeps ahead of Redis's own expiry: a sorted set
    /// across principals, in a slot of its own.
    expiring: String,
    claim: Script,
    accepted: Script,
    release: Script,
    sweep: Script,
}

/// A key's names in Redis.
struct Names {
    entry: String,
    order: String,
    counter: String,
    /// What a member of `order` is prefixed with to name its entry.
    entries: String,
}

impl RedisIdempotencyStore {
    /// A store in `redis`, under its prefix.
    pub fn new(redis: &Redis) -> Self {
        let prefix = redis.prefix();
        RedisIdempotencyStore {
            redis: redis.for_store("idempotency store"),
            prefix: prefix.to_owned(),
            expiring: format!("{prefix}:idem-expiring"),
            claim: Script::new(CLAIM),
            accepted: Script::new(ACCEPTED),
            release: Script::new(RELEASE),
            sweep: Script::new(&format!("{FORGET_FN}{SWEEP}")),
        }
    }

    fn names(&self, key: &IdempotencyKey) -> Names {
        let principal = tag(&key.principal);
        let base = format!("{}:{{idem:{principal}}}", self.prefix);
        Names {
            entry: format!("{base}:key:{}", key.key),
            order: format!("{base}:order"),
            counter: format!("{base}:counter"),
            entries: format!("{base}:key:"),
        }
    }
}

impl RedisIdempotencyStore {
    /// The sweep on a Cluster, slot by slot: the due entries, each forgotten on its own slot,
    /// then taken off the list.
    async fn sweep_in_steps(&self, conn: &mut Connection, now: u64) -> Result<(), ArcpError> {
        let due: Vec<String> = ::redis::cmd("ZRANGEBYSCORE")
            .arg(&self.expiring)
            .arg("-inf")
            .arg(now)
            .arg("LIMIT")
            .arg(0)
            .arg(SWEEP_BATCH)
            .query_async(conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        if due.is_empty() {
            return Ok(());
        }
        // As EVAL, which no node refuses for a missing script; forgetting is idempotent.
        let forget = format!("{FORGET_FN}{FORGET}");
        let mut pipe = ::redis::pipe();
        for name in &due {
            pipe.cmd("EVAL")
                .arg(&forget)
                .arg(1)
                .arg(name)
                .arg(now)
                .ignore();
        }
        let () = pipe
            .query_async(conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        let _: i64 = ::redis::cmd("ZREM")
            .arg(&self.expiring)
            .arg(&due)
            .query_async(conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(())
    }
}

/// The principal as it appears inside a hash tag, which ends at the first `}`.
fn tag(principal: &Principal) -> String {
    principal.as_str().replace('}', "%7D")
}

fn corrupt(what: &str) -> ArcpError {
    ArcpError::Internal(format!("the idempotency store returned {what}"))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[async_trait]
impl IdempotencyStore for RedisIdempotencyStore {
    async fn claim(
        &self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
        job: &JobId,
        terms: KeyTerms,
    ) -> Result<Claim, ArcpError> {
        let names = self.names(key);
        let window = millis(terms.window).max(1);
        let until = unix_millis(SystemTime::now()).saturating_add(window);
        let mut conn = self.redis.get().await?;
        let answer: Vec<Value> = self
            .claim
            .key(&names.entry)
            .key(&names.order)
            .key(&names.counter)
            .arg(fingerprint.as_slice())
            .arg(job.as_str())
            .arg(window)
            .arg(terms.max_per_principal.max(1))
            .arg(&names.entries)
            .arg(&key.key)
            .arg(until)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        let kind = answer.first().and_then(text);
        let holder = || {
            answer
                .get(1)
                .and_then(text)
                .map(JobId::new)
                .ok_or_else(|| corrupt("a claim without its job"))
        };
        match kind.as_deref() {
            Some("new") => {
                // Listed for the sweep apart from the claim, which stays within the
                // principal's slot; a key this misses still expires in Redis on time.
                let _: i64 = ::redis::cmd("ZADD")
                    .arg(&self.expiring)
                    .arg(until)
                    .arg(&names.entry)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| self.redis.unavailable(e))?;
                Ok(Claim::New)
            }
            Some("conflict") => Ok(Claim::Conflict { job: holder()? }),
            Some("pending") => Ok(Claim::Existing {
                job: holder()?,
                accepted: None,
            }),
            Some("accepted") => {
                let Some(Value::BulkString(frame)) = answer.get(2) else {
                    return Err(corrupt("an acceptance without its frame"));
                };
                Ok(Claim::Existing {
                    job: holder()?,
                    accepted: Some(StoredFrame::from_bytes(frame.clone())?),
                })
            }
            Some("full") => Err(ArcpError::InvalidRequest(format!(
                "this principal already has {} submissions with an idempotency_key being \
                 accepted; retry once they are",
                terms.max_per_principal
            ))),
            _ => Err(corrupt("an unknown claim outcome")),
        }
    }

    async fn accepted(
        &self,
        key: &IdempotencyKey,
        job: &JobId,
        frame: StoredFrame,
    ) -> Result<(), ArcpError> {
        let names = self.names(key);
        let mut conn = self.redis.get().await?;
        let _: i64 = self
            .accepted
            .key(&names.entry)
            .arg(job.as_str())
            .arg(frame.as_bytes())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(())
    }

    async fn release(&self, key: &IdempotencyKey, job: &JobId) -> Result<(), ArcpError> {
        let names = self.names(key);
        let mut conn = self.redis.get().await?;
        let _: i64 = self
            .release
            .key(&names.entry)
            .key(&names.order)
            .arg(job.as_str())
            .arg(&key.key)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(())
    }

    async fn wait_accepted(
        &self,
        key: &IdempotencyKey,
        job: &JobId,
    ) -> Result<Option<StoredFrame>, ArcpError> {
        let names = self.names(key);
        let mut conn = self.redis.get().await?;
        let mut pause = POLL_FIRST;
        loop {
            let (holder, frame): (Option<String>, Option<Vec<u8>>) = ::redis::cmd("HMGET")
                .arg(&names.entry)
                .arg(&["j", "a"])
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis.unavailable(e))?;
            match (holder, frame) {
                (Some(holder), Some(frame)) if holder == job.as_str() => {
                    return StoredFrame::from_bytes(frame).map(Some)
                }
                (Some(holder), None) if holder == job.as_str() => {}
                // Released (or expired, or claimed anew by another job).
                _ => return Ok(None),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MOST);
        }
    }

    async fn sweep(&self, now: SystemTime) -> Result<(), ArcpError> {
        // Redis expires each key at the end of its window by itself; this forgets them as of
        // `now`, and drops them from the sweep's list. A claim drops expired keys from its
        // principal's ranking.
        let now = unix_millis(now);
        let mut conn = self.redis.get().await?;
        if let Connection::Cluster(_) = conn {
            return self.sweep_in_steps(&mut conn, now).await;
        }
        let _: i64 = self
            .sweep
            .key(&self.expiring)
            .arg(now)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(())
    }
}
