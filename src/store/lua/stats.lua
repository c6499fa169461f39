-- Counts a queue's jobs by state: queued, scheduled and running ones, and the finished ones
-- whose retention has not ended by Redis's clock (the sweeper trims the rest). Only reads.
--
-- KEYS[1]     queue's ready set
-- KEYS[2]     queue's scheduled set
-- KEYS[3]     queue's running set
-- KEYS[4..6]  queue's retained-completed, -failed and -cancelled sets
-- returns     {queued, scheduled, running, completed, failed, cancelled}

local counts = {}
for i = 1, 3 do counts[i] = redis.call('ZCARD', KEYS[i]) end
local after = '(' .. int(clock())
for i = 4, 6 do counts[i] = redis.call('ZCOUNT', KEYS[i], after, '+inf') end
return counts
