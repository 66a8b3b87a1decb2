-- _lib.lua: functions shared by the credit-gate scripts. The store prepends this file to each script.
--
-- Lua numbers in Redis are doubles: every amount stays below 2^53 (the Python side caps credits at
-- 10^15), and every integer written back goes through fmt() so that it is never written as "1e+15".

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

-- The billing period that holds `now`: start, end (end = 0: the period never ends).
local function window_at(period, anchor, now)
  if period == 'none' then
    return anchor, 0
  end
  if now < anchor then now = anchor end
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

-- Append one entry to an account's ledger and keep the ledger within `retention` entries.
-- Invariant: the account's `ledger_base` plus the `amount` of every entry still in the stream equals
-- its `balance`. Entries trimmed for retention are first folded into `ledger_base`, in batches, so the
-- fold runs on one write in many.
local function ledger_append(account_key, ledger_key, retention, fields)
  local id = redis.call('XADD', ledger_key, '*', unpack(fields))
  if retention > 0 then
    local length = redis.call('XLEN', ledger_key)
    local batch = math.max(floordiv(retention, 16), 1)
    if length > retention + batch then
      local old = redis.call('XRANGE', ledger_key, '-', '+', 'COUNT', length - retention)
      local folded = 0
      local last = ''
      for _, entry in ipairs(old) do
        local entry_fields = entry[2]
        for i = 1, #entry_fields, 2 do
          if entry_fields[i] == 'amount' then
            folded = folded + tonumber(entry_fields[i + 1])
          end
        end
        last = entry[1]
      end
      redis.call('HINCRBY', account_key, 'ledger_base', fmt(folded))
      redis.call('HSET', account_key, 'ledger_base_id', last)
      redis.call('XTRIM', ledger_key, 'MAXLEN', retention)
    end
  end
  return id
end

-- The period starts over (usage 0, bounds worked out again by the next charge).
local function restart_period(account_key)
  redis.call('HSET', account_key, 'used', 0, 'period_start', 0, 'period_end', 0)
end

-- Write a subscription and its plan's terms into the account's hash. The current period's usage is
-- kept (no allowance is gained by switching plans back and forth) unless the period's anchor or
-- length changes. Returns the previous plan name, or "".
local function write_subscription(account_key, plan, status, starts_at, anchor, expires_at, period, allowance,
                                  prepaid)
  local previous = redis.call('HMGET', account_key, 'plan', 'anchor', 'period')
  redis.call('HSET', account_key,
    'plan', plan, 'status', status, 'starts_at', starts_at, 'anchor', anchor, 'expires_at', expires_at,
    'period', period, 'allowance', allowance, 'prepaid', prepaid)
  if previous[2] ~= anchor or previous[3] ~= period then
    restart_period(account_key)
  end
  return previous[1] or ''
end

-- Write a plan's terms over the account's, keeping its subscription; a change of period length restarts
-- the period. `current_period` is the period the hash held before.
local function write_terms(account_key, plan, period, allowance, prepaid, current_period)
  redis.call('HSET', account_key, 'plan', plan, 'period', period, 'allowance', allowance, 'prepaid', prepaid)
  if current_period ~= period then
    restart_period(account_key)
  end
end

-- Change a balance by `amount` (signed), at most once per idempotency key, with its ledger entry.
-- Returns outcome, balance, ledger id: 1 applied; 0 the key was already applied (nothing changed, the
-- first application's ledger id); -1 refused, the balance would go below zero (nothing changed).
local function apply_credit(account_key, ledger_key, keys_key, kind, amount, note, key, now, retention,
                            reference)
  local balance = tonumber(redis.call('HGET', account_key, 'balance')) or 0
  if key ~= '' then
    local first = redis.call('HGET', keys_key, key)
    if first then
      return 0, balance, first
    end
  end
  if balance + amount < 0 then
    return -1, balance, ''
  end
  balance = redis.call('HINCRBY', account_key, 'balance', fmt(amount))
  local fields = {'kind', kind, 'amount', fmt(amount), 'balance', fmt(balance), 'at', fmt(now)}
  if note ~= '' then
    table.insert(fields, 'note'); table.insert(fields, note)
  end
  if key ~= '' then
    table.insert(fields, 'key'); table.insert(fields, key)
  end
  if reference ~= '' then
    table.insert(fields, 'reference'); table.insert(fields, reference)
  end
  local id = ledger_append(account_key, ledger_key, retention, fields)
  if key ~= '' then
    redis.call('HSET', keys_key, key, id)
  end
  return 1, balance, id
end
