-- Creates a job with an idempotency key: QUEUED in the ready set, or SCHEDULED when it may only
-- run later; or, handed off to a claim waiting on the calling jobd (see claims/handoff.rs),
-- RUNNING at once, but only when the queue has no ready job that would be passed over. (Jobs
-- without a key go through submit_many.lua, alone or in batches.)
-- Safe to run twice: the job id and lease token are made by the caller, and a second run finds
-- the job and says whether the first run handed it off.
--
-- KEYS[1]  job hash
-- KEYS[2]  queue's ready set (score: see ready_score)
-- KEYS[3]  queue's scheduled set (score: when the job becomes claimable, Unix ms)
-- KEYS[4]  idempotency key
-- KEYS[5]  queue's running set (score: the claim's deadline, see `deadline`)
-- KEYS[6]  queue's promise (see `promise`)
-- ARGV[1]  queue wake-up channel
-- ARGV[2]  queue name (the wake-up message)
-- ARGV[3]  idempotency key TTL ms
-- ARGV[4]  the request's fingerprint (see NewJob::fingerprint), kept with the key
-- ARGV[5..13]  the job, as in submit_many.lua: id, payload, spec (MessagePack), kind,
--          retention ms, default lease ms ("" for the server's), start (see `start_time`),
--          priority, size
-- ARGV[14] job wake-up channel
-- ARGV[15..19]  optional, a hand-off as in submit_many.lua: "1" (the job's place), worker id,
--          lease token, lease ms, acknowledgement timeout ms
-- returns  {"created", state, handed, now}, {"exists", id} for a live idempotency key naming
--          job `id` made by the same request, {"conflict", id} for one made by another request,
--          {"again", state, handed, created} when this very job was written by an earlier
--          run; handed is 1 when the job was handed off, else 0; "created" and "again"
--          replies end with "due:<ms>" or "due:inf" when the due index must hear of the queue
--          (see `promise`)

-- The key holds "<job id> <fingerprint>" (only the id if an older jobd wrote it).
local existing = redis.call('GET', KEYS[4])
if existing then
  local id, fingerprint = string.match(existing, '^(%S+) (%S+)$')
  id = id or existing
  if id ~= ARGV[5] then
    if fingerprint and fingerprint ~= ARGV[4] then return {'conflict', id} end
    return {'exists', id}
  end
end

if redis.call('EXISTS', KEYS[1]) == 1 then
  local job = redis.call('HMGET', KEYS[1], 'state', 'token', 'created')
  -- The job holds the hand-off's lease token if that run made the hand-off.
  local handed = 0
  if #ARGV >= 15 and job[2] == ARGV[17] then handed = 1 end
  return {'again', job[1], handed, tonumber(job[3]), promised(KEYS[6])}
end

local now = clock()
local at = packed_at(now)
local run_at = start_time(ARGV[11], now)
local state, event = 'queued', pack_event('queued', at, 0)
if run_at > now then
  state, event = 'scheduled', pack_event('scheduled', at, 0, {'due', run_at})
end
redis.call('HSET', KEYS[1],
  'state', state, 'seq', '1', 'e:1', event, 'attempt', '0', 'payload', ARGV[6],
  'spec', ARGV[7], 'kind', ARGV[8], 'retention', ARGV[9], 'created', int(now),
  'size', ARGV[13], 'idem', KEYS[4])
if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'lease_default', ARGV[10]) end
redis.call('SET', KEYS[4], ARGV[5] .. ' ' .. ARGV[4], 'PX', ARGV[3])
if state == 'queued' and #ARGV >= 15 and redis.call('EXISTS', KEYS[2]) == 0 then
  local started = pack_event('started', at, 1, {'w', ARGV[16]})
  local expires = now + tonumber(ARGV[18])
  local ack = math.min(now + tonumber(ARGV[19]), expires)
  redis.call('HSET', KEYS[1],
    'state', 'running', 'seq', '2', 'e:2', started, 'attempt', '1', 'token', ARGV[17],
    'worker', ARGV[16], 'started', int(now), 'lease_ms', ARGV[18],
    'lease_until', int(expires), 'ack_until', int(ack))
  redis.call('ZADD', KEYS[5], ack, ARGV[5])
  redis.call('PUBLISH', ARGV[14], announcement('2', ARGV[5], started))
  return {'created', 'running', 1, now, promise(KEYS[6], ack)}
end
local due = math.huge
if state == 'scheduled' then
  redis.call('HSET', KEYS[1], 'run_at', int(run_at))
  redis.call('ZADD', KEYS[3], run_at, ARGV[5])
  due = run_at
else
  redis.call('ZADD', KEYS[2], ready_score(tonumber(ARGV[12]), now), ARGV[5])
  redis.call('PUBLISH', ARGV[1], ARGV[2])
end
return {'created', state, 0, now, promise(KEYS[6], due)}
