"""The payments ledger in Redis: each payment once under its canonical key, its reversals, and what they
moved in the account (the rules: ``core/payments.py``; the scripts: ``payment_route.lua``, ``payment.lua``).

An event is applied in two steps, each one atomic script: ``route`` (in the ``{stripe}`` slot) finds the
payment its references name and whose it is, or keeps a reversal waiting for a payment nobody owns yet;
``apply`` (in the account's slot) grants the payment once and moves the account by its reversals. A
crash between the two leaves the event unanswered: the sender sends it again, and both steps are
idempotent. ``settled`` then drops the reversals that waited (they are in the account's record now).

The records of the version before, ``<prefix>:stripe:payments`` (reference -> what the payment granted),
are read by ``legacy_payment`` so that a refund of a payment granted before the upgrade still finds it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from creditgate.core.payments import Payment, Reversal
from creditgate.store.replies import as_text
from creditgate.store.store import DEFAULT_LEDGER_RETENTION, RedisStore, _script_source

# A reference and the reversals of a payment nobody owns are kept this long (Stripe sends an event again
# for three days; a payment's events arrive within that).
WAITING_SECONDS = 30 * 86_400

_SCRIPTS: dict[tuple[int, str], Any] = {}


def _script(store: RedisStore, name: str) -> Any:
    key = (id(store.client), name)
    script = _SCRIPTS.get(key)
    if script is None:
        script = _SCRIPTS[key] = store.client.register_script(_script_source(name))
    return script


def _reversal_json(reversal: Reversal) -> dict[str, str]:
    return {
        "id": reversal.id,
        "kind": reversal.kind,
        "amount": str(reversal.amount),
        "status": reversal.status,
        "at": str(reversal.at),
        "ended": str(reversal.ended),
        "rank": str(reversal.rank()),
        "effect": reversal.effect(),
    }


def _reversal_of(id_: str, value: dict[str, Any]) -> Reversal:
    return Reversal(
        id_,
        value["kind"],
        int(value["amount"]),
        value["status"],
        int(value["at"]),
        int(value.get("ended", 0)),
    )


@dataclass(frozen=True)
class Route:
    """Where an event goes: ``state`` "owned" (apply it to ``account``'s payment ``key``, with
    ``waiting``, the reversals kept until now), "waiting" (kept until its payment arrives) or
    "conflict" (its references name payments of two accounts, or two payments already granted)."""

    state: str
    account: str
    key: str
    waiting: str  # JSON array, handed to ``apply`` as it is


@dataclass(frozen=True)
class PaymentApplied:
    """What ``apply`` did: its outcome ("applied", "unchanged", "waiting", "balance_cap"), the account
    after it, and this event's credits granted, taken back and newly held (negative: given back)."""

    outcome: str
    balance: int
    debt: int
    frozen: int
    granted: int
    taken: int
    held: int
    ledger_id: str


def route(store: RedisStore, refs: Sequence[str], account: str, reversals: Sequence[Reversal]) -> Route:
    keys = store.keys
    state, owner, key, waiting = store._call(
        _script(store, "payment_route"),
        [keys.payment_refs, keys.payment_owners, keys.payment_waiting],
        [account, json.dumps([_reversal_json(r) for r in reversals]), WAITING_SECONDS, *refs],
    )
    return Route(as_text(state), as_text(owner), as_text(key), as_text(waiting))


