-- Creates a job and puts it in its queue's ready set.
-- Safe to run twice: the job id is made by the caller, and a second run finds the job.
--
-- KEYS[1]  job hash
-- KEYS[2]  queue's ready set (sorted set, score orders claims)
-- ARGV[1]  job id
-- ARGV[2]  kind
-- ARGV[3]  payload
-- ARGV[4]  labels, MessagePack map
-- ARGV[5]  now, Unix ms
-- ARGV[6]  ready-set score
-- ARGV[7]  queue wake-up channel
-- ARGV[8]  queue name (the wake-up message)
-- returns  {"ok"} when created, {"exists"} when this id was already submitted

if redis.call('HSETNX', KEYS[1], 'state', 'queued') == 0 then
  return {'exists'}
end
local now = tonumber(ARGV[5])
redis.call('HSET', KEYS[1],
  'kind', ARGV[2], 'payload', ARGV[3], 'labels', ARGV[4],
  'attempt', 0, 'created', now, 'seq', 1,
  'e:1', cmsgpack.pack({t = 'queued', at = now, a = 0}))
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[1])
redis.call('PUBLISH', ARGV[7], ARGV[8])
return {'ok'}
