//! The replica registry in Redis, shared by every replica that connects to the same server.
//!
//! # Keys
//!
//! Under the prefix `P`:
//!
//! - `P:{replica:R}:lease`, a hash per replica id `R`: `i` the token of the instance that holds
//!   the id, `u` when its lease ends (milliseconds, by Redis's clock, so replicas' clocks need
//!   not agree), and once it is declared lost `l` (the token of the lost instance, which is
//!   `i`), `c` its claimant (an instance, `R2/TOKEN`) with `cu` when the claim ends, and `d`
//!   once the takeover is done. A done takeover leaves the hash for [`TOMBSTONE`], so that a
//!   lost instance that was only paused learns, when it comes back, that it was lost.
//! - `P:replicas`, a set of the replica ids that registered, which the sweep reads to find
//!   the leases to look at.
//!
//! Every script touches one replica's hash, so on a Redis Cluster each runs in that replica's
//! slot: nothing reaches many slots at once. The set is kept beside it with plain commands
//! sent in the same round trip (`SADD` with every registration and heartbeat, so that it heals
//! by itself; `SREM` once a replica left or was taken over), and a sweep reads it with one
//! command and claims each replica with a script of its own. The other stores keep their
//! per-replica indexes under the same hash tag (`P:{replica:R}:jobs`,
//! `P:{replica:R}:sessions`), so that, on a Cluster, what a replica's scripts check of its
//! lease is in their slot.
//!
//! # Calls
//!
//! A registration and a heartbeat are one round trip; a sweep one to read the set and one for
//! all the claims (pipelined); the end of a takeover one and the removal from the set one more.
//! A lease ends `lease` after the last heartbeat; a claim is taken only past that, by Redis's
//! clock, and in the script that checks it, so of two survivors one gets it.

use std::time::Duration;

use ::redis::{Script, Value};
use async_trait::async_trait;

use crate::{
    error::ArcpError,
    ids::{ReplicaId, ReplicaInstance},
    store::redis::{millis, query_loading, replica_key, Redis, RedisConnection},
};

use super::{Heartbeat, Registration, ReplicaRegistry};

/// How long the record of a finished takeover stays, for a lost instance that was paused to
/// learn it was lost when it comes back. One that comes back later than that registers anew.
pub const TOMBSTONE: Duration = Duration::from_secs(24 * 3600);

/// Redis's clock, in milliseconds since the Unix epoch.
const PRELUDE: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function until_ms(ms)
  return string.format('%d', now_ms() + tonumber(ms))
end
";

/// Registers instance ARGV[1] for ARGV[2] ms in the lease KEYS[1], unless another instance
/// holds it (`{'held', ms left}`) or held it and was not taken over (`{'predecessor'}`).
/// Answers `{'ok'}`, or `{'lost'}` for an instance declared lost.
const REGISTER: &str = r"
local r = redis.call('HMGET', KEYS[1], 'i', 'u', 'l', 'd')
if r[1] == ARGV[1] then
  if r[3] == ARGV[1] then return {'lost'} end
  redis.call('HSET', KEYS[1], 'u', until_ms(ARGV[2]))
  return {'ok'}
end
if r[1] and not (r[3] == r[1] and r[4] == '1') then
  local left = tonumber(r[2]) - now_ms()
  if r[3] ~= r[1] and left >= 0 then return {'held', left} end
  return {'predecessor'}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'i', ARGV[1], 'u', until_ms(ARGV[2]))
return {'ok'}
";

/// Renews instance ARGV[1]'s lease KEYS[1] for ARGV[2] ms. Answers `{'ok'}`, `{'lost',
/// claimant}` or `{'replaced', other instance's token}`. A lease Redis no longer has (it lost
/// its data, or a tombstone ran out) is taken again: nobody can be taking it over.
const HEARTBEAT: &str = r"
local r = redis.call('HMGET', KEYS[1], 'i', 'l', 'c')
if not r[1] then
  redis.call('HSET', KEYS[1], 'i', ARGV[1], 'u', until_ms(ARGV[2]))
  return {'ok'}
