-- Creates several jobs of one queue at once (none with an idempotency key): each QUEUED in the
-- ready set, or SCHEDULED when it may only run later. One ZADD and one wake-up for the batch.
-- Safe to run twice: job ids are made by the caller and the batch is written whole, so a second
-- run finds the first job and writes nothing.
--
-- KEYS[1]     queue's ready set
-- KEYS[2]     queue's scheduled set
-- KEYS[3..n]  job hashes, one per job
-- ARGV[1]     now, Unix ms
-- ARGV[2]     queue wake-up channel
-- ARGV[3]     queue name
-- ARGV[4]     the QUEUED event of every job made ready now (see event_head in store/codec.rs)
-- ARGV[5..]   per job, in KEYS order, 8 values: id, payload, spec (MessagePack, see
--             store/codec.rs), kind, retention ms, default lease ms ("" for the server's),
--             run at ("" for now), priority
-- returns     the number of jobs made ready now (the others were scheduled, or written by an
--             earlier run)

-- Numbers go to Redis and into messages as integer text: Lua's own conversion of a number
-- to text formats it as a float, which costs several times more.
local function int(n) return string.format('%d', n) end

-- Same formula as in submit.lua and promote.lua.
local function ready_score(priority, at)
  return (1000 - priority) * 2199023255552 + (at - 1704067200000)
end

if redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local now = tonumber(ARGV[1])
local ready = {}
for i = 3, #KEYS do
  local a = 5 + (i - 3) * 8
  local run_at = now
  if ARGV[a + 6] ~= '' then run_at = math.max(now, tonumber(ARGV[a + 6])) end
  local state, event = 'queued', ARGV[4]
  if run_at > now then
    state, event = 'scheduled', cmsgpack.pack({t = 'scheduled', at = now, a = 0, due = run_at})
  end
  redis.call('HSET', KEYS[i],
    'state', state, 'seq', '1', 'e:1', event, 'attempt', '0',
    'payload', ARGV[a + 1], 'spec', ARGV[a + 2], 'kind', ARGV[a + 3], 'retention', ARGV[a + 4])
  if ARGV[a + 5] ~= '' then redis.call('HSET', KEYS[i], 'lease_default', ARGV[a + 5]) end
  if run_at > now then
    redis.call('HSET', KEYS[i], 'run_at', run_at)
    redis.call('ZADD', KEYS[2], run_at, ARGV[a])
  else
    ready[#ready + 1] = int(ready_score(tonumber(ARGV[a + 7]), now))
    ready[#ready + 1] = ARGV[a]
  end
end
if #ready > 0 then
  redis.call('ZADD', KEYS[1], unpack(ready))
  redis.call('PUBLISH', ARGV[2], ARGV[3] .. ' ' .. int(#ready / 2))
end
return #ready / 2
