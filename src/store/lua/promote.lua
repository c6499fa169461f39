-- Makes due SCHEDULED jobs claimable: each becomes QUEUED, in the ready set by priority.
-- Safe to run twice and from several jobd replicas at once: a job is promoted only while it is
-- still in the scheduled set and due (ZREM decides), so exactly once.
--
-- KEYS[1]     queue's scheduled set
-- KEYS[2]     queue's ready set
-- KEYS[3..n]  job hashes of the candidates
-- ARGV[1]     job wake-up channel
-- ARGV[2]     queue wake-up channel
-- ARGV[3]     queue name
-- ARGV[4]     the log's cap (see `logged`)
-- ARGV[5..]   job ids, in KEYS order
-- returns     the number of jobs promoted

local now = clock()
local at = packed_at(now)
local announced = {}
for i = 3, #KEYS do
  local id = ARGV[i + 2]
  local due = redis.call('ZSCORE', KEYS[1], id)
  if due and tonumber(due) <= now and redis.call('ZREM', KEYS[1], id) == 1 then
    local job = redis.call('HMGET', KEYS[i], 'state', 'seq', 'attempt', 'spec', 'lp')
    if job[1] == 'scheduled' then
      local event = pack_event('queued', at, tonumber(job[3]))
      local seq, log = logged(KEYS[i], job[2], job[5], ARGV[4], event)
      redis.call('HSET', KEYS[i], 'state', 'queued', unpack(log))
      local priority = cmsgpack.unpack(job[4]).p
      redis.call('ZADD', KEYS[2], ready_score(priority, tonumber(due)), id)
      announced[#announced + 1] = announcement(seq, id, event)
    end
  end
end
announce_ready(ARGV[1], announced, ARGV[2], ARGV[3])
return #announced
