-- Creates several jobs of one queue at once (none with an idempotency key): each QUEUED in the
-- ready set, or SCHEDULED when it may only run later; or, handed off to a claim waiting on the
-- calling jobd (see claims/handoff.rs), RUNNING at once, but only when the queue has no ready
-- job that would be passed over (see `write_new_job` in lib.lua). One ZADD and one wake-up per
-- set for the batch.
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
local batch = new_jobs(clock())
for place = 1, jobs do
  write_new_job(batch, KEYS[3 + place], 4 + (place - 1) * 9, handoffs[place])
end
local ready = add_new_jobs(batch, {KEYS[1], KEYS[2], KEYS[3]}, {ARGV[1], ARGV[2], ARGV[3]})
return {ready, handing and 1 or 0, batch.now, promise(promise_key, batch.due)}
