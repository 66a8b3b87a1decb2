-- plan_terms.lua: copy a changed plan's terms into one subscribed account, if it is still on that plan.
--
-- KEYS[1]  the account's hash
-- ARGV[1]  plan name
-- ARGV[2]  period: "day", "week", "month" or "none"
-- ARGV[3]  allowance per period: credits
-- ARGV[4]  prepaid flag: "1" or "0"
--
-- A change of period length restarts the period (usage 0). Returns 1 if updated, 0 if the account is
-- no longer on that plan or its terms are already these.

local account_key = KEYS[1]
local current = redis.call('HMGET', account_key, 'plan', 'period', 'allowance', 'prepaid')
if current[1] ~= ARGV[1] then
  return 0
end
if current[2] == ARGV[2] and current[3] == ARGV[3] and current[4] == ARGV[4] then
  return 0  -- the terms did not change
end
write_terms(account_key, ARGV[1], ARGV[2], ARGV[3], ARGV[4], current[2])
return 1
