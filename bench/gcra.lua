-- GCRA rate limit, one key per (site, client).
-- KEYS[1]: the bucket key, e.g. "revproxy:rl:<site>:<client>"
-- ARGV[1]: now, in ms (the caller's clock: the script stays deterministic)
-- ARGV[2]: emission interval T in ms (1000 / rate per second)
-- ARGV[3]: burst tolerance tau in ms ((burst - 1) * T)
-- Returns {allowed (1/0), retry_after_ms}.
-- The key holds the theoretical arrival time (TAT) in ms and expires
-- (PEXPIRE, set atomically with SET ... PX) once the bucket would be full
-- again, so idle clients cost no memory.
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tau = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local diff = tat - now
if diff > tau then
  return {0, diff - tau}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return {1, 0}