def apply(
    store: RedisStore,
    account: str,
    key: str,
    *,
    now: int,
    pay: tuple[int, str, int] | None = None,
    adopt: bool = False,
    reversals: Sequence[Reversal] = (),
    waiting: str = "[]",
    note: str = "",
    ledger_retention: int = DEFAULT_LEDGER_RETENTION,
) -> PaymentApplied:
    """One event on one payment of ``account`` (payment.lua): ``pay`` = (paid, currency, credits);
    ``adopt``: the payment was granted by the version before (recorded, its credits not given again)."""
    keys = store.keys.account(account)
    brought = [_reversal_json(r) for r in reversals] + json.loads(waiting)
    prior = _taken_before(store, account, [r["id"] for r in brought])
    for reversal in brought:
        if prior.get(reversal["id"]):
            reversal["prior"] = str(prior[reversal["id"]])
    paid, currency, credits = pay if pay is not None else (0, "", 0)
    reply = store._call(
        _script(store, "payment"),
        [keys.state, keys.ledger, keys.payments],
        [
            key,
            now,
            ledger_retention,
            ("adopt" if adopt else "pay") if pay is not None else "",
            paid,
            currency,
            credits,
            json.dumps(brought),
            note,
        ],
    )
    outcome, balance, debt, frozen, granted, taken, held, ledger_id = (as_text(v) for v in reply)
    return PaymentApplied(
        outcome, int(balance), int(debt), int(frozen), int(granted), int(taken), int(held), ledger_id
    )


def _taken_before(store: RedisStore, account: str, ids: Sequence[str]) -> dict[str, int]:
    """Credits the version before took back itself for these reversals (its idempotency records,
    ``stripe:refund:<id>`` and ``stripe:dispute:<id>``, less ``stripe:dispute_won:<id>``)."""
    if not ids:
        return {}
    fields = [f"stripe:{kind}:{id_}" for id_ in ids for kind in ("refund", "dispute", "dispute_won")]
    values = store._run("HMGET", store.keys.account(account).idempotency, *fields)
    taken: dict[str, int] = {}
    for i, id_ in enumerate(ids):
        amounts = [_record_amount(values[3 * i + j]) for j in range(3)]
        total = -amounts[0] - amounts[1] - amounts[2]
        if total > 0:
            taken[id_] = total
    return taken


def _record_amount(raw: Any) -> int:
    """The signed amount of an idempotency record "<ledger id> <kind> <amount>", 0 when there is none
    (or it is of the older form, which does not say)."""
    parts = as_text(raw).split(" ") if raw else []
    try:
        return int(parts[2]) if len(parts) == 3 else 0
    except ValueError:
        return 0


def settled(store: RedisStore, key: str) -> None:
    """The reversals that waited for payment ``key`` are in its record now: drop them."""
    store._run("DEL", store.keys.payment_waiting + key)


def payment(store: RedisStore, account: str, key: str) -> Payment | None:
    """The record of ``account``'s payment ``key``, or None."""
    raw = store._run("HGET", store.keys.account(account).payments, key)
    if not raw:
        return None
    record = json.loads(raw)
    granted = record.get("granted") == "1"
    return Payment(
        key,
        granted,
        int(record.get("paid", 0)),
        record.get("currency", ""),
        int(record.get("credits", 0)),
        int(record.get("taken", 0)),
        int(record.get("held", 0)),
        {id_: _reversal_of(id_, value) for id_, value in record.get("reversals", {}).items()},
    )


def payments_of(store: RedisStore, account: str) -> dict[str, Payment]:
    """Every payment record of ``account`` (bounded by the payments it made)."""
    found: dict[str, Payment] = {}
    for key in store._run("HGETALL", store.keys.account(account).payments)[::2]:
        record = payment(store, account, as_text(key))
        if record is not None:
            found[record.key] = record
    return found


def legacy_payment(store: RedisStore, refs: Sequence[str]) -> dict[str, Any] | None:
    """What the version before recorded for a payment under the first of ``refs`` that names one."""
    if not refs:
        return None
    for raw in store._run("HMGET", store.keys.stripe_payments, *refs):
        if raw:
            found: dict[str, Any] = json.loads(raw)
            return found
    return None


__all__ = [
    "WAITING_SECONDS",
    "PaymentApplied",
    "Route",
    "apply",
    "legacy_payment",
    "payment",
    "payments_of",
    "route",
    "settled",
]
