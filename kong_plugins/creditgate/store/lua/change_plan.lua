-- change_plan.lua: move a subscribed account to another plan, keeping its status, times and balance.
--
-- KEYS[1]  the account's hash
-- ARGV[1]  the new plan's name
-- ARGV[2]  the new plan's period: "day", "week", "month" or "none"
-- ARGV[3]  the new plan's allowance per period: credits
-- ARGV[4]  the new plan's prepaid flag: "1" or "0"
-- ARGV[5], ARGV[6], ARGV[7]  the plan index, as in subscribe.lua
--
-- Read and written in one script, so that a status change or a charge in between is never undone.
-- As in subscribe.lua, the period's usage is kept (switching plans back and forth gains no allowance)
-- unless the period's length changes; the account moves between the plans' index sets in the same
-- step (_lib.lua). Returns the previous plan name, or "" when the account has no subscription (nothing
-- is written).

local account_key = KEYS[1]
local current = redis.call('HMGET', account_key, 'plan', 'period')
if not current[1] or current[1] == '' then
  return ''
end
local index = plan_index_arg(5)
check_plan_index(index, current[1], ARGV[1])
write_terms(account_key, ARGV[1], ARGV[2], ARGV[3], ARGV[4], current[2])
move_plan_index(index, current[1], ARGV[1])
return current[1]
