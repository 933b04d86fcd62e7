-- Shared Lua helpers, prepended to every script (see scripts.rs).
local REF = '\0jf:'
local WAKE = '\0jf:wake'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function next_due(delayed, inflight)
  local w = nil
  local d = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  if d[2] then w = tonumber(d[2]) end
  local f = redis.call('ZRANGE', inflight, 0, 0, 'WITHSCORES')
  if f[2] and (w == nil or tonumber(f[2]) < w) then w = tonumber(f[2]) end
  return w
end
-- Consumers blocked on an empty ready list sleep until the earliest due time they saw. Before
-- scheduling something earlier, push one wake token so one of them re-reads the schedule.
local function nudge(ready, delayed, inflight, due)
  if redis.call('LLEN', ready) > 0 then return end
  local w = next_due(delayed, inflight)
  if w == nil or due < w then redis.call('LPUSH', ready, WAKE) end
end
