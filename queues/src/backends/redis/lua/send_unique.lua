-- KEYS: dedup ready msgs delayed inflight seq. ARGV: body job_id window_ms due_ms (0: now).
-- Takes the job's dedup key (SET NX PX) and writes the job in the same step, so a crash can't
-- leave a key taken with no job behind it. Reply 1 written, 0 duplicate (nothing written).
local dedup, ready, msgs, delayed, inflight, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
if not redis.call('SET', dedup, ARGV[2], 'NX', 'PX', ARGV[3]) then return 0 end
local due = tonumber(ARGV[4])
if due == 0 then
  redis.call('LPUSH', ready, ARGV[1])
  return 1
end
local id = tostring(redis.call('INCR', seq))
redis.call('HSET', msgs, id, ARGV[1])
nudge(ready, delayed, inflight, due)
redis.call('ZADD', delayed, due, id)
return 1
