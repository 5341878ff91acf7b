//! The ledger in Redis, which outlives every replica: a credential a process issued is still
//! listed after the process died, for its successor or the replica taking it over to revoke.
//!
//! # Keys
//!
//! Under the prefix `P`, each replica `R`'s part under its hash tag `{replica:R}`, which its
//! lease (`store::replicas::redis`) shares:
//!
//! - `P:{replica:R}:credentials`, a set: the ids of the credentials in R's part.
//! - `P:{replica:R}:credential:ID`, a hash per credential: `j` its job, `o` the instance that
//!   issued it (`R2/TOKEN`), `t` when (milliseconds since the Unix epoch), `a` how many
//!   revocation attempts failed, and `n` when the next is due, absent while its job holds it.
//!
//! No value is stored: the id is all revocation needs.
//!
//! # Scripts
//!
//! Every change of a part is one script on keys of that part only, so on a Redis Cluster each
//! runs in the replica's slot: a record checks the instance's lease and writes the hash and the
//! set; a failure counts in the hash; a revocation deletes both. Reading a part is one command
//! for the set and one pipelined round trip for the hashes.
//!
//! Adopting a lost replica's part spans two slots, so it is two steps, each idempotent: copy
//! every entry into the adopter's part (an entry already there is kept, since the adopter may
//! have got further with it), then delete them from the lost part. A call dropped between the
//! two leaves entries in both parts, until the takeover is done again (its claim runs out if it
//! never said it was done); meanwhile both may revoke one credential, which an upstream takes
//! as success the second time. None is ever in neither part.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::redis::{Script, Value};
use async_trait::async_trait;

use crate::{
    error::ArcpError,
    ids::{CredentialId, JobId, ReplicaId, ReplicaInstance},
    store::redis::{query_loading, replica_key, unix_millis, Redis, RedisConnection},
};

use super::{CredentialLedger, Outstanding, Revocation};

/// Records ARGV[1] (job ARGV[2], issued by instance ARGV[3] with token ARGV[4] at ARGV[5] ms) in
/// the part KEYS[1] with its hash KEYS[2], unless that instance no longer holds its replica's
/// lease KEYS[3] (one that never registered may record). Answers `ok` or `lost`.
const RECORD: &str = r"
local lease = redis.call('HMGET', KEYS[3], 'i', 'l')
if lease[1] and (lease[1] ~= ARGV[4] or lease[2] == ARGV[4]) then return 'lost' end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'j', ARGV[2], 'o', ARGV[3], 't', ARGV[5], 'a', '0')
redis.call('SADD', KEYS[1], ARGV[1])
return 'ok'
";

/// Counts ARGV[1] more failed attempts in the hash KEYS[1] and sets the next to ARGV[2] ms;
/// answers the attempts so far, or nil for an entry the part does not have.
const FAILED: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local attempts = redis.call('HINCRBY', KEYS[1], 'a', ARGV[1])
redis.call('HSET', KEYS[1], 'n', ARGV[2])
return attempts
";

/// Forgets ARGV[1] from the part KEYS[1] with its hash KEYS[2]; answers 1, or 0 if the part did
/// not have it.
const REVOKED: &str = r"
local had = redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[1], ARGV[1])
return had
";

/// Copies entry ARGV[1] (fields `j`, `o`, `t`, `a` from ARGV[2..5], `n` from ARGV[6] unless it
/// is empty) into the part KEYS[1] as its hash KEYS[2], unless the part has it already.
const COPY: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 'j', ARGV[2], 'o', ARGV[3], 't', ARGV[4], 'a', ARGV[5])
  if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'n', ARGV[6]) end
end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
";

/// The ledger in Redis, as one replica instance reaches it.
pub struct RedisCredentialLedger {
    redis: RedisConnection,
    instance: ReplicaInstance,
    record: Script,
    failed: Script,
    revoked: Script,
    copy: Script,
}

impl RedisCredentialLedger {
    /// The ledger in `redis`, under its prefix, as `instance` reaches it.
    pub fn new(redis: &Redis, instance: ReplicaInstance) -> Self {
        RedisCredentialLedger {
            redis: redis.for_store("credential ledger"),
            instance,
            record: Script::new(RECORD),
            failed: Script::new(FAILED),
            revoked: Script::new(REVOKED),
            copy: Script::new(COPY),
        }
    }

    fn part(&self, replica: &ReplicaId) -> String {
        replica_key(self.redis.prefix(), replica, "credentials")
    }

    fn entry(&self, replica: &ReplicaId, id: &CredentialId) -> String {
        replica_key(self.redis.prefix(), replica, &format!("credential:{id}"))
    }

    fn own(&self) -> &ReplicaId {
        self.instance.replica()
    }

    /// Every entry of `replica`'s part.
    async fn read_part(&self, replica: &ReplicaId) -> Result<Vec<Outstanding>, ArcpError> {
        let mut conn = self.redis.get().await?;
        let ids: Vec<String> = ::redis::cmd("SMEMBERS")
            .arg(self.part(replica))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<CredentialId> = ids.into_iter().map(CredentialId::new).collect();
        let mut pipe = ::redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(self.entry(replica, id))
                .arg(&["j", "o", "t", "a", "n"]);
        }
        let rows: Vec<Vec<Option<String>>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        ids.into_iter()
            .zip(rows)
            // An id without its hash cannot be written by the scripts; passed over.
            .filter(|(_, row)| row.first().is_some_and(Option::is_some))
            .map(|(id, row)| parse(id, &row))
            .collect()
    }
}

