-- Cancels a queued, scheduled or running job. A running job's worker learns of it from its
-- next heartbeat; its token stays on the job so that the heartbeat can tell it so.
-- Safe to run twice: a cancelled job is left unchanged.
--
-- KEYS[1]  job hash
-- KEYS[2]  queue's ready set
-- KEYS[3]  queue's running set
-- KEYS[4]  queue's scheduled set
-- KEYS[5]  queue's retained-cancelled set (score: when the job's retention ends, Unix ms)
-- KEYS[6]  queue's promise (see `promise`)
-- ARGV[1]  job id
-- ARGV[2]  reason (may be empty)
-- ARGV[3]  job wake-up channel
-- returns  {"ok"} cancelled now (then "due:<ms>" when the due index must hear of the queue,
--          see `promise`), {"unchanged"} was cancelled already,
--          {"finished", state} completed or failed, {"not_found"}

local job = redis.call('HMGET', KEYS[1], 'state', 'seq', 'attempt', 'retention')
local state = job[1]
if not state then return {'not_found'} end
if state == 'cancelled' then return {'unchanged'} end
if state == 'completed' or state == 'failed' then return {'finished', state} end

local now = clock()
local seq = tonumber(job[2]) + 1
local retention = tonumber(job[4])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
local event = pack_event('cancelled', packed_at(now), tonumber(job[3]), {'r', ARGV[2]})
redis.call('HSET', KEYS[1],
  'state', 'cancelled', 'reason', ARGV[2], 'finished', now, 'seq', seq, 'e:' .. seq, event)
redis.call('ZADD', KEYS[5], now + retention, ARGV[1])
redis.call('PEXPIRE', KEYS[1], retention)
redis.call('PUBLISH', ARGV[3], announcement(seq, ARGV[1], event))
return {'ok', promise(KEYS[6], now + retention)}
