-- Workers complete their attempts: each job becomes COMPLETED with its result. Completions of
-- one queue that arrive together share the call, one removal from the running set, one
-- addition to the retained set and one wake-up message.
-- Safe to run twice: a second run with the same token finds the outcome already recorded.
--
-- KEYS[1]     queue's running set
-- KEYS[2]     queue's retained-completed set (score: when the job's retention ends, Unix ms)
-- KEYS[3]     queue's ready set, only looked at
-- KEYS[4..n-1]  job hashes, one per completion
-- KEYS[n]     queue's promise (see `promise`)
-- ARGV[1]     job wake-up channel
-- ARGV[2..]   per completion, in KEYS order: job id, lease token, result
-- returns     per completion, in KEYS order:
--             {"ok", kind, started}: recorded now; {"again"}: recorded by an earlier run;
--             {"not_found"}; {"stale", state}: the token is not the job's current one, or the
--             job is not running; {"expired", "ack" or "lease", when}: the claim's deadline
--             passed (see `deadline`);
--             then 1 if the queue has ready jobs, else 0: a worker claiming its next jobs
--             from this queue need not read it when it has none (see claims/mod.rs);
--             then now, Unix ms; then "due:<ms>" when the due index must hear of the queue
--             (see `promise`)

local now = clock()
local at, completed = packed_at(now), event_start('completed')
local replies, done, retained, announced = {}, {}, {}, {}
local due = math.huge
for i = 4, #KEYS - 1 do
  local key, a = KEYS[i], 2 + (i - 4) * 3
  local id, token, result = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local job = redis.call('HMGET', key, 'state', 'token', 'seq', 'attempt', 'retention', 'kind',
    'started', 'lease_until', 'ack_until')
  local refusal = token_refusal(job[1], job[2], token)
  if not refusal and job[1] == 'completed' then refusal = {'again'} end
  refusal = refusal or claim_refusal(job[1], job[8], job[9], now)
  if refusal then
    replies[#replies + 1] = refusal
  else
    local seq = int(tonumber(job[3]) + 1)
    local event = finish_event(completed, at, tonumber(job[4]))
    redis.call('HSET', key,
      'state', 'completed', 'result', result, 'finished', int(now), 'seq', seq,
      'e:' .. seq, event)
    redis.call('PEXPIRE', key, job[5])
    done[#done + 1] = id
    retained[#retained + 1] = int(now + tonumber(job[5]))
    due = math.min(due, now + tonumber(job[5]))
    retained[#retained + 1] = id
    -- Watchers get the result with the event when it is small, and read it otherwise.
    local carried
    if #result <= 4096 then carried = result end
    announced[#announced + 1] = announcement(seq, id, event, carried)
    replies[#replies + 1] = {'ok', job[6], job[7]}
  end
end
if #done > 0 then
  redis.call('ZREM', KEYS[1], unpack(done))
  redis.call('ZADD', KEYS[2], unpack(retained))
  redis.call('PUBLISH', ARGV[1], table.concat(announced, '\n'))
end
replies[#replies + 1] = redis.call('EXISTS', KEYS[3])
replies[#replies + 1] = now
if #done > 0 then replies[#replies + 1] = promise(KEYS[#KEYS], due) end
return replies
