//! The Lua scripts that change a log, one per kind of change, so that each takes effect whole
//! or not at all; and how they are called.
//!
//! Every script that acts on a handle's log first checks the log's standing against the
//! handle's incarnation (see `standing`), and answers with one of the [`Standing`] codes
//! when it is not that log any more. Sequence numbers, byte counts and offsets are Lua numbers
//! (doubles): exact up to 2^53, which no log reaches.

use ::redis::{Cmd, ErrorKind, RedisResult, Script, ServerErrorKind, Value};

use super::incarnation::Gone;
use crate::store::redis::Connection;

/// What every script shares: how a log stands against a handle, a frame's size, and the
/// store's budget.
const PRELUDE: &str = r"
local function standing(id, tomb, incarnation)
  if not id then return 0 end
  if id ~= incarnation then return -2 end
  if tomb == 'lost' then return -3 end
  if tomb then return -1 end
  return 1
end

local function frame_size(stream, seq)
  local entry = redis.call('XRANGE', stream, seq, seq)[1]
  if entry then return #entry[2][2] end
  return 0
end

local function enforce(total, budget, prefix, detached)
  while total > budget do
    local session = redis.call('ZRANGE', detached, 0, 0)[1]
    if not session then break end
    local base = prefix .. ':{' .. session .. '}:'
    local meta, stream = base .. 'log-meta', base .. 'log'
    local m = redis.call('HMGET', meta, 'n', 'e', 'b')
    local n, e, b = tonumber(m[1]), tonumber(m[2]), tonumber(m[3])
    if not n then
      redis.call('ZREM', detached, session)
    else
      local from = e
      while total > budget and e < n do
        e = e + 1
        local size = frame_size(stream, e)
        b = b - size
        total = total - size
      end
      if e > from then
        redis.call('XTRIM', stream, 'MINID', e + 1)
        redis.call('HSET', meta, 'e', e, 'b', b)
      end
      if e >= n then
        redis.call('ZREM', detached, session)
        redis.call('HSET', meta, 'd', 'u')
      end
    end
  end
  return total
end
";

/// Creates the empty log of incarnation ARGV[1] for session ARGV[2], replacing any it had and
/// telling that one's handles on channel ARGV[3].
/// KEYS: stream, metadata, retained bytes, detached sessions.
const CREATE: &str = r"
local old = redis.call('HMGET', KEYS[2], 'id', 'b', 'x')
if old[1] then
  if old[3] ~= 'removed' then
    redis.call('DECRBY', KEYS[3], old[2] or 0)
    redis.call('ZREM', KEYS[4], ARGV[2])
  end
  redis.call('PUBLISH', ARGV[3], old[1] .. ' +')
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], 'id', ARGV[1], 'n', 0, 'e', 0, 'b', 0, 'a', 0, 'ws', 0, 'we', 0, 'f', 0)
return 1
";

/// Appends the frames ARGV[15..] in order, numbering each, evicting beyond the log's bounds
/// and the store's budget, and publishing the newest number. Returns `{1, first number, then
/// (i, window start) for the batch's frame i (from 0) and each frame whose window start
/// differs from the one before}`, or `{standing}`.
///
/// The frames come from replica instance ARGV[10], and are refused (`{-6}`) if it was fenced
/// out of the log. With ARGV[11] not empty, the script first fences instance ARGV[11] out, and
/// appends only if that is a new fence (else answers `{3}`).
///
/// With ARGV[12] not empty, the frames are batch ARGV[13] of writer ARGV[12]. A writer's
/// batches are numbered in the order it sends them, and the metadata keeps the last few it
/// applied, newest first (`w:WRITER`, `BATCH FIRST COUNT ...`, as many as `commit.rs` may have
/// on their way at once, and one more): a batch sent again, because its answer was lost, is
/// not applied a second time but answered `{2, first number, 0, window start}` with the
/// numbers it got (and the window as it stands now, which is later and so stricter); an older
/// one, which its writer gave up on and which reached Redis after a newer one, is not applied
/// at all and answered `{-4}`. Unless ARGV[14] is empty, the batch is refused (`{-5}`) if batch
/// ARGV[14] is not the last this writer appended: batches sent behind one another are never
/// appended out of order.
/// KEYS: stream, metadata, retained bytes, detached sessions, detach order.
/// ARGV: incarnation, the newest number the handle knows of, max frames, max bytes, window
/// bytes, budget, key prefix, session, channel, instance, instance to fence, writer, batch,
/// the batch before, frames.
const APPEND: &str = r"
local KEEP = 4
local writer = 'w:' .. ARGV[12]
local m = redis.call('HMGET', KEYS[2], 'id', 'x', 'n', 'e', 'b', 'a', 'ws', 'we', 'd',
  'lost:' .. ARGV[10], writer)
