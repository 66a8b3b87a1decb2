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

return write_subscription(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
