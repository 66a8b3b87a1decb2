-- charge.lua: decide and charge one request, atomically.
--
-- KEYS[1]  the paying account's hash (subscription, plan terms, balance, period usage and counters)
-- KEYS[2]  the paying account's ledger stream
-- KEYS[3]  the paying account's usage hash for the UTC day of `now`
-- KEYS[4]  the idempotency key of this request: the consumer's (the pool member's, or the account's
--          own when ARGV[9] is ""), bound to the route and the cost (a string key; unused when
--          ARGV[8] is 0)
-- KEYS[5]  the paying account's members hash (pools: caps and period usage per member)
-- KEYS[6]  the paying account's holds hash (charge id -> what settling it needs)
-- KEYS[7]  the paying account's holds index (sorted set: charge id by the end of its settle window)
-- KEYS[8]  the store marker of the account's slot (operators' tools write it; see store/keys.py)
-- KEYS[9]  where versions before member-bound keys kept this idempotency key: per account, bound to
--          the route and the cost only (a string key, read only; unused when ARGV[8] is 0)
-- ARGV[1]  now: Unix seconds to decide with, or "" for Redis's own clock (what the gate sends)
-- ARGV[2]  cost: credits, integer >= 0 (for a hold: the most the request may cost)
-- ARGV[3]  entitled: the plans that may use this route, separated by ",", or "" for any plan
-- ARGV[4]  route: where the request was charged ("route:<id>", "service:<id>", "global"), for usage
--          and ledger
-- ARGV[5]  retention: ledger entries kept per account
-- ARGV[6]  usage_ttl: seconds a day's usage hash is kept
-- ARGV[7]  shadow: the mode, "charge", or "shadow" (decide, count in usage, write nothing else)
-- ARGV[8]  idempotency_window: seconds a charge answers for its idempotency key, 0 = off
-- ARGV[9]  member: the pool member the request is from, or "" when the account pays for itself
-- ARGV[10] hold_seconds: seconds within which the charge may be settled to a lower cost, 0 = final
-- ARGV[11] settle_window: seconds the charge can be settled or refunded in (its facts are kept in
--          the holds hash that long), 0 = never settled
-- ARGV[12] token_seconds: how long the token's ledger id is kept
-- KEYS[10] the day's totals over every account on this account's slot (store/totals.py; "" for none):
--          what count_usage adds to the account's usage hash, a pool member's own counters left out,
--          also added there in this same step (add_total in _lib.lua)
-- ARGV[13] account: the paying account's name, for the day's totals
-- The last three change from one charge to the next; the caller packs what comes before them once
-- (store/hot_path.py):
-- ARGV[14] deadline: milliseconds on Redis's clock after which the caller has stopped waiting, 0 = none
-- ARGV[15] token: an id for this charge (hex), or "" for none. A charge that charges keeps its
--          ledger id under <base>token:<token> for ARGV[12] seconds; a token with a void marker
--          (<base>void:<token>, void.lua) is refused deadline_passed with nothing written. The caller
--          voids a charge whose reply it did not get, so that it is charged and answered, or neither.
--          A replay by request id (ARGV[16]) keeps the earlier charge's ledger id under this token.
-- ARGV[16] request_id: Kong's id of the request (hex), or "" for none: a charge that charges keeps its
--          ledger id under <base>rid:<request_id> for ARGV[12] seconds, and a charge sent again with
--          the same request id is a replay of it (see "Idempotency")
--
-- Returns {allowed (1|0), reason ("" when allowed), plan, status, cost, balance, allowance,
--          allowance_remaining, period_end, starts_at, expires_at, now, from_allowance, from_balance,
--          charge_id (the ledger id, "" when nothing was charged), period_start, replayed (1 when an
--          earlier charge with this idempotency key answered), member_used, member_cap (-1: no cap),
--          debt (credits the account owes), redis_ms (Redis's clock in milliseconds)}: the fields of
--          ChargeResult in its order, then Redis's clock, written by `answer` only and read by name by
--          one Python function (charge_reply in store/replies.py)
-- or the error reply "BADDATA <key> <field>: ..." (see _lib.lua), with nothing written. An account
-- without a subscription in a Redis without the store marker answers reason "store_empty" with nothing
-- written: a Redis restarted empty is told from an account that never subscribed.
--
-- A request is charged while the subscription is active or trialing, or past_due before its
-- `grace_until` (the Stripe lifecycle sets it when a renewal fails), and while the account owes no
-- `debt` (a payment's reversal that the balance could not cover; the next credit pays it first): a
-- debt refuses every request, "debt_outstanding", after the subscription's checks and before the
-- period, the member's cap, a replay, the allowance and the balance are asked.
-- The allowance of the current period pays first, prepaid balance the rest (when the plan allows
-- prepaid use). Nothing is written unless the whole cost can be paid: the balance never goes below
-- zero, a pool member never goes over its cap, and a refused request is never charged. Everything the
-- script reads is checked before its first write.
--
-- Periods. Redis's clock decides (one clock per account, whatever the gateway nodes' clocks say). The
-- period rolls over lazily on the first request at or after its end; a time before the current
-- period's start (a caller-given `now` behind another's) is counted in the current period: a period
-- never moves backwards, so no clock can restart an allowance. The period containing `now` is found in
-- the anchor's lattice, also before the anchor (see window_at in _lib.lua).
--
-- Idempotency. A request whose key (KEYS[4]) answers for an earlier charge is a replay: it is charged
-- nothing, and is answered as a replay (allowed, the first charge's id, replayed 1) only while the
-- request would still be allowed: it passes the same checks as any request (subscription, status,
-- start, expiry, entitlement, debt) and the member's cap as a request that adds nothing (the member's
-- use in the current period must still fit under its cap: its own charge, already counted, does). The
-- allowance and the balance are not asked: the first charge paid. A replay that fails a check is
-- refused with that check's reason and charges nothing; its key is kept, so that a retry once the
-- request is allowed again answers with the first charge rather than charging twice. So a key is
-- charged at most once in its window, and a refusal never comes with a charge. A refund releases the
-- key (settle.lua).
-- A key belongs to the consumer: one pool member's key is another's new request. Keys written before
-- that (KEYS[9], per account) are read when KEYS[4] holds none, for at most one window after the
-- upgrade, and never written: such a key answers for this consumer when its charge was this
-- consumer's (the ledger entry or the settlement facts name the member, see charge_member in
-- _lib.lua); a charge of another consumer makes this one a new request. When neither is kept any more
-- (the entry folded out of the ledger, no settlement facts), it answers for the account's own
-- requests and for a member that has been charged before, as it did before the upgrade; a member
-- never charged cannot have made it and is a new request.
--
-- The deadline closes the "refused but charged" hole: a caller that timed out answers 503 and
-- proxies nothing, so a script that only runs after that (Redis was paused, or the command sat in a
-- slow network) must not charge. It refuses with reason "deadline_passed" and writes nothing.
--
-- The period's counters (period_requests, period_from_balance; see _lib.lua) count the charges
-- allowed in this same step, a cost of 0 included; a refusal, a replay and shadow mode count nothing.
-- They reset with `used`. A pool member's requests are counted beside its use ("requests:<member>"
-- beside "used:<member>", each "<period restarts>:<period start>:<n>", see _lib.lua), and both start
-- over in a new period and at a restart.
--
-- Events and reasons (charge_events and refusal_events in _lib.lua): a charge that crosses one of the
-- account's alert levels adds a threshold event to <prefix>:{<account>}:events, and a refusal is also
-- counted by reason in the usage hash ("<route>|refused:<reason>"); both in this same step, neither can
-- fail the charge, and neither changes the reply.

