-- credit.lua: change an account's balance by an operator's or the gate's decision, at most once per key.
--
-- KEYS[1]  the account's hash
-- KEYS[2]  the account's ledger stream
-- KEYS[3]  the account's idempotency hash (key -> ledger id of the change it made)
-- ARGV[1]  kind: "grant", "adjust" or "refund"
-- ARGV[2]  amount: signed change of the balance, integer, never 0
-- ARGV[3]  note (free text, may be "")
-- ARGV[4]  idempotency key, or "" for none
-- ARGV[5]  now: Unix seconds
-- ARGV[6]  ledger retention: entries kept per account
-- ARGV[7]  reference (a charge's ledger id for a refund, or ""), kept in the ledger entry
--
-- Returns {outcome, balance, ledger id}: outcome 1 = applied, 0 = this key was already applied (the
-- ledger id is the first application's, nothing changed), -1 = refused because the balance would go
-- below zero (nothing changed).

local account_key, ledger_key, keys_key = KEYS[1], KEYS[2], KEYS[3]
local kind = ARGV[1]
local amount = tonumber(ARGV[2])
local note = ARGV[3]
local idempotency_key = ARGV[4]
local now = tonumber(ARGV[5])
local retention = tonumber(ARGV[6])
local reference = ARGV[7]

local balance = tonumber(redis.call('HGET', account_key, 'balance')) or 0

if idempotency_key ~= '' then
  local first = redis.call('HGET', keys_key, idempotency_key)
  if first then
    return {0, balance, first}
  end
end

if balance + amount < 0 then
  return {-1, balance, ''}
end

balance = redis.call('HINCRBY', account_key, 'balance', fmt(amount))
local fields = {'kind', kind, 'amount', fmt(amount), 'balance', fmt(balance), 'at', fmt(now)}
if note ~= '' then
  table.insert(fields, 'note'); table.insert(fields, note)
end
if idempotency_key ~= '' then
  table.insert(fields, 'key'); table.insert(fields, idempotency_key)
end
if reference ~= '' then
  table.insert(fields, 'reference'); table.insert(fields, reference)
end
local id = ledger_append(account_key, ledger_key, retention, fields)
if idempotency_key ~= '' then
  redis.call('HSET', keys_key, idempotency_key, id)
end
return {1, balance, id}
