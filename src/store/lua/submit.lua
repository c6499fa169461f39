-- Creates a job: QUEUED in the ready set, or SCHEDULED when it may only run later.
-- Safe to run twice: the job id is made by the caller, and a second run finds the job.
--
-- KEYS[1]  job hash
-- KEYS[2]  queue's ready set (score: see ready_score below)
-- KEYS[3]  queue's scheduled set (score: when the job becomes claimable, Unix ms)
-- KEYS[4]  idempotency key (only when the submission has one)
-- ARGV[1]  job id
-- ARGV[2]  kind
-- ARGV[3]  payload
-- ARGV[4]  labels, MessagePack map
-- ARGV[5]  now, Unix ms
-- ARGV[6]  priority, -1000..1000
-- ARGV[7]  max attempts
-- ARGV[8..11]  backoff: initial ms, multiplier, max ms, jitter
-- ARGV[12] job's default lease ms, or "" for the server's
-- ARGV[13] retention ms
-- ARGV[14] run at, Unix ms ("" for now)
-- ARGV[15] idempotency key TTL ms (with KEYS[4])
-- ARGV[16] queue wake-up channel
-- ARGV[17] queue name (the wake-up message)
-- ARGV[18] submitter's W3C trace context, MessagePack map
-- returns  {"created", state}, {"exists", id} for a live idempotency key naming job `id`,
--          {"again", state} when this very job was written by an earlier run

-- Higher priority first, then earlier first: (1000 - priority) * 2^41 + ms since 2024-01-01.
-- Exact in a double until 2093. The same formula is in promote.lua.
local function ready_score(priority, at)
  return (1000 - priority) * 2199023255552 + (at - 1704067200000)
end

if KEYS[4] then
  local existing = redis.call('GET', KEYS[4])
  if existing and existing ~= ARGV[1] then return {'exists', existing} end
end

local now = tonumber(ARGV[5])
local run_at = now
if ARGV[14] ~= '' then run_at = math.max(now, tonumber(ARGV[14])) end
local state = 'queued'
if run_at > now then state = 'scheduled' end

if redis.call('HSETNX', KEYS[1], 'state', state) == 0 then
  return {'again', redis.call('HGET', KEYS[1], 'state')}
end
local event = {t = 'queued', at = now, a = 0}
if state == 'scheduled' then event = {t = 'scheduled', at = now, a = 0, due = run_at} end
redis.call('HSET', KEYS[1],
  'kind', ARGV[2], 'payload', ARGV[3], 'labels', ARGV[4], 'created', ARGV[5],
  'priority', ARGV[6], 'attempt', 0, 'max_attempts', ARGV[7],
  'b_initial', ARGV[8], 'b_mult', ARGV[9], 'b_max', ARGV[10], 'b_jitter', ARGV[11],
  'lease_default', ARGV[12], 'retention', ARGV[13], 'trace', ARGV[18],
  'seq', 1, 'e:1', cmsgpack.pack(event))
if KEYS[4] then
  redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[15])
  redis.call('HSET', KEYS[1], 'idem', KEYS[4])
end
if state == 'scheduled' then
  redis.call('HSET', KEYS[1], 'run_at', run_at)
  redis.call('ZADD', KEYS[3], run_at, ARGV[1])
else
  redis.call('ZADD', KEYS[2], ready_score(tonumber(ARGV[6]), now), ARGV[1])
  redis.call('PUBLISH', ARGV[16], ARGV[17])
end
return {'created', state}
