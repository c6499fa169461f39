-- An attempt fails: the worker reported it (FailJob), or its lease expired. With attempts left
-- and a retryable error, the job becomes SCHEDULED for its next attempt after the backoff delay
-- (RETRY_SCHEDULED); otherwise it becomes FAILED. Safe to run twice, and from several jobd
-- replicas at once: a run whose condition no longer holds changes nothing.
--
-- KEYS[1]  job hash
-- KEYS[2]  queue's running set
-- KEYS[3]  queue's scheduled set
-- KEYS[4]  queue's retained-failed set (score: when the job's retention ends, Unix ms)
-- ARGV[1]  job id
-- ARGV[2]  lease token (worker-reported), or "" to fail the attempt only if its lease expired
-- ARGV[3]  now, Unix ms
-- ARGV[4]  error message
-- ARGV[5]  "1" when the error is retryable
-- ARGV[6]  random sample in [0, 1) for the jitter (Redis seeds math.random the same every time)
-- ARGV[7]  job wake-up channel
-- returns  {"failed", kind, started} or {"scheduled", kind, started, retry at}: recorded now
--          {"again_failed"} or {"again_scheduled", retry at}: recorded by an earlier run
--          {"not_found"}; {"stale", state}: wrong token, or the job is not running;
--          {"alive"}: the lease has not expired (lease expiry only)

local job = redis.call('HMGET', KEYS[1], 'state', 'token', 'seq', 'attempt', 'spec',
  'lease_until', 'retention', 'run_at', 'kind', 'started')
local state, token = job[1], job[2]
local now = tonumber(ARGV[3])
if not state then return {'not_found'} end
if ARGV[2] == '' then
  if state ~= 'running' then return {'stale', state} end
  if not job[6] or tonumber(job[6]) > now then return {'alive'} end
else
  if token ~= ARGV[2] then return {'stale', state} end
  if state == 'failed' then return {'again_failed'} end
  if state == 'scheduled' then return {'again_scheduled', tonumber(job[8])} end
  if state ~= 'running' then return {'stale', state} end
end

local seq = tonumber(job[3]) + 1
local attempt = tonumber(job[4])
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] == '' then
  -- The silent worker's token dies with its lease: its later calls are refused.
  redis.call('HSET', KEYS[1], 'token', '')
end

-- Attempts and backoff from the job's spec; a job written before spec existed holds them as
-- fields of their own.
local spec
if job[5] then
  spec = cmsgpack.unpack(job[5])
else
  local old = redis.call('HMGET', KEYS[1], 'max_attempts', 'b_initial', 'b_mult', 'b_max',
    'b_jitter')
  spec = {m = tonumber(old[1]), bi = tonumber(old[2]), bm = tonumber(old[3]),
    bx = tonumber(old[4]), bj = tonumber(old[5])}
end

if ARGV[5] == '1' and attempt < spec.m then
  -- initial * multiplier^(failures - 1), at most max, spread by +/- jitter.
  local delay = spec.bi * spec.bm ^ (attempt - 1)
  delay = math.min(delay, spec.bx)
  delay = delay * (1 + spec.bj * (2 * tonumber(ARGV[6]) - 1))
  local run_at = now + math.floor(delay)
  local event = cmsgpack.pack({t = 'retry_scheduled', at = now, a = attempt, e = ARGV[4], due = run_at})
  redis.call('HSET', KEYS[1], 'state', 'scheduled', 'error', ARGV[4], 'run_at', run_at,
    'seq', seq, 'e:' .. seq, event)
  redis.call('ZADD', KEYS[3], run_at, ARGV[1])
  redis.call('PUBLISH', ARGV[7], announcement(seq, ARGV[1], event))
  return {'scheduled', job[9], job[10], run_at}
end

local retention = tonumber(job[7])
local event = cmsgpack.pack({t = 'failed', at = now, a = attempt, e = ARGV[4]})
redis.call('HSET', KEYS[1], 'state', 'failed', 'error', ARGV[4], 'finished', now,
  'seq', seq, 'e:' .. seq, event)
redis.call('ZADD', KEYS[4], now + retention, ARGV[1])
redis.call('PEXPIRE', KEYS[1], retention)
redis.call('PUBLISH', ARGV[7], announcement(seq, ARGV[1], event))
return {'failed', job[9], job[10]}
