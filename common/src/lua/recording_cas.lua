-- Compare-and-set of a recording: KEYS[1] the recording hash, KEYS[2] the channel's active
-- pointer; ARGV: expected version (0: must not exist), data, set active (1/0), recording id,
-- expiry seconds (0: none). Returns the new version, or -1 on a conflict.
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[1], 'version', v + 1, 'data', ARGV[2])
if ARGV[3] == '1' then redis.call('SET', KEYS[2], ARGV[4]) end
if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[5]) else redis.call('PERSIST', KEYS[1]) end
return v + 1
