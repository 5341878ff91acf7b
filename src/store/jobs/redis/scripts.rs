//! The directory's Lua scripts, one per change, so that a change a dropped call made is whole.
//!
//! Every script takes the key prefix as `ARGV[1]`. The keys a call names (the job's hash, the
//! session's and the principal's sets) come as `KEYS`; the keys a script only finds in the data
//! (the sets of a job's subscribers' sessions, the channel of the replica that runs it) it
//! derives with the helpers of [`PRELUDE`], which name them as [`super::keys::Keys`] does.

use ::redis::Script;

/// The key names and the steps several scripts share.
const PRELUDE: &str = r"
local prefix = ARGV[1]
local function job_key(id) return prefix .. ':{job:' .. id .. '}' end
local function subscribers_key(id) return job_key(id) .. ':subscribers' end
local function session_key(session, kind) return prefix .. ':{' .. session .. '}:' .. kind end
local function principal_key(principal, kind)
  local tag = string.gsub(principal, '}', '%%7D')
  return prefix .. ':{jobs:' .. tag .. '}:' .. kind
end
local function replica_channel(replica) return prefix .. ':replica:' .. replica end
local function replica_cancels(replica) return prefix .. ':{replica:' .. replica .. '}:cancels' end
local function replica_jobs(replica) return prefix .. ':{replica:' .. replica .. '}:jobs' end
local all_key = prefix .. ':jobs:index'
local finished_key = prefix .. ':jobs:finished'

-- Stops counting job `id` against the caps, its own and its subscribers'.
local function uncount(id)
  local key = job_key(id)
  local held = redis.call('HMGET', key, 'session', 'principal', 'counted')
  if held[3] == '1' then
    redis.call('SREM', session_key(held[1], 'jobs-running'), id)
    redis.call('SREM', principal_key(held[2], 'running'), id)
    redis.call('HSET', key, 'counted', '0')
  end
  local subscribers = subscribers_key(id)
  for _, session in ipairs(redis.call('SMEMBERS', subscribers)) do
    redis.call('SREM', session_key(session, 'jobs-subscribed'), id)
  end
  redis.call('DEL', subscribers)
end

-- Forgets job `id` and everything that names it.
local function forget(id)
  local held = redis.call('HMGET', job_key(id), 'principal', 'owner')
  uncount(id)
  if held[1] then redis.call('ZREM', principal_key(held[1], 'index'), id) end
  if held[2] then redis.call('SREM', replica_jobs(held[2]), id) end
  redis.call('DEL', job_key(id))
  redis.call('ZREM', all_key, id)
  redis.call('ZREM', finished_key, id)
end
";

/// Registers job ARGV[2], run by replica ARGV[5] as its instance ARGV[6], with the fields
/// ARGV[7..], unless its session (KEYS[2]) already runs ARGV[3] jobs or its principal
/// (KEYS[3]) ARGV[4], or that instance no longer holds the replica's lease (KEYS[7]; one that
/// never registered may insert): answers `ok`, `session`, `principal` or `lost`. KEYS[1] is
/// its hash, KEYS[4] and KEYS[5] the principal's and everyone's listings, KEYS[6] the
/// replica's running jobs. A registration of the same id before is forgotten, counts and all.
const INSERT: &str = r"
local lease = redis.call('HMGET', KEYS[7], 'i', 'l')
if lease[1] and (lease[1] ~= ARGV[6] or lease[2] == ARGV[6]) then return 'lost' end
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[3]) then return 'session' end
if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[4]) then return 'principal' end
if redis.call('EXISTS', KEYS[1]) == 1 then forget(ARGV[2]) end
redis.call('HSET', KEYS[1], 'owner', ARGV[5], 'counted', '1', unpack(ARGV, 7))
redis.call('SADD', KEYS[6], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[4], 0, ARGV[2])
redis.call('ZADD', KEYS[5], 0, ARGV[2])
return 'ok'
";

/// Stops counting running job ARGV[2] (hash KEYS[1]) against the caps.
const RELEASE: &str = r"
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
uncount(ARGV[2])
return 1
";

