-- lifecycle.lua: apply one step of a billing system's subscription lifecycle (Stripe's), in order.
--
-- KEYS[1]  the account's hash
-- ARGV[1]  at: Unix seconds, when the billing system created the event (Stripe's event.created)
-- ARGV[2]  op: "subscription" (the subscription's own state: ARGV[3] and, when given, ARGV[5]),
--          "payment_failed" (active or trialing -> past_due), "invoice_paid" (past_due -> active)
-- ARGV[3]  op "subscription": the status to set ("active", "trialing", "past_due", "suspended",
--          "canceled"); "" for the other ops
-- ARGV[4]  grace_until: Unix seconds, when a status set to past_due by this step stops being let through
-- ARGV[5]  the plan to be on, or "" to keep the account's plan (op "subscription" only)
-- ARGV[6], ARGV[7], ARGV[8]  that plan's period ("day", "week", "month", "none"), allowance per period
--          (credits) and prepaid flag ("1" or "0"); ignored when ARGV[5] is ""
-- ARGV[9], ARGV[10]  starts_at and anchor (Unix seconds) of a subscription this step opens
-- ARGV[11] "1": an account without a subscription is subscribed to ARGV[5] with status ARGV[3]
--          (op "subscription" with a plan only); "0": it is left alone
-- ARGV[12] "1": an account whose hash does not exist may be opened by that subscription; "0": not
-- ARGV[13], ARGV[14], ARGV[15]  the plan index, as in subscribe.lua
-- ARGV[16] the billing system's id of the subscription the event is about, or "" (not checked)
--
-- Returns {outcome, previous status, status, previous plan, plan, grace_until, stripe_subscription_at}
-- (all strings; the state after the step, or as found when nothing was written). Outcomes:
--   "applied"          the step changed the status, the plan or grace_until
--   "unchanged"        the step was applied and changed none of them (a re-sent event; a payment failed
--                      on a canceled account); stripe_subscription_at is still moved up to `at`
--   "subscribed"       the account had no subscription and now has one
--   "stale"            `at` is before the newest step applied (stripe_subscription_at): nothing written
--   "no_subscription"  the account exists without a subscription and this step opens none: nothing written
--   "no_account"       the account's hash does not exist and this step opens none: nothing written
--   "other_subscription" the step is about another subscription than the account's (stripe_subscription)
--                      and does not make that one active or trialing: nothing written
-- or the error reply "BADDATA <key> <field>: ..." (see _lib.lua), with nothing written.
--
-- Order: every step carries the time its event was created, and the account keeps the newest applied,
-- stripe_subscription_at. A step older than that is stale and changes nothing, so events delivered out of
-- order (Stripe does not promise any order) never put an older state over a newer one; a step of the
-- same time is applied, so a re-sent event writes the values it wrote before and changes nothing.
--
-- Subscriptions: the account follows one subscription of the billing system, stripe_subscription (the
-- first it hears of). A step about another one applies only when it makes that one active or trialing
-- (the customer subscribed again: the new one is followed from then on); a failure, a cancellation or
-- a payment of a subscription the account moved on from changes nothing.
--
-- Grace: past_due is let through while now < grace_until (charge.lua). The grace starts at the first
-- failure: a status already past_due keeps its grace_until (a retry that fails again extends nothing, and
-- a past_due an operator set without grace gets none); any other status clears it.
--
-- A plan change writes the plan's terms as change_plan.lua does (write_terms: the period's usage kept
-- unless its length changes), and a subscription opened here is written as subscribe.lua writes it
-- (write_subscription); either moves the account between the plans' index sets in the same step
-- (_lib.lua). Everything is read and checked before the first write.

local account_key = KEYS[1]
local at = arg_int(1, 0, MAX_INSTANT)
local op = ARGV[2]
if op ~= 'subscription' and op ~= 'payment_failed' and op ~= 'invoice_paid' then
  error({err = 'BADARG 2: not a lifecycle op'})
end
local wanted = ARGV[3]
if op == 'subscription' and not STATUSES[wanted] then
  error({err = 'BADARG 3: not a status'})
end
local grace_arg = arg_int(4, 0, MAX_INSTANT)
local new_plan = ''
local new_period, new_allowance, new_prepaid = '', '', ''
if op == 'subscription' then new_plan = ARGV[5] end
if new_plan ~= '' then
  new_period = ARGV[6]
  if not PERIODS[new_period] then error({err = 'BADARG 6: not a period'}) end
  new_allowance = fmt(arg_int(7, 0, MAX_CREDITS))
  new_prepaid = ARGV[8]
  if not FLAGS[new_prepaid] then error({err = 'BADARG 8: not "0" or "1"'}) end
end
local starts_at = fmt(arg_int(9, 0, MAX_INSTANT))
local anchor = fmt(arg_int(10, 0, MAX_INSTANT))
local may_subscribe = ARGV[11] == '1' and new_plan ~= ''
local may_open = ARGV[12] == '1'
local index = plan_index_arg(13)
local subscription = ARGV[16] or ''

-- Read and check everything.
check_type(account_key, 'hash')
local exists = redis.call('EXISTS', account_key) == 1
local f = redis.call('HMGET', account_key, 'plan', 'status', 'period', 'anchor', 'grace_until',
  'stripe_subscription_at', 'stripe_subscription')
local plan = f[1] or ''
local status = read_word(account_key, 'status', f[2], '', STATUSES)
read_word(account_key, 'period', f[3], 'none', PERIODS)
read_int(account_key, 'anchor', f[4], 0, 0, MAX_INSTANT)
local grace_until = read_int(account_key, 'grace_until', f[5], 0, 0, MAX_INSTANT)
local last_at = read_int(account_key, 'stripe_subscription_at', f[6], 0, 0, MAX_INSTANT)
read_restarts(account_key)  -- write_terms and write_subscription read it again, after it was checked here

local function reply(outcome, to_status, to_plan, to_grace, to_at)
  return {outcome, status, to_status, plan, to_plan, fmt(to_grace), fmt(to_at)}
end

if at < last_at then
  return reply('stale', status, plan, grace_until, last_at)
end
local followed = f[7] or ''
local takes_over = op == 'subscription' and (wanted == 'active' or wanted == 'trialing')
if subscription ~= '' and followed ~= '' and subscription ~= followed and not takes_over then
  return reply('other_subscription', status, plan, grace_until, last_at)
end

local subscribing = plan == '' and may_subscribe and (exists or may_open)
if plan == '' and not subscribing then
  if not exists then return reply('no_account', status, plan, grace_until, last_at) end
  return reply('no_subscription', status, plan, grace_until, last_at)
end

-- The step's outcome, decided before anything is written.
local to_status, to_plan, to_grace = status, plan, grace_until
if op == 'payment_failed' then
  if status == 'active' or status == 'trialing' then to_status = 'past_due' end
elseif op == 'invoice_paid' then
  if status == 'past_due' then to_status = 'active' end
else
  to_status = wanted
  if new_plan ~= '' then to_plan = new_plan end
end
if to_status ~= 'past_due' then
  to_grace = 0
elseif status ~= 'past_due' then
  to_grace = grace_arg
end
local moves_plan = to_plan ~= plan
if moves_plan then
  check_plan_index(index, plan, to_plan)
end

-- Writes start below this line.

if subscribing then
  write_subscription(account_key, to_plan, to_status, starts_at, anchor, '0', new_period, new_allowance,
    new_prepaid)
  move_plan_index(index, '', to_plan)
elseif moves_plan then
  write_terms(account_key, to_plan, new_period, new_allowance, new_prepaid, f[3])
  move_plan_index(index, plan, to_plan)
end
redis.call('HSET', account_key, 'status', to_status, 'stripe_subscription_at', fmt(at))
if subscription ~= '' and subscription ~= followed then
  redis.call('HSET', account_key, 'stripe_subscription', subscription)
end
if to_grace > 0 then
  redis.call('HSET', account_key, 'grace_until', fmt(to_grace))
elseif f[5] then
  redis.call('HDEL', account_key, 'grace_until')
end

local outcome = 'unchanged'
if subscribing then
  outcome = 'subscribed'
elseif to_status ~= status or moves_plan or to_grace ~= grace_until then
  outcome = 'applied'
end
return reply(outcome, to_status, to_plan, to_grace, at)
