-- Helpers shared by the scripts: scripts.rs puts this file before every script it loads.

-- Numbers go to Redis and into messages as integer text: Lua's own conversion of a number
-- to text formats it as a float, which costs several times more.
local function int(n) return string.format('%d', n) end

-- A job's score in its queue's ready set: higher priority first, then earlier first:
-- (1000 - priority) * 2^41 + ms since 2024-01-01. Exact in a double until 2093.
local function ready_score(priority, at)
  return (1000 - priority) * 2199023255552 + (at - 1704067200000)
end