/// Records job ARGV[2]'s final fields ARGV[5..] (hash KEYS[1], listed in KEYS[2] and KEYS[3]),
/// as run by replica ARGV[4] (whose running jobs are KEYS[5]), ranked for purging by its end
/// ARGV[3] (ms since the Unix epoch, empty if it has none) in KEYS[4]. It stops counting
/// against the caps. A job another replica ended for its lost owner stays as that one left it.
const FINISH: &str = r"
redis.call('SREM', KEYS[5], ARGV[2])
if redis.call('HEXISTS', KEYS[1], 'lost') == 1 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 1 then uncount(ARGV[2]) end
redis.call('HSET', KEYS[1], 'owner', ARGV[4], 'counted', '0', unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[2])
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
else
  redis.call('ZREM', KEYS[4], ARGV[2])
end
return 1
";

/// Forgets job ARGV[2] (hash KEYS[1]), unless another replica ended it for its lost owner.
const REMOVE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'lost') == 1 then return 0 end
forget(ARGV[2])
return 1
";

/// Ends job ARGV[2] (hash KEYS[1], listed in KEYS[2] and KEYS[3]) with the final fields
/// ARGV[6..], for lost replica ARGV[4] (whose running jobs are KEYS[5]), as replica instance
/// ARGV[5] took it over, ranked for purging by its end ARGV[3] in KEYS[4], if it still runs on
/// that replica: answers 1, or 0 having changed nothing. The hash keeps who ended it
/// (`lost`), so that the lost replica's own end changes nothing.
const FINISH_LOST: &str = r"
redis.call('SREM', KEYS[5], ARGV[2])
local job = redis.call('HMGET', KEYS[1], 'status', 'owner')
if job[1] ~= 'running' or job[2] ~= ARGV[4] then return 0 end
uncount(ARGV[2])
redis.call('HSET', KEYS[1], 'counted', '0', 'lost', ARGV[5], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], 0, ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
return 1
";

/// The jobs still running on replica ARGV[2] of those its set KEYS[1] lists, each as `{id,
/// fields, subscribed sessions}`; the others leave the set.
const RUNNING_ON: &str = r"
local running = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = job_key(id)
  local job = redis.call('HMGET', key, 'status', 'owner')
  if job[1] == 'running' and job[2] == ARGV[2] then
    running[#running + 1] = {id, redis.call('HGETALL', key),
      redis.call('SMEMBERS', subscribers_key(id))}
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return running
";

/// Writes the changing fields of the running jobs KEYS that replica ARGV[2] runs: for the i-th,
/// ARGV[3i], ARGV[3i+1] and ARGV[3i+2] are its newest frame, budget and credentials.
const REFRESH: &str = r"
for i, key in ipairs(KEYS) do
  local job = redis.call('HMGET', key, 'status', 'owner')
  if job[1] == 'running' and job[2] == ARGV[2] then
    local at = i * 3
    redis.call('HSET', key, 'last_event_seq', ARGV[at], 'budget', ARGV[at + 1],
      'credentials', ARGV[at + 2])
  end
end
return 1
";

/// Requests that running job ARGV[4] (hash KEYS[1]) stop with reason ARGV[2] (JSON): counts the
/// request in the hash, lists the job among its replica's pending cancels, and tells the
/// replica with message ARGV[3]. Answers `{'requested', listeners}`, `{'ended', status}`,
/// `{'ending'}` for a job that gave its slot back (it is about to end) or `{'missing'}`.
const CANCEL: &str = r"
local job = redis.call('HMGET', KEYS[1], 'status', 'owner', 'counted')
if not job[1] then return {'missing'} end
if job[1] ~= 'running' then return {'ended', job[1]} end
if job[3] ~= '1' then return {'ending'} end
redis.call('HINCRBY', KEYS[1], 'cancels', 1)
redis.call('HSET', KEYS[1], 'cancel_reason', ARGV[2])
redis.call('SADD', replica_cancels(job[2]), ARGV[4])
return {'requested', redis.call('PUBLISH', replica_channel(job[2]), ARGV[3])}
";

/// The pending cancels of a replica (KEYS[1]): each job with how many requests it had and
/// the last one's reason (JSON), `{id, cancels, reason}`.
const PENDING_CANCELS: &str = r"
local pending = {}
for i, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local request = redis.call('HMGET', job_key(id), 'cancels', 'cancel_reason')
  pending[i] = {id, request[1] or '0', request[2] or 'null'}
end
return pending
";

