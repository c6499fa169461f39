-- Creates several jobs of one queue at once (none with an idempotency key): each QUEUED in the
-- ready set, or SCHEDULED when it may only run later; or, handed off to a claim waiting on the
-- calling jobd (see claims/handoff.rs), RUNNING at once, but only when the queue has no ready
-- job that would be passed over. One ZADD and one wake-up per set for the batch.
-- Safe to run twice: job ids and lease tokens are made by the caller and the batch is written
-- whole, so a second run finds the first job, writes nothing, and says whether the first run
-- handed off.
--
-- KEYS[1]     queue's ready set
-- KEYS[2]     queue's scheduled set
-- KEYS[3]     queue's running set (score: the claim's deadline, see `deadline`)
-- KEYS[4..n-1]  job hashes, one per job
-- KEYS[n]     queue's promise (see `promise`)
-- ARGV[1]     queue wake-up channel
-- ARGV[2]     queue name
-- ARGV[3]     job wake-up channel
-- ARGV[4..]   per job, in KEYS order, 9 values: id, payload, spec (MessagePack, see
--             store/layout.rs), kind, retention ms, default lease ms ("" for the server's),
--             start (see `start_time`), priority, size (the bytes a claim's reply holds of it)
-- then        per hand-off, 5 values: the job's place among the jobs (1-based), worker id,
--             lease token, lease ms, acknowledgement timeout ms; none are for jobs run later
-- returns     {the number of jobs made ready now, 1 if the hand-offs were made else 0, the
--             jobs' creation time (now, or the first run's), Unix ms}, then "due:<ms>" or
--             "due:inf" when the due index must hear of the queue (see `promise`)

local jobs = #KEYS - 4
local promise_key = KEYS[#KEYS]
local first_handoff = 4 + jobs * 9
if redis.call('EXISTS', KEYS[4]) == 1 then
  local created = tonumber(redis.call('HGET', KEYS[4], 'created'))
  -- The first hand-off's job holds its lease token if that run made the hand-offs.
  if #ARGV >= first_handoff
    and redis.call('HGET', KEYS[3 + tonumber(ARGV[first_handoff])], 'token')
      == ARGV[first_handoff + 2] then
    return {0, 1, created, promised(promise_key)}
  end
  return {0, 0, created, promised(promise_key)}
end
-- Hand-offs by job place; made only when they pass over no ready job.
local handoffs = {}
local handing = #ARGV >= first_handoff and redis.call('EXISTS', KEYS[1]) == 0
if handing then
  for h = first_handoff, #ARGV, 5 do handoffs[tonumber(ARGV[h])] = h end
end
local now = clock()
local at = packed_at(now)
local queued = pack_event('queued', at, 0)
local ready, running, announced = {}, {}, {}
local due = math.huge
for place = 1, jobs do
  local key, a = KEYS[3 + place], 4 + (place - 1) * 9
  local run_at = start_time(ARGV[a + 6], now)
  local h = handoffs[place]
  if h then
    local started = pack_event('started', at, 1, {'w', ARGV[h + 1]})
    local expires = now + tonumber(ARGV[h + 3])
    local ack = math.min(now + tonumber(ARGV[h + 4]), expires)
    redis.call('HSET', key,
      'state', 'running', 'seq', '2', 'e:1', queued, 'e:2', started, 'attempt', '1',
      'payload', ARGV[a + 1], 'spec', ARGV[a + 2], 'kind', ARGV[a + 3], 'retention', ARGV[a + 4],
      'created', int(now), 'size', ARGV[a + 8], 'token', ARGV[h + 2], 'worker', ARGV[h + 1],
      'started', int(now), 'lease_ms', ARGV[h + 3], 'lease_until', int(expires),
      'ack_until', int(ack))
    running[#running + 1] = int(ack)
    due = math.min(due, ack)
    running[#running + 1] = ARGV[a]
    announced[#announced + 1] = announcement('2', ARGV[a], started)
  else
    local state, event = 'queued', queued
    if run_at > now then
      state, event = 'scheduled', pack_event('scheduled', at, 0, {'due', run_at})
    end
    redis.call('HSET', key,
      'state', state, 'seq', '1', 'e:1', event, 'attempt', '0',
      'payload', ARGV[a + 1], 'spec', ARGV[a + 2], 'kind', ARGV[a + 3], 'retention', ARGV[a + 4],
      'created', int(now), 'size', ARGV[a + 8])
    if run_at > now then
      redis.call('HSET', key, 'run_at', int(run_at))
      redis.call('ZADD', KEYS[2], run_at, ARGV[a])
      due = math.min(due, run_at)
    else
      ready[#ready + 1] = int(ready_score(tonumber(ARGV[a + 7]), now))
      ready[#ready + 1] = ARGV[a]
    end
  end
  if ARGV[a + 5] ~= '' then redis.call('HSET', key, 'lease_default', ARGV[a + 5]) end
end
if #running > 0 then
  redis.call('ZADD', KEYS[3], unpack(running))
  redis.call('PUBLISH', ARGV[3], table.concat(announced, '\n'))
end
if #ready > 0 then
  redis.call('ZADD', KEYS[1], unpack(ready))
  redis.call('PUBLISH', ARGV[1], ARGV[2] .. ' ' .. int(#ready / 2))
end
return {#ready / 2, handing and 1 or 0, now, promise(promise_key, due)}
