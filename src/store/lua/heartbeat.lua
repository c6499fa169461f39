-- Extends a running job's lease and optionally records progress.
--
-- KEYS[1]  job hash
-- KEYS[2]  queue's running set
-- ARGV[1]  job id
-- ARGV[2]  lease token
-- ARGV[3]  now, Unix ms
-- ARGV[4]  new lease, ms; empty: the lease the job was claimed with
-- ARGV[5]  "1" to record progress, "0" not to
-- ARGV[6]  progress value; empty when none
-- ARGV[7]  progress message
-- ARGV[8]  job wake-up channel
-- returns  {"ok", lease expiry}, {"cancelled"}, {"not_found"},
--          {"stale", state}: the token is not the job's current one, or the job is not running

local job = redis.call('HMGET', KEYS[1], 'state', 'token', 'seq', 'attempt', 'lease_ms')
local state, token = job[1], job[2]
if not state then return {'not_found'} end
if token ~= ARGV[2] then return {'stale', state} end
if state == 'cancelled' then return {'cancelled'} end
if state ~= 'running' then return {'stale', state} end

local now = tonumber(ARGV[3])
local lease = tonumber(job[5])
if ARGV[4] ~= '' then lease = tonumber(ARGV[4]) end
local expires = now + lease
redis.call('HSET', KEYS[1], 'lease_until', expires)
redis.call('ZADD', KEYS[2], 'XX', expires, ARGV[1])
if ARGV[5] == '1' then
  local seq = tonumber(job[3]) + 1
  local event = {t = 'progress', at = now, a = tonumber(job[4]), m = ARGV[7]}
  if ARGV[6] ~= '' then event.v = tonumber(ARGV[6]) end
  event = cmsgpack.pack(event)
  redis.call('HSET', KEYS[1], 'seq', seq, 'e:' .. seq, event)
  redis.call('PUBLISH', ARGV[8], announcement(seq, ARGV[1], event))
end
return {'ok', expires}
