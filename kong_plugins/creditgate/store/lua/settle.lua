-- settle.lua: settle a charge after the response: lower it to its real cost, or refund it whole.
--
-- KEYS[1]  the paying account's hash
-- KEYS[2]  the paying account's ledger stream
-- KEYS[3]  this charge's settlement marker (a string key: the settlement's ledger id)
-- KEYS[4]  the paying account's usage hash for the UTC day of `now`
-- KEYS[5]  the paying account's members hash
-- ARGV[1]  the charge's ledger id
-- ARGV[2]  the final cost: credits, 0 <= final <= the charge's cost (0 refunds the whole charge)
-- ARGV[3]  kind: "refund" (the upstream failed) or "settle" (the real cost is known)
-- ARGV[4]  now: Unix seconds
-- ARGV[5]  ledger retention: entries kept per account
-- ARGV[6]  usage retention: seconds a day's usage hash is kept
-- ARGV[7]  settlement window: seconds after the charge within which it may be settled or refunded
--
-- Returns {outcome, credits given back, balance, ledger id}. outcome: "applied"; "already" (this charge
-- was settled before: nothing changes, the ledger id is the first settlement's); "unknown" (no such
-- charge in this account's ledger); "late" (a hold past its settle_by time, or any charge past the
-- settlement window, is final); "invalid" (the final cost is above the charge's cost).
-- A charge is settled at most once: the marker outlives the settlement window.
--
-- What is given back returns where it came from: to the balance first, up to what the balance paid,
-- then to the period's allowance, but only while the charge's period is still the current one.
-- A pool member's period use goes down by the same amount. The idempotency key the charge answered
-- for is released, so that a retry of a refunded request is charged again.

local account_key, ledger_key, marker_key, usage_key, members_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local charge_id = ARGV[1]
local final_cost = tonumber(ARGV[2])
local kind = ARGV[3]
local now = tonumber(ARGV[4])
local retention = tonumber(ARGV[5])
local usage_ttl = tonumber(ARGV[6])
local window = tonumber(ARGV[7])

local earlier = redis.call('GET', marker_key)
local balance = tonumber(redis.call('HGET', account_key, 'balance')) or 0
if earlier then
  return {'already', 0, balance, earlier}
end

local entries = redis.call('XRANGE', ledger_key, charge_id, charge_id)
if #entries == 0 then
  return {'unknown', 0, balance, ''}
end
local charge = {}
local raw = entries[1][2]
for i = 1, #raw, 2 do
  charge[raw[i]] = raw[i + 1]
end
if charge['kind'] ~= 'charge' then
  return {'unknown', 0, balance, ''}
end

local cost = tonumber(charge['cost']) or 0
if final_cost < 0 or final_cost > cost then
  return {'invalid', 0, balance, ''}
end
local settle_by = tonumber(charge['settle_by']) or 0
if (kind == 'settle' and settle_by > 0 and now > settle_by) or now > (tonumber(charge['at']) or 0) + window then
  return {'late', 0, balance, ''}
end

local give_back = cost - final_cost
local paid_from_balance = -(tonumber(charge['amount']) or 0)
local to_balance = math.min(give_back, paid_from_balance)
local to_allowance = give_back - to_balance

-- Allowance, and a pool member's use, count per period: what belongs to a period that has ended is
-- not given back to the current one.
local p = redis.call('HMGET', account_key, 'period_start', 'period_end', 'used')
local charged_at = tonumber(charge['at']) or 0
local period_start, period_end = tonumber(p[1]) or 0, tonumber(p[2]) or 0
local in_period = charged_at >= period_start and (period_end == 0 or charged_at < period_end)

if to_balance > 0 then
  balance = redis.call('HINCRBY', account_key, 'balance', fmt(to_balance))
end
if to_allowance > 0 then
  if in_period then
    local used = tonumber(p[3]) or 0
    redis.call('HSET', account_key, 'used', fmt(math.max(used - to_allowance, 0)))
  else
    to_allowance = 0  -- that period's allowance is gone; nothing to give back to
  end
end
give_back = to_balance + to_allowance

local member = charge['member']
if member and in_period and cost > final_cost then
  local value = redis.call('HGET', members_key, 'used:' .. member)
  if value and string.sub(value, 1, string.find(value, ':', 1, true) - 1) == fmt(period_start) then
    local separator = string.find(value, ':', 1, true)
    local member_used = tonumber(string.sub(value, separator + 1)) or 0
    redis.call('HSET', members_key, 'used:' .. member,
      string.sub(value, 1, separator) .. fmt(math.max(member_used - (cost - final_cost), 0)))
  end
end

if charge['idempotency_key'] and kind == 'refund' then
  redis.call('DEL', charge['idempotency_key'])
end

local route = charge['route'] or 'global'
local usage_name = route .. '|' .. (kind == 'refund' and 'refunded' or 'settled_back')
if redis.call('EXISTS', usage_key) == 0 then
  redis.call('HSET', usage_key, usage_name, fmt(give_back))
  redis.call('EXPIRE', usage_key, usage_ttl)
else
  redis.call('HINCRBY', usage_key, usage_name, fmt(give_back))
end

local fields = {
  'kind', kind, 'amount', fmt(to_balance), 'balance', fmt(balance), 'cost', fmt(final_cost),
  'to_allowance', fmt(to_allowance), 'at', fmt(now), 'reference', charge_id, 'route', route}
if member then
  table.insert(fields, 'member'); table.insert(fields, member)
end
local id = ledger_append(account_key, ledger_key, retention, fields)
redis.call('SET', marker_key, id, 'EX', window * 2 + 60)
return {'applied', give_back, balance, id}
