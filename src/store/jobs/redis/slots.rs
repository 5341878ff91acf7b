//! The steps of the directory's changes on a Redis Cluster (`super::cluster`), each a script
//! that keeps to one slot, and how to tell a Cluster.

use ::redis::Script;

use crate::store::redis::Connection;

/// Adds ARGV[1] to the set KEYS[1] unless it already holds ARGV[2] others: answers 1 for
/// added, 2 for a member already, 0 for full.
const CLAIM: &str = r"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 2 end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
";

/// The insert's first step, in the replica's slot: unless instance ARGV[1] no longer holds
/// the replica's lease (KEYS[1]; one that never registered may insert), job ARGV[2] joins
/// the replica's running jobs (KEYS[2]) with its holders ARGV[3] (KEYS[3]). Answers 1, or 0
/// for a lost instance.
const JOIN: &str = r"
local lease = redis.call('HMGET', KEYS[1], 'i', 'l')
if lease[1] and (lease[1] ~= ARGV[1] or lease[2] == ARGV[1]) then return 0 end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
return 1
";

/// The insert's last step, in the job's slot: its hash KEYS[1], run by replica ARGV[1], with
/// the fields ARGV[2..], counted; a registration of the same id before is replaced.
const WRITE: &str = r"
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'counted', '1', unpack(ARGV, 2))
return 1
";

/// A release's first step: running job KEYS[1] stops counting. Answers `{1, session,
/// principal, subscribers (KEYS[2])}`, or `{0}` for a job that does not run.
const RELEASE: &str = r"
local job = redis.call('HMGET', KEYS[1], 'status', 'session', 'principal')
if job[1] ~= 'running' then return {0} end
redis.call('HSET', KEYS[1], 'counted', '0')
return {1, job[2], job[3], redis.call('SMEMBERS', KEYS[2])}
";

/// A finish's first step: job KEYS[1] ended with the fields ARGV[2..] on replica ARGV[1],
/// unless another replica ended it for its lost owner. Answers `{1, subscribers (KEYS[2])}`
/// or `{0}`.
const FINISH: &str = r"
if redis.call('HEXISTS', KEYS[1], 'lost') == 1 then return {0} end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'counted', '0', unpack(ARGV, 2))
return {1, redis.call('SMEMBERS', KEYS[2])}
";

/// A takeover's first step: job KEYS[1], if it still runs on lost replica ARGV[1], ended
/// with the fields ARGV[3..] as instance ARGV[2] took it over. Answers `{1, subscribers}` for
/// ended now, `{2, subscribers}` for ended by a takeover before (whose later steps may not
/// have run), `{0}` otherwise.
const FINISH_LOST: &str = r"
local job = redis.call('HMGET', KEYS[1], 'status', 'owner', 'lost')
if job[1] == 'running' and job[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'counted', '0', 'lost', ARGV[2], unpack(ARGV, 3))
  return {1, redis.call('SMEMBERS', KEYS[2])}
end
if job[3] then return {2, redis.call('SMEMBERS', KEYS[2])} end
return {0}
";

/// A cancel's first step: counts a request with reason ARGV[1] in running job KEYS[1].
/// Answers `{'requested', owner}`, `{'ended', status}`, `{'ending'}` or `{'missing'}`.
const CANCEL: &str = r"
local job = redis.call('HMGET', KEYS[1], 'status', 'owner', 'counted')
if not job[1] then return {'missing'} end
if job[1] ~= 'running' then return {'ended', job[1]} end
if job[3] ~= '1' then return {'ending'} end
redis.call('HINCRBY', KEYS[1], 'cancels', 1)
redis.call('HSET', KEYS[1], 'cancel_reason', ARGV[1])
return {'requested', job[2]}
";

/// A cancel's second step: job ARGV[1] joins its owner's pending cancels (KEYS[1]), and the
/// owner hears ARGV[3] on its channel ARGV[2]. Answers how many listeners heard.
const NUDGE: &str = r"
redis.call('SADD', KEYS[1], ARGV[1])
return redis.call('PUBLISH', ARGV[2], ARGV[3])
";

/// A subscription's second step, once the session's slot was claimed (`ARGV[4]` is `full`
/// if it was not): session ARGV[1] joins running job KEYS[1]'s counted subscribers KEYS[2]
/// if the job counts, and if another replica than ARGV[2] runs the job, that one hears ARGV[3]
/// on its channel (ARGV[5] followed by the owner). Answers `{'running', owner, counted,
/// listeners}`, `{'full'}`, `{'ended', fields}` or `{'missing'}`.
const SUBSCRIBE: &str = r"
local job = redis.call('HMGET', KEYS[1], 'status', 'counted', 'owner')
if not job[1] then return {'missing'} end
if job[1] ~= 'running' then return {'ended', redis.call('HGETALL', KEYS[1])} end
local counted = 0
if job[2] == '1' then
  if ARGV[4] == 'full' then return {'full'} end
  redis.call('SADD', KEYS[2], ARGV[1])
  counted = 1
end
local heard = 0
if job[3] ~= ARGV[2] then heard = redis.call('PUBLISH', ARGV[5] .. job[3], ARGV[3]) end
return {'running', job[3], counted, heard}
";

/// How many listeners heard a request, as a Cluster tells it: `PUBLISH` counts only the
/// subscribers on the node that ran it, while the owner may listen on any, so an owner that
/// is not listening is found by its reply's deadline instead.
pub(super) const UNKNOWN: i64 = 1;

/// The Cluster's scripts.
pub(super) struct ClusterScripts {
    pub claim: Script,
    pub join: Script,
    pub write: Script,
    pub release: Script,
    pub finish: Script,
    pub finish_lost: Script,
    pub cancel: Script,
    pub nudge: Script,
    pub subscribe: Script,
}

impl ClusterScripts {
    pub(super) fn new() -> ClusterScripts {
        ClusterScripts {
            claim: Script::new(CLAIM),
            join: Script::new(JOIN),
            write: Script::new(WRITE),
            release: Script::new(RELEASE),
            finish: Script::new(FINISH),
            finish_lost: Script::new(FINISH_LOST),
            cancel: Script::new(CANCEL),
            nudge: Script::new(NUDGE),
            subscribe: Script::new(SUBSCRIBE),
        }
    }
}

/// Whether `conn` reaches a Cluster, whose changes go slot by slot.
pub(super) fn is_cluster(conn: &Connection) -> bool {
    matches!(conn, Connection::Cluster(_))
}

/// How an insert on a Cluster ended.
pub(super) enum Inserted {
    /// Registered.
    Ok,
    /// Refused: the session's cap.
    Session,
    /// Refused: the principal's cap.
    Principal,
    /// Refused: the instance no longer holds its replica's lease.
    Lost,
}
