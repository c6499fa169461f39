-- Ends a running job's claim whose deadline passed (see `deadline`), for the sweeper:
-- - a job its worker never acknowledged goes back to its queue at no cost (RELEASED, as
--   release.lua does): the claim's reply may never have reached a worker. A job gets
--   ARGV[6] such free deliveries; after that, each one counts as a failed attempt, so a job
--   that kills its workers before they acknowledge it still ends;
-- - a job whose lease ran out without a heartbeat ends its attempt, as FailJob would, with the
--   error "lease expired".
-- Either way the token dies with the deadline: the silent worker's later calls are refused.
-- Safe to run twice, and from several jobd replicas at once: a run whose condition no longer
-- holds changes nothing.
--
-- KEYS[1]  job hash
-- KEYS[2]  queue's running set
-- KEYS[3]  queue's scheduled set
-- KEYS[4]  queue's retained-failed set
-- KEYS[5]  queue's ready set
-- ARGV[1]  job id
-- ARGV[2]  random sample in [0, 1) for the jitter
-- ARGV[3]  job wake-up channel
-- ARGV[4]  queue wake-up channel
-- ARGV[5]  queue name
-- ARGV[6]  free deliveries: how many unacknowledged claims of a job go back at no cost
-- ARGV[7]  the log's cap (see `logged`)
-- returns  {"released"}; {"failed", kind, started, now}; {"scheduled", kind, started, now,
--          retry at}; {"alive"}: the deadline has not passed; {"stale", state}: the job is not
--          running; {"not_found"}

local job = redis.call('HMGET', KEYS[1], 'state', 'seq', 'attempt', 'spec', 'retention',
  'kind', 'started', 'lease_until', 'ack_until', 'unacked', 'created', 'lp')
local state = job[1]
if not state then return {'not_found'} end
if state ~= 'running' then return {'stale', state} end
local now = clock()
if deadline(job[8], job[9]) > now then return {'alive'} end

local error = 'lease expired'
if job[9] then
  error = 'not acknowledged by its worker in time'
  local unacked = (tonumber(job[10]) or 0) + 1
  redis.call('HSET', KEYS[1], 'unacked', unacked)
  if unacked <= tonumber(ARGV[6]) then
    local line = requeue(KEYS[1], ARGV[1], {job[2], job[3], job[4], job[11], job[12]},
      KEYS[5], KEYS[2], error, '', now, ARGV[7])
    announce_ready(ARGV[3], {line}, ARGV[4], ARGV[5])
    return {'released'}
  end
end
redis.call('HSET', KEYS[1], 'token', '')
local sets = {running = KEYS[2], scheduled = KEYS[3], failed = KEYS[4]}
local run_at = end_attempt(KEYS[1], ARGV[1], {job[2], job[3], job[4], job[5], job[12]}, sets,
  error, true, tonumber(ARGV[2]), ARGV[3], now, ARGV[7])
if run_at then return {'scheduled', job[6], job[7], now, run_at} end
return {'failed', job[6], job[7], now}
