"""Threshold events in Redis: what an account watches, its event stream, the delivery cursors and the
dead letters.

The charge script writes the streams (``emit_event`` in lua/_lib.lua); the operators' API sets what
they watch (``ops/admin.py``) and the service delivers them (``service/events.py``). The delivery side
reads bytes that are not UTF-8 with ``surrogateescape``, so that one bad entry cannot stop delivery.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from creditgate.core.alerts import FIELDS, MEMORY_FIELDS
from creditgate.store.store import RedisStore

# One stream entry: its id and its fields.
Entry = tuple[str, dict[str, str]]


def _text(value: Any, errors: str = "strict") -> str:
    return value.decode("utf-8", errors) if isinstance(value, bytes) else str(value)


def _entries(raw: Sequence[Any], errors: str = "strict") -> list[Entry]:
    def text(value: Any) -> str:
        return _text(value, errors)

    return [(text(i), {text(k): text(v) for k, v in fields.items()}) for i, fields in raw]


# What an account watches (the operators' side).


def set_alert_fields(store: RedisStore, account: str, fields: Mapping[str, str]) -> None:
    """Replace the account's alert fields with ``fields``; none left also forgets what the script
    remembers (an expiry or a period already told), so that the same alerts set again raise anew.

    The account is listed before its fields are written and unlisted after they are gone: a listed
    account without alerts costs the service one read, an unlisted one with alerts would lose its events.
    The account's fields change in one MULTI (one key, so also on a Cluster).
    """
    keys = store.keys
    state = keys.account(account).state
    if fields:
        store._run("SADD", keys.event_accounts, account)

    def fill(pipe: Any) -> None:
        pipe.hdel(state, *FIELDS.values())
        if fields:
            pipe.hset(state, mapping=dict(fields))
        else:
            pipe.hdel(state, *MEMORY_FIELDS)

    store._pipeline(fill, transaction=True)
    if not fields:
        store._run("SREM", keys.event_accounts, account)


def alert_fields(store: RedisStore, account: str) -> dict[str, str]:
    """The account's alert fields that are set."""
    names = list(FIELDS.values())
    values = store._run("HMGET", store.keys.account(account).state, *names)
    return {n: _text(v) for n, v in zip(names, values, strict=True) if v is not None}


def recent_events(store: RedisStore, account: str, limit: int) -> list[Entry]:
    """The newest ``limit`` entries of the account's stream, oldest first."""
    raw = store._run("XREVRANGE", store.keys.account(account).events, "+", "-", "COUNT", limit)
    return _entries(raw)[::-1]


# Delivery (the service's side).


def alerting_accounts(store: RedisStore) -> list[str]:
    """The accounts whose events are delivered, in name order."""
    return sorted(_text(a, "surrogateescape") for a in store._run("SMEMBERS", store.keys.event_accounts))


def read_events(store: RedisStore, accounts: Sequence[str], count: int) -> list[list[Entry]]:
    """For each account, up to ``count`` entries past its cursor (all of them without one), oldest
    first: the cursors in one round trip, the streams in a second."""
    keys = store.keys
    cursors = store._run("HMGET", keys.event_cursors, *accounts)

    def fill(pipe: Any) -> None:
        for account, cursor in zip(accounts, cursors, strict=True):
            start = "(" + _text(cursor, "surrogateescape") if cursor else "-"
            pipe.xrange(keys.account(account).events, start, "+", count=count)

    return [_entries(raw, "surrogateescape") for raw in store._pipeline(fill)]


def move_cursor(store: RedisStore, account: str, stream_id: str) -> None:
    """The account's events up to ``stream_id`` are settled: the next read starts after it."""
    store._run("HSET", store.keys.event_cursors, account, stream_id)


def put_dead_letter(store: RedisStore, letter: Mapping[str, Any]) -> None:
    """Keep an event a receiver did not take (``letter["id"]`` names it), as JSON."""
    store._run("HSET", store.keys.dead_letters, letter["id"], json.dumps(letter, sort_keys=True))


def dead_letters(store: RedisStore) -> dict[str, dict[str, Any]]:
    """Every dead letter, by id."""
    raw = store._run("HGETALL", store.keys.dead_letters)
    return {_text(k, "surrogateescape"): json.loads(_text(v, "surrogateescape")) for k, v in raw.items()}


def drop_dead_letter(store: RedisStore, letter_id: str) -> bool:
    """Forget a dead letter; False when there was none by that id."""
    return bool(store._run("HDEL", store.keys.dead_letters, letter_id))


__all__ = [
    "Entry",
    "alert_fields",
    "alerting_accounts",
    "dead_letters",
    "drop_dead_letter",
    "move_cursor",
    "put_dead_letter",
    "read_events",
    "recent_events",
    "set_alert_fields",
]