local account_key, ledger_key, usage_key, idempotency_key, members_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local holds_key, holds_index_key, legacy_idempotency_key = KEYS[6], KEYS[7], KEYS[9]
local redis_now, redis_ms = redis_clock()
local now = redis_now
if ARGV[1] ~= '' then now = arg_int(1, 0, MAX_INSTANT) end
local cost = arg_int(2, 0, MAX_CREDITS)
local entitled = ARGV[3]
local route = ARGV[4]
local retention = arg_int(5, 0, 1e12)
local usage_ttl = arg_int(6, 1, 1e12)
local shadow = ARGV[7] == 'shadow'
local idempotency_window = arg_int(8, 0, 1e12)
local member = ARGV[9]
local hold_seconds = arg_int(10, 0, 1e12)
local settle_window = arg_int(11, 0, 1e12)
local token_seconds = arg_int(12, 1, 1e9)
-- The day's totals over every account (KEYS[10]), counted under the account's name; none without it.
local account = ARGV[13]
local deadline = arg_int(14, 0, 1e15)
-- The charge's token (a random id the caller gives each charge), and the keys it names in the account's
-- slot: <base>token:<token> (this charge's ledger id, once charged) and <base>void:<token>.
local token = ARGV[15]
local token_key, void_key = '', ''
local request_id = ARGV[16] or ''
local request_key = ''
if request_id ~= '' then request_key = string.sub(KEYS[1], 1, -8) .. 'rid:' .. request_id end
local totals = {key = account ~= '' and KEYS[10] or '', ttl = usage_ttl, account = account}
if token ~= '' then
  local base = string.sub(KEYS[1], 1, -8)  -- '<base>account' -> '<base>'
  token_key, void_key = base .. 'token:' .. token, base .. 'void:' .. token
end

-- The account's figures the reply carries, at what a charge that has read nothing answers; read below.
local plan, status, balance, allowance, used = '', '', 0, 0, 0
local period_start, period_end, starts_at, expires_at = 0, 0, 0, 0
local member_used, member_cap, debt = 0, -1, 0

-- The reply, in the one order of the header's "Returns".
local function answer(allowed, reason, from_allowance, from_balance, charge_id, replayed)
  local allowance_remaining = allowance - used
  if allowance_remaining < 0 then allowance_remaining = 0 end
  return {allowed, reason, plan, status, cost, balance, allowance, allowance_remaining, period_end,
          starts_at, expires_at, now, from_allowance, from_balance, charge_id, period_start, replayed,
          member_used, member_cap, debt, redis_ms}
end

if deadline > 0 and redis_ms > deadline then
  return answer(0, 'deadline_passed', 0, 0, '', 0)
end
-- A charge the caller has voided (store/voids.py: it stopped waiting before this ran) never charges.
if token ~= '' and redis.call('EXISTS', void_key) == 1 then
  return answer(0, 'deadline_passed', 0, 0, '', 0)
end

-- Read and check everything.
check_type(account_key, 'hash')
check_type(usage_key, 'hash')
check_type(members_key, 'hash')
if totals.key ~= '' then check_type(totals.key, 'hash') end
if idempotency_window > 0 then
  check_type(idempotency_key, 'string')
  check_type(legacy_idempotency_key, 'string')
end
if settle_window > 0 then
  check_type(holds_key, 'hash')
  check_type(holds_index_key, 'zset')
end

local a = read_account(account_key)
plan, status, starts_at, expires_at = a.plan, a.status, a.starts_at, a.expires_at
allowance, balance, used = a.allowance, a.balance, a.used
period_start, period_end = a.period_start, a.period_end
local anchor, period, prepaid, restarts = a.anchor, a.period, a.prepaid, a.restarts
local period_requests, period_from_balance = a.period_requests, a.period_from_balance
debt = a.debt

local function usage_name(field)
  return route .. '|' .. field
end
local usage_fields = {'requests', 'credits', 'refused', 'replayed', 'shadow_allowed', 'shadow_credits',
                      'shadow_refused'}
if member ~= '' then
  for _, name in ipairs({'requests', 'credits', 'refused'}) do
    table.insert(usage_fields, 'member:' .. member .. '|' .. name)
  end
end
local usage_names = {}
for i, name in ipairs(usage_fields) do usage_names[i] = usage_name(name) end
local usage_values = redis.call('HMGET', usage_key, unpack(usage_names))
for i, name in ipairs(usage_names) do check_counter(usage_key, name, usage_values[i]) end

local member_used_field, member_stored = '', false
local member_requests_field, member_requests_stored = '', false
if member ~= '' then
  member_used_field = 'used:' .. member
  member_requests_field = 'requests:' .. member
  local m = redis.call('HMGET', members_key, 'cap:' .. member, member_used_field, member_requests_field)
  member_cap = read_int(members_key, 'cap:' .. member, m[1], -1, 0, MAX_CREDITS)
  member_stored = read_member_count(members_key, member_used_field, m[2], 'credits')
  member_requests_stored = read_member_count(members_key, member_requests_field, m[3], 'requests')
end

-- The charge an idempotency key answers for (see "Idempotency" above), or false.
local function charge_at(key)
  local id = redis.call('GET', key)
  if id and not ledger_id_ok(id) then bad(key, '(value)', 'is not a ledger id') end
  return id
end
local earlier = false
-- The same request run again (Kong runs an event again on a respawned plugin server; a gate with
-- bypass_witness sends Kong's request id): a replay of its charge, whose token becomes this one's too,
-- so that voiding this token gives that charge back.
local by_request = false
if request_key ~= '' and not shadow then
  check_type(request_key, 'string')
  earlier = charge_at(request_key)
  by_request = earlier ~= false
end
if not earlier and idempotency_window > 0 and not shadow then
  earlier = charge_at(idempotency_key)
  if not earlier then
    local before = charge_at(legacy_idempotency_key)
    if before then
      local owner = charge_member(ledger_key, holds_key, before)
      local charged_before = member == '' or member_stored or member_requests_stored
      if owner == member or (owner == nil and charged_before) then earlier = before end
    end
  end
end

-- Writes start below this line.

local usage_checked = false
local function count_usage(field, amount)
  local name = usage_name(field)
  if string.sub(field, 1, 7) ~= 'member:' then
    add_total(totals, name, amount, field == 'credits' and amount or 0)
  end
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

local function refuse(reason)
  count_usage(shadow and 'shadow_refused' or 'refused', 1)
  if member ~= '' then
    count_usage('member:' .. member .. '|refused', 1)
  end
  refusal_events(account_key, usage_key, {route = route, reason = reason, shadow = shadow, now = now, plan = plan,
    period = period, anchor = anchor, period_start = period_start, period_end = period_end, totals = totals})
  return answer(0, reason, 0, 0, '', 0)
end

if plan == '' then
  if redis.call('EXISTS', KEYS[8]) == 0 then
    return answer(0, 'store_empty', 0, 0, '', 0)
  end
  return refuse('no_subscription')
end
local graced = status == 'past_due' and now < a.grace_until
if (status ~= 'active' and status ~= 'trialing' and not graced) or now < starts_at then
  return refuse('subscription_inactive')
end
if expires_at > 0 and now >= expires_at then
  return refuse('subscription_expired')
end
if entitled ~= '' and not string.find(',' .. entitled .. ',', ',' .. plan .. ',', 1, true) then
  return refuse('plan_not_entitled')
end
if debt > 0 then
  return refuse('debt_outstanding')
end

-- The ledger's fold is planned (read, checked) before any write of the charge itself.
local ledger = nil
if not shadow then ledger = ledger_plan(account_key, ledger_key, retention, 2) end

if period ~= 'none' and (period_end == 0 or now >= period_end) then
  period_start, period_end = window_at(period, anchor, now)
  local previous_used = used
  used, period_requests, period_from_balance = 0, 0, 0
  if not shadow then
    redis.call('HSET', account_key, 'used', 0, 'period_start', fmt(period_start), 'period_end', fmt(period_end),
      'period_requests', 0, 'period_from_balance', 0)
    ledger_append(account_key, ledger_key, ledger, {
      'kind', 'period_reset', 'amount', '0', 'balance', fmt(balance), 'allowance', fmt(allowance),
      'allowance_used', fmt(previous_used), 'at', fmt(now), 'plan', plan})
  end
end

-- A pool member's use is counted per period of the pool's plan, and capped when the pool says so. A
-- replay adds nothing to it.
if member ~= '' then
  member_used = member_count_in(member_stored, restarts, period_start)
  local adds = earlier and 0 or cost
  if (member_cap >= 0 and member_used + adds > member_cap) or member_used + adds > MAX_CREDITS then
    return refuse('member_cap_reached')
  end
end

-- A retry of a request that was already charged, and would still be allowed: answered with that
-- charge, not charged again.
if earlier then
  count_usage('replayed', 1)
  if by_request and token ~= '' then
    redis.call('SET', token_key, earlier, 'EX', token_seconds)
  end
  return answer(1, '', 0, 0, earlier, 1)
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

-- Threshold events (see _lib.lua): decided here, where nothing can refuse the charge any more.
charge_events(account_key, {now = now, plan = plan, balance_before = balance, balance_after = balance - from_balance,
  allowance = allowance, used_before = used, used_after = used + from_allowance, period_start = period_start,
  expires_at = expires_at})

count_usage('requests', 1)
-- The period's figures, in one write (each read and checked above).
used = used + from_allowance
balance = balance - from_balance
local changed = {'period_requests', fmt(math.min(period_requests + 1, MAX_CREDITS))}
if from_allowance > 0 then
  table.insert(changed, 'used'); table.insert(changed, fmt(used))
end
if from_balance > 0 then
  table.insert(changed, 'balance'); table.insert(changed, fmt(balance))
  table.insert(changed, 'period_from_balance')
  table.insert(changed, fmt(math.min(period_from_balance + from_balance, MAX_CREDITS)))
end
redis.call('HSET', account_key, unpack(changed))
if member ~= '' then
  count_usage('member:' .. member .. '|requests', 1)
  local member_requests = member_count_in(member_requests_stored, restarts, period_start)
  local member_fields = {member_requests_field,
                         member_count_text(restarts, period_start, math.min(member_requests + 1, MAX_CREDITS))}
  if cost > 0 then
    member_used = member_used + cost
    table.insert(member_fields, member_used_field)
    table.insert(member_fields, member_count_text(restarts, period_start, member_used))
  end
  redis.call('HSET', members_key, unpack(member_fields))
end
if cost == 0 then
  return answer(1, '', 0, 0, '', 0)
end

count_usage('credits', cost)
local fields = {
  'kind', 'charge', 'amount', fmt(-from_balance), 'balance', fmt(balance), 'cost', fmt(cost),
  'from_allowance', fmt(from_allowance), 'at', fmt(now), 'plan', plan, 'route', route,
  'period_restarts', fmt(restarts)}
if member ~= '' then
  count_usage('member:' .. member .. '|credits', cost)
  table.insert(fields, 'member'); table.insert(fields, member)
end
if hold_seconds > 0 then
  table.insert(fields, 'settle_by'); table.insert(fields, fmt(now + hold_seconds))
end
if idempotency_window > 0 then
  table.insert(fields, 'idempotency_key'); table.insert(fields, idempotency_key)
end
local ledger_id = ledger_append(account_key, ledger_key, ledger, fields)
if token ~= '' then
  redis.call('SET', token_key, ledger_id, 'EX', token_seconds)  -- what void.lua finds
end
if request_key ~= '' then
  redis.call('SET', request_key, ledger_id, 'EX', token_seconds)  -- what the same request run again finds
end
if idempotency_window > 0 then
  redis.call('SET', idempotency_key, ledger_id, 'EX', idempotency_window)
end
if settle_window > 0 then
  -- What settling needs, kept for the settlement window whatever the ledger's retention drops.
  local facts = {cost = cost, amount = -from_balance, at = now, period_start = period_start,
                 period_restarts = restarts}
  if member ~= '' then facts.member = member end
  if hold_seconds > 0 then facts.settle_by = now + hold_seconds end
  if idempotency_window > 0 then facts.idempotency_key = idempotency_key end
  facts.route = route
  remember_hold(holds_key, holds_index_key, ledger_id, facts, now + settle_window, now, settle_window)
end
return answer(1, '', from_allowance, from_balance, ledger_id, 0)
