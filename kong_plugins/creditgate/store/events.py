"""Threshold events in Redis: what an account watches, its event stream, the delivery cursors, the
dead letters and the delivery counters.

The charge script writes the streams (``emit_event`` in lua/_lib.lua); the operators' API sets what
they watch (``ops/admin.py``) and the service delivers them (``service/events.py``). The delivery side
reads bytes that are not UTF-8 with ``surrogateescape``, so that one bad entry cannot stop delivery.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
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


def scan_dead_letters(store: RedisStore, batch: int = 500) -> Iterator[dict[str, Any]]:
    """Every dead letter, ``batch`` a command (HSCAN: the hash may hold many while a receiver is down, and
    one HGETALL would hold Redis for all of them), each once. A letter that is not JSON is passed over."""
    seen: set[str] = set()
    cursor: Any = 0
    while True:
        cursor, found = store._run("HSCAN", store.keys.dead_letters, cursor, "COUNT", batch)
        pairs = found.items() if isinstance(found, dict) else zip(found[::2], found[1::2], strict=True)
        for key, value in pairs:
            letter_id = _text(key, "surrogateescape")
            if letter_id in seen:  # HSCAN may return an entry twice
                continue
            seen.add(letter_id)
            try:
                letter = json.loads(_text(value, "surrogateescape"))
            except ValueError:
                continue
            if isinstance(letter, dict):
                yield letter
        if int(cursor) == 0:
            return


def dead_letter(store: RedisStore, letter_id: str) -> dict[str, Any] | None:
    """One dead letter by id, None when there is none (or it is not JSON)."""
    raw = store._run("HGET", store.keys.dead_letters, letter_id)
    try:
        letter = json.loads(_text(raw, "surrogateescape")) if raw is not None else None
    except ValueError:
        return None
    return letter if isinstance(letter, dict) else None


def drop_dead_letter(store: RedisStore, letter_id: str) -> bool:
    """Forget a dead letter; False when there was none by that id."""
    return bool(store._run("HDEL", store.keys.dead_letters, letter_id))


# Delivery counters: every attempt the service or an operator's replay made, kept in Redis so that they
# survive a restart and every process reports the same figures. A fixed set of fields: bounded.

# By who tried: the service's delivery thread, or an operator's replay (API or CLI), which never buries.
# "failed" is one attempt that did not get a 2xx; "dead_lettered" an event given up for one receiver.
DELIVERY_FIELDS = (
    "dispatcher:delivered",
    "dispatcher:failed",
    "dispatcher:dead_lettered",
    "replay:delivered",
    "replay:failed",
)


def deliveries_key(store: RedisStore) -> str:
    """``<prefix>:events:deliveries``, hash: "<via>:<outcome>" -> attempts counted."""
    return f"{store.keys.prefix}:events:deliveries"


def count_delivery(store: RedisStore, outcome: str, via: str = "dispatcher") -> None:
    field = f"{via}:{outcome}"
    if field not in DELIVERY_FIELDS:
        raise ValueError(f"not a delivery counter: {field!r}")
    store._run("HINCRBY", deliveries_key(store), field, 1)


def delivery_figures(store: RedisStore) -> tuple[dict[tuple[str, str], int], int]:
    """The counters by (via, outcome), every one of DELIVERY_FIELDS (0 when not counted yet), and how
    many dead letters wait (HLEN), in one round trip."""

    def fill(pipe: Any) -> None:
        pipe.hmget(deliveries_key(store), *DELIVERY_FIELDS)
        pipe.hlen(store.keys.dead_letters)

    counts, waiting = store._pipeline(fill)
    figures = {}
    for name, value in zip(DELIVERY_FIELDS, counts, strict=True):
        via, _, outcome = name.partition(":")
        text = _text(value, "replace") if value is not None else "0"
        figures[(via, outcome)] = int(text) if text.isdigit() else 0
    return figures, int(waiting)


__all__ = [
    "DELIVERY_FIELDS",
    "Entry",
    "alert_fields",
    "alerting_accounts",
    "count_delivery",
    "dead_letter",
    "deliveries_key",
    "delivery_figures",
    "drop_dead_letter",
    "move_cursor",
    "put_dead_letter",
    "read_events",
    "recent_events",
    "scan_dead_letters",
    "set_alert_fields",
]
