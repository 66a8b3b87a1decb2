-- balance.lua: what an account holds right now, for its own client; reads only, writes nothing.
--
-- KEYS[1]  the paying account's hash (subscription, plan terms, balance, period usage)
-- KEYS[2]  the paying account's members hash (pools: caps and period usage per member)
-- KEYS[3]  the store marker of the account's slot (operators' tools write it; see store/keys.py)
-- ARGV[1]  member: the pool member asking, or "" when the account pays for itself
--
-- Returns {state ("ok" | "store_empty"), plan, status, balance, allowance, allowance_used, period,
--          period_start, period_end, starts_at, expires_at, prepaid (1|0), now, member_used,
--          member_cap (-1: no cap), period_requests, period_from_balance, member_requests, debt,
--          frozen, grace_until}
-- or the error reply "BADDATA <key> <field>: ..." (see _lib.lua). Credits are integers, times Unix
-- seconds on Redis's clock (0: none).
--
-- The figures are the ones the next charge would start from: every field is read and checked as
-- charge.lua reads and checks it (a field charge.lua would refuse is refused here, never shown as a
-- wrong figure), and the period is the one charge.lua would decide at Redis's time: a period that has
-- ended reads as the next one with nothing used (no requests, no credits), although nothing is
-- written (the next charge writes it). An account without a subscription in a Redis without the store marker answers
-- "store_empty": a Redis restarted empty is told from an account that never subscribed.

local account_key, members_key, marker_key = KEYS[1], KEYS[2], KEYS[3]
local member = ARGV[1]
local now = redis_clock()

check_type(account_key, 'hash')
check_type(members_key, 'hash')

-- Read and checked as charge.lua reads and checks it (read_account in _lib.lua).
local a = read_account(account_key)
local plan, status, starts_at, anchor, expires_at = a.plan, a.status, a.starts_at, a.anchor, a.expires_at
local period, allowance, prepaid, balance, used = a.period, a.allowance, a.prepaid, a.balance, a.used
local period_start, period_end = a.period_start, a.period_end
local period_requests, period_from_balance = a.period_requests, a.period_from_balance
local restarts = a.restarts  -- not shown: names the period
local debt, frozen, grace_until = a.debt, a.frozen, a.grace_until  -- the payments' (see read_account)

local member_cap, member_stored, member_requests_stored = -1, false, false
if member ~= '' then
  local m = redis.call('HMGET', members_key, 'cap:' .. member, 'used:' .. member, 'requests:' .. member)
  member_cap = read_int(members_key, 'cap:' .. member, m[1], -1, 0, MAX_CREDITS)
  member_stored = read_member_count(members_key, 'used:' .. member, m[2], 'credits')
  member_requests_stored = read_member_count(members_key, 'requests:' .. member, m[3], 'requests')
end

if plan == '' and redis.call('EXISTS', marker_key) == 0 then
  return {'store_empty', '', '', 0, 0, 0, 'none', 0, 0, 0, 0, 0, now, 0, -1, 0, 0, 0, 0, 0, 0}
end

-- The period charge.lua would charge in now (a time before the period's start stays in it).
if plan ~= '' and period ~= 'none' and (period_end == 0 or now >= period_end) then
  period_start, period_end = window_at(period, anchor, now)
  used, period_requests, period_from_balance = 0, 0, 0
end

-- A member's use counts in the period it was made in only (restart count and start, see _lib.lua).
local member_used = member_count_in(member_stored, restarts, period_start)
local member_requests = member_count_in(member_requests_stored, restarts, period_start)

return {'ok', plan, status, balance, allowance, used, period, period_start, period_end, starts_at,
        expires_at, prepaid and 1 or 0, now, member_used, member_cap, period_requests, period_from_balance,
        member_requests, debt, frozen, grace_until}
