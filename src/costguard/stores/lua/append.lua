-- costguard append: a batch of audit records.
--
-- KEYS: audit stream, audit sequence
-- ARGV: stream maxlen, then one audit record JSON each
for a = 2, #ARGV do
  audit(KEYS[1], KEYS[2], ARGV[1], {'j', ARGV[a]})
end
return #ARGV - 1
