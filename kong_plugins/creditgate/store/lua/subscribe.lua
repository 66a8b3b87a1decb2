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
-- ARGV[9], ARGV[10], ARGV[11]  the plan index: the text before and after a plan's name in its set's
--          key, and the account's name (head "": the store keeps the index, see _lib.lua)
--
-- The plan's terms are copied into the account's hash so that a charge reads one key on one Cluster
-- slot. The current period's usage is kept when the plan changes (no allowance is gained by switching
-- back and forth), and restarts only when the period's anchor or length changes.
-- The account moves from its previous plan's index set to the plan's in the same step (_lib.lua).
-- Returns the previous plan name, or "".

local account_key, plan = KEYS[1], ARGV[1]
local index = plan_index_arg(9)
check_plan_index(index, redis.call('HGET', account_key, 'plan') or '', plan)
local previous = write_subscription(account_key, plan, ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7],
  ARGV[8])
move_plan_index(index, previous, plan)
return previous
