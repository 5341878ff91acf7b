//! The Lua scripts of the Redis session store, and their replies.
//!
//! A record is a hash: `p` the principal, `h` the key of the set of its principal's sessions
//! it joined,
//! `f` the features (names joined by commas) and `fv` the version that last set them, `o` the
//! replica instance that made the newest attachment, and the flow: `e` epoch, `a` attached
//! (`1` or `0`), `d` delivered, `k` acked, `v` the version every change increments. Numbers are kept as the decimal strings the process sent, so they stay
//! exact whatever Lua's numbers are.
//!
//! Every change script checks the epoch and changes the flow in one step, publishes the state
//! on the session's channel (`s V E A D K FV FEATURES`), and answers
//! `{outcome, v, e, a, d, k}`, the flow as of the script whether or not it changed it, so the
//! caller's copy learns of changes it missed. A record that is gone answers `{0}`.

use ::redis::Script;

/// What a change script did, by the code it answers first.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Outcome {
    /// There is no record (it was removed); nothing changed.
    Gone,
    /// The change was made, or there was nothing to change (a delivery or an ack behind the
    /// record's).
    Done,
    /// The change was refused: another attachment holds the record, or the attachment is not
    /// live.
    Refused,
    /// The ack names a frame beyond those delivered.
    Beyond,
}

impl Outcome {
    pub(super) fn from_code(code: u64) -> Option<Outcome> {
        Some(match code {
            0 => Outcome::Gone,
            1 => Outcome::Done,
            2 => Outcome::Refused,
            3 => Outcome::Beyond,
            _ => return None,
        })
    }
}

/// Reads the record KEYS[1]; `commit` writes back the flow with the version incremented (and
/// `features`, if given, with their version), publishes it on ARGV[1] and answers it.
const PRELUDE: &str = r"
local r = redis.call('HMGET', KEYS[1], 'e', 'a', 'd', 'k', 'v', 'fv', 'f')
local e, a, d, k, v, fv, f = r[1], r[2], r[3], r[4], r[5], r[6], r[7]
if not e then return {0} end
local function reply(outcome)
  return {outcome, v, e, a, d, k}
end
local function commit(features)
  v = tostring(redis.call('HINCRBY', KEYS[1], 'v', 1))
  if features then f, fv = features, v end
  redis.call('HSET', KEYS[1], 'e', e, 'a', a, 'd', d, 'k', k, 'f', f, 'fv', fv)
  redis.call('PUBLISH', ARGV[1], table.concat({'s', v, e, a, d, k, fv, f}, ' '))
  return reply(1)
end
";

/// Attaches epoch ARGV[2] made by replica instance ARGV[6], delivering after ARGV[3], with the
/// features ARGV[5] if ARGV[4] is `1`, if it is newer than the record's.
const ATTACH: &str = r"
if tonumber(ARGV[2]) <= tonumber(e) then return reply(2) end
e, a, d = ARGV[2], '1', ARGV[3]
redis.call('HSET', KEYS[1], 'o', ARGV[6])
if ARGV[4] == '1' then return commit(ARGV[5]) end
return commit(nil)
";

/// Detaches epoch ARGV[2] if it holds the record and is live.
const DETACH: &str = r"
if tonumber(e) ~= tonumber(ARGV[2]) or a ~= '1' then return reply(2) end
a = '0'
return commit(nil)
";

/// Records epoch ARGV[2]'s delivery through ARGV[3] if it holds the record; a delivery
/// behind the record's changes nothing.
const DELIVERED: &str = r"
if tonumber(e) ~= tonumber(ARGV[2]) then return reply(2) end
if tonumber(ARGV[3]) <= tonumber(d) then return reply(1) end
d = ARGV[3]
return commit(nil)
";

/// Records epoch ARGV[2]'s ack through ARGV[3] if it holds the record and delivered that far;
/// an ack behind the record's changes nothing.
const ACK: &str = r"
if tonumber(e) ~= tonumber(ARGV[2]) then return reply(2) end
if tonumber(ARGV[3]) > tonumber(d) then return reply(3) end
if tonumber(ARGV[3]) <= tonumber(k) then return reply(1) end
k = ARGV[3]
return commit(nil)
";

/// The arguments of the create's scripts, in this order.
///
/// ARGV[1] the session's channel, ARGV[2] the session, ARGV[3] its principal, ARGV[4] its
/// features, ARGV[5] its epoch, ARGV[6] the principal's cap, ARGV[7] the key of the
/// principal's sessions, ARGV[8] the replica instance attaching it, ARGV[9] now (ms since
/// the Unix epoch), ARGV[10] when a member must have joined by to be a repair's candidate.
const JOIN_FN: &str = r"
local function join(joined)
  if redis.call('ZSCORE', joined, ARGV[2]) then return true end
  if redis.call('ZCARD', joined) >= tonumber(ARGV[6]) then return false end
  redis.call('ZADD', joined, ARGV[9], ARGV[2])
  return true
end
";

