-- subscribe.lua: set an account's subscription and the terms of its plan, atomically.
--
-- KEYS[1]  the account's hash
-- ARGV[1]  plan name
-- ARGV[2]  status
-- ARGV[3]  starts_at: Unix seconds
-- ARGV[4]  anchor: Unix seconds, when periods start
-- ARGV[5]  expires_at: Unix seconds, 0 for none
-- ARGV[6]  the plan's period: "day", "week", "month" or "none"
-- ARGV[7]  the plan's allowance per period: credits
-- ARGV[8]  the plan's prepaid flag: "1" or "0"
--
-- The plan's terms are copied into the account's hash so that a charge reads one key on one Cluster
-- slot. The current period's usage is kept when the plan changes (no allowance is gained by switching
-- back and forth), and restarts only when the period's anchor or length changes.
-- Returns the previous plan name, or "".

local account_key = KEYS[1]
local previous = redis.call('HMGET', account_key, 'plan', 'anchor', 'period')
local anchor_changed = previous[2] ~= ARGV[4] or previous[3] ~= ARGV[6]

redis.call('HSET', account_key,
  'plan', ARGV[1], 'status', ARGV[2], 'starts_at', ARGV[3], 'anchor', ARGV[4], 'expires_at', ARGV[5],
  'period', ARGV[6], 'allowance', ARGV[7], 'prepaid', ARGV[8])
if anchor_changed then
  redis.call('HSET', account_key, 'used', 0, 'period_start', 0, 'period_end', 0)
end
return previous[1] or ''
