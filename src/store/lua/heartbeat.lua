-- Extends a running job's lease; the first heartbeat of a claim also acknowledges the job (see
-- claim.lua). A heartbeat never shortens the lease, so one that Redis runs late (delayed, then
-- applied after a later one) cannot undo the later one. It rewrites fields the job has and adds
-- nothing, so it runs past maxmemory (`drain`): progress is progress.lua's, which a full Redis
-- refuses.
-- Safe to run twice: a second run extends the lease again.
--
-- KEYS[1]  job hash
-- KEYS[2]  queue's running set
-- ARGV[1]  job id
-- ARGV[2]  lease token
-- ARGV[3]  new lease, ms from now; empty: the lease the job was claimed with
-- returns  {"ok", lease expiry}, {"cancelled"}, {"not_found"},
--          {"stale", state}: the token is not the job's current one, or the job is not running;
--          {"expired", "ack" or "lease", when}: the claim's deadline passed (see `deadline`)

local renewed = renew_lease(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
if renewed.refusal then return renewed.refusal end
return {'ok', renewed.expires}
