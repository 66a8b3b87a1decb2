-- balance.lua: what an account holds right now, for its own client; reads only, writes nothing.
--
-- KEYS[1]  the paying account's hash (subscription, plan terms, balance, period usage)
-- KEYS[2]  the paying account's members hash (pools: caps and period usage per member)
-- KEYS[3]  the store marker of the account's slot (operators' tools write it; see store/keys.py)
-- ARGV[1]  member: the pool member asking, or "" when the account pays for itself
--
-- Returns {state ("ok" | "store_empty"), plan, status, balance, allowance, allowance_used, period,
--          period_start, period_end, starts_at, expires_at, prepaid (1|0), now, member_used,
--          member_cap (-1: no cap), period_requests, period_from_balance, member_requests}
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

local f = redis.call('HMGET', account_key,
  'plan', 'status', 'starts_at', 'anchor', 'expires_at', 'period', 'allowance', 'prepaid',
  'balance', 'used', 'period_start', 'period_end', 'period_requests', 'period_from_balance',
  'period_restarts')
local K = account_key
local plan = f[1] or ''
local status = read_word(K, 'status', f[2], '', STATUSES)
local starts_at = read_int(K, 'starts_at', f[3], 0, 0, MAX_INSTANT)
local anchor = read_int(K, 'anchor', f[4], starts_at, 0, MAX_INSTANT)
local expires_at = read_int(K, 'expires_at', f[5], 0, 0, MAX_INSTANT)
local period = read_word(K, 'period', f[6], 'none', PERIODS)
local allowance = read_int(K, 'allowance', f[7], 0, 0, MAX_CREDITS)
local prepaid = read_word(K, 'prepaid', f[8], '0', FLAGS) == '1'
local balance = read_int(K, 'balance', f[9], 0, 0, MAX_CREDITS)
local used = read_int(K, 'used', f[10], 0, 0, MAX_CREDITS)
local period_start = read_int(K, 'period_start', f[11], 0, 0, MAX_INSTANT)
local period_end = read_int(K, 'period_end', f[12], 0, 0, MAX_INSTANT)
if period_end ~= 0 and period_end <= period_start then
  bad(K, 'period_end', 'is not after period_start')
end
local period_requests, period_from_balance = read_period_counters(K, {f[13], f[14]})
local restarts = read_restarts(K, f[15])  -- not shown: names the period

local member_cap, member_stored, member_requests_stored = -1, false, false
if member ~= '' then
  local m = redis.call('HMGET', members_key, 'cap:' .. member, 'used:' .. member, 'requests:' .. member)
  member_cap = read_int(members_key, 'cap:' .. member, m[1], -1, 0, MAX_CREDITS)
  member_stored = read_member_count(members_key, 'used:' .. member, m[2], 'credits')
  member_requests_stored = read_member_count(members_key, 'requests:' .. member, m[3], 'requests')
end

if plan == '' and redis.call('EXISTS', marker_key) == 0 then
  return {'store_empty', '', '', 0, 0, 0, 'none', 0, 0, 0, 0, 0, now, 0, -1, 0, 0, 0}
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
        member_requests}
