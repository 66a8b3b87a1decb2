-- void.lua: a charge whose reply the caller never got (it stopped waiting, or the connection broke
-- after the charge was sent) is either charged or not; this step makes it not, once (store/voids.py).
--
-- KEYS[1]  the charge's token key, <account base>token:<token>: the charge's ledger id, written by
--          charge.lua in the step that charged (a string key, kept ARGV[1] seconds)
-- KEYS[2]  the void marker, <account base>void:<token>: charge.lua refuses a token that has one
-- ARGV[1]  seconds the marker is kept (longer than a charge can wait in Redis's queue)
--
-- Returns {"charged", ledger id} when the charge ran (the caller gives it back with settle.lua, at most
-- once), or {"voided", ""}: it has not run, and now never will charge (charge.lua answers it
-- deadline_passed and writes nothing). Redis runs scripts one at a time, so exactly one of the two holds.

check_type(KEYS[1], 'string')
local keep = arg_int(1, 1, 1e9)
local id = redis.call('GET', KEYS[1])
if id then
  if not ledger_id_ok(id) then bad(KEYS[1], '(value)', 'is not a ledger id') end
  return {'charged', id}
end
redis.call('SET', KEYS[2], '1', 'EX', keep)
return {'voided', ''}
