-- A worker completes its attempt: the job becomes COMPLETED with the result.
-- Safe to run twice: a second run with the same token finds the outcome already recorded.
--
-- KEYS[1]  job hash
-- KEYS[2]  queue's running set
-- KEYS[3]  queue's retained-completed set (score: when the job's retention ends, Unix ms)
-- ARGV[1]  job id
-- ARGV[2]  lease token
-- ARGV[3]  now, Unix ms
-- ARGV[4]  result
-- ARGV[5]  job wake-up channel
-- returns  {"ok", kind, started}: recorded now; {"again"}: recorded by an earlier run
--          {"not_found"}
--          {"stale", state}: the token is not the job's current one, or the job is not running

local job = redis.call('HMGET', KEYS[1], 'state', 'token', 'seq', 'attempt', 'retention',
  'kind', 'started')
local state, token = job[1], job[2]
if not state then return {'not_found'} end
if token ~= ARGV[2] then return {'stale', state} end
if state == 'completed' then return {'again'} end
if state ~= 'running' then return {'stale', state} end

local now = tonumber(ARGV[3])
local seq = tonumber(job[3]) + 1
local retention = tonumber(job[5])
local event = cmsgpack.pack({t = 'completed', at = now, a = tonumber(job[4])})
redis.call('HSET', KEYS[1],
  'state', 'completed', 'result', ARGV[4], 'finished', now, 'seq', seq, 'e:' .. seq, event)
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], now + retention, ARGV[1])
redis.call('PEXPIRE', KEYS[1], retention)
-- Watchers get the result with the event when it is small, and read it otherwise.
local inline = ''
if #ARGV[4] <= 4096 then inline = 'R' .. ARGV[4] end
redis.call('PUBLISH', ARGV[5], seq .. ' ' .. ARGV[1] .. ' ' .. #event .. ' ' .. event .. inline)
return {'ok', job[6], job[7]}
