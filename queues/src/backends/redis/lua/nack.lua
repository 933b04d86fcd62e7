-- KEYS: ready inflight delayed. ARGV: id count delay_ms.
local ready, inflight, delayed = KEYS[1], KEYS[2], KEYS[3]
if redis.call('ZREM', inflight, ARGV[1] .. ':' .. ARGV[2]) == 0 then return 0 end
local delay = tonumber(ARGV[3])
if delay <= 0 then
  redis.call('LPUSH', ready, REF .. ARGV[1])
else
  local due = now_ms() + delay
  nudge(ready, delayed, inflight, due)
  redis.call('ZADD', delayed, due, ARGV[1])
end
return 1
