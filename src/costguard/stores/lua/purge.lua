-- costguard purge: drop counters whose expires_at passed (Redis expires them on its own clock too;
-- this follows the caller's clock and trims the bucket and expiry indexes).
--
-- KEYS: expiry index, then 2 per counter: counter, bucket index
-- ARGV: now, then 1 per counter: expiry member
local now = tonumber(ARGV[1])
local removed = 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) < now then -- still expired: a call since the read may have extended it
    local key = KEYS[(i - 1) * 2]
    redis.call('DEL', key)
    redis.call('SREM', KEYS[(i - 1) * 2 + 1], key)
    redis.call('ZREM', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
