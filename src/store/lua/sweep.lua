-- One sweep of a queue: forgets finished jobs whose retention has passed, and reports what is
-- due, by Redis's clock. Called by every jobd replica's sweeper; trimming twice is harmless.
--
-- KEYS[1]  queue's scheduled set
-- KEYS[2]  queue's running set (score: each claim's deadline)
-- KEYS[3..5]  queue's retained-completed, -failed and -cancelled sets
-- ARGV[1]  most ids to return per list
-- returns  {now, due scheduled ids, ids whose claim's deadline passed,
--           next due time after now or "", next claim deadline after now or "",
--           the earliest retention end left or ""}

local now = clock()
local next_trim = ''
for i = 3, 5 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  local first = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)[2]
  if first and (next_trim == '' or tonumber(first) < tonumber(next_trim)) then
    next_trim = first
  end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, ARGV[1])
local after = '(' .. int(now)
local next_due = redis.call('ZRANGEBYSCORE', KEYS[1], after, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)[2] or ''
local next_expiry = redis.call('ZRANGEBYSCORE', KEYS[2], after, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)[2] or ''
return {now, due, expired, next_due, next_expiry, next_trim}
