-- KEYS: ready counts inflight delayed. ARGV: id count due_ms.
-- Parks a first delivery whose envelope says `run_at` is in the future (a job enqueued by a
-- foreign client with a plain LPUSH) without counting it as delivered.
local ready, counts, inflight, delayed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('ZREM', inflight, ARGV[1] .. ':' .. ARGV[2]) == 0 then return 0 end
redis.call('HSET', counts, ARGV[1], 0)
local due = tonumber(ARGV[3])
nudge(ready, delayed, inflight, due)
redis.call('ZADD', delayed, due, ARGV[1])
return 1
