-- KEYS: ready claimed msgs counts inflight delayed seq meta. ARGV: max.
-- Returns `[wake_ms, id, count, body, …]`; `wake_ms` (only when nothing was delivered) is the
-- time until something becomes visible by itself, -1 for never.
local ready, claimed, msgs, counts, inflight, delayed, seq, meta =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local now = now_ms()
local vis = tonumber(redis.call('HGET', meta, 'visibility_ms') or '30000')
for _, id in ipairs(redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('ZREM', delayed, id)
  redis.call('LPUSH', ready, REF .. id)
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', inflight, '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('ZREM', inflight, m)
  local id = string.match(m, '^(.+):%d+$')
  if id then redis.call('LPUSH', ready, REF .. id) end
end
local max = tonumber(ARGV[1])
local out = {0}
local n = 0
local earliest = nil
local function take(item)
  local id, body
  if string.sub(item, 1, 4) == REF then
    if item == WAKE then return end
    id = string.sub(item, 5)
    body = redis.call('HGET', msgs, id)
    if not body then return end
  else
    id = tostring(redis.call('INCR', seq))
    body = item
    redis.call('HSET', msgs, id, body)
  end
  local c = redis.call('HINCRBY', counts, id, 1)
  redis.call('ZADD', inflight, now + vis, id .. ':' .. c)
  out[#out + 1] = id
  out[#out + 1] = c
  out[#out + 1] = body
  n = n + 1
end
if max > 0 then
  local w = next_due(delayed, inflight)
  -- a lease we hand out may now be the earliest thing due: blocked consumers must know
  if w == nil or now + vis < w then earliest = true end
end
while n < max do
  local item = redis.call('RPOP', claimed)
  if not item then break end
  take(item)
end
while n < max do
  local items = redis.call('RPOP', ready, max - n)
  if not items then break end
  for _, it in ipairs(items) do take(it) end
end
if n > 0 then
  if earliest and redis.call('LLEN', ready) == 0 then redis.call('LPUSH', ready, WAKE) end
else
  local w = next_due(delayed, inflight)
  if w then out[1] = math.max(w - now, 0) else out[1] = -1 end
end
return out