/// Writes the record `record` of a new session, as the create's arguments say; publishes it
/// and answers `{1, v}`. A record the id named before is replaced, at a higher version than
/// it reached.
const WRITE_FN: &str = r"
local function write(record)
  local v = (tonumber(redis.call('HGET', record, 'v')) or 0) + 1
  redis.call('DEL', record)
  redis.call('HSET', record, 'p', ARGV[3], 'h', ARGV[7], 'f', ARGV[4], 'fv', v,
    'e', ARGV[5], 'a', '1', 'd', '0', 'k', '0', 'v', v, 'o', ARGV[8])
  redis.call('PUBLISH', ARGV[1], table.concat({'s', v, ARGV[5], '1', '0', '0', v, ARGV[4]}, ' '))
  return {1, v}
end
";

/// On a single Redis: joins the principal's sessions KEYS[2] and writes the record KEYS[1],
/// unless the principal holds its cap of sessions already (`{0}`).
const CREATE: &str = r"
if not join(KEYS[2]) then return {0} end
return write(KEYS[1])
";

/// On a Cluster, the create's first step: joins the principal's sessions KEYS[1] (`{'joined'}`),
/// unless the principal holds its cap already: then answers `{'full', SESSION, ...}`, the
/// members that joined by ARGV[10], a repair's candidates.
const JOIN: &str = r"
if join(KEYS[1]) then return {'joined'} end
local candidates = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[10], 'LIMIT', 0, 16)
table.insert(candidates, 1, 'full')
return candidates
";

/// On a Cluster, the create's second step: writes the record KEYS[1], unless a repair gave
/// up on this create (the mark KEYS[2]; `{2}`).
const WRITE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return {2} end
return write(KEYS[1])
";

/// A repair's first step: answers `0` if there is a record KEYS[1]; else marks the session's
/// create as given up (KEYS[2], for ARGV[1] ms), so that a late write of it is refused, and
/// answers `1`: its member may go.
const ABANDON: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return 1
";

/// Takes session `session` out of the set `held` its record names: a sorted set of members
/// by join time, or a plain set as a single Redis kept them before.
const LEAVE_FN: &str = r"
local function leave(held, session)
  if redis.call('TYPE', held).ok == 'set' then
    redis.call('SREM', held, session)
  else
    redis.call('ZREM', held, session)
  end
end
";

/// On a single Redis: forgets session ARGV[1] (record KEYS[1], attachment lock KEYS[2]) and
/// frees its slot in its principal's sessions, whose key the record names.
const REMOVE: &str = r"
local held = redis.call('HGET', KEYS[1], 'h')
if held then leave(held, ARGV[1]) end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
";

/// On a Cluster, the removal's first step: forgets the record KEYS[1] and the attachment lock
/// KEYS[2], answering the key of the principal's sessions the record names (nil if none).
const DROP: &str = r"
local held = redis.call('HGET', KEYS[1], 'h')
redis.call('DEL', KEYS[1], KEYS[2])
return held
";

/// On a Cluster, the removal's second step: takes session ARGV[1] out of the set KEYS[1].
const LEAVE: &str = r"
leave(KEYS[1], ARGV[1])
return 1
";

/// Takes the attachment lock KEYS[1] with token ARGV[1] for ARGV[2] ms if it is free; answers
/// `{1, v, e, a, d, k}` (the record KEYS[2] as the lock found it, `{1}` if it is gone) or
/// `{0}`.
const LOCK: &str = r"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0} end
local r = redis.call('HMGET', KEYS[2], 'v', 'e', 'a', 'd', 'k')
if not r[1] then return {1} end
return {1, r[1], r[2], r[3], r[4], r[5]}
";

/// Extends the lock KEYS[1] to ARGV[2] ms from now if token ARGV[1] still holds it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// Releases the lock KEYS[1] if token ARGV[1] holds it, and says so on the channel ARGV[2].
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], 'u')
return 1
";

/// Takes session ARGV[1] off the replica's attached sessions KEYS[1] if its entry there is
/// still epoch ARGV[2]: that attachment ended, or never began.
pub(super) const UNINDEX: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
";

/// The store's scripts, each hashed once.
pub(super) struct Scripts {
    pub(super) create: Script,
    pub(super) join: Script,
    pub(super) write: Script,
    pub(super) abandon: Script,
    pub(super) remove: Script,
    pub(super) drop: Script,
    pub(super) leave: Script,
    pub(super) attach: Script,
    pub(super) detach: Script,
    pub(super) delivered: Script,
    pub(super) ack: Script,
    pub(super) lock: Script,
    pub(super) renew: Script,
    pub(super) unlock: Script,
    pub(super) unindex: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let change = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            create: Script::new(&format!("{JOIN_FN}{WRITE_FN}{CREATE}")),
            join: Script::new(&format!("{JOIN_FN}{JOIN}")),
            write: Script::new(&format!("{WRITE_FN}{WRITE}")),
            abandon: Script::new(ABANDON),
            remove: Script::new(&format!("{LEAVE_FN}{REMOVE}")),
            drop: Script::new(DROP),
            leave: Script::new(&format!("{LEAVE_FN}{LEAVE}")),
            attach: change(ATTACH),
            detach: change(DETACH),
            delivered: change(DELIVERED),
            ack: change(ACK),
            lock: Script::new(LOCK),
            renew: Script::new(RENEW),
            unlock: Script::new(UNLOCK),
            unindex: Script::new(UNINDEX),
        }
    }
}
