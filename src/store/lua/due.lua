-- Takes the due queues for one sweeper: the first ARGV[1] queues of the due index whose time
-- has come by Redis's clock, each given ARGV[2] ms more so that other replicas' sweepers leave
-- it to this one meanwhile (the visit then writes the queue's next time; a sweeper that dies
-- mid-visit delays that queue by that long at most).
--
-- KEYS[1]  the due index
-- ARGV[1]  most queues to take
-- ARGV[2]  how long a taken queue is left to the taker, ms
-- returns  {now, queues taken, the index's earliest time after now or ""}

local now = clock()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])
if #due > 0 then
  local until_ms = int(now + tonumber(ARGV[2]))
  local entries = {}
  for _, queue in ipairs(due) do
    entries[#entries + 1] = until_ms
    entries[#entries + 1] = queue
  end
  redis.call('ZADD', KEYS[1], 'XX', unpack(entries))
end
local after = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. int(now), '+inf', 'WITHSCORES',
  'LIMIT', 0, 1)[2] or ''
return {now, due, after}
