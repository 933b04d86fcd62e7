-- KEYS: msgs counts inflight. ARGV: id1 count1 id2 count2 ... (pairs).
-- Returns one entry per pair, in order: 1 when settled, 0 when that lease is gone.
local out, gone = {}, {}
for i = 1, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('ZREM', KEYS[3], id .. ':' .. ARGV[i + 1]) == 1 then
    gone[#gone + 1] = id
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if #gone > 0 then
  redis.call('HDEL', KEYS[1], unpack(gone))
  redis.call('HDEL', KEYS[2], unpack(gone))
end
return out
