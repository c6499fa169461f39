-- Puts claimed jobs back in their queue at no cost: each job still leased with the given token
-- becomes QUEUED again (RELEASED, saying why), at its place by priority and submission time,
-- and the claim does not count as an attempt. Two callers:
-- - "worker": a worker gives back jobs it holds (ReleaseJob), e.g. as it shuts down; refused,
--   like its other calls, once the claim's deadline passed (see `deadline`);
-- - "undelivered": jobd puts back jobs claimed for a caller that went away before receiving
--   them, or by a call whose reply was lost: no worker has them, whatever the deadline says.
-- The job keeps the token, so that a repeated release finds it done; every other call with it
-- is refused, the job not being running under it. Safe to run twice and from several jobd
-- replicas at once: a job no longer running under that token is left alone.
--
-- KEYS[1]     queue's ready set
-- KEYS[2]     queue's running set
-- KEYS[3..n]  job hashes
-- ARGV[1]     job wake-up channel
-- ARGV[2]     queue wake-up channel
-- ARGV[3]     queue name
-- ARGV[4]     why the jobs go back, for their RELEASED events
-- ARGV[5]     "worker" or "undelivered", as above
-- ARGV[6]     the log's cap (see `logged`)
-- ARGV[7..]   per job, in KEYS order, 2 values: job id, lease token
-- returns     per job, in KEYS order: {"ok"} put back now; {"again"} put back by an earlier run;
--             {"not_found"}; {"stale", state}: the token is not the job's current one, or the
--             job is not running; {"expired", "ack" or "lease", when}: the claim's deadline
--             passed (worker releases only)

local now = clock()
local replies, announced = {}, {}
for i = 3, #KEYS do
  local id, token = ARGV[7 + (i - 3) * 2], ARGV[8 + (i - 3) * 2]
  local job = redis.call('HMGET', KEYS[i], 'state', 'token', 'seq', 'attempt', 'spec',
    'created', 'lease_until', 'ack_until', 'lp')
  local refusal = token_refusal(job[1], job[2], token)
  if not refusal and job[1] == 'queued' then refusal = {'again'} end
  if not refusal and ARGV[5] == 'worker' then
    refusal = claim_refusal(job[1], job[7], job[8], now)
  elseif not refusal and job[1] ~= 'running' then
    refusal = {'stale', job[1]}
  end
  if refusal then
    replies[#replies + 1] = refusal
  else
    announced[#announced + 1] = requeue(KEYS[i], id, {job[3], job[4], job[5], job[6], job[9]},
      KEYS[1], KEYS[2], ARGV[4], token, now, ARGV[6])
    replies[#replies + 1] = {'ok'}
  end
end
announce_ready(ARGV[1], announced, ARGV[2], ARGV[3])
return replies