end
if r[1] ~= ARGV[1] then return {'replaced', r[1]} end
if r[2] == ARGV[1] then return {'lost', r[3] or ''} end
redis.call('HSET', KEYS[1], 'u', until_ms(ARGV[2]))
return {'ok'}
";

/// Claims the instance holding the lease KEYS[1] for claimant ARGV[1] (an instance, whose token
/// is ARGV[3]) for ARGV[2] ms, if its lease ran out and nobody took it over or holds a claim on
/// it. Answers `{'yours', token}` or `{'no'}`.
const CLAIM: &str = r"
local r = redis.call('HMGET', KEYS[1], 'i', 'u', 'l', 'cu', 'd')
if not r[1] or r[1] == ARGV[3] then return {'no'} end
local now = now_ms()
if r[3] == r[1] then
  if r[5] == '1' or tonumber(r[4]) >= now then return {'no'} end
elseif tonumber(r[2]) >= now then
  return {'no'}
end
redis.call('HSET', KEYS[1], 'l', r[1], 'c', ARGV[1], 'cu', until_ms(ARGV[2]))
return {'yours', r[1]}
";

/// Records that claimant ARGV[2] took over instance ARGV[1] (lease KEYS[1]), keeping the record
/// for ARGV[3] ms. Answers 1, or 0 if it is not that claimant's.
const TAKEN_OVER: &str = r"
local r = redis.call('HMGET', KEYS[1], 'i', 'l', 'c')
if r[1] ~= ARGV[1] or r[2] ~= ARGV[1] or r[3] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'd', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Gives up instance ARGV[1]'s lease KEYS[1] unless it was declared lost. Answers 1 or 0.
const LEAVE: &str = r"
local r = redis.call('HMGET', KEYS[1], 'i', 'l')
if r[1] ~= ARGV[1] or r[2] == ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
";

/// The registry in Redis, as one replica instance reaches it.
pub struct RedisReplicaRegistry {
    redis: RedisConnection,
    instance: ReplicaInstance,
    known: String,
    scripts: Scripts,
}

struct Scripts {
    register: Script,
    heartbeat: Script,
    claim: Script,
    taken_over: Script,
    leave: Script,
}

impl RedisReplicaRegistry {
    /// The registry in `redis`, under its prefix, as `instance` reaches it.
    pub fn new(redis: &Redis, instance: ReplicaInstance) -> Self {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        RedisReplicaRegistry {
            known: format!("{}:replicas", redis.prefix()),
            redis: redis.for_store("replica registry"),
            instance,
            scripts: Scripts {
                register: script(REGISTER),
                heartbeat: script(HEARTBEAT),
                claim: script(CLAIM),
                taken_over: script(TAKEN_OVER),
                leave: script(LEAVE),
            },
        }
    }

    fn lease_key(&self, replica: &ReplicaId) -> String {
        replica_key(self.redis.prefix(), replica, "lease")
    }

