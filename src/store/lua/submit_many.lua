-- Creates several jobs of one queue at once (none with an idempotency key): each QUEUED in the
-- ready set, or SCHEDULED when it may only run later. One ZADD and one wake-up for the batch.
-- Safe to run twice: job ids are made by the caller, and a job already written is skipped.
--
-- KEYS[1]     queue's ready set
-- KEYS[2]     queue's scheduled set
-- KEYS[3..n]  job hashes, one per job
-- ARGV[1]     now, Unix ms
-- ARGV[2]     queue wake-up channel
-- ARGV[3]     queue name
-- ARGV[4..]   per job, in KEYS order, 14 values: id, kind, payload, labels (MessagePack),
--             priority, max attempts, backoff initial ms, multiplier, max ms, jitter,
--             default lease ms ("" for the server's), retention ms, run at ("" for now),
--             trace context (MessagePack)
-- returns     the number of jobs made ready now (the others were scheduled or already written)

-- Same formula as in submit.lua and promote.lua.
local function ready_score(priority, at)
  return (1000 - priority) * 2199023255552 + (at - 1704067200000)
end

-- Numbers go to Redis and into messages as integer text: Lua's own conversion of a number
-- to text formats it as a float, which costs several times more.
local function int(n) return string.format('%d', n) end

local now = tonumber(ARGV[1])
local ready = {}
for i = 3, #KEYS do
  local a = 4 + (i - 3) * 14
  local run_at = now
  if ARGV[a + 12] ~= '' then run_at = math.max(now, tonumber(ARGV[a + 12])) end
  local state = 'queued'
  if run_at > now then state = 'scheduled' end
  if redis.call('HSETNX', KEYS[i], 'state', state) == 1 then
    local event = {t = 'queued', at = now, a = 0}
    if state == 'scheduled' then event = {t = 'scheduled', at = now, a = 0, due = run_at} end
    redis.call('HSET', KEYS[i],
      'kind', ARGV[a + 1], 'payload', ARGV[a + 2], 'labels', ARGV[a + 3], 'created', ARGV[1],
      'priority', ARGV[a + 4], 'attempt', '0', 'max_attempts', ARGV[a + 5],
      'b_initial', ARGV[a + 6], 'b_mult', ARGV[a + 7], 'b_max', ARGV[a + 8], 'b_jitter', ARGV[a + 9],
      'lease_default', ARGV[a + 10], 'retention', ARGV[a + 11], 'trace', ARGV[a + 13],
      'seq', '1', 'e:1', cmsgpack.pack(event))
    if state == 'scheduled' then
      redis.call('HSET', KEYS[i], 'run_at', run_at)
      redis.call('ZADD', KEYS[2], run_at, ARGV[a])
    else
      ready[#ready + 1] = int(ready_score(tonumber(ARGV[a + 4]), now))
      ready[#ready + 1] = ARGV[a]
    end
  end
end
if #ready > 0 then
  redis.call('ZADD', KEYS[1], unpack(ready))
  redis.call('PUBLISH', ARGV[2], ARGV[3] .. ' ' .. int(#ready / 2))
end
return #ready / 2
