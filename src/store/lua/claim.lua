-- Claims, for each claimer in turn, up to its number of the candidate jobs that are still
-- ready, in the order given. The caller reads the candidates from the head of the ready set;
-- a candidate another call took meanwhile is no longer in it and is skipped, so each job is
-- claimed by exactly one claimer. Claims of one queue that reach a jobd together share a call.
-- Safe to run twice (fred resends a call whose reply a dropped connection lost): the lease
-- tokens are made by the caller, so a candidate no longer ready but running under the token
-- this call gave it was claimed by an earlier run of this call, and is answered again, as it
-- was, instead of being left leased to nobody.
--
-- KEYS[1]     queue's ready set
-- KEYS[2]     queue's running set (score: lease expiry, Unix ms)
-- KEYS[3..n]  candidate job hashes
-- ARGV[1]     now, Unix ms
-- ARGV[2]     job wake-up channel
-- ARGV[3]     the server's default lease ms
-- ARGV[4]     number of claimers, C
-- ARGV[5..]   per claimer, 4 values: worker id, lease ms it asked for ("" for the job's own,
--             else ARGV[3]), how many jobs it takes at most, its STARTED event but the attempt
--             (see event_head in store/codec.rs)
-- then        per candidate, in KEYS order, 2 values: job id, new lease token
-- returns     one entry per claimed job: {claimer (1-based), job id, token, lease expiry}; the
--             caller reads the claimed jobs in the same round trip, right after the script

local now = tonumber(ARGV[1])
local claimers = tonumber(ARGV[4])
local first_candidate = 5 + claimers * 4

-- Which candidates are still ready: one ZMSCORE, then one ZREM for those taken.
local ids = {}
for i = 3, #KEYS do ids[#ids + 1] = ARGV[first_candidate + (i - 3) * 2] end
if #ids == 0 then return {} end
local wanted = 0
for c = 1, claimers do wanted = wanted + tonumber(ARGV[3 + c * 4]) end
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ids))
-- Candidates taken, in order; those an earlier run of this call took are marked.
local taken, earlier = {}, {}
for k = 1, #ids do
  if #taken == wanted then break end
  if scores[k] then
    taken[#taken + 1] = k
  else
    local token = ARGV[first_candidate + (k - 1) * 2 + 1]
    local job = redis.call('HMGET', KEYS[k + 2], 'state', 'token', 'lease_until')
    if job[1] == 'running' and job[2] == token then
      taken[#taken + 1] = k
      earlier[k] = job[3]
    end
  end
end
if #taken == 0 then return {} end
local members = {}
for _, k in ipairs(taken) do
  if not earlier[k] then members[#members + 1] = ids[k] end
end
if #members > 0 then redis.call('ZREM', KEYS[1], unpack(members)) end

-- The claimer being served, and how many jobs it still takes.
local claimer, room = 1, tonumber(ARGV[7])
-- The claimer's values: ARGV[claimer * 4 + 1 .. claimer * 4 + 4].
local claimed, running, announced = {}, {}, {}
for _, k in ipairs(taken) do
  local key, id, token = KEYS[k + 2], ids[k], ARGV[first_candidate + (k - 1) * 2 + 1]
  local job = {}
  if not earlier[k] then
    job = redis.call('HMGET', key, 'state', 'attempt', 'seq', 'lease_default')
  end
  -- A ready entry without its job hash is an orphan: removing it above is all there is to do.
  if earlier[k] or job[1] == 'queued' then
    while room == 0 do
      claimer = claimer + 1
      room = tonumber(ARGV[3 + claimer * 4])
    end
    if earlier[k] then
      -- Claimed by an earlier run of this call: answered as it was.
      claimed[#claimed + 1] = {claimer, id, token, earlier[k]}
    else
      local worker = ARGV[1 + claimer * 4]
      local lease = ARGV[2 + claimer * 4]
      if lease == '' then lease = job[4] end
      if not lease or lease == '' then lease = ARGV[3] end
      local expires = int(now + tonumber(lease))
      local attempt = tonumber(job[2]) + 1
      local seq = int(tonumber(job[3]) + 1)
      local event = ARGV[4 + claimer * 4] .. string.char(attempt)
      redis.call('HSET', key,
        'state', 'running', 'attempt', int(attempt), 'seq', seq, 'token', token,
        'worker', worker, 'started', ARGV[1], 'lease_ms', lease, 'lease_until', expires,
        'e:' .. seq, event)
      running[#running + 1] = expires
      running[#running + 1] = id
      announced[#announced + 1] = announcement(seq, id, event)
      claimed[#claimed + 1] = {claimer, id, token, expires}
    end
    room = room - 1
  end
end
if #running > 0 then
  redis.call('ZADD', KEYS[2], unpack(running))
  redis.call('PUBLISH', ARGV[2], table.concat(announced, '\n'))
end
return claimed
