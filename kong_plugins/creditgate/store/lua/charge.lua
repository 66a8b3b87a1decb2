-- charge.lua: decide and charge one request, atomically.
--
-- KEYS[1]  the account's hash (subscription, plan terms, balance, period usage)
-- KEYS[2]  the account's ledger stream
-- KEYS[3]  the account's usage hash for the UTC day of `now`
-- ARGV[1]  now: Unix seconds (the caller's clock)
-- ARGV[2]  cost: credits, integer >= 0
-- ARGV[3]  entitled plans, separated by ",", or "" for any plan
-- ARGV[4]  where the request was charged ("route:<id>", "service:<id>", "global"), for usage and ledger
-- ARGV[5]  ledger retention: entries kept per account
-- ARGV[6]  usage retention: seconds a day's usage hash is kept
-- ARGV[7]  deadline: milliseconds on Redis's clock after which the caller has stopped waiting, 0 = none
--
-- Returns {allowed (1|0), reason ("" when allowed), plan, status, cost, balance, allowance,
--          allowance_remaining, period_end, starts_at, expires_at, now, from_allowance, from_balance,
--          ledger id ("" when nothing was charged), Redis's clock in milliseconds}
--
-- The deadline closes the "refused but charged" hole: a caller that timed out answers 503 and
-- proxies nothing, so a script that only runs after that (Redis was paused, or the command sat in a
-- slow network) must not charge. It refuses with reason "deadline_passed" and writes nothing.
--
-- The allowance of the current period pays first, prepaid balance the rest (when the plan allows
-- prepaid use). Nothing is written unless the whole cost can be paid: the balance never goes below
-- zero, and a refused request is never charged. The period rolls over lazily on the first request
-- after it ends.

local account_key, ledger_key, usage_key = KEYS[1], KEYS[2], KEYS[3]
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local entitled = ARGV[3]
local route = ARGV[4]
local retention = tonumber(ARGV[5])
local usage_ttl = tonumber(ARGV[6])
local deadline = tonumber(ARGV[7])

local clock = redis.call('TIME')
local redis_ms = tonumber(clock[1]) * 1000 + floordiv(tonumber(clock[2]), 1000)

local f = redis.call('HMGET', account_key,
  'plan', 'status', 'starts_at', 'anchor', 'expires_at', 'period', 'allowance', 'prepaid',
  'balance', 'used', 'period_start', 'period_end')
local plan = f[1] or ''
local status = f[2] or ''
local starts_at = tonumber(f[3]) or 0
local anchor = tonumber(f[4]) or starts_at
local expires_at = tonumber(f[5]) or 0
local period = f[6] or 'none'
local allowance = tonumber(f[7]) or 0
local prepaid = f[8] == '1'
local balance = tonumber(f[9]) or 0
local used = tonumber(f[10]) or 0
local period_start = tonumber(f[11]) or 0
local period_end = tonumber(f[12]) or 0

local usage_checked = false
local function count_usage(field, amount)
  if not usage_checked then
    usage_checked = true
    if redis.call('EXISTS', usage_key) == 0 then
      redis.call('HSET', usage_key, route .. '|' .. field, fmt(amount))
      redis.call('EXPIRE', usage_key, usage_ttl)
      return
    end
  end
  redis.call('HINCRBY', usage_key, route .. '|' .. field, fmt(amount))
end

local function answer(allowed, reason, from_allowance, from_balance, ledger_id)
  local remaining = allowance - used
  if remaining < 0 then remaining = 0 end
  return {allowed, reason, plan, status, cost, balance, allowance, remaining, period_end, starts_at,
          expires_at, now, from_allowance, from_balance, ledger_id, redis_ms}
end

if deadline > 0 and redis_ms > deadline then
  return {0, 'deadline_passed', '', '', cost, 0, 0, 0, 0, 0, 0, now, 0, 0, '', redis_ms}
end

local function refuse(reason)
  count_usage('refused', 1)
  return answer(0, reason, 0, 0, '')
end

if plan == '' then
  return refuse('no_subscription')
end
if (status ~= 'active' and status ~= 'trialing') or now < starts_at then
  return refuse('subscription_inactive')
end
if expires_at > 0 and now >= expires_at then
  return refuse('subscription_expired')
end
if entitled ~= '' and not string.find(',' .. entitled .. ',', ',' .. plan .. ',', 1, true) then
  return refuse('plan_not_entitled')
end

if period ~= 'none' and (period_end == 0 or now >= period_end or now < period_start) then
  period_start, period_end = window_at(period, anchor, now)
  local previous_used = used
  used = 0
  redis.call('HSET', account_key, 'used', 0, 'period_start', fmt(period_start), 'period_end', fmt(period_end))
  ledger_append(account_key, ledger_key, retention, {
    'kind', 'period_reset', 'amount', '0', 'balance', fmt(balance), 'allowance', fmt(allowance),
    'allowance_used', fmt(previous_used), 'at', fmt(now), 'plan', plan})
end

local remaining = allowance - used
if remaining < 0 then remaining = 0 end
local from_allowance = math.min(cost, remaining)
local from_balance = cost - from_allowance

if from_balance > 0 then
  if not prepaid then
    return refuse('quota_exhausted')
  end
  if balance < from_balance then
    return refuse('insufficient_credit')
  end
end

if cost == 0 then
  count_usage('requests', 1)
  return answer(1, '', 0, 0, '')
end

if from_allowance > 0 then
  used = redis.call('HINCRBY', account_key, 'used', fmt(from_allowance))
end
if from_balance > 0 then
  balance = redis.call('HINCRBY', account_key, 'balance', fmt(-from_balance))
end
count_usage('requests', 1)
count_usage('credits', cost)
local ledger_id = ledger_append(account_key, ledger_key, retention, {
  'kind', 'charge', 'amount', fmt(-from_balance), 'balance', fmt(balance), 'cost', fmt(cost),
  'from_allowance', fmt(from_allowance), 'at', fmt(now), 'plan', plan, 'route', route})
return answer(1, '', from_allowance, from_balance, ledger_id)
