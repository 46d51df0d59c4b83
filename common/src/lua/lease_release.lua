-- Deletes the lease KEYS[1] only while owner ARGV[1] holds it (never a successor's).
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
