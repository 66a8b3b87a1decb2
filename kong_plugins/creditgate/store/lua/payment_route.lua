-- payment_route.lua: which payment, and whose, an event's references name; in the one Cluster slot of
-- the payment references ({stripe}), before payment.lua applies the event in the account's slot.
--
-- A payment is known by several references (a Checkout session, its invoice, its PaymentIntent, its
-- charge); events name some of them, in any order. Each reference points at the payment's canonical
-- key; a payment becomes owned (by an account) when an event that pays it names the account. A
-- reversal of a payment nobody owns yet waits here, with the references it came with, until the payment
-- arrives; an event that joins references of two payments not owned joins them into one.
--
-- KEYS[1]  the head of the reference keys: <head><reference> -> canonical key (string)
-- KEYS[2]  the head of the owner keys: <head><canonical> -> account (string)
-- KEYS[3]  the head of the waiting keys: <head><canonical> -> JSON {refs = [...], reversals = {id -> r}}
--          (all three heads carry the {stripe} hash tag, so every key derived here is in one slot)
-- ARGV[1]  the account the event pays for, or "" (a reversal, or a link between references)
-- ARGV[2]  the event's reversals, a JSON array as payment.lua takes them ("[]" for none)
-- ARGV[3]  seconds that references and reversals of a payment nobody owns are kept
-- ARGV[4..] the references, at least one
--
-- Returns {state, account, canonical, waiting}: state "owned" (apply the event, and `waiting`, the
-- reversals that were waiting, in the account's slot; then payment_settled), "waiting" (kept here),
-- "conflict" (the references name payments of two accounts, or two owned payments: nothing written).

local ref_head, owner_head, wait_head = KEYS[1], KEYS[2], KEYS[3]
local account = ARGV[1]
local keep = arg_int(3, 1, 1e9)

local function decode(key, text)
  local ok, value = pcall(cjson.decode, text)
  if not ok or type(value) ~= 'table' then bad(key, '(value)', 'is not JSON') end
  return value
end

local function read_string(key)
  check_type(key, 'string')
  return redis.call('GET', key)
end

-- The reversal of two that has gone further (payment.lua's `after`), on the JSON forms (numbers as text):
-- a waiting reversal is checked by payment.lua when it is applied, so a bad one only sorts last here.
local function num(v) return tonumber(v) or -1 end
local function further(a, b)
  if num(a.rank) ~= num(b.rank) then return num(a.rank) > num(b.rank) end
  if num(a.amount) ~= num(b.amount) then return num(a.amount) > num(b.amount) end
  if tostring(a.status) ~= tostring(b.status) then return tostring(a.status) > tostring(b.status) end
  if num(a.at) ~= num(b.at) then return num(a.at) > num(b.at) end
  return num(a.ended) > num(b.ended)
end

local function read_waiting(canonical)
  local key = wait_head .. canonical
  local text = read_string(key)
  if not text then return {refs = {}, reversals = {}} end
  local value = decode(key, text)
  if type(value.refs) ~= 'table' or type(value.reversals) ~= 'table' then
    bad(key, '(value)', 'is not {refs, reversals}')
  end
  return value
end

-- Read and check everything.
local refs = {}
for i = 4, #ARGV do refs[#refs + 1] = ARGV[i] end
if #refs == 0 then error({err = 'BADARG 4: no reference'}) end
local incoming = decode('ARGV', ARGV[2])

local canonicals, seen = {}, {}
for _, ref in ipairs(refs) do
  local canonical = read_string(ref_head .. ref)
  if canonical and not seen[canonical] then
    seen[canonical] = true
    canonicals[#canonicals + 1] = canonical
  end
end
local owned, owners = {}, {}
for _, canonical in ipairs(canonicals) do
  local owner = read_string(owner_head .. canonical)
  if owner then
    owned[#owned + 1] = canonical
    owners[canonical] = owner
  end
end
if #owned > 1 then
  return {'conflict', owners[owned[1]], owned[1], '[]'}
end
local chosen = owned[1] or canonicals[1] or refs[1]
local owner = owners[chosen]
if owner and account ~= '' and owner ~= account then
  return {'conflict', owner, chosen, '[]'}
end
local merged = read_waiting(chosen)
for _, canonical in ipairs(canonicals) do
  if canonical ~= chosen then
    local other = read_waiting(canonical)
    for _, ref in ipairs(other.refs) do merged.refs[#merged.refs + 1] = ref end
    for id, r in pairs(other.reversals) do
      local known = merged.reversals[id]
      if known == nil or further(r, known) then merged.reversals[id] = r end
    end
  end
end
for _, r in ipairs(incoming) do
  if type(r) ~= 'table' or type(r.id) ~= 'string' then error({err = 'BADARG 2: a reversal has no id'}) end
end

-- Writes start below this line.
if not owner and account ~= '' then
  owner = account
  redis.call('SET', owner_head .. chosen, owner)
end
-- Every reference the event or the joined payments knew now points at the chosen one: for good once
-- the payment is owned, for `keep` seconds otherwise.
local all_refs, listed = {}, {}
for _, ref in ipairs(refs) do if not listed[ref] then listed[ref] = true; all_refs[#all_refs + 1] = ref end end
for _, ref in ipairs(merged.refs) do if not listed[ref] then listed[ref] = true; all_refs[#all_refs + 1] = ref end end
for _, ref in ipairs(all_refs) do
  if owner then
    redis.call('SET', ref_head .. ref, chosen)
  else
    redis.call('SET', ref_head .. ref, chosen, 'EX', keep)
  end
end
for _, canonical in ipairs(canonicals) do
  if canonical ~= chosen then redis.call('DEL', wait_head .. canonical) end
end

if owner then
  -- The waiting reversals go to the account's slot with this event; payment_settled drops them after.
  local waiting = {}
  for id, r in pairs(merged.reversals) do
    r.id = id
    waiting[#waiting + 1] = r
  end
  if #waiting > 0 then
    redis.call('SET', wait_head .. chosen, cjson.encode({refs = all_refs, reversals = merged.reversals}), 'EX', keep)
  end
  return {'owned', owner, chosen, #waiting > 0 and cjson.encode(waiting) or '[]'}
end

for _, r in ipairs(incoming) do
  local known = merged.reversals[r.id]
  if known == nil or further(r, known) then merged.reversals[r.id] = r end
end
redis.call('SET', wait_head .. chosen, cjson.encode({refs = all_refs, reversals = merged.reversals}), 'EX', keep)
return {'waiting', '', chosen, '[]'}
