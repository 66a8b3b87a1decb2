-- payment.lua: one event on one payment of one account, in one step: the payment granted once, its
-- reversals merged, and the account moved by what the payment's reversals should have taken and held
-- minus what they had (creditgate/core/payments.py states the rules; apply_event is this script's
-- reference and tests hold the two together).
--
-- KEYS[1]  the account's hash (balance, debt, frozen)
-- KEYS[2]  the account's ledger stream
-- KEYS[3]  the account's payments hash: payment key -> the payment's record (JSON, numbers as text)
-- ARGV[1]  the payment's key (its canonical reference)
-- ARGV[2]  now: Unix seconds
-- ARGV[3]  ledger retention
-- ARGV[4]  "pay" to grant the payment (once), "" when the event only reverses, "adopt" for a payment the
--          version before granted (recorded as granted, its credits not given again)
-- ARGV[5]  amount paid (smallest currency unit, 0..MAX_AMOUNT)
-- ARGV[6]  currency
-- ARGV[7]  credits the payment bought (0..MAX_CREDITS)
-- ARGV[8]  the reversals the event brings: a JSON array of {id, kind, amount, status, at, ended, rank,
--          effect, prior} (effect "take", "hold" or "none", rank how far the status has gone: both from
--          core/payments.py; prior, optional: credits the version before took for it itself)
-- ARGV[9]  note for the ledger
--
-- A record: {granted "0"|"1", paid, currency, credits, taken, held, reversals {id -> {kind, amount, status,
-- at, rank, effect, ended}}}. Of the events about one reversal, the one that has gone furthest stands (rank, then
-- amount, status, time); the refunded total of a charge ("refunded_total") ranks by its event's time.
--
-- Returns {outcome, balance, debt, frozen, granted, taken, held, ledger id}: outcome "applied" (something
-- changed), "unchanged" (a duplicate or an older event), "waiting" (reversals kept until the payment is
-- granted), "balance_cap" (the grant would pass MAX_CREDITS: nothing written). taken and held are this
-- event's changes (negative: given back, released).

local MAX_AMOUNT = MAX_CREDITS  -- core/payments.py's MAX_AMOUNT: below 2^51, what mul_div needs

local account_key, ledger_key, payments_key = KEYS[1], KEYS[2], KEYS[3]
local payment = ARGV[1]
local now = arg_int(2, 0, MAX_INSTANT)
local retention = arg_int(3, 0, 1e12)
local pay = ARGV[4] == 'pay' or ARGV[4] == 'adopt'
local adopt = ARGV[4] == 'adopt'
local paid_arg = arg_int(5, 0, MAX_AMOUNT)
local currency_arg = ARGV[6]
local credits_arg = arg_int(7, 0, MAX_CREDITS)
local note = ARGV[9]

local EFFECTS = {take = true, hold = true, none = true}
local KINDS = {refund = true, dispute = true, refunded_total = true}

