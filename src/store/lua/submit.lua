-- Creates a job with an idempotency key: QUEUED in the ready set, or SCHEDULED when it may only
-- run later; or, handed off to a claim waiting on the calling jobd (see store/handoff.rs),
-- RUNNING at once, but only when the queue has no ready job that would be passed over. (Jobs
-- without a key go through submit_many.lua, alone or in batches.)
-- Safe to run twice: the job id and lease token are made by the caller, and a second run finds
-- the job and says whether the first run handed it off.
--
-- KEYS[1]  job hash
-- KEYS[2]  queue's ready set (score: see ready_score below)
-- KEYS[3]  queue's scheduled set (score: when the job becomes claimable, Unix ms)
-- KEYS[4]  idempotency key
-- KEYS[5]  queue's running set (score: lease expiry, Unix ms)
-- ARGV[1]  now, Unix ms
-- ARGV[2]  queue wake-up channel
-- ARGV[3]  queue name (the wake-up message)
-- ARGV[4]  idempotency key TTL ms
-- ARGV[5..12]  the job, as in submit_many.lua: id, payload, spec (MessagePack), kind,
--          retention ms, default lease ms ("" for the server's), run at ("" for now), priority
-- ARGV[13] job wake-up channel
-- ARGV[14..19]  optional, a hand-off as in submit_many.lua: "1", worker id, its STARTED
--          event, lease token, lease ms, lease expiry (Unix ms)
-- returns  {"created", state, handed}, {"exists", id} for a live idempotency key naming job
--          `id`, {"again", state, handed} when this very job was written by an earlier run;
--          handed is 1 when the job was handed off, else 0

local existing = redis.call('GET', KEYS[4])
if existing and existing ~= ARGV[5] then return {'exists', existing} end

local now = tonumber(ARGV[1])
local run_at = now
if ARGV[11] ~= '' then run_at = math.max(now, tonumber(ARGV[11])) end
local state = 'queued'
if run_at > now then state = 'scheduled' end

if redis.call('HSETNX', KEYS[1], 'state', state) == 0 then
  -- The job holds the hand-off's lease token if that run made the hand-off.
  local handed = 0
  if #ARGV >= 14 and redis.call('HGET', KEYS[1], 'token') == ARGV[17] then handed = 1 end
  return {'again', redis.call('HGET', KEYS[1], 'state'), handed}
end
local event = {t = 'queued', at = now, a = 0}
if state == 'scheduled' then event = {t = 'scheduled', at = now, a = 0, due = run_at} end
redis.call('HSET', KEYS[1],
  'seq', '1', 'e:1', cmsgpack.pack(event), 'attempt', '0', 'payload', ARGV[6], 'spec', ARGV[7],
  'kind', ARGV[8], 'retention', ARGV[9], 'idem', KEYS[4])
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'lease_default', ARGV[10]) end
redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[4])
if state == 'queued' and #ARGV >= 14 and redis.call('EXISTS', KEYS[2]) == 0 then
  local started = ARGV[16]
  redis.call('HSET', KEYS[1],
    'state', 'running', 'seq', '2', 'e:2', started, 'attempt', '1', 'token', ARGV[17],
    'worker', ARGV[15], 'started', ARGV[1], 'lease_ms', ARGV[18], 'lease_until', ARGV[19])
  redis.call('ZADD', KEYS[5], ARGV[19], ARGV[5])
  redis.call('PUBLISH', ARGV[13], announcement('2', ARGV[5], started))
  return {'created', 'running', 1}
end
if state == 'scheduled' then
  redis.call('HSET', KEYS[1], 'run_at', run_at)
  redis.call('ZADD', KEYS[3], run_at, ARGV[5])
else
  redis.call('ZADD', KEYS[2], ready_score(tonumber(ARGV[12]), now), ARGV[5])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
end
return {'created', state, 0}
