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

/// What every script shares: how a log stands against a handle, and the offsets of its frames.
///
/// A frame's entry id is `SEQ-OFFSET`: its sequence number, then the bytes appended to the log
/// through it. Ranges by sequence number work as they would on `SEQ-0` ids, and the bytes
/// between two frames are the difference of their offsets: what a release frees is read off
/// one entry's id, and a walk of the window or of an eviction reads ids a chunk at a time
/// rather than measuring the frames one by one.
const PRELUDE: &str = r"
local function standing(id, tomb, incarnation)
  if not id then return 0 end
  if id ~= incarnation then return -2 end
  if tomb == 'lost' then return -3 end
  if tomb then return -1 end
  return 1
end

local function entry_id(seq, offset)
  return string.format('%d-%d', seq, offset)
end

local function entry_offset(entry)
  return tonumber(string.match(entry[1], '-(%d+)$'))
end

-- The offset of frame seq, or nil when the stream lacks it.
local function offset_of(stream, seq)
  local entry = redis.call('XRANGE', stream, seq, seq)[1]
  if entry then return entry_offset(entry) end
  return nil
end

-- A reader of offsets for a walk forward through the stream: it reads a chunk of entries at
-- a time. It answers nil for a frame the stream lacks.
local function offsets(stream)
  local cache, from, to = {}, 1, 0
  return function(seq)
    if seq < from or seq > to then
      cache, from, to = {}, seq, seq - 1
      for _, entry in ipairs(redis.call('XRANGE', stream, seq, '+', 'COUNT', 128)) do
        local at, offset = string.match(entry[1], '^(%d+)-(%d+)$')
        to = tonumber(at)
        cache[to] = tonumber(offset)
      end
    end
    return cache[seq]
  end
end
";

/// Creates the empty log of incarnation ARGV[1], replacing any it had and telling that one's
/// handles on channel ARGV[2]. Returns the bytes the replaced log retained, which the store's
/// count gives back.
/// KEYS: stream, metadata.
const CREATE: &str = r"
local old = redis.call('HMGET', KEYS[2], 'id', 'b', 'x')
local freed = 0
if old[1] then
  if old[3] ~= 'removed' then freed = tonumber(old[2] or 0) end
  redis.call('PUBLISH', ARGV[2], old[1] .. ' +')
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], 'id', ARGV[1], 'n', 0, 'e', 0, 'b', 0, 'a', 0, 'ws', 0, 'we', 0, 'f', 0)
return freed
";

/// Appends the frames ARGV[12..] in order, numbering each, evicting beyond the log's bounds,
/// and publishing the newest number on channel ARGV[6]. A batch that leaves the log within
/// its bounds and its window where it was (nearly every one while a reader keeps up) costs an
/// `XADD` a frame and nothing more. Returns `{1, bytes evicted, listed, evicted through,
/// first number, then (i, window start) for the batch's frame i (from 0) and each frame whose
/// window start differs from the one before}`, or `{standing}`. `listed` is 1 when the log was
/// detached and empty, and so off the store's detached list, and now holds frames: the caller
/// lists it. A stream that lacks entries its metadata counts lost events: the log is marked so
/// (`{-3}`), as a read of it would find. So the answer vouches, as a read of the metadata
/// would, for every frame of the log from the one after `evicted through` to the batch's last.
///
/// The frames come from replica instance ARGV[7], and are refused (`{-6}`) if it was fenced
/// out of the log. With ARGV[8] not empty, the script first fences instance ARGV[8] out, and
/// appends only if that is a new fence (else answers `{3}`).
///
/// With ARGV[9] not empty, the frames are batch ARGV[10] of writer ARGV[9]. A writer's
/// batches are numbered in the order it sends them, and the metadata keeps the last few it
/// applied, newest first (`w:WRITER`, `BATCH FIRST COUNT ...`, as many as `commit.rs` may have
/// on their way at once, and one more): a batch sent again, because its answer was lost, is
/// not applied a second time but answered `{2, 0, 0, evicted through, first number, 0, window
/// start}` with the numbers it got (and the window as it stands now, which is later and so
/// stricter); an older one, which its writer gave up on and which reached Redis after a newer
/// one, is not applied at all and answered `{-4}`. Unless ARGV[11] is empty, the batch is
/// refused (`{-5}`) if batch ARGV[11] is not the last this writer appended: batches sent
/// behind one another are never appended out of order.
/// KEYS: stream, metadata.
/// ARGV: incarnation, the newest number the handle knows of, max frames, max bytes, window
/// bytes, channel, instance, instance to fence, writer, batch, the batch before, frames.
const APPEND: &str = r"
local KEEP = 4
local writer = 'w:' .. ARGV[9]
local m = redis.call('HMGET', KEYS[2], 'id', 'x', 'n', 'e', 'b', 'a', 'ws', 'we', 'd',
  'lost:' .. ARGV[7], writer)