-- floor(a * b / m) exactly, for 0 <= a, 0 <= b <= m <= MAX_AMOUNT: a * b may pass 2^53, so the product
-- is built bit by bit with a remainder that stays below 2m.
local function mul_div(a, b, m)
  if m <= 0 or a <= 0 or b <= 0 then return 0 end
  local whole = math.floor(a / m)
  local r = a - whole * m
  local bits = {}
  local rest = b
  while rest > 0 do
    local bit = rest % 2
    bits[#bits + 1] = bit
    rest = (rest - bit) / 2
  end
  local q, rem = 0, 0
  for i = #bits, 1, -1 do
    q, rem = q * 2, rem * 2
    if rem >= m then q, rem = q + 1, rem - m end
    if bits[i] == 1 then
      rem = rem + r
      if rem >= m then q, rem = q + 1, rem - m end
    end
  end
  return whole * b + q
end

-- A reversal as the record or the caller has it, checked; `where` names it for BADDATA.
local function read_reversal(key, where, r)
  if type(r) ~= 'table' or not KINDS[r.kind] or not EFFECTS[r.effect] or type(r.status) ~= 'string' then
    bad(key, where, 'is not a reversal {kind, amount, status, at, rank, effect}')
  end
  return {
    kind = r.kind, status = r.status, effect = r.effect,
    amount = read_int(key, where .. ' amount', r.amount, nil, 0, MAX_AMOUNT),
    at = read_int(key, where .. ' at', r.at, nil, 0, MAX_INSTANT),
    rank = read_int(key, where .. ' rank', r.rank, nil, 0, MAX_CREDITS),
    ended = read_int(key, where .. ' ended', r.ended, 0, 0, MAX_INSTANT),
  }
end

-- Whether reversal `a` has gone further than `b` (core/payments.py order_key: rank, amount, status,
-- time): the furthest wins, in any order of the events.
local function after(a, b)
  if a.rank ~= b.rank then return a.rank > b.rank end
  if a.amount ~= b.amount then return a.amount > b.amount end
  if a.status ~= b.status then return a.status > b.status end
  if a.at ~= b.at then return a.at > b.at end
  return a.ended > b.ended
end

local function decode(key, where, text)
  local ok, value = pcall(cjson.decode, text)
  if not ok or type(value) ~= 'table' then bad(key, where, 'is not JSON') end
  return value
end

-- Read and check everything.
check_type(account_key, 'hash')
check_type(payments_key, 'hash')
local f = redis.call('HMGET', account_key, 'balance', 'debt', 'frozen')
local balance = read_int(account_key, 'balance', f[1], 0, 0, MAX_CREDITS)
local debt = read_int(account_key, 'debt', f[2], 0, 0, MAX_CREDITS)
local frozen = read_int(account_key, 'frozen', f[3], 0, 0, MAX_CREDITS)

local record = {granted = false, paid = 0, currency = '', credits = 0, taken = 0, held = 0, reversals = {}}
local stored = redis.call('HGET', payments_key, payment)
if stored then
  local r = decode(payments_key, payment, stored)
  record.granted = r.granted == '1'
  if record.granted then
    record.paid = read_int(payments_key, payment .. ' paid', r.paid, nil, 0, MAX_AMOUNT)
    record.credits = read_int(payments_key, payment .. ' credits', r.credits, nil, 0, MAX_CREDITS)
    record.taken = read_int(payments_key, payment .. ' taken', r.taken, nil, 0, MAX_CREDITS)
    record.held = read_int(payments_key, payment .. ' held', r.held, nil, 0, MAX_CREDITS)
    if type(r.currency) ~= 'string' then bad(payments_key, payment, 'has no currency') end
    record.currency = r.currency
  end
  if type(r.reversals) ~= 'table' then bad(payments_key, payment, 'has no reversals') end
  for id, value in pairs(r.reversals) do
    record.reversals[id] = read_reversal(payments_key, payment .. ' reversal ' .. tostring(id), value)
  end
end

local incoming = decode('ARGV', '8', ARGV[8])
local changed = false
for i, value in ipairs(incoming) do
  if type(value) ~= 'table' or type(value.id) ~= 'string' then
    error({err = 'BADARG 8: reversal ' .. i .. ' has no id'})
  end
  local new = read_reversal('ARGV', '8 reversal ' .. value.id, value)
  local known = record.reversals[value.id]
  if known == nil and record.granted then
    -- What the version before took for this reversal itself (adopted payments): already out of the
    -- account, so it counts as taken.
    local prior = read_int('ARGV', '8 reversal ' .. value.id .. ' prior', value.prior, 0, 0, MAX_CREDITS)
    record.taken = math.min(record.taken + prior, record.credits)
  end
  if known == nil or after(new, known) then
    record.reversals[value.id] = new
    changed = true
  end
end

local granted = 0
if pay and not record.granted then
  record.granted, record.paid, record.currency, record.credits = true, paid_arg, currency_arg, credits_arg
  if not adopt then granted = credits_arg end
  changed = true
end

-- What the reversals should have taken and hold (core/payments.py reversed_and_held, targets). Sums are
-- held at MAX_AMOUNT, at least `paid`, which changes none of the results and keeps them exact.
local function add(s, a) return math.min(s + a, MAX_AMOUNT) end
local taken_target, held_target = 0, 0
if record.granted then
  local refunds, lost, holding, failed_total, total = 0, 0, 0, 0, record.reversals['refunded_total']
  for id, r in pairs(record.reversals) do
    if id ~= 'refunded_total' then
      if r.kind == 'refund' and r.effect == 'take' then refunds = add(refunds, r.amount) end
      if r.kind == 'refund' and r.effect == 'none' and total ~= nil and r.at <= total.at and total.at < r.ended then
        failed_total = add(failed_total, r.amount)
      end
      if r.kind == 'dispute' and r.effect == 'take' then lost = add(lost, r.amount) end
      if r.kind == 'dispute' and r.effect == 'hold' then holding = add(holding, r.amount) end
    end
  end
  if total ~= nil then refunds = math.max(refunds, total.amount - failed_total) end
  local gone = math.min(add(refunds, lost), record.paid)
  holding = math.min(holding, record.paid - gone)
  taken_target = mul_div(record.credits, gone, record.paid)
  held_target = mul_div(record.credits, gone + holding, record.paid) - taken_target
end
local more_taken, more_held = taken_target - record.taken, held_target - record.held

-- The account's move: the grant (debt first), then what goes out or comes back.
local new_balance, new_debt = balance, debt
local function give(credits)
  local to_debt = math.min(new_debt, credits)
  new_debt = new_debt - to_debt
  new_balance = new_balance + credits - to_debt
end
local function take(credits)
  local from_balance = math.min(new_balance, credits)
  new_balance = new_balance - from_balance
  new_debt = new_debt + credits - from_balance
end
give(granted)
local after_grant_balance, after_grant_debt = new_balance, new_debt
local out = more_taken + more_held
if out > 0 then take(out) elseif out < 0 then give(-out) end
local new_frozen = math.max(frozen + more_held, 0)
if new_balance > MAX_CREDITS or new_debt > MAX_CREDITS or new_frozen > MAX_CREDITS then
  return {'balance_cap', fmt(balance), fmt(debt), fmt(frozen), '0', '0', '0', ''}
end
if not changed then
  return {'unchanged', fmt(balance), fmt(debt), fmt(frozen), '0', '0', '0', ''}
end

-- Writes start below this line.
local ledger = ledger_plan(account_key, ledger_key, retention, 2)
local ledger_id = ''
if granted > 0 then
  ledger_id = ledger_append(account_key, ledger_key, ledger, {
    'kind', 'payment', 'amount', fmt(after_grant_balance - balance), 'balance', fmt(after_grant_balance),
    'debt', fmt(after_grant_debt), 'credits', fmt(granted), 'paid', fmt(record.paid), 'currency', record.currency,
    'payment', payment, 'at', fmt(now), 'note', note})
end
if more_taken ~= 0 or more_held ~= 0 then
  ledger_id = ledger_append(account_key, ledger_key, ledger, {
    'kind', 'reversal', 'amount', fmt(new_balance - after_grant_balance), 'balance', fmt(new_balance),
    'debt', fmt(new_debt), 'frozen', fmt(new_frozen), 'taken', fmt(more_taken), 'held', fmt(more_held),
    'payment', payment, 'at', fmt(now), 'note', note})
end
if new_balance ~= balance or new_debt ~= debt or new_frozen ~= frozen then
  redis.call('HSET', account_key, 'balance', fmt(new_balance), 'debt', fmt(new_debt), 'frozen', fmt(new_frozen))
end

local reversals = {}
for id, r in pairs(record.reversals) do
  reversals[id] = {kind = r.kind, amount = fmt(r.amount), status = r.status, at = fmt(r.at), rank = fmt(r.rank),
                   effect = r.effect, ended = fmt(r.ended)}
end
local text = {granted = record.granted and '1' or '0', reversals = reversals}
if record.granted then
  text.paid, text.currency, text.credits = fmt(record.paid), record.currency, fmt(record.credits)
  text.taken, text.held = fmt(taken_target), fmt(held_target)
end
local encoded = cjson.encode(text)
if next(reversals) == nil then
  encoded = string.gsub(encoded, '"reversals":%[%]', '"reversals":{}')
end
redis.call('HSET', payments_key, payment, encoded)

local outcome = record.granted and 'applied' or 'waiting'
return {outcome, fmt(new_balance), fmt(new_debt), fmt(new_frozen), fmt(granted), fmt(more_taken), fmt(more_held),
        ledger_id}
