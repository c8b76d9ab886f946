-- costguard append: a batch of audit records.
--
-- KEYS: audit stream, audit sequence
-- ARGV: stream maxlen, then 5 per record: decision, at, labels JSON, reservation id, data JSON
for a = 2, #ARGV, 5 do
  audit(KEYS[1], KEYS[2], ARGV[1], record_fields(ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]))
end
return (#ARGV - 1) / 5
