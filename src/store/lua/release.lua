-- Puts back in their queue jobs claimed for a caller that went away before receiving them (its
-- call was cancelled or timed out): each job still leased with the given token becomes QUEUED
-- again (RELEASED), at its place by priority and submission time, and the claim does not count
-- as an attempt. The token dies, so nobody can work on the job under it. Safe to run twice and
-- from several jobd replicas at once: a job no longer leased with that token is left alone.
--
-- KEYS[1]     queue's ready set
-- KEYS[2]     queue's running set
-- KEYS[3..n]  job hashes
-- ARGV[1]     now, Unix ms
-- ARGV[2]     job wake-up channel
-- ARGV[3]     queue wake-up channel
-- ARGV[4]     queue name
-- ARGV[5..]   per job, in KEYS order, 2 values: job id, lease token
-- returns     the number of jobs put back

local now = tonumber(ARGV[1])
local announced = {}
for i = 3, #KEYS do
  local id, token = ARGV[5 + (i - 3) * 2], ARGV[6 + (i - 3) * 2]
  local job = redis.call('HMGET', KEYS[i], 'state', 'token', 'seq', 'attempt', 'spec',
    'priority', 'created')
  if job[1] == 'running' and job[2] == token then
    local seq = tonumber(job[3]) + 1
    local attempt = tonumber(job[4]) - 1
    local event = cmsgpack.pack({t = 'released', at = now, a = attempt})
    redis.call('HSET', KEYS[i], 'state', 'queued', 'token', '', 'attempt', attempt, 'seq', seq,
      'e:' .. seq, event)
    -- Priority and submission time from the job's spec, or from fields of their own in a job
    -- written before spec.
    local priority, created = tonumber(job[6]), tonumber(job[7])
    if job[5] then
      local spec = cmsgpack.unpack(job[5])
      priority, created = spec.p, spec.c
    end
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZADD', KEYS[1], ready_score(priority, created), id)
    announced[#announced + 1] = announcement(seq, id, event)
  end
end
announce_ready(ARGV[2], announced, ARGV[3], ARGV[4])
return #announced
