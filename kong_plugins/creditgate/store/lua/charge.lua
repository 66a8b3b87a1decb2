-- charge.lua: decide and charge one request, atomically.
--
-- KEYS[1]  the paying account's hash (subscription, plan terms, balance, period usage)
-- KEYS[2]  the paying account's ledger stream
-- KEYS[3]  the paying account's usage hash for the UTC day of `now`
-- KEYS[4]  the idempotency key of this request (a string key; unused when ARGV[9] is 0)
-- KEYS[5]  the paying account's members hash (pools: caps and period usage per member)
-- ARGV[1]  now: Unix seconds (the caller's clock)
-- ARGV[2]  cost: credits, integer >= 0 (for a hold: the most the request may cost)
-- ARGV[3]  entitled plans, separated by ",", or "" for any plan
-- ARGV[4]  where the request was charged ("route:<id>", "service:<id>", "global"), for usage and ledger
-- ARGV[5]  ledger retention: entries kept per account
-- ARGV[6]  usage retention: seconds a day's usage hash is kept
-- ARGV[7]  deadline: milliseconds on Redis's clock after which the caller has stopped waiting, 0 = none
-- ARGV[8]  mode: "charge", or "shadow" (decide, count in usage, write nothing else)
-- ARGV[9]  idempotency window: seconds a charge answers for its idempotency key, 0 = off
-- ARGV[10] member: the pool member the request is from, or "" when the account pays for itself
-- ARGV[11] hold: seconds within which the charge may be settled to a lower cost, 0 = final charge
--
-- Returns {allowed (1|0), reason ("" when allowed), plan, status, cost, balance, allowance,
--          allowance_remaining, period_start, period_end, starts_at, expires_at, now, from_allowance,
--          from_balance, ledger id ("" when nothing was charged), Redis's clock in milliseconds,
--          replayed (1 when an earlier charge with this idempotency key answered), member_used,
--          member_cap (-1: no cap)}
--
-- The allowance of the current period pays first, prepaid balance the rest (when the plan allows
-- prepaid use). Nothing is written unless the whole cost can be paid: the balance never goes below
-- zero, a pool member never goes over its cap, and a refused request is never charged. The period
-- rolls over lazily on the first request after it ends.
--
-- The deadline closes the "refused but charged" hole: a caller that timed out answers 503 and
-- proxies nothing, so a script that only runs after that (Redis was paused, or the command sat in a
-- slow network) must not charge. It refuses with reason "deadline_passed" and writes nothing.

local account_key, ledger_key, usage_key, idempotency_key, members_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local entitled = ARGV[3]
local route = ARGV[4]
local retention = tonumber(ARGV[5])
local usage_ttl = tonumber(ARGV[6])
local deadline = tonumber(ARGV[7])
local shadow = ARGV[8] == 'shadow'
local idempotency_window = tonumber(ARGV[9])
local member = ARGV[10]
local hold_seconds = tonumber(ARGV[11])

local clock = redis.call('TIME')
local redis_ms = tonumber(clock[1]) * 1000 + floordiv(tonumber(clock[2]), 1000)

if deadline > 0 and redis_ms > deadline then
  return {0, 'deadline_passed', '', '', cost, 0, 0, 0, 0, 0, 0, 0, now, 0, 0, '', redis_ms, 0, 0, -1}
end

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
local member_used = 0
local member_cap = -1

local usage_checked = false
local function count_usage(field, amount)
  local name = route .. '|' .. field
  if not usage_checked then
    usage_checked = true
    if redis.call('EXISTS', usage_key) == 0 then
      redis.call('HSET', usage_key, name, fmt(amount))
      redis.call('EXPIRE', usage_key, usage_ttl)
      return
    end
  end
  redis.call('HINCRBY', usage_key, name, fmt(amount))
end

local function answer(allowed, reason, from_allowance, from_balance, ledger_id, replayed)
  local remaining = allowance - used
  if remaining < 0 then remaining = 0 end
  return {allowed, reason, plan, status, cost, balance, allowance, remaining, period_start, period_end,
          starts_at, expires_at, now, from_allowance, from_balance, ledger_id, redis_ms, replayed,
          member_used, member_cap}
end

local function refuse(reason)
  count_usage(shadow and 'shadow_refused' or 'refused', 1)
  if member ~= '' then
    count_usage('member:' .. member .. '|refused', 1)
  end
  return answer(0, reason, 0, 0, '', 0)
end

-- A retry of a request that was already charged answers with that charge, and is not charged again.
if idempotency_window > 0 and not shadow then
  local earlier = redis.call('GET', idempotency_key)
  if earlier then
    count_usage('replayed', 1)
    return answer(1, '', 0, 0, earlier, 1)
  end
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
  if not shadow then
    redis.call('HSET', account_key, 'used', 0, 'period_start', fmt(period_start), 'period_end', fmt(period_end))
    ledger_append(account_key, ledger_key, retention, {
      'kind', 'period_reset', 'amount', '0', 'balance', fmt(balance), 'allowance', fmt(allowance),
      'allowance_used', fmt(previous_used), 'at', fmt(now), 'plan', plan})
  end
end

-- A pool member's use is counted per period of the pool's plan, and capped when the pool says so.
local member_used_field, member_period = '', ''
if member ~= '' then
  local m = redis.call('HMGET', members_key, 'cap:' .. member, 'used:' .. member)
  member_cap = tonumber(m[1]) or -1
  member_period = fmt(period_start)
  member_used_field = 'used:' .. member
  if m[2] then
    local separator = string.find(m[2], ':', 1, true)
    if string.sub(m[2], 1, separator - 1) == member_period then
      member_used = tonumber(string.sub(m[2], separator + 1)) or 0
    end
  end
  if member_cap >= 0 and member_used + cost > member_cap then
    return refuse('member_cap_reached')
  end
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

if shadow then
  count_usage('shadow_allowed', 1)
  count_usage('shadow_credits', cost)
  return answer(1, '', from_allowance, from_balance, '', 0)
end

count_usage('requests', 1)
if member ~= '' then
  count_usage('member:' .. member .. '|requests', 1)
end
if cost == 0 then
  return answer(1, '', 0, 0, '', 0)
end

if from_allowance > 0 then
  used = redis.call('HINCRBY', account_key, 'used', fmt(from_allowance))
end
if from_balance > 0 then
  balance = redis.call('HINCRBY', account_key, 'balance', fmt(-from_balance))
end
count_usage('credits', cost)
local fields = {
  'kind', 'charge', 'amount', fmt(-from_balance), 'balance', fmt(balance), 'cost', fmt(cost),
  'from_allowance', fmt(from_allowance), 'at', fmt(now), 'plan', plan, 'route', route}
if member ~= '' then
  member_used = member_used + cost
  redis.call('HSET', members_key, member_used_field, member_period .. ':' .. fmt(member_used))
  count_usage('member:' .. member .. '|credits', cost)
  table.insert(fields, 'member'); table.insert(fields, member)
end
if hold_seconds > 0 then
  table.insert(fields, 'settle_by'); table.insert(fields, fmt(now + hold_seconds))
end
if idempotency_window > 0 then
  table.insert(fields, 'idempotency_key'); table.insert(fields, idempotency_key)
end
local ledger_id = ledger_append(account_key, ledger_key, retention, fields)
if idempotency_window > 0 then
  redis.call('SET', idempotency_key, ledger_id, 'EX', idempotency_window)
end
return answer(1, '', from_allowance, from_balance, ledger_id, 0)
