"""Stripe payments in Redis: what each payment granted, so that a refund or a dispute can take back its
share, and what each dispute took, so that a dispute won can give it back (``service/webhooks.py``).

One hash, ``Keys.stripe_payments``: a payment reference (payment intent, invoice or charge id) -> the
account, credits and amount paid (JSON); ``dispute:<id>`` -> the account and credits it took (JSON).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from creditgate.store.store import RedisStore


def record_payment(store: RedisStore, refs: Sequence[str], account: str, credits: int, amount: Any) -> None:
    """What a payment granted, under each reference a later refund or dispute may name it by."""
    if refs:
        record = json.dumps({"account": account, "credits": credits, "amount": amount})
        store._run("HSET", store.keys.stripe_payments, *(part for ref in refs for part in (ref, record)))


def find_payment(store: RedisStore, refs: Sequence[str]) -> dict[str, Any] | None:
    """The payment recorded under the first of ``refs`` that names one, or None."""
    if not refs:
        return None
    for raw in store._run("HMGET", store.keys.stripe_payments, *refs):
        if raw:
            found: dict[str, Any] = json.loads(raw)
            return found
    return None


def record_dispute(store: RedisStore, dispute: str, account: str, credits: int) -> None:
    """What a dispute took back (written again on a re-sent event, so a crash before it heals)."""
    taken = json.dumps({"account": account, "credits": credits})
    store._run("HSET", store.keys.stripe_payments, f"dispute:{dispute}", taken)


def dispute_taken(store: RedisStore, dispute: str) -> dict[str, Any] | None:
    """What the dispute took back, or None when it took nothing."""
    raw = store._run("HGET", store.keys.stripe_payments, f"dispute:{dispute}")
    if not raw:
        return None
    taken: dict[str, Any] = json.loads(raw)
    return taken


__all__ = ["dispute_taken", "find_payment", "record_dispute", "record_payment"]