local stands = standing(m[1], m[2], ARGV[1])
if stands ~= 1 then return {stands} end
if m[10] then return {-6} end
local n, e, b, a = tonumber(m[3]), tonumber(m[4]), tonumber(m[5]), tonumber(m[6])
local ws, we, listing = tonumber(m[7]), tonumber(m[8]), m[9]
if n < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[2], 'x', 'lost')
  redis.call('PUBLISH', ARGV[9], ARGV[1] .. ' !')
  return {-3}
end
if ARGV[11] ~= '' then
  local fence = 'lost:' .. ARGV[11]
  if redis.call('HEXISTS', KEYS[2], fence) == 1 then return {3} end
  redis.call('HSET', KEYS[2], fence, '1')
end
local batch, applied = tonumber(ARGV[13]), m[11] or ''
if ARGV[12] ~= '' then
  local last = string.match(applied, '^(%d+)')
  for done, first in string.gmatch(applied, '(%d+) (%d+) %d+') do
    if tonumber(done) == batch then return {2, tonumber(first), 0, ws} end
  end
  if last and tonumber(last) >= batch then return {-4} end
  if ARGV[14] ~= '' and last ~= ARGV[14] then return {-5} end
end
local max_frames, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local window, budget = tonumber(ARGV[5]), tonumber(ARGV[6])
local total = tonumber(redis.call('GET', KEYS[3]) or 0)
local trimmed = e
local out = {1, n + 1}
local told = -1
for i = 15, #ARGV do
  local size = #ARGV[i]
  n = n + 1
  a = a + size
  b = b + size
  total = total + size
  redis.call('XADD', KEYS[1], n, 'f', ARGV[i])
  while n - e > max_frames or (b > max_bytes and n - e > 1) do
    e = e + 1
    local evicted = frame_size(KEYS[1], e)
    b = b - evicted
    total = total - evicted
  end
  if ws < e then
    ws = e
    we = a - b
  end
  while a - we > window and ws < n do
    ws = ws + 1
    we = we + frame_size(KEYS[1], ws)
  end
  if ws ~= told then
    out[#out + 1] = i - 15
    out[#out + 1] = ws
    told = ws
  end
  if listing == 'u' then
    redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[5]), ARGV[8])
    listing = 'l'
  end
  if total > budget then
    if e > trimmed then redis.call('XTRIM', KEYS[1], 'MINID', e + 1) end
    redis.call('HSET', KEYS[2], 'n', n, 'e', e, 'b', b, 'a', a, 'ws', ws, 'we', we)
    if listing then redis.call('HSET', KEYS[2], 'd', listing) end
    total = enforce(total, budget, ARGV[7], KEYS[4])
    local now = redis.call('HMGET', KEYS[2], 'e', 'b', 'd')
    e, b, listing = tonumber(now[1]), tonumber(now[2]), now[3]
    trimmed = e
  end