/// Takes the jobs ARGV[2], ARGV[4]... off the pending cancels KEYS[1], each unless it had more
/// requests than ARGV[3], ARGV[5]... (how many its replica read) by now.
const ACK_CANCELS: &str = r"
for i = 2, #ARGV, 2 do
  local cancels = tonumber(redis.call('HGET', job_key(ARGV[i]), 'cancels') or '0')
  if cancels <= tonumber(ARGV[i + 1]) then redis.call('SREM', KEYS[1], ARGV[i]) end
end
return 1
";

/// Subscribes session ARGV[3] to job ARGV[2] (hash KEYS[1], its counted subscribers KEYS[2]),
/// taking one of the session's ARGV[4] slots (KEYS[3]) unless it holds one there already or the
/// job no longer counts; if another replica than ARGV[5] runs the job, sends it ARGV[6].
/// Answers `{'running', owner, taken, listeners}`, `{'full'}`, `{'ended', fields}` or
/// `{'missing'}`.
const SUBSCRIBE: &str = r"
local job = redis.call('HMGET', KEYS[1], 'status', 'counted', 'owner')
if not job[1] then return {'missing'} end
if job[1] ~= 'running' then return {'ended', redis.call('HGETALL', KEYS[1])} end
local taken = 0
if job[2] == '1' and redis.call('SISMEMBER', KEYS[3], ARGV[2]) == 0 then
  if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[4]) then return {'full'} end
  redis.call('SADD', KEYS[3], ARGV[2])
  redis.call('SADD', KEYS[2], ARGV[3])
  taken = 1
end
local heard = 0
if job[3] ~= ARGV[5] then heard = redis.call('PUBLISH', replica_channel(job[3]), ARGV[6]) end
return {'running', job[3], taken, heard}
";

/// Gives back session ARGV[3]'s slot on job ARGV[2]: KEYS[1] is the job's counted subscribers,
/// KEYS[2] the session's subscriptions.
const DROP_SUBSCRIPTION: &str = r"
redis.call('SREM', KEYS[1], ARGV[3])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
";

/// Sends ARGV[3] to the replica running job (hash KEYS[1]) if that is not ARGV[2]: answers
/// `{'running', owner, listeners}`, `{'ended'}` or `{'missing'}`.
const ASK: &str = r"
local job = redis.call('HMGET', KEYS[1], 'status', 'owner')
if not job[1] then return {'missing'} end
if job[1] ~= 'running' then return {'ended'} end
local heard = 0
if job[2] ~= ARGV[2] then heard = redis.call('PUBLISH', replica_channel(job[2]), ARGV[3]) end
return {'running', job[2], heard}
";

/// Up to ARGV[3] jobs of the listing KEYS[1] from ARGV[2] (a `ZRANGEBYLEX` bound) on, each
/// with its hash's fields.
const LIST: &str = r"
local ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[2], '+', 'LIMIT', 0, tonumber(ARGV[3]))
local page = {}
for i, id in ipairs(ids) do page[i] = {id, redis.call('HGETALL', job_key(id))} end
return page
";

/// Forgets up to ARGV[3] of the jobs in KEYS[1] that ended before ARGV[2] ms since the Unix
/// epoch; answers how many it looked at.
const PURGE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2],
  'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  if redis.call('HGET', job_key(id), 'status') == 'running' then
    redis.call('ZREM', KEYS[1], id)
  else
    forget(id)
  end
end
return #due
";

/// The scripts, each with the prelude.
pub(super) struct Scripts {
    pub insert: Script,
    pub release: Script,
    pub finish: Script,
    pub finish_lost: Script,
    pub running_on: Script,
    pub remove: Script,
    pub refresh: Script,
    pub cancel: Script,
    pub pending_cancels: Script,
    pub ack_cancels: Script,
    pub subscribe: Script,
    pub drop_subscription: Script,
    pub ask: Script,
    pub list: Script,
    pub purge: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            insert: script(INSERT),
            release: script(RELEASE),
            finish: script(FINISH),
            finish_lost: script(FINISH_LOST),
            running_on: script(RUNNING_ON),
            remove: script(REMOVE),
            refresh: script(REFRESH),
            cancel: script(CANCEL),
            pending_cancels: script(PENDING_CANCELS),
            ack_cancels: script(ACK_CANCELS),
            subscribe: script(SUBSCRIBE),
            drop_subscription: script(DROP_SUBSCRIPTION),
            ask: script(ASK),
            list: script(LIST),
            purge: script(PURGE),
        }
    }
}