local stands = standing(m[1], m[2], ARGV[1])
if stands ~= 1 then return {stands} end
if m[10] then return {-6} end
local n, e, b, a = tonumber(m[3]), tonumber(m[4]), tonumber(m[5]), tonumber(m[6])
local ws, we, listing = tonumber(m[7]), tonumber(m[8]), m[9]
if n < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[2], 'x', 'lost')
  redis.call('PUBLISH', ARGV[6], ARGV[1] .. ' !')
  return {-3}
end
if ARGV[8] ~= '' then
  local fence = 'lost:' .. ARGV[8]
  if redis.call('HEXISTS', KEYS[2], fence) == 1 then return {3} end
  redis.call('HSET', KEYS[2], fence, '1')
end
local batch, applied = tonumber(ARGV[10]), m[11] or ''
if ARGV[9] ~= '' then
  local last = string.match(applied, '^(%d+)')
  for done, first in string.gmatch(applied, '(%d+) (%d+) %d+') do
    if tonumber(done) == batch then return {2, 0, 0, e, tonumber(first), 0, ws} end
  end
  if last and tonumber(last) >= batch then return {-4} end
  if ARGV[11] ~= '' and last ~= ARGV[11] then return {-5} end
end
if redis.call('XLEN', KEYS[1]) ~= n - e then
  redis.call('HSET', KEYS[2], 'x', 'lost')
  redis.call('PUBLISH', ARGV[6], ARGV[1] .. ' !')
  return {-3}
end
local max_frames, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local window = tonumber(ARGV[5])
-- ae and we: the offsets of frames e and ws, the newest evicted and the window's start.
local trimmed, ae, listed = e, a - b, 0
local freed_from = ae
if ws < e then
  ws = e
  we = ae
end
local first, count, added = n + 1, #ARGV - 11, 0
for i = 12, #ARGV do added = added + #ARGV[i] end
local out = {1, 0, 0, 0, first}
if n + count - e <= max_frames and a + added - ae <= max_bytes and a + added - we <= window then
  for i = 12, #ARGV do
    n = n + 1
    a = a + #ARGV[i]
    redis.call('XADD', KEYS[1], entry_id(n, a), 'f', ARGV[i])
  end
  out[6], out[7] = 0, ws
