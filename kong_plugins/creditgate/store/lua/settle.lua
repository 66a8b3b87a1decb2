-- settle.lua: settle a charge after the response: lower it to its real cost, or refund it whole.
--
-- KEYS[1]  the paying account's hash
-- KEYS[2]  the paying account's ledger stream
-- KEYS[3]  this charge's settlement marker (a string key: the settlement's ledger id)
-- KEYS[4]  the paying account's usage hash for the UTC day of `now`
-- KEYS[5]  the paying account's members hash
-- KEYS[6]  the paying account's holds hash (charge id -> the charge's facts, see charge.lua)
-- KEYS[7]  the paying account's holds index (sorted set)
-- KEYS[8]  the day's totals over every account on this account's slot (store/totals.py; "" or absent
--          for none): what is given back is added there too, in this same step (add_total in _lib.lua)
-- ARGV[1]  the charge's ledger id
-- ARGV[2]  the final cost: credits, 0 <= final <= the charge's cost (0 refunds the whole charge)
-- ARGV[3]  kind: "refund" (the upstream failed) or "settle" (the real cost is known)
-- ARGV[4]  now: Unix seconds, or "" for Redis's own clock
-- ARGV[5]  ledger retention: entries kept per account
-- ARGV[6]  usage retention: seconds a day's usage hash is kept
-- ARGV[7]  settlement window: seconds after the charge within which it may be settled or refunded
-- ARGV[8]  account: the paying account's name, for the day's totals ("" or absent with no KEYS[8])
--
-- Returns {outcome, credits given back, balance, ledger id}. outcome: "applied"; "already" (this charge
-- was settled before: nothing changes, the ledger id is the first settlement's); "unknown" (no such
-- charge: neither in the holds hash nor in the ledger); "late" (a hold past its settle_by time, or any
-- charge past the settlement window, is final); "invalid" (the final cost is above the charge's cost);
-- "cap" (giving back would take the balance past MAX_CREDITS; nothing written). Or the error reply
-- "BADDATA ..." (see _lib.lua), with nothing written.
-- A charge is settled at most once: the marker outlives the settlement window.
--
-- The charge's facts come from the holds hash, where charge.lua keeps them for the settlement window:
-- settling does not depend on how many ledger entries the retention keeps. A charge made without a
-- settlement window (or before the holds hash existed) is looked up in the ledger.
--
-- What is given back returns where it came from: to the balance first, up to what the balance paid
-- (paying an open debt first), then to the period's allowance, but only while the charge's period is
-- still the current one.
-- A pool member's period use goes down by the same amount, while its use is of the current period
-- (restart count and start, see _lib.lua). The period's counters are netted in the same way, while
-- the charge's period is the current one: period_from_balance by what goes back to the balance
-- (`used` by what goes back to the allowance), and a refund takes its request back from
-- period_requests and from the member's requests; none goes below 0 (a charge made before the
-- counters existed, without period_restarts, takes nothing from them). The idempotency key the charge
-- answered for is released (while it still answers for it), so that a retry of a refunded request is
-- charged again.

local account_key, ledger_key, marker_key, usage_key, members_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local holds_key, holds_index_key = KEYS[6], KEYS[7]
local charge_id = ARGV[1]
local final_cost = arg_int(2, 0, 9007199254740991)  -- above the charge's cost: "invalid"
local kind = ARGV[3]
local now = redis_clock()
if ARGV[4] ~= '' then now = arg_int(4, 0, MAX_INSTANT) end
local retention = arg_int(5, 0, 1e12)
local usage_ttl = arg_int(6, 1, 1e12)
local window = arg_int(7, 0, 1e12)

-- Read and check everything.
check_type(account_key, 'hash')
check_type(marker_key, 'string')
check_type(usage_key, 'hash')
local account = ARGV[8] or ''
local totals = {key = account ~= '' and KEYS[8] or '', ttl = usage_ttl, account = account}
if totals.key ~= '' then check_type(totals.key, 'hash') end
check_type(members_key, 'hash')
check_type(holds_key, 'hash')
check_type(holds_index_key, 'zset')
local p = redis.call('HMGET', account_key, 'balance', 'period_start', 'period_end', 'used', 'period',
  'period_requests', 'period_from_balance', 'period_restarts', 'debt')
