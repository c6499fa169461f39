-- Creates jobs of one queue that carry idempotency keys, in order, each as submit_many.lua
-- would (see `write_new_job` in lib.lua) unless a live key names another job. A key holds
-- "<job id> <fingerprint>" (only the id if an older jobd wrote it): one naming another job
-- answers that job when the fingerprints match, and is a conflict when they differ; either
-- way nothing is written for it, and after a conflict nothing more of its request (group).
-- The jobs may come from several requests (SubmitJob calls that share the call, or the keyed
-- jobs of one SubmitJobs): a later job whose key an earlier one set finds it as any other.
-- Hand-offs are made only when the queue had no ready job as the call began.
-- Safe to run twice: job ids and lease tokens are made by the caller, and a second run finds
-- each job the first wrote, writes nothing for it, and says whether that run handed it off.
--
-- KEYS[1]     queue's ready set
-- KEYS[2]     queue's scheduled set
-- KEYS[3]     queue's running set (score: the claim's deadline, see `deadline`)
-- KEYS[4]     queue's promise (see `promise`)
-- KEYS[5..]   per job, 2 keys: its hash, its idempotency key
-- ARGV[1]     queue wake-up channel
-- ARGV[2]     queue name
-- ARGV[3]     job wake-up channel
-- ARGV[4..]   per job, in KEYS order, 12 values: the 9 of submit_many.lua (id, payload, spec,
--             kind, retention ms, default lease ms, start, priority, size), then the key's TTL
--             ms, the request's fingerprint (see NewJob::fingerprint), and the job's group:
--             jobs of one group are one request's
-- then        per hand-off, 5 values as in submit_many.lua (the job's place first)
-- returns     per job, 3 values: "created", 1 if handed off else 0, the job's creation time
--             (Unix ms); "again" (an earlier run of this call wrote it), the same; "exists",
--             the id of the job the key names, 0; "conflict", that id, 0 (another request
--             made it); "skipped", "", 0 (an earlier job of its group met a conflict); then
--             "due:<ms>" or "due:inf" when the due index must hear of the queue (see `promise`)

local jobs = (#KEYS - 4) / 2
local first_handoff = 4 + jobs * 12
local handoffs = {}
for h = first_handoff, #ARGV, 5 do handoffs[tonumber(ARGV[h])] = h end
local handing = #ARGV >= first_handoff and redis.call('EXISTS', KEYS[1]) == 0
local batch = new_jobs(clock())
local reply, refused, again = {}, {}, false

-- What the call does for the job at `place`: {status, handed or id, created}.
local function submit(place, a)
  local hash, key, id, h = KEYS[3 + 2 * place], KEYS[4 + 2 * place], ARGV[a], handoffs[place]
  if refused[ARGV[a + 11]] then return {'skipped', '', 0} end
  local existing = redis.call('GET', key)
  if existing then
    local named, fingerprint = string.match(existing, '^(%S+) (%S+)$')
    named = named or existing
    if named ~= id then
      if fingerprint and fingerprint ~= ARGV[a + 10] then
        refused[ARGV[a + 11]] = true
        return {'conflict', named, 0}
      end
      return {'exists', named, 0}
    end
  end
  if redis.call('EXISTS', hash) == 1 then
    again = true
    local job = redis.call('HMGET', hash, 'token', 'created')
    local handed = 0
    if h and job[1] == ARGV[h + 2] then handed = 1 end
    return {'again', handed, tonumber(job[2])}
  end
  if not handing then h = nil end
  write_new_job(batch, hash, a, h)
  redis.call('SET', key, id .. ' ' .. ARGV[a + 10], 'PX', ARGV[a + 9])
  return {'created', h and 1 or 0, batch.now}
end

local wrote = false
for place = 1, jobs do
  local answer = submit(place, 4 + (place - 1) * 12)
  wrote = wrote or answer[1] == 'created'
  for i = 1, 3 do reply[#reply + 1] = answer[i] end
end
add_new_jobs(batch, {KEYS[1], KEYS[2], KEYS[3]}, {ARGV[1], ARGV[2], ARGV[3]})
-- A run that wrote something promises its earliest time; one that found an earlier run's jobs
-- repeats the mark as it stands, in case that run's caller never wrote it.
local mark
if wrote then mark = promise(KEYS[4], batch.due) end
if again and not mark then mark = promised(KEYS[4]) end
reply[#reply + 1] = mark
return reply
