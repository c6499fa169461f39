-- A heartbeat with progress: extends the lease as heartbeat.lua does, and records a PROGRESS
-- event. Refused whole by a full Redis (`intake`), which the caller then follows with
-- heartbeat.lua alone: the lease is renewed, the progress not recorded.
-- The job's log is capped (see `logged`): past the cap, the PROGRESS event replaces the
-- event in the log's last slot, so a loop of heartbeats keeps one event past the cap.
-- The event carries the time Redis applied it, so the log stays in time order.
-- Safe to run twice: a second run extends the lease again, and records the progress again.
--
-- KEYS[1]  job hash
-- KEYS[2]  queue's running set
-- ARGV[1]  job id
-- ARGV[2]  lease token
-- ARGV[3]  new lease, ms from now; empty: the lease the job was claimed with
-- ARGV[4]  job wake-up channel
-- ARGV[5]  the log's cap (see `logged`)
-- ARGV[6..7]  the progress: its message, and its value ("" for none)
-- returns  as heartbeat.lua

local renewed = renew_lease(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
if renewed.refusal then return renewed.refusal end
local last = redis.call('HMGET', KEYS[1], 'seq', 'attempt', 'lp')
local fields = {'m', ARGV[6]}
if ARGV[7] ~= '' then fields[3], fields[4] = 'v', tonumber(ARGV[7]) end
local event = pack_event('progress', packed_at(renewed.now), tonumber(last[2]), fields)
local seq, log = logged(KEYS[1], last[1], last[3], ARGV[5], event)
redis.call('HSET', KEYS[1], unpack(log))
redis.call('PUBLISH', ARGV[4], announcement(seq, ARGV[1], event))
return {'ok', renewed.expires}
