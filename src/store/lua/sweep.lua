-- One sweep of a queue, by Redis's clock: forgets at most ARGV[2] finished jobs whose retention
-- has passed (a backlog is trimmed in bounded steps, one per call), reports what is due, and
-- settles the queue's promise (see `promise`): the earliest time anything in the queue falls
-- due (a scheduled job, a claim's deadline, a retention end), "inf" when its jobs are all
-- ready, or, when the queue has no job left at all, none: the promise is deleted and the
-- queue is to be forgotten. The caller writes the answer to the due index, then reads the
-- promise again (a script that ran meanwhile may have promised an earlier time).
-- Called by every jobd replica's sweeper; running it twice is harmless.
--
-- KEYS[1]  queue's scheduled set
-- KEYS[2]  queue's running set (score: each claim's deadline)
-- KEYS[3..5]  queue's retained-completed, -failed and -cancelled sets
-- KEYS[6]  queue's ready set
-- KEYS[7]  queue's promise
-- ARGV[1]  most ids to return per list
-- ARGV[2]  most retained entries to trim
-- returns  {now, due scheduled ids, ids whose claim's deadline passed, the queue's next time:
--           Unix ms (at most now when there is more to do at once), "inf" or "forget"}

local now = clock()
local budget = tonumber(ARGV[2])
local next_time = math.huge
for i = 3, 5 do
  if budget > 0 then
    local old = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'LIMIT', 0, budget)
    if #old > 0 then
      redis.call('ZREM', KEYS[i], unpack(old))
      budget = budget - #old
    end
  end
end
for i = 1, 5 do
  local first = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)[2]
  if first then next_time = math.min(next_time, tonumber(first)) end
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, ARGV[1])
local settled
if next_time ~= math.huge then
  settled = int(next_time)
elseif redis.call('EXISTS', KEYS[6]) == 1 then
  settled = 'inf'
end
if settled then
  redis.call('SET', KEYS[7], settled)
else
  redis.call('DEL', KEYS[7])
  settled = 'forget'
end
return {now, due, expired, settled}
