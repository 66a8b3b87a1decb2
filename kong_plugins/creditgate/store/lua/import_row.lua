-- import_row.lua: apply one row of a bulk import (a subscription and an opening grant), all or nothing.
--
-- KEYS[1]  the account's hash
-- KEYS[2]  the account's ledger stream
-- KEYS[3]  the account's idempotency hash (key -> the change it made, as credit.lua records it)
-- ARGV[1]  plan name, or "" to leave the subscription as it is
-- ARGV[2]  status
-- ARGV[3]  starts_at: Unix seconds
-- ARGV[4]  anchor: Unix seconds
-- ARGV[5]  expires_at: Unix seconds, 0 for none
-- ARGV[6]  the plan's period: "day", "week", "month" or "none"
-- ARGV[7]  the plan's allowance per period: credits
-- ARGV[8]  the plan's prepaid flag: "1" or "0"
-- ARGV[9]  grant: credits to add, integer >= 0 (0: no grant)
-- ARGV[10] the grant's idempotency key (required when the grant is > 0)
-- ARGV[11] the grant's note
-- ARGV[12] now: Unix seconds
-- ARGV[13] ledger retention: entries kept per account
-- ARGV[14], ARGV[15], ARGV[16]  the plan index, as in subscribe.lua (moved with the subscription)
--
-- Returns {previous plan or "", grant outcome, balance, ledger id}: grant outcome 1 = applied, 0 = the
-- key was already applied (nothing granted, the ledger id is the first application's), 2 = no grant,
-- -2 = the grant would take the balance past MAX_CREDITS (nothing written, the subscription neither).
--
-- The subscription is written as subscribe.lua writes it and the grant as credit.lua writes it; one
-- script makes the row atomic, so a row is either wholly applied or not at all, and running the same
-- file again changes nothing (the same values, the same key).

local account_key, ledger_key, keys_key = KEYS[1], KEYS[2], KEYS[3]
local amount = arg_int(9, 0, MAX_CREDITS)
check_type(account_key, 'hash')
check_type(keys_key, 'hash')
local index = plan_index_arg(14)
if ARGV[1] ~= '' then
  check_plan_index(index, redis.call('HGET', account_key, 'plan') or '', ARGV[1])
end
if amount > 0 then
  ledger_plan(account_key, ledger_key, arg_int(13, 0, 1e12), 1)  -- checked before the first write
  local record = redis.call('HGET', keys_key, ARGV[10])
  if record then read_key_record(keys_key, ledger_key, ARGV[10], record) end  -- likewise
end
local held = redis.call('HMGET', account_key, 'balance', 'debt')
local balance = read_int(account_key, 'balance', held[1], 0, 0, MAX_CREDITS)
-- The grant pays the debt first (apply_credit): the balance gets only the rest. Read (and checked) here,
-- before the subscription's write.
local debt = read_int(account_key, 'debt', held[2], 0, 0, MAX_CREDITS)
if amount > 0 and balance + amount - math.min(debt, amount) > MAX_CREDITS
    and redis.call('HEXISTS', keys_key, ARGV[10]) == 0 then
  return {'', -2, balance, ''}
end

local previous = ''
if ARGV[1] ~= '' then
  previous = write_subscription(account_key, ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7],
    ARGV[8])
  move_plan_index(index, previous, ARGV[1])
end
if amount <= 0 then
  return {previous, 2, balance, ''}
end
local outcome, balance, id = apply_credit(account_key, ledger_key, keys_key, 'grant', amount, ARGV[11],
  ARGV[10], arg_int(12, 0, MAX_INSTANT), arg_int(13, 0, 1e12), '')
if outcome == -3 then
  outcome = 0  -- the key granted another amount: a row is imported once per key, as before
end
return {previous, outcome, balance, id}
