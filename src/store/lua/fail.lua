-- A worker reports a failed attempt (FailJob): with attempts left and a retryable error, the
-- job becomes SCHEDULED for its next attempt after the backoff delay (RETRY_SCHEDULED);
-- otherwise it becomes FAILED. Safe to run twice: a second run with the same token finds the
-- outcome already recorded.
--
-- KEYS[1]  job hash
-- KEYS[2]  queue's running set
-- KEYS[3]  queue's scheduled set
-- KEYS[4]  queue's retained-failed set (score: when the job's retention ends, Unix ms)
-- ARGV[1]  job id
-- ARGV[2]  lease token
-- ARGV[3]  error message
-- ARGV[4]  "retryable" or "final"
-- ARGV[5]  random sample in [0, 1) for the jitter (Redis seeds math.random the same every time)
-- ARGV[6]  job wake-up channel
-- returns  {"failed", kind, started, now} or {"scheduled", kind, started, now, retry at}:
--          recorded now; {"again_failed"} or {"again_scheduled", retry at}: recorded by an
--          earlier run; {"not_found"}; {"stale", state}: wrong token, or the job is not
--          running; {"expired", "ack" or "lease", when}: the claim's deadline passed

local job = redis.call('HMGET', KEYS[1], 'state', 'token', 'seq', 'attempt', 'spec',
  'retention', 'run_at', 'kind', 'started', 'lease_until', 'ack_until')
local state, token = job[1], job[2]
if not state then return {'not_found'} end
if token ~= ARGV[2] then return {'stale', state} end
if state == 'failed' then return {'again_failed'} end
if state == 'scheduled' then return {'again_scheduled', tonumber(job[7])} end
if state ~= 'running' then return {'stale', state} end
local now = clock()
local ends = deadline(job[10], job[11])
if ends <= now then return {'expired', job[11] and 'ack' or 'lease', ends} end

local sets = {running = KEYS[2], scheduled = KEYS[3], failed = KEYS[4]}
local run_at = end_attempt(KEYS[1], ARGV[1], {job[3], job[4], job[5], job[6]}, sets, ARGV[3],
  ARGV[4] == 'retryable', tonumber(ARGV[5]), ARGV[6], now)
if run_at then return {'scheduled', job[8], job[9], now, run_at} end
return {'failed', job[8], job[9], now}
