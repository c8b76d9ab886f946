-- costguard control: a kill switch or limit override change and its audit record, together.
--
-- KEYS: control hash, audit stream, audit sequence
-- ARGV: mode (on | off | set | del), field, value, audit record JSON, stream maxlen
-- Returns 1 when something changed (and was audited), 0 for a kill switch already in that state.
local mode, field = ARGV[1], ARGV[2]
local exists = redis.call('HEXISTS', KEYS[1], field) == 1
if mode == 'on' then
  if exists then
    return 0 -- the first activation's reason and time stand
  end
  redis.call('HSET', KEYS[1], field, ARGV[3])
elseif mode == 'off' then
  if not exists then
    return 0
  end
  redis.call('HDEL', KEYS[1], field)
elseif mode == 'set' then
  redis.call('HSET', KEYS[1], field, ARGV[3])
else
  redis.call('HDEL', KEYS[1], field)
end
audit(KEYS[2], KEYS[3], ARGV[5], {'j', ARGV[4]})
return 1
