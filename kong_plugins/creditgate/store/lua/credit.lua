-- credit.lua: change an account's balance by an operator's or the gate's decision, at most once per key.
--
-- KEYS[1]  the account's hash
-- KEYS[2]  the account's ledger stream
-- KEYS[3]  the account's idempotency hash (key -> "<ledger id> <kind> <signed amount>" of the change it
--          made; earlier versions wrote the bare ledger id, read as _lib.lua's read_key_record says)
-- ARGV[1]  kind: "grant", "adjust" or "refund"
-- ARGV[2]  amount: signed change of the balance, integer, never 0
-- ARGV[3]  note (free text, may be "")
-- ARGV[4]  idempotency key, or "" for none
-- ARGV[5]  now: Unix seconds
-- ARGV[6]  ledger retention: entries kept per account
-- ARGV[7]  reference (a charge's ledger id for a refund, or ""), kept in the ledger entry
-- ARGV[8]  the key's namespace ("api" for operators' keys), or "" for a key recorded as given (the
--          webhooks' and payments' own prefixed keys); the ledger entry shows the key as given
--
-- Returns {outcome, balance, ledger id, kind, amount, debt, debt paid}: outcome 1 = applied, 0 = this key
-- was already applied (the ledger id is the first application's, nothing changed), -1 = refused because
-- the balance would go below zero, -2 = refused because the balance would pass MAX_CREDITS, -3 = refused
-- because the key answers for another change (nothing changed in any refusal). kind and amount (signed)
-- are those of the change the key answers for: the first one's for 0 and -3, this one's otherwise.
-- debt is what the account owes after the call; debt paid what this call paid of it (0 unless applied).
--
-- A positive change pays the account's debt first (apply_credit in _lib.lua): the balance gets the
-- rest, and the ledger entry's amount is what the balance got (debt_paid beside it).

local outcome, balance, id, kind, amount, debt, paid = apply_credit(KEYS[1], KEYS[2], KEYS[3], ARGV[1],
  arg_int(2, -MAX_CREDITS, MAX_CREDITS), ARGV[3], ARGV[4], arg_int(5, 0, MAX_INSTANT), arg_int(6, 0, 1e12), ARGV[7],
  ARGV[8])
return {outcome, balance, id, kind, amount, debt, paid}
