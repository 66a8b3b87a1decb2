"""The exceptions credit-gate raises.

CreditGateError                 base of everything below
├── ConfigError                 a plugin or CLI setting an operator must fix
├── InvalidDocument             a plan, subscription or amount that breaks the rules
├── NotFound                    an unknown plan or account
├── Conflict                    refused by the current state (plan in use, balance too low)
│   ├── InsufficientBalance     the store's: a debit would take the balance below zero
│   ├── BalanceCapReached       the store's: a credit would take the balance past MAX_CREDITS
│   └── IdempotencyKeyReused    the store's: an idempotency key sent again for another change
└── StoreError                  Redis could not be reached or answered with an error
    ├── StoreTimeout            Redis did not answer within the configured timeout
    ├── StoreUnavailable        not tried: the circuit breaker is open after repeated failures
    ├── StoreRefused            Redis is up but refuses writes (READONLY, OOM, MISCONF, ...): an outage
    ├── StoreDataError          Redis is up, but a key it holds is of the wrong type or a field does not parse
    └── StoreEmpty              Redis is up but holds no credit-gate data (restarted empty, wrong database)
"""

from __future__ import annotations

from typing import TypeVar

_E = TypeVar("_E", bound="CreditGateError")


class CreditGateError(Exception):
    """Base of every error credit-gate raises on purpose.

    ``cli_hint``: what to run next, for an operator at the ``credit-gate`` CLI (which adds it to the
    message); the HTTP API and the Python API leave it out, their callers have no such command.
    """

    cli_hint = ""

    def hinted(self: _E, cli_hint: str) -> _E:
        self.cli_hint = cli_hint
        return self


class ConfigError(CreditGateError):
    """A setting is wrong; the message names it and says what is expected."""


class InvalidDocument(CreditGateError):
    """A document or value breaks the rules; ``where`` names the field."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where


class NotFound(CreditGateError):
    """The named plan or account does not exist."""


class Conflict(CreditGateError):
    """The operation is refused by the current state, which the message describes."""


class InsufficientBalance(Conflict):
    """The change would take the balance below zero; nothing changed. The store raises it with the
    balance it found, for the caller to word the refusal."""

    def __init__(self, balance: int) -> None:
        super().__init__(f"the balance is {balance} credits: it never goes below zero; nothing changed")
        self.balance = balance


class BalanceCapReached(Conflict):
    """The change would take the balance past MAX_CREDITS; nothing changed."""

    def __init__(self, balance: int) -> None:
        super().__init__(f"the balance is {balance} credits: it cannot pass MAX_CREDITS; nothing changed")
        self.balance = balance


class IdempotencyKeyReused(Conflict):
    """An idempotency key already answers for another change (another kind or amount); nothing changed.

    The store raises it with what the key's first request did, for the caller to word the refusal.
    """

    def __init__(self, key: str, first_kind: str, first_amount: int, first_ledger_id: str) -> None:
        super().__init__(
            f"idempotency key '{key}' was used for a {first_kind} of {first_amount:+d} credits "
            f"(ledger {first_ledger_id}); it cannot be reused for another change, nothing changed "
            "(send a new key for a new change)"
        )
        self.key = key
        self.first_kind = first_kind
        self.first_amount = first_amount
        self.first_ledger_id = first_ledger_id


class StoreError(CreditGateError):
    """Redis failed; the outcome of a write that raised this is unknown."""

    retry_after_ms = 0  # how long asking again is pointless: only the breaker knows (StoreUnavailable)


class StoreTimeout(StoreError):
    """Redis did not answer in time."""


class StoreUnavailable(StoreError):
    """Redis was not asked: it failed repeatedly and the circuit breaker is cooling down."""

    def __init__(self, message: str, *, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms  # until the breaker lets a probe through


class StoreRefused(StoreError):
    """Redis answered, but refuses the command until something changes on its side: a replica
    (READONLY), maxmemory with noeviction (OOM), a failed save (MISCONF), LOADING, BUSY, MASTERDOWN.

    An outage like a lost connection: the circuit breaker counts it and ``fault_tolerant`` passes the
    request through. Nothing was written. ``code`` is the reply's (store/replies.py's WRITE_FAULTS).
    """

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


class StoreDataError(StoreError):
    """A key of the wrong type, or a field that does not parse; the script wrote nothing.

    Not an outage: Redis answered. The gate refuses the request (fail closed, whatever
    ``fault_tolerant`` says) and the circuit breaker does not count it. ``key`` names what is wrong.
    """

    def __init__(self, message: str, *, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class StoreEmpty(StoreError):
    """Redis lacks the store marker the operators' tools write: it lost its data (a restart without
    persistence, a flush) or is not the database the data is in. Answered as an outage, not as
    "no subscription" for every account; nothing was written."""
