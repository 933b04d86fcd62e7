-- KEYS: msgs counts inflight. ARGV: id count. 1 when settled, 0 when the lease is gone.
if redis.call('ZREM', KEYS[3], ARGV[1] .. ':' .. ARGV[2]) == 0 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