    /// Runs `script` on this instance's lease with `args` after its token, after adding its id
    /// to the known replicas, in one round trip; answers the script's reply.
    async fn own_lease(&self, script: &Script, lease: Duration) -> Result<Vec<Value>, ArcpError> {
        let replica = self.instance.replica();
        let mut pipe = ::redis::pipe();
        pipe.cmd("SADD")
            .arg(&self.known)
            .arg(replica.as_str())
            .ignore()
            .invoke_script(
                script
                    .key(self.lease_key(replica))
                    .arg(self.instance.token())
                    .arg(millis(lease)),
            );
        let mut conn = self.redis.get().await?;
        let (reply,): (Vec<Value>,) = query_loading(&mut conn, &pipe, &[script])
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(reply)
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn corrupt(what: &str) -> ArcpError {
    ArcpError::Internal(format!("the replica registry returned {what}"))
}

#[async_trait]
impl ReplicaRegistry for RedisReplicaRegistry {
    fn instance(&self) -> &ReplicaInstance {
        &self.instance
    }

    async fn register(&self, lease: Duration) -> Result<Registration, ArcpError> {
        let reply = self.own_lease(&self.scripts.register, lease).await?;
        match (reply.first().and_then(text).as_deref(), reply.get(1)) {
            (Some("ok"), _) => Ok(Registration::Registered),
            (Some("held"), Some(Value::Int(left))) => Ok(Registration::Held {
                remaining: Duration::from_millis((*left).try_into().unwrap_or(0)),
            }),
            (Some("predecessor"), _) => Ok(Registration::Predecessor),
            (Some("lost"), _) => Ok(Registration::Lost),
            _ => Err(corrupt("an unknown answer to a registration")),
        }
    }

    async fn heartbeat(&self, lease: Duration) -> Result<Heartbeat, ArcpError> {
        let reply = self.own_lease(&self.scripts.heartbeat, lease).await?;
        let by = reply.get(1).and_then(text).unwrap_or_default();
        match reply.first().and_then(text).as_deref() {
            Some("ok") => Ok(Heartbeat::Alive),
            Some("lost") => Ok(Heartbeat::Lost { by }),
            Some("replaced") => Ok(Heartbeat::Lost {
                by: format!("{}/{by}", self.instance.replica()),
            }),
            _ => Err(corrupt("an unknown answer to a heartbeat")),
        }
    }

    async fn claim_lost(&self, claim: Duration) -> Result<Vec<ReplicaInstance>, ArcpError> {
        let mut conn = self.redis.get().await?;
        let known: Vec<String> = ::redis::cmd("SMEMBERS")
            .arg(&self.known)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        if known.is_empty() {
            return Ok(Vec::new());
        }
        let replicas: Vec<ReplicaId> = known.into_iter().map(ReplicaId::new).collect();
        let mut pipe = ::redis::pipe();
        for replica in &replicas {
            pipe.invoke_script(
                self.scripts
                    .claim
                    .key(self.lease_key(replica))
                    .arg(self.instance.as_str())
                    .arg(millis(claim))
                    .arg(self.instance.token()),
            );
        }
        let replies: Vec<Vec<Value>> = query_loading(&mut conn, &pipe, &[&self.scripts.claim])
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        let mut claimed = Vec::new();
        for (replica, reply) in replicas.into_iter().zip(replies) {
            match (reply.first().and_then(text).as_deref(), reply.get(1)) {
                (Some("yours"), Some(token)) => {
                    let token = text(token).ok_or_else(|| corrupt("a claim without a token"))?;
                    claimed.push(ReplicaInstance::with_token(replica, &token));
                }
                (Some("no"), _) => {}
                _ => return Err(corrupt("an unknown answer to a claim")),
            }
        }
        Ok(claimed)
    }

    async fn taken_over(&self, lost: &ReplicaInstance) -> Result<(), ArcpError> {
        let mut conn = self.redis.get().await?;
        let done: i64 = self
            .scripts
            .taken_over
            .key(self.lease_key(lost.replica()))
            .arg(lost.token())
            .arg(self.instance.as_str())
            .arg(millis(TOMBSTONE))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        if done == 1 {
            // The sweeps need not look at it any more; a new instance of the id adds it back.
            let _: i64 = ::redis::cmd("SREM")
                .arg(&self.known)
                .arg(lost.replica().as_str())
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis.unavailable(e))?;
        }
        Ok(())
    }

    async fn leave(&self) -> Result<(), ArcpError> {
        let replica = self.instance.replica();
        let mut conn = self.redis.get().await?;
        let left: i64 = self
            .scripts
            .leave
            .key(self.lease_key(replica))
            .arg(self.instance.token())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        if left == 1 {
            let _: i64 = ::redis::cmd("SREM")
                .arg(&self.known)
                .arg(replica.as_str())
                .query_async(&mut conn)
                .await
                .map_err(|e| self.redis.unavailable(e))?;
        }
        Ok(())
    }
}
