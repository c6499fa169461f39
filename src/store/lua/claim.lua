-- Claims, for each claimer in turn, up to its number of the candidate jobs that are still
-- ready, in the order given, and no more than fit in its room. The caller reads the
-- candidates from the head of the ready set; a candidate another call took meanwhile is no
-- longer in it and is skipped, so each job is claimed by exactly one claimer. Claims of one
-- queue that reach a jobd together share a call.
-- A claimer's room is the most bytes of jobs (their `size`) it takes: what one reply holds,
-- and what its caller reserved of its budget for them, so that no job is claimed that its
-- reply could not carry. A job that does not fit is left as it is, ready, and the claimer's
-- reply is full: the job goes to the next claimer with room.
-- Each claimed job must be acknowledged by its worker (a heartbeat, or its outcome) before
-- its acknowledgement deadline, or it goes back to its queue (expire.lua): a reply lost on
-- its way to the worker does not strand the job until its lease runs out.
-- Safe to run twice (fred resends a call whose reply a dropped connection lost): the lease
-- tokens are made by the caller, so a candidate no longer ready but running under the token
-- this call gave it was claimed by an earlier run of this call, and is answered again, as it
-- was, instead of being left leased to nobody.
--
-- KEYS[1]     queue's ready set
-- KEYS[2]     queue's running set (score: the claim's deadline, see `deadline`, Unix ms)
-- KEYS[3..n-1]  candidate job hashes
-- KEYS[n]     queue's promise (see `promise`)
-- ARGV[1]     job wake-up channel
-- ARGV[2]     the server's default lease ms
-- ARGV[3]     number of claimers, C
-- ARGV[4]     the log's cap (see `logged`)
-- ARGV[5..]   per claimer, 6 values: worker id, lease ms it asked for ("" for the job's own,
--             else ARGV[2]), how many more jobs it takes at most, acknowledgement timeout ms,
--             its room (bytes), and "1" when its first job is taken whatever its size, "0"
--             when that one too must fit in its room
-- then        per candidate, in KEYS order, 2 values: job id, new lease token
-- returns     {now, the claimers (1-based) whose reply is full, then one entry per claimed
--             job: {claimer, job id, token, lease expiry, acknowledgement deadline, size}},
--             then "due:<ms>" when the due index must hear of the queue (see `promise`); the
--             caller reads the claimed jobs in the same round trip, right after the script

local now = clock()
local claimers = tonumber(ARGV[3])
local first_candidate = 5 + claimers * 6
-- The claimer's values: ARGV[claimer_arg(c) + 0 .. 5].
local function claimer_arg(c) return 5 + (c - 1) * 6 end

local ids = {}
for i = 3, #KEYS - 1 do ids[#ids + 1] = ARGV[first_candidate + (i - 3) * 2] end
if #ids == 0 then return {now, {}} end
local scores = redis.call('ZMSCORE', KEYS[1], unpack(ids))

local at = packed_at(now)
-- How many jobs claimer c still takes, its room (bytes), and whether its next job is taken
-- whatever its size.
local function serve(c)
  local base = claimer_arg(c)
  return tonumber(ARGV[base + 2]), tonumber(ARGV[base + 4]), ARGV[base + 5] == '1'
end
-- The claimer being served, and what `serve` says of it as it takes jobs.
local claimer = 1
local left, room, alone = serve(1)
local full = {}
local claimed, taken, running, announced = {now, full}, {}, {}, {}
local due = math.huge
-- Each claimer's STARTED event but its time and attempt, packed once.
local started = {}
for k = 1, #ids do
  while left == 0 and claimer < claimers do
    claimer = claimer + 1
    left, room, alone = serve(claimer)
  end
  if left == 0 then break end
  local key, id = KEYS[k + 2], ids[k]
  local token = ARGV[first_candidate + (k - 1) * 2 + 1]
  local job, earlier
  if scores[k] then
    job = redis.call('HMGET', key, 'state', 'attempt', 'seq', 'lease_default', 'size', 'lp')
    -- A ready entry whose job is gone (or not queued) is an orphan: removing it is all there
    -- is to do.
    if job[1] ~= 'queued' then
      taken[#taken + 1] = id
      job = nil
    end
  else
    local held = redis.call('HMGET', key, 'state', 'token', 'lease_until', 'ack_until', 'size')
    if held[1] == 'running' and held[2] == token then earlier = held end
  end
  if job or earlier then
    local size = tonumber((job or earlier)[5])
    if not size then size = redis.call('HSTRLEN', key, 'payload') end
    -- A claimer whose reply is full takes no more: the job goes to the next one with room.
    -- (A job claimed by an earlier run is answered whatever its size: it is claimed.)
    while job and size > room and not alone do
      full[#full + 1] = claimer
      left = 0
      while left == 0 and claimer < claimers do
        claimer = claimer + 1
        left, room, alone = serve(claimer)
      end
      if left == 0 then break end
    end
    if left == 0 then break end
    local base = claimer_arg(claimer)
    if earlier then
      -- Claimed by an earlier run of this call: answered as it was.
      claimed[#claimed + 1] = {claimer, id, token, earlier[3], earlier[4] or earlier[3], size}
    else
      local lease = ARGV[base + 1]
      if lease == '' then lease = job[4] end
      if not lease or lease == '' then lease = ARGV[2] end
      local expires = now + tonumber(lease)
      local ack = math.min(now + tonumber(ARGV[base + 3]), expires)
      local attempt = tonumber(job[2]) + 1
      started[claimer] = started[claimer] or event_start('started', {'w', ARGV[base]})
      local event = finish_event(started[claimer], at, attempt)
      local seq, log = logged(key, job[3], job[6], ARGV[4], event)
      redis.call('HSET', key,
        'state', 'running', 'attempt', int(attempt), 'token', token,
        'worker', ARGV[base], 'started', int(now), 'lease_ms', lease,
        'lease_until', int(expires), 'ack_until', int(ack), unpack(log))
      taken[#taken + 1] = id
      running[#running + 1] = int(ack)
      due = math.min(due, ack)
      running[#running + 1] = id
      announced[#announced + 1] = announcement(seq, id, event)
      claimed[#claimed + 1] = {claimer, id, token, int(expires), int(ack), size}
    end
    left = left - 1
    room = room - size
    alone = false
  end
end
if #taken > 0 then redis.call('ZREM', KEYS[1], unpack(taken)) end
if #running > 0 then
  redis.call('ZADD', KEYS[2], unpack(running))
  redis.call('PUBLISH', ARGV[1], table.concat(announced, '\n'))
  claimed[#claimed + 1] = promise(KEYS[#KEYS], due)
end
return claimed
