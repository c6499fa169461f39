-- A worker ends its attempt: the job becomes COMPLETED or FAILED.
-- Safe to run twice: a second run with the same token finds the outcome already recorded.
--
-- KEYS[1]  job hash
-- KEYS[2]  queue's running set
-- ARGV[1]  job id
-- ARGV[2]  lease token
-- ARGV[3]  now, Unix ms
-- ARGV[4]  outcome: "completed" or "failed"
-- ARGV[5]  result (completed) or error message (failed)
-- ARGV[6]  retention, ms: how long the finished job stays readable
-- ARGV[7]  job wake-up channel
-- returns  {"ok", state}: recorded, or already recorded by an earlier run of this call
--          {"not_found"}
--          {"stale", state}: the token is not the job's current one, or the job is not running

local job = redis.call('HMGET', KEYS[1], 'state', 'token', 'seq', 'attempt')
local state, token = job[1], job[2]
if not state then return {'not_found'} end
if token ~= ARGV[2] then return {'stale', state} end
if state == ARGV[4] then return {'ok', state} end
if state ~= 'running' then return {'stale', state} end

local now = tonumber(ARGV[3])
local seq = tonumber(job[3]) + 1
local event = {t = ARGV[4], at = now, a = tonumber(job[4])}
local field = 'result'
if ARGV[4] == 'failed' then
  field = 'error'
  event.e = ARGV[5]
end
redis.call('HSET', KEYS[1],
  'state', ARGV[4], field, ARGV[5], 'finished', now, 'seq', seq,
  'e:' .. seq, cmsgpack.pack(event))
redis.call('HDEL', KEYS[1], 'lease_until')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[7], seq .. ' ' .. ARGV[1])
return {'ok', ARGV[4]}
