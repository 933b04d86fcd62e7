-- KEYS: ready msgs delayed inflight seq. ARGV: body due_ms. Stores a job for later.
local ready, msgs, delayed, inflight, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id = tostring(redis.call('INCR', seq))
local due = tonumber(ARGV[2])
redis.call('HSET', msgs, id, ARGV[1])
nudge(ready, delayed, inflight, due)
redis.call('ZADD', delayed, due, id)
return id
