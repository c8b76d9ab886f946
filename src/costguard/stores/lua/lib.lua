-- costguard: helpers prepended to every script (see stores/redis.py).
--
-- Lua numbers are doubles. Counter arithmetic stays in Redis (HINCRBY: exact 64-bit integers) and
-- every integer arrives here as a string; the comparisons below are exact while a counter stays
-- under 2^53 micro-dollars (about $9 billion), far above any budget one counter holds.
local unpack = unpack or table.unpack
local CLEARED = 'cleared'
local NO_LIMIT = 2 ^ 62

-- A counter's `f` field: comma-separated `<threshold>@<limit when it fired>` entries (+ CLEARED).
local function fired_set(text)
  local set = {}
  if text then
    for entry in string.gmatch(text, '[^,]+') do
      set[entry] = true
    end
  end
  return set
end

local function fired_text(set)
  local list = {}
  for entry in pairs(set) do
    list[#list + 1] = entry
  end
  table.sort(list)
  return table.concat(list, ',')
end

-- engine/crossings.py _fired_entries: threshold name -> {entry, limit it fired at}
local function fired_entries(set)
  local out = {}
  for entry in pairs(set) do
    if entry ~= CLEARED then
      local at = string.find(entry, '@', 1, true)
      local name, limit = entry, nil
      if at then
        name = string.sub(entry, 1, at - 1)
        limit = tonumber(string.sub(entry, at + 1))
      end
      out[name] = {entry, limit or NO_LIMIT}
    end
  end
  return out
end

-- "<name> <level> <1 if threshold >= 1.0 else 0>" triples, in threshold order.
local function parse_levels(text)
  local levels = {}
  for name, level, top in string.gmatch(text, '(%S+) (%S+) (%S+)') do
    levels[#levels + 1] = {name, tonumber(level), top == '1'}
  end
  return levels
end

local function integer(value)
  return string.format('%.0f', value)
end

-- Crossings travel back as flat quadruples: counter index, level index, total, kind
-- (0 crossed, 1 cleared because the limit was raised, 2 cleared because a new period began).
local function push(out, i, j, total, kind)
  out[#out + 1] = i
  out[#out + 1] = j
  out[#out + 1] = total
  out[#out + 1] = kind
end

-- engine.claim_crossings: claims into `set`, appends to `out`, returns whether `set` changed.
local function claim(i, levels, limit, limit_text, total, set, blocked, out)
  local entries = fired_entries(set)
  local changed = false
  for j, level in ipairs(levels) do
    local claimed = entries[level[1]]
    if claimed then
      if limit > claimed[2] and total < level[2] and not (blocked and level[3]) then
        set[claimed[1]] = nil
        changed = true
        if level[3] then
          push(out, i, j, total, 1)
        end
      end
    elseif (total > 0 and total >= level[2]) or (blocked and level[3]) then
      set[level[1] .. '@' .. limit_text] = true
      changed = true
      push(out, i, j, total, 0)
    end
  end
  return changed
end

-- Appends an audit entry with id `<n>-0`, n from the sequence key: ids are small, dense and
-- strictly increasing, so the store maps them to record ids one to one.
local function audit(stream, seq, maxlen, fields)
  local id = redis.call('INCR', seq)
  local res = redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, integer(id) .. '-0', unpack(fields))
  if type(res) == 'table' and res.err then
    -- The sequence key was lost (deleted or evicted) while the stream survived: continue after it.
    local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
    if not last[1] then
      error(res.err)
    end
    redis.call('SET', seq, string.match(last[1][1], '^(%d+)'))
    id = redis.call('INCR', seq)
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, integer(id) .. '-0', unpack(fields))
  end
  return id
end

-- A counter's hash: c committed, r reserved, f fired, e expires_at ('' never), m meta JSON.
-- Expiry is relative: the engine's expires_at minus the call's own time (at least a minute), so a
-- skewed or fake client clock never expires a counter early; the expiry index holds the absolute
-- time, which `purge` follows.
local MIN_TTL_MS = 60000

local function ttl_ms(expires, at)
  return math.max(MIN_TTL_MS, math.ceil((tonumber(expires) - at) * 1000))
end

local function set_expiry(exp_index, key, expires, at, member)
  if expires ~= '' then
    redis.call('PEXPIRE', key, integer(ttl_ms(expires, at)))
    redis.call('ZADD', exp_index, expires, member)
  else
    redis.call('PERSIST', key)
    redis.call('ZREM', exp_index, member)
  end
end

-- `bucket_expires`: '1' when the bucket index goes with its counters (every period but `total`).
local function create_counter(exp_index, key, index, expires, at, bucket_expires, member, meta)
  redis.call('HSET', key, 'c', 0, 'r', 0, 'f', '', 'e', expires, 'm', meta)
  set_expiry(exp_index, key, expires, at, member)
  redis.call('SADD', index, key)
  if bucket_expires == '1' and expires ~= '' then
    redis.call('PEXPIRE', index, integer(ttl_ms(expires, at)))
  end
end

-- Nothing to claim: no threshold fired yet and the total is under the lowest level (most calls).
local function quiet(fired, lowest, total)
  return (not fired or fired == '') and (lowest == '' or total <= 0 or total < tonumber(lowest))
end