end
if e > trimmed then redis.call('XTRIM', KEYS[1], 'MINID', e + 1) end
redis.call('HSET', KEYS[2], 'n', n, 'e', e, 'b', b, 'a', a, 'ws', ws, 'we', we)
if ARGV[12] ~= '' then
  local record = batch .. ' ' .. out[2] .. ' ' .. (#ARGV - 14)
  local kept = 1
  for entry in string.gmatch(applied, '%d+ %d+ %d+') do
    if kept == KEEP then break end
    record = record .. ' ' .. entry
    kept = kept + 1
  end
  redis.call('HSET', KEYS[2], writer, record)
end
if listing then redis.call('HSET', KEYS[2], 'd', listing) end
redis.call('SET', KEYS[3], total)
redis.call('PUBLISH', ARGV[9], ARGV[1] .. ' ' .. n)
return out
";

/// Fences the log against attachments older than ARGV[2]; a newer fence than any before
/// takes session ARGV[3] off the detached list. Returns the standing.
/// KEYS: metadata, detached sessions. ARGV: incarnation, epoch, session.
const FENCE: &str = r"
local m = redis.call('HMGET', KEYS[1], 'id', 'x', 'f', 'd')
local stands = standing(m[1], m[2], ARGV[1])
if stands ~= 1 then return stands end
if tonumber(ARGV[2]) > tonumber(m[3]) then
  redis.call('HSET', KEYS[1], 'f', ARGV[2])
  if m[4] then
    redis.call('ZREM', KEYS[2], ARGV[3])
    redis.call('HDEL', KEYS[1], 'd')
  end
end
return 1
";

/// Frees the frames through ARGV[2] for attachment ARGV[3], unless a newer one fenced the
/// log. Returns the standing.
/// KEYS: stream, metadata, retained bytes. ARGV: incarnation, through, epoch.
const RELEASE: &str = r"
local m = redis.call('HMGET', KEYS[2], 'id', 'x', 'n', 'e', 'b', 'f')
local stands = standing(m[1], m[2], ARGV[1])
if stands ~= 1 then return stands end
if tonumber(ARGV[3]) < tonumber(m[6]) then return 1 end
local n, e, b = tonumber(m[3]), tonumber(m[4]), tonumber(m[5])
local through = math.min(tonumber(ARGV[2]), n)
if through <= e then return 1 end
local freed, from = 0, e + 1
while from <= through do
  local entries = redis.call('XRANGE', KEYS[1], from, through, 'COUNT', 256)
  if #entries == 0 then break end
  for _, entry in ipairs(entries) do
    freed = freed + #entry[2][2]
  end
  from = tonumber(string.match(entries[#entries][1], '^%d+')) + 1
end
redis.call('XTRIM', KEYS[1], 'MINID', through + 1)
redis.call('HSET', KEYS[2], 'e', through, 'b', b - freed)
redis.call('DECRBY', KEYS[3], freed)
return 1
";

/// Marks session ARGV[2] detached for attachment ARGV[1], unless a newer one fenced the log,
/// and brings the store within budget ARGV[3].
/// KEYS: metadata, retained bytes, detached sessions, detach order. ARGV: epoch, session,
/// budget, key prefix.
const DETACH: &str = r"
local m = redis.call('HMGET', KEYS[1], 'id', 'x', 'n', 'e', 'f', 'd')
if not m[1] or m[2] then return 0 end
if tonumber(ARGV[1]) < tonumber(m[5]) or m[6] then return 0 end
if tonumber(m[3]) > tonumber(m[4]) then
  redis.call('ZADD', KEYS[3], redis.call('INCR', KEYS[4]), ARGV[2])
  redis.call('HSET', KEYS[1], 'd', 'l')
else
  redis.call('HSET', KEYS[1], 'd', 'u')
end
local total = tonumber(redis.call('GET', KEYS[2]) or 0)
local budget = tonumber(ARGV[3])
if total > budget then
  redis.call('SET', KEYS[2], enforce(total, budget, ARGV[4], KEYS[3]))
end
return 1
";

/// Drops session ARGV[1]'s log, leaving a tombstone for ARGV[3] ms so that its handles can tell
/// a removal from a loss, and tells them on channel ARGV[2].
/// KEYS: stream, metadata, retained bytes, detached sessions.
const REMOVE: &str = r"
local m = redis.call('HMGET', KEYS[2], 'id', 'x', 'b')
if not m[1] or m[2] == 'removed' then return 0 end
redis.call('DECRBY', KEYS[3], m[3] or 0)
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], 'id', m[1], 'x', 'removed')
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[2], m[1] .. ' -')
return 1
";

/// Marks incarnation ARGV[1] of the log as having lost events if it holds fewer than ARGV[2],
/// the newest a handle saw, and tells its handles on channel ARGV[3].
/// KEYS: metadata.
const POISON: &str = r"
local m = redis.call('HMGET', KEYS[1], 'id', 'x', 'n')
if m[1] ~= ARGV[1] or m[2] then return 0 end
if tonumber(m[3]) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'x', 'lost')
redis.call('PUBLISH', ARGV[3], ARGV[1] .. ' !')
return 1
";

