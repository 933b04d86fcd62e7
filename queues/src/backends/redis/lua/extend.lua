-- KEYS: ready inflight delayed. ARGV: id count visibility_ms.
local ready, inflight, delayed = KEYS[1], KEYS[2], KEYS[3]
local member = ARGV[1] .. ':' .. ARGV[2]
if not redis.call('ZSCORE', inflight, member) then return 0 end
local due = now_ms() + tonumber(ARGV[3])
nudge(ready, delayed, inflight, due)
redis.call('ZADD', inflight, due, member)
return 1