else
  local older, mine = offsets(KEYS[1]), {}
  local function offset(seq)
    if seq >= first then return mine[seq] end
    return older(seq)
  end
  local told = -1
  for i = 12, #ARGV do
    n = n + 1
    a = a + #ARGV[i]
    mine[n] = a
    redis.call('XADD', KEYS[1], entry_id(n, a), 'f', ARGV[i])
    while n - e > max_frames or (a - ae > max_bytes and n - e > 1) do
      e = e + 1
      ae = offset(e) or ae
    end
    if ws < e then
      ws = e
      we = ae
    end
    while a - we > window and ws < n do
      ws = ws + 1
      we = offset(ws) or we
    end
    if ws ~= told then
      out[#out + 1] = i - 12
      out[#out + 1] = ws
      told = ws
    end
  end
end
b = a - ae
if listing == 'u' then
  listing = 'l'
  listed = 1
  redis.call('HSET', KEYS[2], 'd', 'l')
end
if e > trimmed then redis.call('XTRIM', KEYS[1], 'MINID', e + 1) end
redis.call('HSET', KEYS[2], 'n', n, 'e', e, 'b', b, 'a', a, 'ws', ws, 'we', we)
if ARGV[9] ~= '' then
  local record = batch .. ' ' .. first .. ' ' .. (#ARGV - 11)
  local kept = 1
  for entry in string.gmatch(applied, '%d+ %d+ %d+') do
    if kept == KEEP then break end
    record = record .. ' ' .. entry
    kept = kept + 1
  end
  redis.call('HSET', KEYS[2], writer, record)
end
out[2], out[3], out[4] = ae - freed_from, listed, e
redis.call('PUBLISH', ARGV[6], ARGV[1] .. ' ' .. n)
return out
";

/// Fences the log against attachments older than ARGV[2]; a newer fence than any before
/// makes a detached log attached again. Returns the standing. The store's detached list may
/// still name the log: the budget skips, and drops, a listed log that is not detached.
/// KEYS: metadata. ARGV: incarnation, epoch.
const FENCE: &str = r"
local m = redis.call('HMGET', KEYS[1], 'id', 'x', 'f')
local stands = standing(m[1], m[2], ARGV[1])
if stands ~= 1 then return stands end
if tonumber(ARGV[2]) > tonumber(m[3]) then
  redis.call('HSET', KEYS[1], 'f', ARGV[2])
  redis.call('HDEL', KEYS[1], 'd')
end
return 1
";

/// Frees the frames through ARGV[2] for attachment ARGV[3], unless a newer one fenced the
/// log. Returns `{standing, bytes freed}`.
/// KEYS: stream, metadata. ARGV: incarnation, through, epoch.
const RELEASE: &str = r"
local m = redis.call('HMGET', KEYS[2], 'id', 'x', 'n', 'e', 'b', 'f', 'a')
local stands = standing(m[1], m[2], ARGV[1])
if stands ~= 1 then return {stands, 0} end
if tonumber(ARGV[3]) < tonumber(m[6]) then return {1, 0} end
local n, e, b, a = tonumber(m[3]), tonumber(m[4]), tonumber(m[5]), tonumber(m[7])
local through = math.min(tonumber(ARGV[2]), n)
if through <= e then return {1, 0} end
local at = a
if through < n then at = offset_of(KEYS[1], through) end
-- A stream that lacks the frame lost events, which its readers find out and report.
if not at then return {1, 0} end
local freed = at - (a - b)
redis.call('XTRIM', KEYS[1], 'MINID', through + 1)
redis.call('HSET', KEYS[2], 'e', through, 'b', b - freed)
return {1, freed}
";

/// Marks the log detached for attachment ARGV[1], unless a newer one fenced the log or it is
/// detached already. Returns 0 for no change, 1 when it holds frames (the caller lists it on
/// the store's detached list), 2 when it holds none.
/// KEYS: metadata. ARGV: epoch.
const DETACH: &str = r"
local m = redis.call('HMGET', KEYS[1], 'id', 'x', 'n', 'e', 'f', 'd')
if not m[1] or m[2] then return 0 end
if tonumber(ARGV[1]) < tonumber(m[5]) or m[6] then return 0 end
if tonumber(m[3]) > tonumber(m[4]) then
  redis.call('HSET', KEYS[1], 'd', 'l')
  return 1
end
redis.call('HSET', KEYS[1], 'd', 'u')
return 2
";

/// Drops the log, leaving a tombstone for ARGV[2] ms so that its handles can tell a removal
/// from a loss, and tells them on channel ARGV[1]. Returns the bytes it retained, or -1 when
/// there was no log to remove.
/// KEYS: stream, metadata.
const REMOVE: &str = r"
local m = redis.call('HMGET', KEYS[2], 'id', 'x', 'b')
if not m[1] or m[2] == 'removed' then return -1 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[2], 'id', m[1], 'x', 'removed')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PUBLISH', ARGV[1], m[1] .. ' -')
return tonumber(m[3] or 0)
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

/// The budget's eviction from one listed log: its oldest frames, until ARGV[1] bytes are
/// freed or it holds none. Returns `{bytes freed, 1 if the log is to come off the detached
/// list}`: it was emptied (and is now detached holding nothing), or it is not a detached log
/// (gone, attached again), which loses nothing.
/// KEYS: stream, metadata.
const EVICT: &str = r"
local m = redis.call('HMGET', KEYS[2], 'n', 'e', 'b', 'd', 'x', 'a')
if not m[1] or m[5] or m[4] ~= 'l' then return {0, 1} end
local n, e, b, a = tonumber(m[1]), tonumber(m[2]), tonumber(m[3]), tonumber(m[6])
local excess, from = tonumber(ARGV[1]), e
local ae = a - b
local freed_from, offset = ae, offsets(KEYS[1])
while ae - freed_from < excess and e < n do
  e = e + 1
  ae = offset(e) or ae
end
local freed = ae - freed_from
if e > from then
  redis.call('XTRIM', KEYS[1], 'MINID', e + 1)
  redis.call('HSET', KEYS[2], 'e', e, 'b', b - freed)
end
if e >= n then
  redis.call('HSET', KEYS[2], 'd', 'u')
  return {freed, 1}
end
return {freed, 0}
";

/// Adds ARGV[1] to the bytes all logs retain and, with ARGV[2] `list`, puts session ARGV[3]
/// last on the detached list, or with `unlist` takes it off. Returns `{the bytes retained, the
/// session detached longest ago, or ''}`.
/// KEYS: retained bytes, detached sessions, detach order (one slot: `{log-budget}`).
const ACCOUNT: &str = r"
local total = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[2] == 'list' then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[3])
elseif ARGV[2] == 'unlist' then
  redis.call('ZREM', KEYS[2], ARGV[3])
end
return {total, redis.call('ZRANGE', KEYS[2], 0, 0)[1] or ''}
";

/// Sets the bytes all logs retain to ARGV[1] and the detached list to the sessions ARGV[2..]
/// (those already on it keep their place; the others go last), as a recount found them.
/// KEYS: retained bytes, detached sessions, detach order.
const RECOUNT: &str = r"
redis.call('SET', KEYS[1], ARGV[1])
local listed = {}
for i = 2, #ARGV do listed[ARGV[i]] = true end
for _, session in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if listed[session] then listed[session] = nil else redis.call('ZREM', KEYS[2], session) end
end
for i = 2, #ARGV do
  if listed[ARGV[i]] then
    redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[i])
    listed[ARGV[i]] = nil
  end
end
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

    /// The script, for a pipeline that calls it.
    pub(super) fn script(&self) -> &Script {
        &self.0
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
    pub(super) evict: LuaScript,
    pub(super) account: LuaScript,
    pub(super) recount: LuaScript,
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
            evict: LuaScript::new(EVICT),
            account: LuaScript::new(ACCOUNT),
            recount: LuaScript::new(RECOUNT),
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
