-- costguard reserve: engine.evaluate_reserve + claim_crossings + clear_previous in one atomic step.
--
-- KEYS: reservation, audit stream, audit sequence, expiry index,
--       then 3 per counter: counter, previous period's counter (the counter again if none), bucket index
-- ARGV: force, counters, reservation ttl ms, reservation ops JSON, has record,
--       decision, at, labels JSON, reservation id, data JSON, stream maxlen,
--       then 10 per counter: amount, limit, hard, has previous, expires_at, ttl ms, index ttl ms,
--       expiry member, meta JSON, levels
-- Returns {2} for a repeated forced plan, else {allowed, blocked counter (0 none), n, n totals...,
--       crossing quadruples...}.
local force = ARGV[1] == '1'
if force and redis.call('EXISTS', KEYS[1]) == 1 then
  return {2} -- a buffered record written twice counts once
end
local n = tonumber(ARGV[2])
local exp_index = KEYS[4]
local ops, sets, current, expires_now = {}, {}, {}, {}
local out = {}

for i = 1, n do
  local a = 11 + (i - 1) * 10
  local k = 4 + (i - 1) * 3
  local op = {
    key = KEYS[k + 1], previous = KEYS[k + 2], index = KEYS[k + 3],
    amount = ARGV[a + 1], limit_text = ARGV[a + 2], limit = tonumber(ARGV[a + 2]), hard = ARGV[a + 3] == '1',
    has_previous = ARGV[a + 4] == '1', expires = ARGV[a + 5], ttl = ARGV[a + 6], index_ttl = ARGV[a + 7],
    member = ARGV[a + 8], meta = ARGV[a + 9], levels = parse_levels(ARGV[a + 10]),
  }
  ops[i] = op
  local row = redis.call('HMGET', op.key, 'c', 'r', 'f', 'e')
  expires_now[i] = row[4] -- false: the counter does not exist yet
  current[i] = (tonumber(row[1]) or 0) + (tonumber(row[2]) or 0)
  sets[i] = fired_set(row[3])
end
-- Every read before the first write: Redis keeps a failed script's earlier writes.
local previous = {}
for i, op in ipairs(ops) do
  if not expires_now[i] and op.has_previous then
    previous[i] = redis.call('HMGET', op.previous, 'c', 'r', 'f', 'e')
  end
end

-- engine.clear_previous: a new counter clears a kill its previous period claimed, once.
for i, op in ipairs(ops) do
  local prev = previous[i]
  if prev and prev[4] then
    local set = fired_set(prev[3])
    if not set[CLEARED] then
      local entries = fired_entries(set)
      for j, level in ipairs(op.levels) do
        if level[3] and entries[level[1]] then
          set[CLEARED] = true
          redis.call('HSET', op.previous, 'f', fired_text(set))
          push(out, i, j, (tonumber(prev[1]) or 0) + (tonumber(prev[2]) or 0), 2)
          break
        end
      end
    end
  end
end

local blocked = 0
if not force then
  for i, op in ipairs(ops) do
    local total = current[i]
    if op.hard and not (total + tonumber(op.amount) <= op.limit and total < op.limit) then
      blocked = i
      break
    end
  end
end

for i, op in ipairs(ops) do
  if not expires_now[i] then
    create_counter(exp_index, op.key, op.index, op.expires, op.ttl, op.index_ttl, op.member, op.meta)
  end
end

local totals
if blocked > 0 then
  local op = ops[blocked]
  if claim(blocked, op.levels, op.limit, op.limit_text, current[blocked], sets[blocked], true, out) then
    redis.call('HSET', op.key, 'f', fired_text(sets[blocked]))
  end
  totals = current
else
  totals = {}
  for i, op in ipairs(ops) do
    if op.amount ~= '0' then
      redis.call('HINCRBY', op.key, 'r', op.amount)
    end
    local total = current[i] + tonumber(op.amount)
    totals[i] = total
    if claim(i, op.levels, op.limit, op.limit_text, total, sets[i], false, out) then
      redis.call('HSET', op.key, 'f', fired_text(sets[i]))
    end
    if expires_now[i] and expires_now[i] ~= op.expires then
      redis.call('HSET', op.key, 'e', op.expires)
      set_expiry(exp_index, op.key, op.expires, op.ttl, op.member)
    end
  end
  redis.call('HSET', KEYS[1], 'o', ARGV[4], 's', '0')
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end

if ARGV[5] == '1' then
  local fields = record_fields(ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10])
  if blocked > 0 then
    -- engine.reserve_record: the store rebuilds the `blocked` data from these when reading.
    local op = ops[blocked]
    fields[4] = 'blocked'
    for _, v in ipairs({'bo', op.meta, 'bs', integer(current[blocked]), 'bl', op.limit_text}) do
      fields[#fields + 1] = v
    end
  end
  audit(KEYS[2], KEYS[3], ARGV[11], fields)
end

local reply = {blocked == 0 and 1 or 0, blocked, n}
for i = 1, n do
  reply[#reply + 1] = totals[i]
end
for _, v in ipairs(out) do
  reply[#reply + 1] = v
end
return reply
