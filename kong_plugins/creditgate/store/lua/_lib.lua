-- _lib.lua: functions shared by the credit-gate scripts. The store prepends this file to each script.
--
-- Lua numbers in Redis are doubles, exact up to 2^53. Every amount a script handles stays within
-- MAX_CREDITS (10^15, core/model.py's MAX_CREDITS): a balance, an allowance, a period's use, a member's
-- use; a grant or a settlement that would pass it is refused. Every integer written back goes through
-- fmt() so that it is never written as "1e+15".
--
-- Rule of every script: read and check everything first, write after. A value read from Redis goes
-- through strict_int() (Lua's tonumber accepts "1e3", "0x10", " 5", "inf" and "nan"); a key of the
-- wrong type, or a field that does not parse, ends the script with an error reply "BADDATA <key>
-- <field>: ..." before its first write (Redis does not roll back a script's earlier writes). The store
-- raises StoreDataError for it, and the gate refuses the request (reason account_data_invalid).

local MAX_CREDITS = 1000000000000000    -- 10^15
local MAX_INSTANT = 32503680000         -- 3000-01-01T00:00:00Z, core/model.py's MAX_INSTANT
local MAX_COUNTER_DIGITS = 18           -- a usage counter stays far from int64's end (HINCRBY)
local FOLD_MAX = 256                    -- ledger entries folded by one call at most
local MAX_EXACT = 9007199254740991      -- 2^53 - 1: the largest integer every double step holds exactly

local function bad(key, field, why)
  error({err = 'BADDATA ' .. key .. ' ' .. field .. ': ' .. why})
end

-- An integer written the way fmt() writes it ("-"? digits, no leading zero), within [lo, hi]; nil else.
local function strict_int(s, lo, hi)
  if type(s) ~= 'string' or #s == 0 or #s > 17 then return nil end
  if not string.find(s, '^%-?[1-9][0-9]*$') and s ~= '0' then return nil end
  local n = tonumber(s)
  if n == nil or n < lo or n > hi then return nil end
  return n
end

-- A field of an HMGET reply (false when absent): its integer, `default` when absent; BADDATA otherwise.
local function read_int(key, field, value, default, lo, hi)
  if value == false or value == nil then return default end
  local n = strict_int(value, lo, hi)
  if n == nil then
    bad(key, field, 'is not an integer between ' .. string.format('%d', lo) .. ' and ' .. string.format('%d', hi))
  end
  return n
end

-- An ARGV integer: the caller is the store, so a bad one is a bug (error reply BADARG, not bad data).
local function arg_int(index, lo, hi)
  local n = strict_int(ARGV[index], lo, hi)
  if n == nil then
    error({err = 'BADARG ' .. tostring(index) .. ': not an integer between ' .. string.format('%d', lo) .. ' and ' .. string.format('%d', hi)})
  end
  return n
end

-- A usage counter is only ever increased by HINCRBY (64-bit in Redis, never read into Lua): checked as
-- text, so that the HINCRBY after the first write cannot fail.
local function check_counter(key, field, value)
  if value ~= false and value ~= nil and (type(value) ~= 'string' or #value > MAX_COUNTER_DIGITS
      or not string.find(value, '^%-?[0-9]+$')) then
    bad(key, field, 'is not a counter')
  end
end

-- The key is absent or of type `want` ("hash", "stream", "string"); BADDATA otherwise.
local function check_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    bad(key, '(type)', 'is a ' .. t .. ', not a ' .. want)
  end
end

-- One of the `allowed` words (a table word -> true), `default` when absent; BADDATA otherwise.
local function read_word(key, field, value, default, allowed)
  if value == false or value == nil then return default end
  if not allowed[value] then bad(key, field, 'is not one of the known values') end
  return value
end

local STATUSES = {active = true, trialing = true, past_due = true, suspended = true, canceled = true}
local PERIODS = {day = true, week = true, month = true, none = true}
local FLAGS = {['0'] = true, ['1'] = true}

-- Redis's clock: seconds, and milliseconds. The scripts decide periods with it unless the caller
-- names a time (an operator's tool with its own clock, the tests): one clock per account, since an
-- account lives on one master, whatever the clocks of the gateway nodes say.
local function redis_clock()
  local t = redis.call('TIME')
  local seconds = tonumber(t[1])
  return seconds, seconds * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function fmt(n)
  return string.format('%d', n)
end

local function floordiv(a, b)
  return math.floor(a / b)
end

-- Calendar arithmetic (H. Hinnant's civil algorithms), the twin of creditgate/core/periods.py.
local DAY = 86400

local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = floordiv(y, 400)
  local yoe = y - era * 400
  local mp = (m > 2) and (m - 3) or (m + 9)
  local doy = floordiv(153 * mp + 2, 5) + d - 1
  local doe = yoe * 365 + floordiv(yoe, 4) - floordiv(yoe, 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
  local era = floordiv(z, 146097)
  local doe = z - era * 146097
  local yoe = floordiv(doe - floordiv(doe, 1460) + floordiv(doe, 36524) - floordiv(doe, 146096), 365)
  local doy = doe - (365 * yoe + floordiv(yoe, 4) - floordiv(yoe, 100))
  local mp = floordiv(5 * doy + 2, 153)
  local d = doy - floordiv(153 * mp + 2, 5) + 1
  local m = (mp < 10) and (mp + 3) or (mp - 9)
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end

local function add_months(anchor, months)
  local days = floordiv(anchor, DAY)
  local second_of_day = anchor - days * DAY
  local y, m, d = civil_from_days(days)
  local index = y * 12 + (m - 1) + months
  y = floordiv(index, 12)
  m = index - y * 12 + 1
  local month_days
  if m == 12 then
    month_days = 31
  else
    month_days = days_from_civil(y, m + 1, 1) - days_from_civil(y, m, 1)
  end
  if d > month_days then d = month_days end
  return days_from_civil(y, m, d) * DAY + second_of_day
end

-- The billing period that holds `now`: start, end (end = 0: the period never ends). Periods are the
-- anchor's lattice, before the anchor as after it: an anchor in the future (the next renewal date a
-- billing system sends) means the current period is the one that ends there.
local function window_at(period, anchor, now)
  if period == 'none' then
    return anchor, 0
  end
  if period == 'day' or period == 'week' then
    local length = (period == 'day') and DAY or 7 * DAY
    local start = anchor + floordiv(now - anchor, length) * length
    return start, start + length
  end
  local ay, am = civil_from_days(floordiv(anchor, DAY))
  local ny, nm = civil_from_days(floordiv(now, DAY))
  local months = (ny - ay) * 12 + (nm - am)
  local start = add_months(anchor, months)
  if start > now then
    months = months - 1
    start = add_months(anchor, months)
  end
  return start, add_months(anchor, months + 1)
end

-- The ledger keeps `retention` entries per account. Invariant: the account's `ledger_base` plus the
-- `amount` of every entry still in the stream equals its `balance`. Entries past the retention are
-- folded into `ledger_base` first, at most FOLD_MAX per call and only while the folded sum stays
-- exact, so a call's run time never grows with the account's history (a lowered retention is caught
-- up over the following writes). ledger_plan() reads and checks (before the script's first write);
-- ledger_append() writes the entry and applies the plan.
local function ledger_plan(account_key, ledger_key, retention, adds)
  check_type(ledger_key, 'stream')
  -- The base is added to in Lua (below), so it must be an integer a double holds exactly.
  local base = read_int(account_key, 'ledger_base', redis.call('HGET', account_key, 'ledger_base'), 0,
    -MAX_EXACT, MAX_EXACT)
  local plan = {folded = 0, last = nil}
  if retention <= 0 then return plan end
  local length = redis.call('XLEN', ledger_key)
  local slack = math.min(math.max(math.floor(retention / 16), 1), FOLD_MAX)
  if length + adds <= retention + slack then return plan end
  local count = math.min(length + adds - retention, FOLD_MAX, length)
  if count <= 0 then return plan end
  local folded = 0
  for _, entry in ipairs(redis.call('XRANGE', ledger_key, '-', '+', 'COUNT', count)) do
    local amount = 0
    local entry_fields = entry[2]
    for i = 1, #entry_fields, 2 do
      if entry_fields[i] == 'amount' then
        amount = read_int(ledger_key, entry[1] .. ' amount', entry_fields[i + 1], 0, -MAX_CREDITS, MAX_CREDITS)
      end
    end
    if math.abs(base + folded + amount) > MAX_EXACT - MAX_CREDITS then break end
    folded = folded + amount
    plan.last = entry[1]
  end
  plan.folded = folded
  return plan
end

-- Append one entry (after ledger_plan): the fold planned is applied once, by the first append.
local function ledger_append(account_key, ledger_key, plan, fields)
  local id = redis.call('XADD', ledger_key, '*', unpack(fields))
  if plan.last then
    local ms, seq = string.match(plan.last, '^(%d+)%-(%d+)$')
    redis.call('HINCRBY', account_key, 'ledger_base', fmt(plan.folded))
    redis.call('HSET', account_key, 'ledger_base_id', plan.last)
    -- MINID trims exactly the entries folded: those with an id up to plan.last.
    redis.call('XTRIM', ledger_key, 'MINID', ms .. '-' .. string.format('%d', tonumber(seq) + 1))
    plan.last = nil
  end
  return id
end

-- The period's own figures, reset with `used` whenever the period changes (a new period by the clock,
-- or a restart): requests charged in it and credits its charges took from the balance (those from the
-- allowance are `used`). Each stays within [0, MAX_CREDITS]: a write past it is held at MAX_CREDITS.
local function read_period_counters(key, values)
  return read_int(key, 'period_requests', values[1], 0, 0, MAX_CREDITS),
    read_int(key, 'period_from_balance', values[2], 0, 0, MAX_CREDITS)
end

-- The period's restart counter, `period_restarts`: bumped at each restart (below), recorded with each
-- charge (its hold and its ledger entry), so that settling tells a restarted period from the one the
-- charge was counted in even when both have the same bounds (a plan without periods always starts at
-- 0). After MAX_CREDITS it wraps to 1. `value` is the field as the caller read it (with the rest of
-- the hash); without one it is read here.
local function read_restarts(key, value)
  if value == nil then value = redis.call('HGET', key, 'period_restarts') end
  return read_int(key, 'period_restarts', value, 0, 0, MAX_CREDITS)
end

-- The account's hash as charge.lua and balance.lua read it: one HMGET, every field checked (BADDATA
-- otherwise), absent fields at their defaults. The caller checks the key's type first.
-- The payments' fields: `debt`, credits a payment's reversal took that the balance could not cover
-- (every request is refused while it is above 0, and the next credit pays it first, apply_credit);
-- `frozen`, credits held by open disputes (already out of the balance; shown, never charged from);
-- `grace_until`, until when (Unix seconds, exclusive) a past_due subscription is still charged.
local function read_account(key)
  local f = redis.call('HMGET', key,
    'plan', 'status', 'starts_at', 'anchor', 'expires_at', 'period', 'allowance', 'prepaid',
    'balance', 'used', 'period_start', 'period_end', 'period_requests', 'period_from_balance',
    'period_restarts', 'debt', 'frozen', 'grace_until')
  local a = {plan = f[1] or ''}
  a.status = read_word(key, 'status', f[2], '', STATUSES)
  a.starts_at = read_int(key, 'starts_at', f[3], 0, 0, MAX_INSTANT)
  a.anchor = read_int(key, 'anchor', f[4], a.starts_at, 0, MAX_INSTANT)
  a.expires_at = read_int(key, 'expires_at', f[5], 0, 0, MAX_INSTANT)
  a.period = read_word(key, 'period', f[6], 'none', PERIODS)
  a.allowance = read_int(key, 'allowance', f[7], 0, 0, MAX_CREDITS)
  a.prepaid = read_word(key, 'prepaid', f[8], '0', FLAGS) == '1'
  a.balance = read_int(key, 'balance', f[9], 0, 0, MAX_CREDITS)
  a.used = read_int(key, 'used', f[10], 0, 0, MAX_CREDITS)
  a.period_start = read_int(key, 'period_start', f[11], 0, 0, MAX_INSTANT)
  a.period_end = read_int(key, 'period_end', f[12], 0, 0, MAX_INSTANT)
  if a.period_end ~= 0 and a.period_end <= a.period_start then
    bad(key, 'period_end', 'is not after period_start')
  end
  a.period_requests, a.period_from_balance = read_period_counters(key, {f[13], f[14]})
  a.restarts = read_restarts(key, f[15])
  a.debt = read_int(key, 'debt', f[16], 0, 0, MAX_CREDITS)
  a.frozen = read_int(key, 'frozen', f[17], 0, 0, MAX_CREDITS)
  a.grace_until = read_int(key, 'grace_until', f[18], 0, 0, MAX_INSTANT)
  return a
end

-- A pool member's use and requests in the members hash ("used:<member>", "requests:<member>") belong
-- to one period, named by the account's restart count and the period's start:
-- "<period restarts>:<period start>:<n>". The start alone does not name it: a plan without periods,
-- another plan, then one without periods again start at 0 both times (and day, week, day with one
-- anchor start at the same instant). A value an earlier version wrote, "<period start>:<n>", is read
-- as it was then: in the period with that start, whatever the restarts. Returns false when absent,
-- {restarts (string, nil for the earlier form), start (string), n}; BADDATA when it does not parse.
local function read_member_count(key, field, value, what)
  if value == false or value == nil then return false end
  local r, p, n = string.match(value, '^([^:]*):([^:]*):([^:]*)$')
  if r == nil then
    p, n = string.match(value, '^([^:]*):([^:]*)$')
  elseif strict_int(r, 0, MAX_CREDITS) == nil then
    p = nil
  end
  if p == nil or strict_int(p, 0, MAX_INSTANT) == nil or strict_int(n, 0, MAX_CREDITS) == nil then
    bad(key, field, 'is not "<period restarts>:<period start>:<' .. what .. '>"')
  end
  return {restarts = r, start = p, n = tonumber(n)}
end

-- What a member's value (read_member_count) counts in the period (restarts, start): 0 for another's.
local function member_count_in(stored, restarts, start)
  if not stored or stored.start ~= fmt(start) then return 0 end
  if stored.restarts ~= nil and stored.restarts ~= fmt(restarts) then return 0 end
  return stored.n
end

local function member_count_text(restarts, start, n)
  return fmt(restarts) .. ':' .. fmt(start) .. ':' .. fmt(n)
end

-- The period starts over (usage 0, bounds worked out again by the next charge). `restarts` is the
-- account's restart counter as read (and checked) before the script's first write.
local function restart_period(account_key, restarts)
  local next_restarts = restarts + 1
  if next_restarts > MAX_CREDITS then next_restarts = 1 end
  redis.call('HSET', account_key, 'used', 0, 'period_start', 0, 'period_end', 0, 'period_requests', 0,
    'period_from_balance', 0, 'period_restarts', fmt(next_restarts))
end

-- Write a subscription and its plan's terms into the account's hash. The current period's usage is
-- kept (no allowance is gained by switching plans back and forth) unless the period's anchor or
-- length changes. Returns the previous plan name, or "".
local function write_subscription(account_key, plan, status, starts_at, anchor, expires_at, period, allowance,
                                  prepaid)
  local previous = redis.call('HMGET', account_key, 'plan', 'anchor', 'period')
  local restarts = read_restarts(account_key)  -- checked before the first write
  redis.call('HSET', account_key,
    'plan', plan, 'status', status, 'starts_at', starts_at, 'anchor', anchor, 'expires_at', expires_at,
    'period', period, 'allowance', allowance, 'prepaid', prepaid)
  if previous[2] ~= anchor or previous[3] ~= period then
    restart_period(account_key, restarts)
  end
  return previous[1] or ''
end

-- Write a plan's terms over the account's, keeping its subscription; a change of period length restarts
-- the period. `current_period` is the period the hash held before.
local function write_terms(account_key, plan, period, allowance, prepaid, current_period)
  local restarts = read_restarts(account_key)  -- checked before the first write
  redis.call('HSET', account_key, 'plan', plan, 'period', period, 'allowance', allowance, 'prepaid', prepaid)
  if current_period ~= period then
    restart_period(account_key, restarts)
  end
end

-- The plan index, <prefix>:plan:<name>:accounts (store/keys.py): the set of the accounts whose hash
-- names plan <name>. The script that writes an account's plan moves the account between the sets in
-- the same step, so no order of concurrent changes can leave it out of its plan's set (a plan's new
-- terms reach the accounts of its set; a plan is deleted without --force only when its set is empty).
-- The set of a plan the script reads from the hash cannot be in KEYS: its name is derived from
-- ARGV, `{head, tail, member}` with the key = head .. plan .. tail, as charge.lua derives its events
-- key. On a Redis Cluster the sets live on other slots than the account: the store passes head ""
-- and keeps them outside the script (store/plan_index.py), by the same rule.
local function plan_index_arg(first)
  return {head = ARGV[first], tail = ARGV[first + 1], member = ARGV[first + 2]}
end

-- Before the script's first write: the sets a move from `previous` ("" for none) to `plan` touches.
local function check_plan_index(index, previous, plan)
  if index.head == '' then return end
  if previous ~= '' then check_type(index.head .. previous .. index.tail, 'set') end
  check_type(index.head .. plan .. index.tail, 'set')
end

local function move_plan_index(index, previous, plan)
  if index.head == '' then return end
  if previous ~= '' and previous ~= plan then
    redis.call('SREM', index.head .. previous .. index.tail, index.member)
  end
  redis.call('SADD', index.head .. plan .. index.tail, index.member)
end

-- Change a balance by `amount` (signed), at most once per idempotency key, with its ledger entry.
-- Returns outcome, balance, ledger id: 1 applied; 0 the key was already applied (nothing changed, the
-- first application's ledger id); -1 refused, the balance would go below zero; -2 refused, the balance
-- would pass MAX_CREDITS (nothing changed in either case).
-- An idempotency record (a field of the account's keys hash): what the key's first change did,
-- "<ledger id> <kind> <signed amount>", so that the key answers for that change and refuses any other.
-- Earlier versions wrote the bare ledger id (the old form): such a record is compared through its ledger entry while
-- the ledger keeps it; once the entry is folded away nothing can be compared, and the key is answered as
-- applied (a replay is never applied twice). Returns the ledger id, the kind and the amount (nil, nil
-- when not known) and whether the record is of the old form; BADDATA for anything else.
local CREDIT_KINDS = {grant = true, adjust = true, refund = true}
local MAX_ID_PART = 19  -- digits of a stream id's part that always fit its 64 bits

local function ledger_id_ok(id)
  local ms, seq = string.match(id, '^([0-9]+)%-([0-9]+)$')
  return ms ~= nil and #ms <= MAX_ID_PART and #seq <= MAX_ID_PART
end

local function read_key_record(keys_key, ledger_key, field, value)
  local id, kind, text = string.match(value, '^([^ ]+) ([^ ]+) ([^ ]+)$')
  if id then
    local amount = strict_int(text, -MAX_CREDITS, MAX_CREDITS)
    if not ledger_id_ok(id) or not CREDIT_KINDS[kind] or amount == nil or amount == 0 then
      bad(keys_key, field, 'is not an idempotency record ("<ledger id> <kind> <amount>")')
    end
    return id, kind, amount, false
  end
  if not ledger_id_ok(value) then
    bad(keys_key, field, 'is not an idempotency record ("<ledger id> <kind> <amount>")')
  end
  check_type(ledger_key, 'stream')
  local entry = redis.call('XRANGE', ledger_key, value, value)[1]
  if entry == nil then
    return value, nil, nil, true
  end
  local found = {}
  for i = 1, #entry[2], 2 do
    found[entry[2][i]] = entry[2][i + 1]
  end
  local amount = read_int(ledger_key, value .. ' amount', found['amount'], nil, -MAX_CREDITS, MAX_CREDITS)
  if found['kind'] == nil or amount == nil then
    return value, nil, nil, true
  end
  return value, found['kind'], amount, true
end

-- Change a balance by `amount` (signed), at most once per idempotency key. `namespace` ("" or nil for
-- none) keeps one caller's keys apart from another's: the key is recorded as "<namespace>:<key>". Before
-- namespaces existed every key was recorded as given, so a namespaced key with no record of its own
-- also answers for an old-form record under the bare key (a retry sent across the upgrade); a record of
-- the new form there was written since, by a caller without that namespace, and is not its.
-- Debt is paid first: of a positive change, min(debt, amount) pays the account's `debt` and the rest
-- goes to the balance; a negative change never creates debt (below zero is refused, -1). The ledger
-- entry's `amount` is the balance's change (the ledger's invariant), with `debt_paid` and the `debt`
-- left when it paid some; the idempotency record keeps the change asked for, so a retry compares equal.
-- Returns outcome (1 applied, 0 already applied, -1 below zero, -2 past MAX_CREDITS, -3 the key
-- answers for another change), the balance, the ledger id, the kind and amount of the change the key
-- answers for (the first one's when the key was seen), the debt after, and what this call paid of it.
local function apply_credit(account_key, ledger_key, keys_key, kind, amount, note, key, now, retention,
                            reference, namespace)
  check_type(account_key, 'hash')
  check_type(keys_key, 'hash')
  local held = redis.call('HMGET', account_key, 'balance', 'debt')
  local balance = read_int(account_key, 'balance', held[1], 0, 0, MAX_CREDITS)
  local debt = read_int(account_key, 'debt', held[2], 0, 0, MAX_CREDITS)
  local field = key
  if key ~= '' and namespace ~= nil and namespace ~= '' then
    field = namespace .. ':' .. key
  end
  if key ~= '' then
    local first, first_kind, first_amount
    local value = redis.call('HGET', keys_key, field)
    if value then
      first, first_kind, first_amount = read_key_record(keys_key, ledger_key, field, value)
    elseif field ~= key then
      value = redis.call('HGET', keys_key, key)
      if value then
        local old_form
        first, first_kind, first_amount, old_form = read_key_record(keys_key, ledger_key, key, value)
        if not old_form then first = nil end
      end
    end
    if first then
      if first_kind ~= nil and (first_kind ~= kind or first_amount ~= amount) then
        return -3, balance, first, first_kind, first_amount, debt, 0
      end
      return 0, balance, first, kind, amount, debt, 0
    end
  end
  local paid = 0
  if amount > 0 then paid = math.min(debt, amount) end
  local change = amount - paid
  if balance + change < 0 then
    return -1, balance, '', kind, amount, debt, 0
  end
  if balance + change > MAX_CREDITS then
    return -2, balance, '', kind, amount, debt, 0
  end
  local plan = ledger_plan(account_key, ledger_key, retention, 1)
  if change ~= 0 then
    balance = redis.call('HINCRBY', account_key, 'balance', fmt(change))
  end
  local fields = {'kind', kind, 'amount', fmt(change), 'balance', fmt(balance), 'at', fmt(now)}
  if paid > 0 then
    debt = debt - paid
    redis.call('HSET', account_key, 'debt', fmt(debt))
    table.insert(fields, 'debt_paid'); table.insert(fields, fmt(paid))
    table.insert(fields, 'debt'); table.insert(fields, fmt(debt))
  end
  if note ~= '' then
    table.insert(fields, 'note'); table.insert(fields, note)
  end
  if key ~= '' then
    table.insert(fields, 'key'); table.insert(fields, key)
  end
  if reference ~= '' then
    table.insert(fields, 'reference'); table.insert(fields, reference)
  end
  local id = ledger_append(account_key, ledger_key, plan, fields)
  if key ~= '' then
    redis.call('HSET', keys_key, field, id .. ' ' .. kind .. ' ' .. fmt(amount))
  end
  return 1, balance, id, kind, amount, debt, paid
end

-- A charge's facts for settling it (a table of strings), kept in the account's holds hash until
-- `until_at`; the index (a sorted set by `until_at`) lets each call drop a few expired holds, so the
-- hash holds about the charges of one settlement window and no script walks it.
local HOLD_PURGE = 8
local function remember_hold(holds_key, index_key, id, facts, until_at, now, window)
  local expired = redis.call('ZRANGEBYSCORE', index_key, '-inf', fmt(now), 'LIMIT', 0, HOLD_PURGE)
  if #expired > 0 then
    redis.call('HDEL', holds_key, unpack(expired))
    redis.call('ZREM', index_key, unpack(expired))
  end
  local text = {}
  for name, value in pairs(facts) do
    text[name] = (type(value) == 'number') and fmt(value) or value
  end
  redis.call('HSET', holds_key, id, cjson.encode(text))
  redis.call('ZADD', index_key, fmt(until_at), id)
  redis.call('EXPIRE', holds_key, window + 60)
  redis.call('EXPIRE', index_key, window + 60)
end

-- Whose request charge `id` was: the pool member the ledger entry (or, once the ledger has folded it,
-- the settlement facts of remember_hold) names, "" for the account's own request, nil when neither
-- is kept. Reads only (charge.lua asks it before its first write, for an idempotency key an earlier
-- version kept per account rather than per member).
local function charge_member(ledger_key, holds_key, id)
  check_type(ledger_key, 'stream')
  local entries = redis.call('XRANGE', ledger_key, id, id)
  if #entries > 0 then
    local raw = entries[1][2]
    for i = 1, #raw, 2 do
      if raw[i] == 'member' then return raw[i + 1] end
    end
    return ''
  end
  check_type(holds_key, 'hash')
  local held = redis.call('HGET', holds_key, id)
  if not held then return nil end
  local ok, facts = pcall(cjson.decode, held)
  if not ok or type(facts) ~= 'table' then bad(holds_key, id, 'is not a JSON object') end
  if type(facts.member) == 'string' then return facts.member end
  return ''
end

-- Events out. The charge script raises threshold events in the same atomic step as the charge that
-- crosses them: one XADD to the account's events stream, <prefix>:{<account>}:events, the account
-- hash's neighbour (so the same Cluster slot; the name is derived from KEYS[1], see store/keys.py).
-- What to watch is read from the account's hash (alert_* fields, written by Admin.set_alerts), so
-- the charge's arguments do not change. Each event is raised once per crossing: a balance or an
-- allowance crosses its level in exactly one charge (charges of an account are serialized), and the
-- two events that are about time (expiring, first refusal) remember what they were raised for in the
-- account's hash (alerted_expiring: the expiry told; alerted_refusal: the latest period told). The service delivers the stream (service/events.py).
--
-- Notifications never cost a charge: an alert field that does not parse is read as unset, an events
-- key of another type is skipped, and the XADD is a pcall (a stream that cannot take an entry, such as
-- one at the last possible id, loses that event), so these functions cannot fail after the script's
-- writes.
-- Shadow mode raises nothing. Each events stream keeps EVENTS_MAXLEN entries (about), the service
-- reading far behind that is the operator's alarm.
local EVENTS_MAXLEN = 1000
local ALERT_FIELDS = {'alert_balance_below', 'alert_depleted', 'alert_allowance_percent',
                      'alert_expiring_within', 'alert_first_refusal', 'alerted_expiring', 'alerted_refusal'}

local function events_key_of(account_key)
  return string.sub(account_key, 1, -8) .. 'events'  -- '<base>account' -> '<base>events'
end

local function emit_event(account_key, kind, now, fields)
  local key = events_key_of(account_key)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= 'stream' then return end
  local entry = {'type', kind, 'at', fmt(now)}
  for i = 1, #fields, 2 do
    entry[#entry + 1] = fields[i]
    entry[#entry + 1] = fields[i + 1]
  end
  redis.pcall('XADD', key, 'MAXLEN', '~', EVENTS_MAXLEN, '*', unpack(entry))  -- never fails the charge
end

-- floor(total * percent / 100), exact for any total up to MAX_CREDITS.
local function share_of(total, percent)
  return floordiv(total, 100) * percent + floordiv((total % 100) * percent, 100)
end

-- After a charge is decided allowed (before or after its writes: nothing can refuse it any more).
-- c: now, plan, balance_before, balance_after, allowance, used_before, used_after, period_start,
-- expires_at.
local function charge_events(account_key, c)
  local v = redis.call('HMGET', account_key, unpack(ALERT_FIELDS))
  local level = strict_int(v[1], 1, MAX_CREDITS)
  if level and c.balance_before >= level and c.balance_after < level then
    emit_event(account_key, 'balance.low', c.now, {'balance', fmt(c.balance_after), 'level', fmt(level),
                                                   'plan', c.plan})
  end
  if v[2] == '1' and c.balance_before > 0 and c.balance_after == 0 then
    emit_event(account_key, 'balance.depleted', c.now, {'balance', '0', 'plan', c.plan})
  end
  local percent = strict_int(v[3], 1, 100)
  if percent and c.allowance > 0 then
    local mark = share_of(c.allowance, percent)
    local before = math.max(c.allowance - c.used_before, 0)
    local after = math.max(c.allowance - c.used_after, 0)
    if before >= mark and after < mark then
      emit_event(account_key, 'allowance.low', c.now, {'allowance', fmt(c.allowance), 'remaining', fmt(after),
                 'percent', fmt(percent), 'period_start', fmt(c.period_start), 'plan', c.plan})
    end
  end
  local within = strict_int(v[4], 1, MAX_INSTANT)
  if within and c.expires_at > 0 and c.now < c.expires_at and c.expires_at - c.now <= within
      and v[6] ~= fmt(c.expires_at) then
    redis.call('HSET', account_key, 'alerted_expiring', fmt(c.expires_at))
    emit_event(account_key, 'subscription.expiring', c.now, {'expires_at', fmt(c.expires_at),
                                                             'plan', c.plan})
  end
end

-- The day's totals over every account (store/totals.py), counted in the same step as the account's own
-- usage hash: <totals> hash "<route>|<field>" -> count (a pool member's own counters are left out: the
-- pool's count them), <totals>:accounts sorted set account -> credits charged that day, <totals>:active
-- HyperLogLog of the accounts counted. `t` is {key, ttl, account} and is marked once the sorted set and
-- the HyperLogLog have the account. They are statistics: the hash's type is checked before the first
-- write (check_type, BADDATA), and a field that is not a counter, or a sorted set or a HyperLogLog of
-- another type, is left as it is (pcall): counting them never ends a script after a write.
local function add_total(t, field, amount, credits)
  if t.key == nil or t.key == '' then return end
  if not t.seen then
    t.seen = true
    t.created = redis.call('EXISTS', t.key) == 0
    redis.pcall('PFADD', t.key .. ':active', t.account)
  end
  if field ~= '' then
    local count = redis.call('HGET', t.key, field)
    if count == false or (#count <= MAX_COUNTER_DIGITS and string.find(count, '^%-?[0-9]+$')) then
      redis.call('HINCRBY', t.key, field, fmt(amount))
    end
  end
  if credits > 0 or not t.ranked then
    t.ranked = true
    redis.pcall('ZINCRBY', t.key .. ':accounts', fmt(credits), t.account)
  end
  if t.created and not t.expiring then
    t.expiring = true
    redis.call('EXPIRE', t.key, t.ttl)
    redis.pcall('EXPIRE', t.key .. ':accounts', t.ttl)
    redis.pcall('EXPIRE', t.key .. ':active', t.ttl)
  end
end

-- After a refusal's own counters: the refusal counted by reason ("<route>|refused:<reason>", read by
-- /metrics), and the account's first refusal in its period (the UTC day when it has no period).
-- r: route, reason, shadow, now, plan, period, anchor, period_start, period_end, totals (add_total's t).
local function refusal_events(account_key, usage_key, r)
  local field = r.route .. '|' .. (r.shadow and 'shadow_refused:' or 'refused:') .. r.reason
  local count = redis.call('HGET', usage_key, field)
  if count == false or (#count <= MAX_COUNTER_DIGITS and string.find(count, '^%-?[0-9]+$')) then
    redis.call('HINCRBY', usage_key, field, 1)
  end
  if r.totals then add_total(r.totals, field, 1, 0) end
  if r.shadow then return end
  local v = redis.call('HMGET', account_key, 'alert_first_refusal', 'alerted_refusal')
  if v[1] ~= '1' then return end
  local start = r.period_start
  if r.period == 'none' then
    start = r.now - r.now % DAY
  elseif r.period_end == 0 or r.now >= r.period_end then
    start = window_at(r.period, r.anchor, r.now)
  end
  -- Told once per period, and never again for an earlier one: a caller's clock behind another's (or a
  -- day back, for an account without a period) must not make the period already told new again.
  local told = strict_int(v[2], 0, MAX_INSTANT)
  if told and start <= told then return end
  redis.call('HSET', account_key, 'alerted_refusal', fmt(start))
  emit_event(account_key, 'account.refused', r.now, {'reason', r.reason, 'period_start', fmt(start),
                                                     'plan', r.plan})
end
