-- A heartbeat with progress: extends the lease as heartbeat.lua does, and records a PROGRESS
-- event. Refused whole by a full Redis (`intake`), which the caller then follows with
-- heartbeat.lua alone: the lease is renewed, the progress not recorded.
-- A job's log is capped: while its last sequence is below ARGV[4], progress is appended;
-- from then on a progress event whose previous event is a progress event recorded past the
-- cap (field `lp` holds that one's sequence; `lr` where their run began) replaces it: the previous one's field is deleted
-- and the new one takes the next sequence. So a loop of heartbeats keeps one progress event
-- past the cap, every other event is kept, and sequences still only grow: a replay skips the
-- sequence of a replaced progress event (see event_codec.rs and WatchJob's documentation).
-- The event carries the time Redis applied it, so the log stays in time order.
-- Safe to run twice: a second run extends the lease again, and records the progress again.
--
-- KEYS[1]  job hash
-- KEYS[2]  queue's running set
-- ARGV[1]  job id
-- ARGV[2]  lease token
-- ARGV[3]  new lease, ms from now; empty: the lease the job was claimed with
-- ARGV[4]  job wake-up channel
-- ARGV[5]  the log's cap: from this sequence on, progress replaces progress
-- ARGV[6..7]  the progress: its message, and its value ("" for none)
-- returns  as heartbeat.lua

local renewed = renew_lease(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
if renewed.refusal then return renewed.refusal end
local last = redis.call('HMGET', KEYS[1], 'seq', 'attempt', 'lp')
local seq = tonumber(last[1]) + 1
local fields = {'m', ARGV[6]}
if ARGV[7] ~= '' then fields[3], fields[4] = 'v', tonumber(ARGV[7]) end
local event = pack_event('progress', packed_at(renewed.now), tonumber(last[2]), fields)
local replaces = last[3] and last[3] == last[1]
if replaces then redis.call('HDEL', KEYS[1], 'e:' .. last[1]) end
if seq >= tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[1], 'seq', int(seq), 'e:' .. int(seq), event, 'lp', int(seq))
  -- `lr` starts the latest run of replaced progress: lr .. lp - 1 are gone, lp is kept, so
  -- a replay after any of them goes on after lp - 1 at once.
  if not replaces then redis.call('HSET', KEYS[1], 'lr', int(seq)) end
else
  redis.call('HSET', KEYS[1], 'seq', int(seq), 'e:' .. int(seq), event)
end
redis.call('PUBLISH', ARGV[4], announcement(int(seq), ARGV[1], event))
return {'ok', renewed.expires}
