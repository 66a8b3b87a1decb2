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