local balance = read_int(account_key, 'balance', p[1], 0, 0, MAX_CREDITS)
local period_start = read_int(account_key, 'period_start', p[2], 0, 0, MAX_INSTANT)
local period_end = read_int(account_key, 'period_end', p[3], 0, 0, MAX_INSTANT)
local used = read_int(account_key, 'used', p[4], 0, 0, MAX_CREDITS)
local period = read_word(account_key, 'period', p[5], 'none', PERIODS)
local period_requests, period_from_balance = read_period_counters(account_key, {p[6], p[7]})
local restarts = read_restarts(account_key, p[8])
local debt = read_int(account_key, 'debt', p[9], 0, 0, MAX_CREDITS)

local earlier = redis.call('GET', marker_key)
if earlier then
  return {'already', 0, balance, earlier}
end

local charge = nil
local where = holds_key
local held = redis.call('HGET', holds_key, charge_id)
if held then
  local ok, decoded = pcall(cjson.decode, held)
  if not ok or type(decoded) ~= 'table' then bad(holds_key, charge_id, 'is not a JSON object') end
  charge = decoded
  charge['kind'] = 'charge'
else
  where = ledger_key
  check_type(ledger_key, 'stream')
  -- Only an id as Redis writes it (no leading zero in either part): Redis reads "01-0" as 1-0, but
  -- the settlement marker is named after the id as given, so another spelling of a settled charge's
  -- id would settle it again.
  local ms, seq = string.match(charge_id, '^(%d+)%-(%d+)$')
  if ms and not string.find(ms, '^0.') and not string.find(seq, '^0.') then
    local entries = redis.call('XRANGE', ledger_key, charge_id, charge_id)
    if #entries > 0 then
      charge = {}
      local raw = entries[1][2]
      for i = 1, #raw, 2 do
        charge[raw[i]] = raw[i + 1]
      end
    end
  end
end
if charge == nil or charge['kind'] ~= 'charge' then
  return {'unknown', 0, balance, ''}
end
for name, value in pairs(charge) do
  if type(value) ~= 'string' then bad(where, charge_id .. ' ' .. name, 'is not a string') end
end
local cost = read_int(where, charge_id .. ' cost', charge['cost'], 0, 0, MAX_CREDITS)
local paid_from_balance = -read_int(where, charge_id .. ' amount', charge['amount'], 0, -MAX_CREDITS, 0)
local charged_at = read_int(where, charge_id .. ' at', charge['at'], 0, 0, MAX_INSTANT)
local settle_by = read_int(where, charge_id .. ' settle_by', charge['settle_by'], 0, 0, MAX_INSTANT + 1e12)
if paid_from_balance > cost then bad(where, charge_id .. ' amount', 'is more than its cost') end

if final_cost > cost then
  return {'invalid', 0, balance, ''}
end
if (kind == 'settle' and settle_by > 0 and now > settle_by) or now > charged_at + window then
  return {'late', 0, balance, ''}
end

