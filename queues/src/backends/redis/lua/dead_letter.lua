-- KEYS: msgs counts inflight dlq dlq_index. ARGV: id count has_body body reason entry_id at.
-- Returns the stream id of the new DLQ entry, or 0 when the lease is gone.
local msgs, counts, inflight, dlq, index = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
if redis.call('ZREM', inflight, ARGV[1] .. ':' .. ARGV[2]) == 0 then return 0 end
local body = ARGV[4]
if ARGV[3] == '0' then body = redis.call('HGET', msgs, ARGV[1]) or '' end
local sid = redis.call('XADD', dlq, '*', 'id', ARGV[6], 'body', body, 'reason', ARGV[5],
  'at', ARGV[7], 'broker_id', ARGV[1])
redis.call('HSET', index, ARGV[6], sid)
redis.call('HDEL', msgs, ARGV[1])
redis.call('HDEL', counts, ARGV[1])
return sid
