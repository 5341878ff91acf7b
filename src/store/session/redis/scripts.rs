//! The Lua scripts of the Redis session store, and their replies.
//!
//! A record is a hash: `p` the principal, `h` the key of its principal's set of sessions,
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

/// Records session ARGV[2] of principal ARGV[3] (whose sessions are the set KEYS[2], named
/// ARGV[7]) as KEYS[1], attached at epoch ARGV[5] by replica instance ARGV[8] with features
/// ARGV[4], unless the principal holds ARGV[6] sessions already. Publishes on ARGV[1]; answers `{1, v}` or `{0}` if refused.
/// A record the id named before is replaced, at a higher version than it reached.
const CREATE: &str = r"
if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[6]) then return {0} end
local v = (tonumber(redis.call('HGET', KEYS[1], 'v')) or 0) + 1
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'p', ARGV[3], 'h', ARGV[7], 'f', ARGV[4], 'fv', v,
  'e', ARGV[5], 'a', '1', 'd', '0', 'k', '0', 'v', v, 'o', ARGV[8])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[1], table.concat({'s', v, ARGV[5], '1', '0', '0', v, ARGV[4]}, ' '))
return {1, v}
";

/// Forgets session ARGV[1] (record KEYS[1], attachment lock KEYS[2]) and frees its slot in
/// its principal's set, whose key the record names.
const REMOVE: &str = r"
local held = redis.call('HGET', KEYS[1], 'h')
if held then redis.call('SREM', held, ARGV[1]) end
redis.call('DEL', KEYS[1], KEYS[2])
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
    pub(super) remove: Script,
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
            create: Script::new(CREATE),
            remove: Script::new(REMOVE),
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