local give_back = cost - final_cost
local to_balance = math.min(give_back, paid_from_balance)
local to_allowance = give_back - to_balance
-- What goes back to the balance pays an open debt first (a payment's reversal left it), as every
-- credit does (_lib.lua apply_credit).
local debt_paid = math.min(debt, to_balance)
if balance + to_balance - debt_paid > MAX_CREDITS then
  return {'cap', 0, balance, ''}
end

-- Allowance, and a pool member's use, count per period: what belongs to a period that has ended is
-- not given back to the current one.
-- A period restarted since the charge (a new subscription, anchor or period length: bounds 0 until the
-- next charge) is another period. The holds hash names the charge's period; a ledger entry its time.
-- A plan without periods has one, from its last restart (bounds 0): a charge counted in a period of
-- another plan (its period_start not 0) is not in it.
-- The restart counter the charge recorded tells the periods apart where their bounds cannot: a plan
-- without periods, another plan, then a plan without periods again start at 0 both times.
local in_period
local charged_period = nil
if charge['period_start'] then
  charged_period = read_int(where, charge_id .. ' period_start', charge['period_start'], 0, 0, MAX_INSTANT)
end
local charged_restarts = nil
if charge['period_restarts'] then
  charged_restarts = read_int(where, charge_id .. ' period_restarts', charge['period_restarts'], 0, 0, MAX_CREDITS)
end
-- A charge records period_restarts since it counts its request and its credits from the balance in
-- the period's counters: one without it (made before the counters existed) is not in them.
local counted = charged_restarts ~= nil
if period == 'none' then
  in_period = charged_period == nil or charged_period == period_start
elseif period_end == 0 then
  in_period = false
elseif charged_period ~= nil then
  in_period = charged_period == period_start
else
  in_period = charged_at >= period_start and charged_at < period_end
end
if charged_restarts ~= nil and charged_restarts ~= restarts then
  in_period = false
end
if not in_period then
  to_allowance = 0  -- that period's allowance is gone; nothing to give back to
end
give_back = to_balance + to_allowance

local member = charge['member']
local member_used, member_requests = false, false  -- each: the member's count in the current period
if member and in_period and cost > final_cost then
  local m = redis.call('HMGET', members_key, 'used:' .. member, 'requests:' .. member)
  local stored_used = read_member_count(members_key, 'used:' .. member, m[1], 'credits')
  local stored_requests = read_member_count(members_key, 'requests:' .. member, m[2], 'requests')
  -- A value of another period (a new period by the clock, or a restart) is not the charge's; one at 0
  -- has nothing to take back (member_count_in answers 0 for both: nothing is written).
  local used_now = member_count_in(stored_used, restarts, period_start)
  if used_now > 0 then member_used = used_now end
  local requests_now = member_count_in(stored_requests, restarts, period_start)
  if kind == 'refund' and counted and requests_now > 0 then member_requests = requests_now end
end

-- The idempotency key is released only while it still answers for this charge: once its window is
-- over, a retry of the same request may have been charged under it, and releasing that one would let
-- a third try be charged again. (A key of another type is released, as charge.lua would refuse it.)
local release_key = false
if charge['idempotency_key'] and kind == 'refund' then
  local key = charge['idempotency_key']
  release_key = redis.call('TYPE', key)['ok'] ~= 'string' or redis.call('GET', key) == charge_id
end

local route = charge['route'] or 'global'
local usage_name = route .. '|' .. (kind == 'refund' and 'refunded' or 'settled_back')
check_counter(usage_key, usage_name, redis.call('HGET', usage_key, usage_name))
local ledger = ledger_plan(account_key, ledger_key, retention, 1)

-- Writes start below this line.

if to_balance - debt_paid > 0 then
  balance = redis.call('HINCRBY', account_key, 'balance', fmt(to_balance - debt_paid))
end
if debt_paid > 0 then
  redis.call('HSET', account_key, 'debt', fmt(debt - debt_paid))
end
if in_period then
  local changed = {}
  if to_allowance > 0 then
    table.insert(changed, 'used'); table.insert(changed, fmt(math.max(used - to_allowance, 0)))
  end
  if to_balance > 0 and counted then
    table.insert(changed, 'period_from_balance')
    table.insert(changed, fmt(math.max(period_from_balance - to_balance, 0)))
  end
  if kind == 'refund' and counted then
    table.insert(changed, 'period_requests'); table.insert(changed, fmt(math.max(period_requests - 1, 0)))
  end
  if #changed > 0 then redis.call('HSET', account_key, unpack(changed)) end
end

if member_used then
  redis.call('HSET', members_key, 'used:' .. member,
    member_count_text(restarts, period_start, math.max(member_used - (cost - final_cost), 0)))
end
if member_requests then
  redis.call('HSET', members_key, 'requests:' .. member,
    member_count_text(restarts, period_start, math.max(member_requests - 1, 0)))
end

if release_key then
  redis.call('DEL', charge['idempotency_key'])
end

if redis.call('EXISTS', usage_key) == 0 then
  redis.call('HSET', usage_key, usage_name, fmt(give_back))
  redis.call('EXPIRE', usage_key, usage_ttl)
else
  redis.call('HINCRBY', usage_key, usage_name, fmt(give_back))
end
add_total(totals, usage_name, give_back, 0)

local fields = {
  'kind', kind, 'amount', fmt(to_balance - debt_paid), 'balance', fmt(balance), 'cost', fmt(final_cost),
  'to_allowance', fmt(to_allowance), 'at', fmt(now), 'reference', charge_id, 'route', route}
if debt_paid > 0 then
  table.insert(fields, 'debt_paid'); table.insert(fields, fmt(debt_paid))
  table.insert(fields, 'debt'); table.insert(fields, fmt(debt - debt_paid))
end
if member then
  table.insert(fields, 'member'); table.insert(fields, member)
end
local id = ledger_append(account_key, ledger_key, ledger, fields)
redis.call('SET', marker_key, id, 'EX', window * 2 + 60)
if held then
  redis.call('HDEL', holds_key, charge_id)
  redis.call('ZREM', holds_index_key, charge_id)
end
return {'applied', give_back, balance, id}
