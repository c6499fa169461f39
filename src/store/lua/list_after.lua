-- Reads the entries of an index (a sorted set of job ids) that come after a cursor in its order
-- (by score, then by member), at a cost bounded by the page and not by the set: the cursor's
-- rank is found with ZRANK when its entry is still there with its score, else by a binary
-- search among the entries of its score. Only reads.
--
-- KEYS[1]  the index
-- ARGV[1]  the cursor's score ("" for the index's start)
-- ARGV[2]  the cursor's member
-- ARGV[3]  how many entries to read
-- returns  {member, score, member, score, ...}, up to ARGV[3] entries

-- Whether `a` sorts after `b` as Redis orders members: byte by byte (Lua's own `<` follows the
-- server's locale).
local function sorts_after(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end

local key, count = KEYS[1], tonumber(ARGV[3])
local start = 0
if ARGV[1] ~= '' then
  local score, member = tonumber(ARGV[1]), ARGV[2]
  local rank = redis.call('ZRANK', key, member)
  if rank and tonumber(redis.call('ZSCORE', key, member)) == score then
    start = rank + 1
  else
    -- Ranks [low, high) hold the entries of the cursor's score, ordered by member.
    local low = redis.call('ZCOUNT', key, '-inf', '(' .. ARGV[1])
    local high = redis.call('ZCOUNT', key, '-inf', ARGV[1])
    while low < high do
      local middle = math.floor((low + high) / 2)
      if sorts_after(redis.call('ZRANGE', key, middle, middle)[1], member) then
        high = middle
      else
        low = middle + 1
      end
    end
    start = low
  end
end
return redis.call('ZRANGE', key, start, start + count - 1, 'WITHSCORES')
