-- Helpers shared by the scripts: scripts.rs puts those a script calls before it.

-- Numbers go to Redis and into messages as integer text: Lua's own conversion of a number
-- to text formats it as a float, which costs several times more.
local function int(n) return string.format('%d', n) end

-- The time now, Unix ms, by Redis's clock. Every time a script records or compares is this
-- one, so that every jobd replica uses one clock whatever its own says. (Redis 7 replicates
-- a script's effects, not the script, so TIME is allowed before writes.)
local function clock()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- Job events, as the log stores them (decoded by store/event_codec.rs, and written nowhere
-- else): a MessagePack map of the type `t`, the time `at`, the attempt `a`, then the fields
-- the type has. `pack_event` packs one; `event_start` packs all but the time and attempt and
-- `finish_event` adds those, so that a call writing many events of one shape (a claim's
-- STARTED events) packs the start once.
-- `at` is packed once per call by `packed_at`; the attempt is one byte, a positive fixint
-- (attempts never exceed 100).
local function mp_str(text)
  local n = #text
  if n < 32 then return string.char(0xa0 + n) .. text end
  if n < 256 then return '\217' .. string.char(n) .. text end
  if n < 65536 then return '\218' .. string.char(math.floor(n / 256), n % 256) .. text end
  return '\219' .. string.char(math.floor(n / 16777216), math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256) .. text
end
local function packed_at(now) return '\162at' .. cmsgpack.pack(now) end
-- `fields`: names and values in turn; a value is a string, or a number (packed as an integer
-- when it is whole). Concatenated, not gathered in a table: each string and table a script
-- makes costs Redis more than the bytes it holds, on every call.
local function event_start(kind, fields)
  local n = fields and #fields or 0
  local start = string.char(0x83 + n / 2) .. '\161t' .. mp_str(kind)
  for i = 1, n, 2 do
    local value = fields[i + 1]
    if type(value) == 'string' then value = mp_str(value) else value = cmsgpack.pack(value) end
    start = start .. mp_str(fields[i]) .. value
  end
  return start
end
local function finish_event(start, at, attempt)
  return start .. at .. '\161a' .. string.char(attempt)
end
local function pack_event(kind, at, attempt, fields)
  return finish_event(event_start(kind, fields), at, attempt)
end

-- An event's line in a wake-up message on the job channel, as parse_announced in
-- store/event_codec.rs reads it: sequence, job id, the event's length and bytes, then the result's
-- length and bytes when the message carries it, else "-".
local function announcement(seq, id, event, result)
  local carried = '-'
  if result then carried = int(#result) .. ' ' .. result end
  return seq .. ' ' .. id .. ' ' .. int(#event) .. ' ' .. event .. ' ' .. carried
end

-- Publishes the wake-up lines in `announced`, if any, on the job channel, and tells claims
-- waiting on `queue` (queue channel) how many of its jobs became claimable.
local function announce_ready(job_channel, announced, queue_channel, queue)
  if #announced == 0 then return end
  redis.call('PUBLISH', job_channel, table.concat(announced, '\n'))
  redis.call('PUBLISH', queue_channel, queue .. ' ' .. int(#announced))
end

-- A job's log is capped at `cap` events before its terminal event (--max-events-per-job,
-- passed to every script that records a non-terminal event): the events up to sequence
-- cap - 1 are appended as they come; from sequence cap on, a non-terminal event, of any type,
-- replaces the one in the log's last slot and takes the next sequence; the terminal event is
-- always appended after it. The job's field `lp` holds the last slot's sequence, `lr` the
-- first sequence past the cap: lr .. lp - 1 are the replaced ones, which a replay skips in one
-- step (store/read.rs). So a log holds at most cap + 1 events, sequences only grow by one per
-- event, and nothing but non-terminal events past the cap is ever removed.
-- `logged` records non-terminal `event` after sequence `last` of job hash `key`, whose `lp`
-- is `tail` (nil for none): it removes the event it replaces, if any, and returns the new
-- sequence as text and the fields for the caller to set with the job's other changes.
local function logged(key, last, tail, cap, event)
  local seq = tonumber(last) + 1
  local text = int(seq)
  local fields = {'seq', text, 'e:' .. text, event}
  if tail and tonumber(tail) == seq - 1 then
    redis.call('HDEL', key, 'e:' .. tail)
    fields[5], fields[6] = 'lp', text
  elseif seq >= tonumber(cap) then
    -- The first event past the cap (or, for a log a different cap left with an earlier slot,
    -- a new one): nothing replaced yet.
    fields[5], fields[6], fields[7], fields[8] = 'lp', text, 'lr', text
  end
  return text, fields
end

-- A job's score in its queue's ready set: higher priority first, then earlier first:
-- (1000 - priority) * 2^41 + ms since 2024-01-01. Exact in a double until 2093.
local function ready_score(priority, at)
  return (1000 - priority) * 2199023255552 + (at - 1704067200000)
end

-- When a running job's claim ends unless its worker acts (its score in the running set):
-- the acknowledgement deadline while the worker has not acknowledged the job, else the end
-- of its lease. A claim sets the first no later than the second, and only a heartbeat, which
-- acknowledges, moves the second.
local function deadline(lease_until, ack_until)
  return tonumber(ack_until or lease_until)
end

-- A worker's call carries a lease token; these say why a job refuses it, or nil when it does
-- not. `token_refusal`: the job is gone ({"not_found"}), or runs under another token
-- ({"stale", state}); the caller then checks whether an earlier run of it did its work.
-- `claim_refusal`: the job is not running ({"stale", state}), or its claim's deadline passed
-- by `now` ({"expired", "ack" or "lease", when}).
local function token_refusal(state, job_token, token)
  if not state then return {'not_found'} end
  if job_token ~= token then return {'stale', state} end
  return nil
end
local function claim_refusal(state, lease_until, ack_until, now)
  if state ~= 'running' then return {'stale', state} end
  local ends = deadline(lease_until, ack_until)
  if ends <= now then return {'expired', ack_until and 'ack' or 'lease', ends} end
  return nil
end

-- Renews the lease of running job `id` (hash `key`, in `running`) for `token`: heartbeat.lua
-- and progress.lua. `lease` is the new lease, ms from now, or "" for the one the job was claimed
-- with; a lease is never shortened. The first renewal acknowledges the job. Returns
-- {refusal = reply} when the token or the claim refuses it, else {expires = when, now = now}.
local function renew_lease(key, running, id, token, lease)
  local job = redis.call('HMGET', key, 'state', 'token', 'lease_ms', 'lease_until', 'ack_until')
  local refusal = token_refusal(job[1], job[2], token)
  if refusal then return {refusal = refusal} end
  if job[1] == 'cancelled' then return {refusal = {'cancelled'}} end
  local now = clock()
  refusal = claim_refusal(job[1], job[4], job[5], now)
  if refusal then return {refusal = refusal} end
  local ms = tonumber(job[3])
  if lease ~= '' then ms = tonumber(lease) end
  local expires = math.max(now + ms, tonumber(job[4]))
  redis.call('HSET', key, 'lease_until', int(expires))
  if job[5] then redis.call('HDEL', key, 'ack_until') end
  redis.call('ZADD', running, 'XX', expires, id)
  return {expires = expires, now = now}
end

-- Puts running job `id` (hash `key`) back in its queue at no cost, with a RELEASED event
-- saying `reason`: QUEUED at its place by priority and submission time, the claim not counted
-- as an attempt. `job` holds the job's seq, attempt, spec, created and lp fields, in that
-- order; `token` is what the job's lease token becomes; `cap` the log's (see `logged`).
-- Returns the event's wake-up line.
local function requeue(key, id, job, ready, running, reason, token, now, cap)
  local attempt = tonumber(job[2]) - 1
  local event = pack_event('released', packed_at(now), attempt, {'r', reason})
  local seq, log = logged(key, job[1], job[5], cap, event)
  redis.call('HSET', key, 'state', 'queued', 'token', token, 'attempt', attempt, unpack(log))
  redis.call('ZREM', running, id)
  redis.call('ZADD', ready, ready_score(cmsgpack.unpack(job[3]).p, tonumber(job[4])), id)
  return announcement(seq, id, event)
end

-- Ends the current attempt of running job `id` (hash `key`) with `error`: with attempts left
-- and a retryable error, SCHEDULED for its next attempt after the backoff delay (a
-- RETRY_SCHEDULED event), otherwise FAILED. `job` holds the job's seq, attempt, spec and
-- retention, lp fields, in that order; `sample` is a random number in [0, 1) for the
-- jitter (Redis seeds math.random the same every time); `cap` the log's (see `logged`).
-- Returns the time of the next attempt, or nil when the job failed for good.
local function end_attempt(key, id, job, sets, error, retryable, sample, channel, now, cap)
  local seq = tonumber(job[1]) + 1
  local attempt = tonumber(job[2])
  local spec = cmsgpack.unpack(job[3])
  redis.call('ZREM', sets.running, id)
  if retryable and attempt < spec.m then
    -- initial * multiplier^(failures - 1), at most max, spread by +/- jitter.
    local delay = spec.bi * spec.bm ^ (attempt - 1)
    delay = math.min(delay, spec.bx)
    delay = delay * (1 + spec.bj * (2 * sample - 1))
    local run_at = now + math.floor(delay)
    local event = pack_event('retry_scheduled', packed_at(now), attempt, {'e', error, 'due', run_at})
    local retry_seq, log = logged(key, job[1], job[5], cap, event)
    redis.call('HSET', key, 'state', 'scheduled', 'error', error, 'run_at', run_at, unpack(log))
    redis.call('ZADD', sets.scheduled, run_at, id)
    redis.call('PUBLISH', channel, announcement(retry_seq, id, event))
    return run_at
  end
  local retention = tonumber(job[4])
  local event = pack_event('failed', packed_at(now), attempt, {'e', error})
  redis.call('HSET', key, 'state', 'failed', 'error', error, 'finished', now,
    'seq', seq, 'e:' .. seq, event)
  redis.call('ZADD', sets.failed, now + retention, id)
  redis.call('PEXPIRE', key, retention)
  redis.call('PUBLISH', channel, announcement(seq, id, event))
  return nil
end

-- When a new job becomes claimable: `start` is "" for now, "+<ms>" for a delay from now, or
-- "<ms>" for a Unix time (a past one meaning now).
local function start_time(start, now)
  if start == '' then return now end
  if string.sub(start, 1, 1) == '+' then return now + tonumber(string.sub(start, 2)) end
  return math.max(now, tonumber(start))
end

-- The due index (store/keys.rs `due_index`) lives in a slot of its own, so a script cannot
-- write it: the caller does, after the script. A script that makes something fall due in a
-- queue (a delayed job, a claim's deadline, a retention end), or creates the queue, calls
-- `promise` with the queue's promise key and the earliest such time (math.huge for none): if
-- the queue was promised no later visit, it records the time and returns "due:<ms>" (or
-- "due:inf") for the caller to write to the index (ZADD LT), which the script appends to its
-- reply; otherwise nil. `promised` returns the same for the promise as it stands, for a
-- repeated run whose first run's caller may not have written the index.
local function promise(key, at)
  local promised = redis.call('GET', key)
  if promised then
    local held = math.huge
    if promised ~= 'inf' then held = tonumber(promised) end
    if held <= at then return nil end
  end
  local text = 'inf'
  if at ~= math.huge then text = int(at) end
  redis.call('SET', key, text)
  return 'due:' .. text
end
local function promised(key)
  local held = redis.call('GET', key)
  if held then return 'due:' .. held end
  return nil
end

-- New jobs, as the submission scripts (submit_many.lua, submit_keyed.lua) write them, and
-- nowhere else. `new_jobs` starts a call's batch at `now`; `write_new_job` writes one job's
-- hash; `add_new_jobs` then puts the batch's jobs in the queue's sets with one ZADD per set
-- and one wake-up per channel, and returns how many it made ready.
local function new_jobs(now)
  local at = packed_at(now)
  return {now = now, at = at, queued = pack_event('queued', at, 0), ready = {}, scheduled = {},
    running = {}, announced = {}, due = math.huge}
end

-- Writes new job hash `key` from the job's 9 submission arguments from ARGV[a] (id,
-- payload, spec, kind, retention ms, default lease ms or "", start (see `start_time`),
-- priority, size): RUNNING for the hand-off whose 5 arguments start at ARGV[h] (the job's
-- place, worker id, lease token, lease ms, acknowledgement timeout ms) if `h` is given, else
-- SCHEDULED when it may only start later, else QUEUED. `batch.due` becomes the earliest
-- time the batch made fall due (a claim's deadline, a delayed start).
local function write_new_job(batch, key, a, h)
  local now, id = batch.now, ARGV[a]
  local fields = {'payload', ARGV[a + 1], 'spec', ARGV[a + 2], 'kind', ARGV[a + 3],
    'retention', ARGV[a + 4], 'created', int(now), 'size', ARGV[a + 8]}
  if ARGV[a + 5] ~= '' then
    fields[#fields + 1], fields[#fields + 2] = 'lease_default', ARGV[a + 5]
  end
  local run_at = start_time(ARGV[a + 6], now)
  if h then
    local started = pack_event('started', batch.at, 1, {'w', ARGV[h + 1]})
    local expires = now + tonumber(ARGV[h + 3])
    local ack = math.min(now + tonumber(ARGV[h + 4]), expires)
    redis.call('HSET', key, 'state', 'running', 'seq', '2', 'e:1', batch.queued, 'e:2', started,
      'attempt', '1', 'token', ARGV[h + 2], 'worker', ARGV[h + 1], 'started', int(now),
      'lease_ms', ARGV[h + 3], 'lease_until', int(expires), 'ack_until', int(ack),
      unpack(fields))
    local running, announced = batch.running, batch.announced
    running[#running + 1], running[#running + 2] = int(ack), id
    announced[#announced + 1] = announcement('2', id, started)
    batch.due = math.min(batch.due, ack)
  elseif run_at > now then
    local event = pack_event('scheduled', batch.at, 0, {'due', run_at})
    redis.call('HSET', key, 'state', 'scheduled', 'seq', '1', 'e:1', event, 'attempt', '0',
      'run_at', int(run_at), unpack(fields))
    local scheduled = batch.scheduled
    scheduled[#scheduled + 1], scheduled[#scheduled + 2] = int(run_at), id
    batch.due = math.min(batch.due, run_at)
  else
    redis.call('HSET', key, 'state', 'queued', 'seq', '1', 'e:1', batch.queued, 'attempt', '0',
      unpack(fields))
    local ready = batch.ready
    ready[#ready + 1], ready[#ready + 2] = int(ready_score(tonumber(ARGV[a + 7]), now)), id
  end
end

-- `sets`: the queue's ready, scheduled and running sets; `channels`: the queue wake-up
-- channel, the queue's name, the job wake-up channel.
local function add_new_jobs(batch, sets, channels)
  if #batch.running > 0 then
    redis.call('ZADD', sets[3], unpack(batch.running))
    redis.call('PUBLISH', channels[3], table.concat(batch.announced, '\n'))
  end
  if #batch.scheduled > 0 then redis.call('ZADD', sets[2], unpack(batch.scheduled)) end
  local ready = #batch.ready / 2
  if ready > 0 then
    redis.call('ZADD', sets[1], unpack(batch.ready))
    redis.call('PUBLISH', channels[1], channels[2] .. ' ' .. int(ready))
  end
  return ready
end
