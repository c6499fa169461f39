-- Claims up to ARGV[4] of the candidate jobs that are still ready, in the order given.
-- The caller reads the candidates from the head of the ready set; a candidate another worker
-- took meanwhile is no longer in it and is skipped, so each job is claimed by exactly one
-- worker.
--
-- KEYS[1]     queue's ready set
-- KEYS[2]     queue's running set (score: lease expiry, Unix ms)
-- KEYS[3..n]  candidate job hashes
-- ARGV[1]     now, Unix ms
-- ARGV[2]     lease ms the worker asked for, or "" for the job's own, else ARGV[6]
-- ARGV[3]     worker id
-- ARGV[4]     how many jobs to claim at most
-- ARGV[5]     job wake-up channel
-- ARGV[6]     the server's default lease ms
-- ARGV[7..]   per candidate, in KEYS order: job id, new lease token
-- returns     one entry per claimed job: {job id, token, lease expiry, attempt, seq, the job's
--             fields as HGETALL gave them before the claim (the caller applies the claim)}

local now = tonumber(ARGV[1])
local want = tonumber(ARGV[4])

-- Which candidates are still ready: one ZMSCORE, then one ZREM for those taken.
local ids = {}
for i = 3, #KEYS do ids[#ids + 1] = ARGV[7 + (i - 3) * 2] end
if #ids == 0 then return {} end
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ids))
local taken = {}
for k = 1, #ids do
  if scores[k] and #taken < want then taken[#taken + 1] = k end
end
if #taken == 0 then return {} end
local members = {}
for _, k in ipairs(taken) do members[#members + 1] = ids[k] end
redis.call('ZREM', KEYS[1], unpack(members))

local claimed, running, announced = {}, {}, {}
for _, k in ipairs(taken) do
  local key, id, token = KEYS[k + 2], ids[k], ARGV[8 + (k - 1) * 2]
  local fields = redis.call('HGETALL', key)
  local job = {}
  for f = 1, #fields, 2 do job[fields[f]] = fields[f + 1] end
  -- A ready entry without its job hash is an orphan: removing it above is all there is to do.
  if job.state == 'queued' then
    local lease = ARGV[2]
    if lease == '' then lease = job.lease_default end
    if not lease or lease == '' then lease = ARGV[6] end
    lease = tonumber(lease)
    local expires = now + lease
    local attempt = tonumber(job.attempt) + 1
    local seq = tonumber(job.seq) + 1
    local event = cmsgpack.pack({t = 'started', at = now, a = attempt, w = ARGV[3]})
    redis.call('HSET', key,
      'state', 'running', 'attempt', attempt, 'seq', seq, 'token', token,
      'worker', ARGV[3], 'started', now, 'lease_ms', lease, 'lease_until', expires,
      'e:' .. seq, event)
    running[#running + 1] = expires
    running[#running + 1] = id
    announced[#announced + 1] = seq .. ' ' .. id .. ' ' .. #event .. ' ' .. event .. ' -'
    claimed[#claimed + 1] = {id, token, expires, attempt, seq, fields}
  end
end
if #running > 0 then
  redis.call('ZADD', KEYS[2], unpack(running))
  redis.call('PUBLISH', ARGV[5], table.concat(announced, '\n'))
end
return claimed
