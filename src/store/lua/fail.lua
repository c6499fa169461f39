-- A worker reports a failed attempt (FailJob): with attempts left and a retryable error, the
-- job becomes SCHEDULED for its next attempt after the backoff delay (RETRY_SCHEDULED);
-- otherwise it becomes FAILED. Safe to run twice: a second run with the same token finds the
-- outcome already recorded.
--
-- KEYS[1]  job hash
-- KEYS[2]  queue's running set
-- KEYS[3]  queue's scheduled set
-- KEYS[4]  queue's retained-failed set (score: when the job's retention ends, Unix ms)
-- KEYS[5]  queue's promise (see `promise`)
-- ARGV[1]  job id
-- ARGV[2]  lease token
-- ARGV[3]  error message
-- ARGV[4]  "retryable" or "final"
-- ARGV[5]  random sample in [0, 1) for the jitter (Redis seeds math.random the same every time)
-- ARGV[6]  job wake-up channel
-- ARGV[7]  the log's cap (see `logged`)
-- returns  {"failed", kind, started, now} or {"scheduled", kind, started, now, retry at}:
--          recorded now; {"again_failed"} or {"again_scheduled", retry at}: recorded by an
--          earlier run; {"not_found"}; {"stale", state}: wrong token, or the job is not
--          running; {"expired", "ack" or "lease", when}: the claim's deadline passed;
--          "failed" and "scheduled" replies end with "due:<ms>" when the due index must hear
--          of the queue (see `promise`)

local job = redis.call('HMGET', KEYS[1], 'state', 'token', 'seq', 'attempt', 'spec',
  'retention', 'run_at', 'kind', 'started', 'lease_until', 'ack_until', 'lp')
local refusal = token_refusal(job[1], job[2], ARGV[2])
if refusal then return refusal end
if job[1] == 'failed' then return {'again_failed'} end
if job[1] == 'scheduled' then return {'again_scheduled', tonumber(job[7])} end
local now = clock()
refusal = claim_refusal(job[1], job[10], job[11], now)
if refusal then return refusal end

local sets = {running = KEYS[2], scheduled = KEYS[3], failed = KEYS[4]}
local run_at = end_attempt(KEYS[1], ARGV[1], {job[3], job[4], job[5], job[6], job[12]}, sets,
  ARGV[3], ARGV[4] == 'retryable', tonumber(ARGV[5]), ARGV[6], now, ARGV[7])
if run_at then return {'scheduled', job[8], job[9], now, run_at, promise(KEYS[5], run_at)} end
return {'failed', job[8], job[9], now, promise(KEYS[5], now + tonumber(job[6]))}
