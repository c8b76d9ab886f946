-- costguard settle (commit or release): once per reservation; engine.settle_deltas is applied by
-- the caller's arguments, thresholds claimed as engine.claim_crossings.
--
-- KEYS: reservation, audit stream, audit sequence, expiry index, then 2 per counter: counter, bucket index
-- ARGV: counters, settled ttl ms, has record, decision, at, labels JSON, reservation id, data JSON,
--       stream maxlen, then 9 per counter: change to reserved, change to committed, limit, expires_at,
--       ttl ms, index ttl ms, expiry member, meta JSON, levels
-- Returns {0} when unknown or already settled, else {1, n, n totals..., crossing quadruples...}.
if redis.call('HGET', KEYS[1], 's') ~= '0' then
  return {0}
end
local n = tonumber(ARGV[1])
local exp_index = KEYS[4]
-- Every read before the first write: Redis keeps a failed script's earlier writes.
local rows = {}
for i = 1, n do
  rows[i] = redis.call('HMGET', KEYS[4 + (i - 1) * 2 + 1], 'f', 'e')
end
-- Kept settled (without its counters) for a while so a retried commit stays a no-op.
redis.call('HSET', KEYS[1], 's', '1')
redis.call('HDEL', KEYS[1], 'o')
redis.call('PEXPIRE', KEYS[1], ARGV[2])

local reply = {1, n}
local out = {}
for i = 1, n do
  local a = 9 + (i - 1) * 9
  local key, index = KEYS[4 + (i - 1) * 2 + 1], KEYS[4 + (i - 1) * 2 + 2]
  local limit_text = ARGV[a + 3]
  local row = rows[i]
  if not row[2] then
    -- Expired or never written since the reservation: it starts again from zero, as in memory.
    create_counter(exp_index, key, index, ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8])
  end
  local reserved = redis.call('HINCRBY', key, 'r', ARGV[a + 1])
  local committed = redis.call('HINCRBY', key, 'c', ARGV[a + 2])
  local total = reserved + committed
  reply[#reply + 1] = total
  local set = fired_set(row[1])
  if claim(i, parse_levels(ARGV[a + 9]), tonumber(limit_text), limit_text, total, set, false, out) then
    redis.call('HSET', key, 'f', fired_text(set))
  end
end

if ARGV[3] == '1' then
  audit(KEYS[2], KEYS[3], ARGV[9], record_fields(ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]))
end
for _, v in ipairs(out) do
  reply[#reply + 1] = v
end
return reply
