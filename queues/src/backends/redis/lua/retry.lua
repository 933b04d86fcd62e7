-- KEYS: ready msgs counts inflight delayed seq. ARGV: id count body delay_ms.
-- The new body is written in the same atomic step that drops the old one.
local ready, msgs, counts, inflight, delayed, seq =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
if redis.call('ZREM', inflight, ARGV[1] .. ':' .. ARGV[2]) == 0 then return 0 end
redis.call('HDEL', msgs, ARGV[1])
redis.call('HDEL', counts, ARGV[1])
local delay = tonumber(ARGV[4])
if delay <= 0 then
  redis.call('LPUSH', ready, ARGV[3])
else
  local id = tostring(redis.call('INCR', seq))
  local due = now_ms() + delay
  redis.call('HSET', msgs, id, ARGV[3])
  nudge(ready, delayed, inflight, due)
  redis.call('ZADD', delayed, due, id)
end
return 1
