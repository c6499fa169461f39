-- Admits a principal's submissions to queues under its cap on queues: a queue it has used is
-- admitted; new ones are added to its set while it holds no more than the cap. Its queues are
-- the members of its set still in the due index (those that have jobs); the others are dropped
-- from the set, but only when the cap would refuse, so that a principal under its cap costs
-- one SISMEMBER per queue. A new queue enters the due index at once, due ARGV[2] ms later, so
-- that it counts while its first jobs are written, and is forgotten then if they never are.
-- Safe to run twice: a second run finds the queues in the set.
--
-- KEYS[1]  the due index
-- KEYS[2]  the principal's set of queues
-- ARGV[1]  the cap
-- ARGV[2]  how long a new queue may wait for its first jobs, ms
-- ARGV[3..]  the queues
-- returns  1 admitted, 0 refused (nothing written)

local cap = tonumber(ARGV[1])
local new = {}
for i = 3, #ARGV do
  if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then new[#new + 1] = ARGV[i] end
end
if #new == 0 then return 1 end
if redis.call('SCARD', KEYS[2]) + #new > cap then
  for _, queue in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if not redis.call('ZSCORE', KEYS[1], queue) then redis.call('SREM', KEYS[2], queue) end
  end
  if redis.call('SCARD', KEYS[2]) + #new > cap then return 0 end
end
local visit = int(clock() + tonumber(ARGV[2]))
local entries = {}
for _, queue in ipairs(new) do
  entries[#entries + 1] = visit
  entries[#entries + 1] = queue
end
redis.call('SADD', KEYS[2], unpack(new))
redis.call('ZADD', KEYS[1], 'NX', unpack(entries))
return 1
