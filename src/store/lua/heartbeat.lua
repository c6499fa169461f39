-- Extends a running job's lease and optionally records progress. The first heartbeat of a
-- claim also acknowledges the job (see claim.lua). A heartbeat never shortens the lease, so
-- one that Redis runs late (delayed, then applied after a later one) cannot undo the later
-- one; its event carries the time Redis applied it, so the log stays in time order.
-- Safe to run twice: a second run extends the lease again, and records the progress again.
--
-- KEYS[1]  job hash
-- KEYS[2]  queue's running set
-- ARGV[1]  job id
-- ARGV[2]  lease token
-- ARGV[3]  new lease, ms from now; empty: the lease the job was claimed with
-- ARGV[4]  job wake-up channel
-- ARGV[5..6]  optional, progress to record: its message, and its value ("" for none)
-- returns  {"ok", lease expiry}, {"cancelled"}, {"not_found"},
--          {"stale", state}: the token is not the job's current one, or the job is not running;
--          {"expired", "ack" or "lease", when}: the claim's deadline passed (see `deadline`)

local job = redis.call('HMGET', KEYS[1], 'state', 'token', 'seq', 'attempt', 'lease_ms',
  'lease_until', 'ack_until')
local refusal = token_refusal(job[1], job[2], ARGV[2])
if refusal then return refusal end
if job[1] == 'cancelled' then return {'cancelled'} end
local now = clock()
refusal = claim_refusal(job[1], job[6], job[7], now)
if refusal then return refusal end
local lease = tonumber(job[5])
if ARGV[3] ~= '' then lease = tonumber(ARGV[3]) end
local expires = math.max(now + lease, tonumber(job[6]))
redis.call('HSET', KEYS[1], 'lease_until', int(expires))
if job[7] then redis.call('HDEL', KEYS[1], 'ack_until') end
redis.call('ZADD', KEYS[2], 'XX', expires, ARGV[1])
if ARGV[5] then
  local seq = int(tonumber(job[3]) + 1)
  local fields = {'m', ARGV[5]}
  if ARGV[6] ~= '' then fields[3], fields[4] = 'v', tonumber(ARGV[6]) end
  local event = pack_event('progress', packed_at(now), tonumber(job[4]), fields)
  redis.call('HSET', KEYS[1], 'seq', seq, 'e:' .. seq, event)
  redis.call('PUBLISH', ARGV[4], announcement(seq, ARGV[1], event))
end
return {'ok', expires}
