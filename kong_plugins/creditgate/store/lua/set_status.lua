-- set_status.lua: change the status of an existing subscription.
--
-- KEYS[1]  the account's hash
-- ARGV[1]  the new status
--
-- Returns the previous status, or "" when the account has no subscription (nothing is written).

local account_key = KEYS[1]
local current = redis.call('HMGET', account_key, 'plan', 'status')
if not current[1] then
  return ''
end
redis.call('HSET', account_key, 'status', ARGV[1])
return current[2] or ''
