-- costguard reserve: engine.evaluate_reserve + claim_crossings + clear_previous in one atomic step.
--
-- KEYS: reservation, audit stream, audit sequence, expiry index,
--       then 3 per counter: counter, previous period's counter (the counter again if none), bucket index
-- ARGV: force, counters, at (epoch seconds), reservation ops JSON, audit record JSON ('' none), stream maxlen,
--       then 11 per counter: amount, limit, hard, has previous, expires_at ('' never), bucket expires,
--       expiry member, meta JSON, lowest level ('' none), levels, and for a registry counter of
--       max_instances the index (from 1) of the instance counter it watches (0 otherwise),
--       then, for the counters an allowed reserve's record reports, their indexes (from 1, space-separated)
--       and their JSON entries (`ceilings` without `spent`), and for the counters with a ttl, pairs of
--       index and ttl seconds (space-separated), and '1' for a slice's reserve (engine.leases), else '0'
-- Returns {2} for a repeated forced plan, else {allowed (1; 0 refused, 3 refused because the blocked
--       counter's ttl ran out), blocked counter (0 none), n, n totals..., crossing quadruples...}; an allowed
--       slice's reply has, after the totals, each counter's live slices (`h`) after it.
local force = ARGV[1] == '1'
local n = tonumber(ARGV[2])
-- A slice: its counters count it in `l` (leased) and `h` (holders) until it is settled.
local lease = ARGV[10 + n * 11] == '1'
local at = tonumber(ARGV[3])
local exp_index = KEYS[4]
-- Counter i: its keys are KEYS[k + 1..3] and its arguments ARGV[a + 1..11] (no table per counter:
-- this runs on every guarded call).
local function k_of(i) return 4 + (i - 1) * 3 end
local function a_of(i) return 6 + (i - 1) * 11 end

if redis.call('EXISTS', KEYS[1]) == 1 then
  -- Asked again (a reply lost to a timeout, a spooled cost written twice), or released before it
  -- arrived (its key is then `1`): the first outcome stands and nothing changes.
  if force then
    return {2}
  end
  local again = {1, 0, n}
  for i = 1, n do
    local row = redis.call('HMGET', KEYS[k_of(i) + 1], 'c', 'r')
    again[#again + 1] = (tonumber(row[1]) or 0) + (tonumber(row[2]) or 0)
  end
  return again
end
local rows, current = {}, {}
local out = {}

for i = 1, n do
  -- b: the first call admitted under a ttl
  local row = redis.call('HMGET', KEYS[k_of(i) + 1], 'c', 'r', 'f', 'e', 'b')
  rows[i] = row -- row[4] false: the counter does not exist yet
  current[i] = (tonumber(row[1]) or 0) + (tonumber(row[2]) or 0)
end
-- engine.effective_amounts: a registry counter adds 1 when the counter it watches is new, else 0.
local amounts = {}
for i = 1, n do
  local watch = tonumber(ARGV[a_of(i) + 11])
  if watch > 0 then
    amounts[i] = rows[watch][4] and 0 or 1
  else
    amounts[i] = tonumber(ARGV[a_of(i) + 1])
  end
end
-- Every read before the first write: Redis keeps a failed script's earlier writes.
local previous = {}
for i = 1, n do
  if not rows[i][4] and ARGV[a_of(i) + 4] == '1' then
    previous[i] = redis.call('HMGET', KEYS[k_of(i) + 2], 'c', 'r', 'f', 'e')
  end
end

-- engine.clear_previous: a new counter clears a kill its previous period claimed, once.
for i = 1, n do
  local prev = previous[i]
  if prev and prev[4] and prev[3] and prev[3] ~= '' then
    local set = fired_set(prev[3])
    if not set[CLEARED] then
      local entries = fired_entries(set)
      for j, level in ipairs(parse_levels(ARGV[a_of(i) + 10])) do
        if level[3] and entries[level[1]] then
          set[CLEARED] = true
          redis.call('HSET', KEYS[k_of(i) + 2], 'f', fired_text(set))
          push(out, i, j, (tonumber(prev[1]) or 0) + (tonumber(prev[2]) or 0), 2)
          break
        end
      end
    end
  end
end

local ttls = {}
for i, ttl in string.gmatch(ARGV[9 + n * 11], '(%d+) (%S+)') do
  ttls[tonumber(i)] = tonumber(ttl)
end
local blocked, expired = 0, false
if not force then
  -- engine.ttl_ran_out: a counter past its ttl refuses before any limit is checked.
  for i = 1, n do
    local first = rows[i][5]
    if ttls[i] and first and at >= tonumber(first) + ttls[i] then
      blocked, expired = i, true
      break
    end
  end
end
if not force and not expired then
  for i = 1, n do
    local a = a_of(i)
    -- A registry counter checks only a new instance: known instances pass a full registry.
    if ARGV[a + 3] == '1' and (ARGV[a + 11] == '0' or amounts[i] > 0) then
      local total, limit = current[i], tonumber(ARGV[a + 2])
      if not (total + amounts[i] <= limit and total < limit) then
        blocked = i
        break
      end
    end
  end
end

local keep = 2 * 86400000 -- an open reservation outlives its counters, and at least two days
for i = 1, n do
  local a, k = a_of(i), k_of(i)
  local expires = ARGV[a + 5]
  -- A refusal creates no counter but the one that refused (its kill is claimed there): ids minted
  -- for each request add no keys.
  if not rows[i][4] and (blocked == 0 or blocked == i) then
    create_counter(exp_index, KEYS[k + 1], KEYS[k + 3], expires, at, ARGV[a + 6], ARGV[a + 7], ARGV[a + 8])
  end
  if expires ~= '' then
    keep = math.max(keep, ttl_ms(expires, at))
  end
end

local totals, holders
if blocked > 0 then
  local a, key = a_of(blocked), KEYS[k_of(blocked) + 1]
  local set = fired_set(rows[blocked][3])
  local limit_text = ARGV[a + 2]
  -- An expiry is not a full ceiling: its refusal claims no kill.
  if not expired and claim(blocked, parse_levels(ARGV[a + 10]), tonumber(limit_text), limit_text, current[blocked], set,
                           true, out) then
    redis.call('HSET', key, 'f', fired_text(set))
  end
  totals = current
else
  totals = {}
  if lease then
    holders = {}
  end
  for i = 1, n do
    local a, key, row = a_of(i), KEYS[k_of(i) + 1], rows[i]
    local amount, expires = amounts[i], ARGV[a + 5]
    if amount ~= 0 then
      -- A registry counts instances for good: committed at once, never settled.
      redis.call('HINCRBY', key, ARGV[a + 11] ~= '0' and 'c' or 'r', integer(amount))
    end
    if lease then
      holders[i] = 0 -- a registry is never part of a slice
      if ARGV[a + 11] == '0' then
        redis.call('HINCRBY', key, 'l', integer(amount))
        holders[i] = redis.call('HINCRBY', key, 'h', 1)
      end
    end
    local total = current[i] + amount
    totals[i] = total
    if not quiet(row[3], ARGV[a + 9], total) then
      local set = fired_set(row[3])
      local limit_text = ARGV[a + 2]
      if claim(i, parse_levels(ARGV[a + 10]), tonumber(limit_text), limit_text, total, set, false, out) then
        redis.call('HSET', key, 'f', fired_text(set))
      end
    end
    if row[4] and row[4] ~= expires then
      redis.call('HSET', key, 'e', expires)
      set_expiry(exp_index, key, expires, at, ARGV[a + 7])
    end
    if ttls[i] and not row[5] then
      redis.call('HSET', key, 'b', ARGV[3]) -- its first admitted call starts its ttl
    end
  end
  redis.call('SET', KEYS[1], ARGV[4], 'PX', integer(keep))
end

if ARGV[5] ~= '' then
  local fields = {'j', ARGV[5]}
  if blocked > 0 then
    -- engine.reserve_record: the store rebuilds the `blocked` data from these when reading.
    local a = a_of(blocked)
    for _, v in ipairs({'d', 'blocked', 'bo', ARGV[a + 8], 'bs', integer(current[blocked]), 'bl', ARGV[a + 2]}) do
      fields[#fields + 1] = v
    end
    if expired then
      fields[#fields + 1] = 'br'
      fields[#fields + 1] = 'expired'
    end
  else
    -- engine.ceilings_data: the reported counters and their totals; the store rebuilds `ceilings` from
    -- these when reading.
    local shown = {}
    for i in string.gmatch(ARGV[7 + n * 11], '%d+') do
      shown[#shown + 1] = integer(totals[tonumber(i)])
    end
    for _, v in ipairs({'cs', ARGV[8 + n * 11], 'ct', table.concat(shown, ' ')}) do
      fields[#fields + 1] = v
    end
  end
  audit(KEYS[2], KEYS[3], ARGV[6], fields)
end

local reply = {blocked == 0 and 1 or (expired and 3 or 0), blocked, n}
for i = 1, n do
  reply[#reply + 1] = totals[i]
end
if holders then
  for i = 1, n do
    reply[#reply + 1] = holders[i]
  end
end
for _, v in ipairs(out) do
  reply[#reply + 1] = v
end
return reply
