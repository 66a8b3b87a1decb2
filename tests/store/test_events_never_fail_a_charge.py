"""A notification never costs (or fails) a charge, whatever its events stream holds."""

from __future__ import annotations

import contextlib

import redis

from creditgate.core.model import Plan
from creditgate.core.periods import Period
from creditgate.core.policy import ChargeRequest
from creditgate.ops.admin import Admin
from creditgate.store.store import RedisStore

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def _exhausted_events_stream(redis_client: redis.Redis, key: str) -> None:
    """A stream whose last id is the largest one: every XADD '*' to it fails."""
    redis_client.xadd(key, {"x": "1"}, id="18446744073709551615-18446744073709551615")


def test_an_events_stream_that_cannot_take_an_entry_does_not_fail_the_charge(
    admin: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    admin.apply_plan(Plan("pro", period=Period.DAY, allowance=0, prepaid=True))
    admin.subscribe("acme", "pro", starts_at=T0)
    admin.grant("acme", 10, note="seed")
    keys = store.keys.account("acme")
    redis_client.hset(keys.state, "alert_balance_below", "5")
    _exhausted_events_stream(redis_client, keys.events)
    ledger_before = len(list(store.ledger("acme")))

    result = store.charge(ChargeRequest("acme", 6, now=T0 + 5))

    assert result.allowed
    assert store.account_state("acme").balance == 4
    assert len(list(store.ledger("acme"))) >= ledger_before + 1


def test_a_failed_event_writes_nothing_before_it(
    admin: Admin, store: RedisStore, redis_client: redis.Redis
) -> None:
    """Whatever the charge answers, the script must not leave writes behind an error reply."""
    admin.apply_plan(Plan("pro", period=Period.DAY, allowance=0, prepaid=True))
    admin.subscribe("acme", "pro", starts_at=T0)
    admin.grant("acme", 10, note="seed")
    keys = store.keys.account("acme")
    redis_client.hset(keys.state, "alert_balance_below", "5")
    _exhausted_events_stream(redis_client, keys.events)
    ledger_before = [e.fields["kind"] for e in store.ledger("acme")]
    with contextlib.suppress(Exception):
        store.charge(ChargeRequest("acme", 6, now=T0 + 5))
    kinds = [e.fields["kind"] for e in store.ledger("acme")]
    assert kinds == ledger_before or "charge" in kinds
