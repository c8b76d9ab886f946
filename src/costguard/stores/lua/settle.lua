-- costguard settle (commit or release): once per reservation; engine.settle_deltas is applied by
-- the caller's arguments, thresholds claimed as engine.claim_crossings.
--
-- KEYS: reservation, audit stream, audit sequence, expiry index, then 2 per counter: counter, bucket index
-- ARGV: counters, at (epoch seconds), audit record JSON ('' none), stream maxlen,
--       then 9 per counter: change to reserved, change to committed, limit, expires_at ('' never),
--       bucket expires, expiry member, meta JSON, lowest level ('' none), levels,
--       then '1' for a slice (engine.leases: it leaves `l` leased and `h` holders, never below 0), else '0'
-- Returns {0} when unknown or already settled, else {1, n, n totals..., crossing quadruples...}.
local held = redis.call('GET', KEYS[1])
if not held or held == '1' then
  return {0}
end
local n = tonumber(ARGV[1])
local at = tonumber(ARGV[2])
local lease = ARGV[5 + n * 9] == '1'
local exp_index = KEYS[4]
-- Every read before the first write: Redis keeps a failed script's earlier writes.
local rows = {}
for i = 1, n do
  rows[i] = redis.call('HMGET', KEYS[4 + (i - 1) * 2 + 1], 'c', 'r', 'f', 'e')
end
-- Kept settled (without its counters) a day so a retried commit stays a no-op.
redis.call('SET', KEYS[1], '1', 'PX', 86400000)

local reply = {1, n}
local out = {}
for i = 1, n do
  local a = 4 + (i - 1) * 9
  local key, index = KEYS[4 + (i - 1) * 2 + 1], KEYS[4 + (i - 1) * 2 + 2]
  local limit_text = ARGV[a + 3]
  local row = rows[i]
  if not row[4] then
    -- Expired or never written since the reservation: it starts again from zero, as in memory.
    create_counter(exp_index, key, index, ARGV[a + 4], at, ARGV[a + 5], ARGV[a + 6], ARGV[a + 7])
  end
  local d_reserved, d_committed = ARGV[a + 1], ARGV[a + 2]
  if d_reserved ~= '0' then
    redis.call('HINCRBY', key, 'r', d_reserved)
  end
  if d_committed ~= '0' then
    redis.call('HINCRBY', key, 'c', d_committed)
  end
  if lease then
    -- A counter expired meanwhile starts again from 0: what an old slice leaves never goes below it.
    if redis.call('HINCRBY', key, 'l', d_reserved) < 0 then
      redis.call('HSET', key, 'l', 0)
    end
    if redis.call('HINCRBY', key, 'h', -1) < 0 then
      redis.call('HSET', key, 'h', 0)
    end
  end
  local total = (tonumber(row[1]) or 0) + (tonumber(row[2]) or 0) + tonumber(d_reserved) + tonumber(d_committed)
  reply[#reply + 1] = total
  if not quiet(row[3], ARGV[a + 8], total) then
    local set = fired_set(row[3])
    if claim(i, parse_levels(ARGV[a + 9]), tonumber(limit_text), limit_text, total, set, false, out) then
      redis.call('HSET', key, 'f', fired_text(set))
    end
  end
end

if ARGV[3] ~= '' then
  audit(KEYS[2], KEYS[3], ARGV[4], {'j', ARGV[3]})
end
for _, v in ipairs(out) do
  reply[#reply + 1] = v
end
return reply
