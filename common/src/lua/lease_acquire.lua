-- Takes the lease KEYS[1] for owner ARGV[1] for ARGV[2] ms if it is free or already the owner's
-- (then its TTL starts again). Returns 1 when the owner holds it afterwards, else 0.
local v = redis.call('GET', KEYS[1])
if (not v) or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
