-- KEYS[1] <ns>:yolo:seen:<channel>; ARGV[1] the ObjectsSeen JSON, ARGV[2] its frame time (ms),
-- ARGV[3] TTL (ms). Results of one channel can come back out of order (several YOLO workers,
-- paired inputs): the result of the newest frame wins, an older one never overwrites it.
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, old = pcall(cjson.decode, cur)
  if ok and type(old) == 'table' and tonumber(old.frame_ts_ms) and tonumber(old.frame_ts_ms) > tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
