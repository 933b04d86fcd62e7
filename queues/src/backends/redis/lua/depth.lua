-- KEYS: ready claimed inflight delayed dlq msgs.
-- Returns `[visible, in_flight, delayed, dead, oldest_body_or_empty]` without moving anything:
-- due delayed jobs and expired leases count as visible, as a receive would see them.
local ready, claimed, inflight, delayed, dlq, msgs =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local now = now_ms()
local function tokens(list)
  local n = 0
  for _, it in ipairs(redis.call('LRANGE', list, -2, -1)) do
    if it == WAKE then n = n + 1 end
  end
  return n
end
local listed = redis.call('LLEN', ready) + redis.call('LLEN', claimed)
  - tokens(ready) - tokens(claimed)
local due = redis.call('ZCOUNT', delayed, '-inf', now)
local expired = redis.call('ZCOUNT', inflight, '-inf', now)
local oldest = ''
for _, it in ipairs(redis.call('LRANGE', ready, -2, -1)) do
  if it ~= WAKE then
    if string.sub(it, 1, 4) == REF then
      oldest = redis.call('HGET', msgs, string.sub(it, 5)) or ''
    else
      oldest = it
    end
  end
end
return {listed + due + expired, redis.call('ZCARD', inflight) - expired,
  redis.call('ZCARD', delayed) - due, redis.call('XLEN', dlq), oldest}
