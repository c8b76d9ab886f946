-- costguard start: create a counter with an amount already spent, unless it exists (a limit set at
-- run time starts from what its scope spent this period, counted once).
--
-- KEYS: expiry index, counter, bucket index
-- ARGV: committed, at (epoch seconds), expires_at ('' never), bucket expires, expiry member, meta JSON
-- Returns 1 when the counter was created, 0 when it existed.
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
create_counter(KEYS[1], KEYS[2], KEYS[3], ARGV[3], tonumber(ARGV[2]), ARGV[4], ARGV[5], ARGV[6])
redis.call('HSET', KEYS[2], 'c', ARGV[1])
return 1