/// What the append script answers, beside the [`Standing`] codes, for a batch it had applied
/// before: the numbers it got follow.
pub(super) const REPLAYED: i64 = 2;
/// Its answer when the instance to fence was fenced out already.
pub(super) const ALREADY_FENCED: i64 = 3;
/// Its answer for a batch older than the last its writer appended, which it gave up on.
pub(super) const STALE: i64 = -4;
/// Its answer for a batch it refused because the batch named before it was not the last its
/// writer appended.
pub(super) const OUT_OF_ORDER: i64 = -5;
/// Its answer when the appending replica instance was fenced out of the log.
pub(super) const FENCED: i64 = -6;

/// How a log stands against a handle's incarnation, as the scripts answer it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Standing {
    /// The handle's log.
    Present,
    /// No log at all: lost, or removed so long ago that its tombstone is gone.
    Missing,
    /// Removed.
    Removed,
    /// Another log of the session, created since.
    Replaced,
    /// The handle's log, marked as having lost events.
    LostEvents,
}

impl Standing {
    /// The standing a script answered, if it is one.
    pub(super) fn from_code(code: i64) -> Option<Standing> {
        Some(match code {
            1 => Standing::Present,
            0 => Standing::Missing,
            -1 => Standing::Removed,
            -2 => Standing::Replaced,
            -3 => Standing::LostEvents,
            _ => return None,
        })
    }

    /// Why the handle's log is gone, unless it is present.
    pub(super) fn gone(self) -> Option<Gone> {
        match self {
            Standing::Present => None,
            Standing::Missing => Some(Gone::Lost),
            Standing::Removed => Some(Gone::Removed),
            Standing::Replaced => Some(Gone::Replaced),
            Standing::LostEvents => Some(Gone::LostEvents),
        }
    }
}

/// One script, called by its hash with the arguments written straight into the command, so a
/// batch of frames is copied once on its way out.
pub(super) struct LuaScript(Script);

impl LuaScript {
    fn new(body: &str) -> Self {
        LuaScript(Script::new(&format!("{PRELUDE}{body}")))
    }

    /// The start of a call with `keys` keys, with room for `args` arguments of `bytes` bytes
    /// in all; the caller adds the keys, then the arguments.
    pub(super) fn call(&self, keys: usize, args: usize, bytes: usize) -> Cmd {
        let mut cmd = Cmd::with_capacity(3 + keys + args, bytes + 64);
        cmd.arg("EVALSHA").arg(self.0.get_hash()).arg(keys);
        cmd
    }

    /// Runs `cmd`, made by [`LuaScript::call`], loading the script first if Redis does not
    /// have it (a restart, a failover, a `SCRIPT FLUSH`). Refused calls have no effect, so
    /// trying again cannot apply a change twice.
    pub(super) async fn run(&self, conn: &mut Connection, cmd: &Cmd) -> RedisResult<Value> {
        match cmd.query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.0.load_async(conn).await?;
                cmd.query_async(conn).await
            }
            other => other,
        }
    }
}

/// Every script of the store.
pub(super) struct Scripts {
    pub(super) create: LuaScript,
    pub(super) append: LuaScript,
    pub(super) fence: LuaScript,
    pub(super) release: LuaScript,
    pub(super) detach: LuaScript,
    pub(super) remove: LuaScript,
    pub(super) poison: LuaScript,
}

impl Scripts {
    /// Every script, hashed; Redis loads each on its first use.
    pub(super) fn new() -> Self {
        Scripts {
            create: LuaScript::new(CREATE),
            append: LuaScript::new(APPEND),
            fence: LuaScript::new(FENCE),
            release: LuaScript::new(RELEASE),
            detach: LuaScript::new(DETACH),
            remove: LuaScript::new(REMOVE),
            poison: LuaScript::new(POISON),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{super::commit::MAX_IN_FLIGHT, APPEND};

    #[test]
    fn the_append_script_remembers_every_batch_that_may_be_on_its_way_and_one_more() {
        assert!(APPEND.contains(&format!("local KEEP = {}\n", MAX_IN_FLIGHT + 1)));
    }
}