/// An entry from its hash's fields `j`, `o`, `t`, `a`, `n`.
fn parse(id: CredentialId, row: &[Option<String>]) -> Result<Outstanding, ArcpError> {
    let field = |i: usize| row.get(i).and_then(Option::as_deref);
    let millis = |i: usize| field(i).and_then(|v| v.parse::<u64>().ok());
    let job = field(0).ok_or_else(|| corrupt("an entry without its job"))?;
    let issued_by = field(1)
        .and_then(|name| name.rsplit_once('/'))
        .map(|(replica, token)| ReplicaInstance::with_token(ReplicaId::new(replica), token))
        .ok_or_else(|| corrupt("an entry without the instance that issued it"))?;
    let issued_at = millis(2).ok_or_else(|| corrupt("an entry without its time"))?;
    let attempts = millis(3).and_then(|a| u32::try_from(a).ok()).unwrap_or(0);
    let revocation = match millis(4) {
        Some(next) => Revocation::Failing {
            attempts,
            next: at(next),
        },
        None => Revocation::Held,
    };
    Ok(Outstanding {
        id,
        job: JobId::new(job),
        issued_by,
        issued_at: at(issued_at),
        revocation,
    })
}

fn at(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

fn corrupt(what: &str) -> ArcpError {
    ArcpError::Internal(format!("the credential ledger returned {what}"))
}

#[async_trait]
impl CredentialLedger for RedisCredentialLedger {
    async fn record(
        &self,
        id: &CredentialId,
        job: &JobId,
        issued_at: SystemTime,
    ) -> Result<(), ArcpError> {
        let replica = self.own();
        let mut conn = self.redis.get().await?;
        let answer: String = self
            .record
            .key(self.part(replica))
            .key(self.entry(replica, id))
            .key(replica_key(self.redis.prefix(), replica, "lease"))
            .arg(id.as_str())
            .arg(job.as_str())
            .arg(self.instance.as_str())
            .arg(self.instance.token())
            .arg(unix_millis(issued_at))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        match answer.as_str() {
            "ok" => Ok(()),
            "lost" => Err(ArcpError::Internal(format!(
                "replica instance {} was declared lost; it issues no more credentials",
                self.instance
            ))),
            _ => Err(corrupt("an unknown answer to a record")),
        }
    }

    async fn failed(
        &self,
        id: &CredentialId,
        failures: u32,
        next: SystemTime,
    ) -> Result<Option<u32>, ArcpError> {
        let mut conn = self.redis.get().await?;
        let attempts: Option<i64> = self
            .failed
            .key(self.entry(self.own(), id))
            .arg(failures)
            .arg(unix_millis(next))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(attempts.map(|a| u32::try_from(a).unwrap_or(u32::MAX)))
    }

    async fn revoked(&self, id: &CredentialId) -> Result<bool, ArcpError> {
        let replica = self.own();
        let mut conn = self.redis.get().await?;
        let had: i64 = self
            .revoked
            .key(self.part(replica))
            .key(self.entry(replica, id))
            .arg(id.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(had == 1)
    }

    async fn outstanding(&self) -> Result<Vec<Outstanding>, ArcpError> {
        self.read_part(self.own()).await
    }

    async fn adopt(&self, lost: &ReplicaId) -> Result<usize, ArcpError> {
        let own = self.own();
        if lost == own {
            return Ok(0);
        }
        let entries = self.read_part(lost).await?;
        if entries.is_empty() {
            return Ok(0);
        }
        let mut copies = ::redis::pipe();
        for entry in &entries {
            let (attempts, next) = match entry.revocation {
                Revocation::Held => (0, String::new()),
                Revocation::Failing { attempts, next } => (attempts, unix_millis(next).to_string()),
            };
            copies.invoke_script(
                self.copy
                    .key(self.part(own))
                    .key(self.entry(own, &entry.id))
                    .arg(entry.id.as_str())
                    .arg(entry.job.as_str())
                    .arg(entry.issued_by.as_str())
                    .arg(unix_millis(entry.issued_at))
                    .arg(attempts)
                    .arg(next),
            );
        }
        let mut conn = self.redis.get().await?;
        let _: Vec<Value> = query_loading(&mut conn, &copies, &[&self.copy])
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        // Only once every copy is in: a drop after it leaves an entry twice, never nowhere.
        let mut drops = ::redis::pipe();
        for entry in &entries {
            drops.invoke_script(
                self.revoked
                    .key(self.part(lost))
                    .key(self.entry(lost, &entry.id))
                    .arg(entry.id.as_str()),
            );
        }
        let _: Vec<Value> = query_loading(&mut conn, &drops, &[&self.revoked])
            .await
            .map_err(|e| self.redis.unavailable(e))?;
        Ok(entries.len())
    }
}
