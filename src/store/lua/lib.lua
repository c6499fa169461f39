-- Helpers shared by the scripts: scripts.rs puts this file before every script it loads.

-- Numbers go to Redis and into messages as integer text: Lua's own conversion of a number
-- to text formats it as a float, which costs several times more.
local function int(n) return string.format('%d', n) end

-- An event's line in a wake-up message on the job channel, as parse_announced in
-- store/codec.rs reads it: sequence, job id, the event's length and bytes, then the result's
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

-- A job's score in its queue's ready set: higher priority first, then earlier first:
-- (1000 - priority) * 2^41 + ms since 2024-01-01. Exact in a double until 2093.
local function ready_score(priority, at)
  return (1000 - priority) * 2199023255552 + (at - 1704067200000)
end

