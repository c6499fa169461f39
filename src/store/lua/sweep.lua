-- One sweep of a queue: forgets finished jobs whose retention has passed, and reports what is
-- due. Called by every jobd replica's sweeper; trimming twice is harmless.
--
-- KEYS[1]  queue's scheduled set
-- KEYS[2]  queue's running set
-- KEYS[3..5]  queue's retained-completed, -failed and -cancelled sets
-- ARGV[1]  now, Unix ms
-- ARGV[2]  most ids to return per list
-- returns  {due scheduled ids, ids with expired leases,
--           next due time after now or "", next lease expiry after now or "",
--           the earliest retention end left or ""}

local now = tonumber(ARGV[1])
local next_trim = ''
for i = 3, 5 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')[2]
  if first and (next_trim == '' or tonumber(first) < tonumber(next_trim)) then
    next_trim = first
  end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, ARGV[2])
local after = '(' .. ARGV[1]
local next_due = redis.call('ZRANGEBYSCORE', KEYS[1], after, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)[2] or ''
local next_expiry = redis.call('ZRANGEBYSCORE', KEYS[2], after, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)[2] or ''
return {due, expired, next_due, next_expiry, next_trim}
