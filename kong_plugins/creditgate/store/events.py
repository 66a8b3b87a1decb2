"""Threshold events in Redis: what an account watches, its event stream, the delivery cursors, the
dead letters and the delivery counters.

The charge script writes the streams (``emit_event`` in lua/_lib.lua); the operators' API sets what
they watch (``ops/admin.py``) and the service delivers them (``service/events.py``). The delivery side
reads bytes that are not UTF-8 with ``surrogateescape``, so that one bad entry cannot stop delivery.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

import redis

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


# Dead letters: the hash holds them by id; the order (a sorted set, every member scored 0, so ranged by
# lex) holds each one's place, "<dead_at>_<id>", so that a page of them, oldest first, is one ZRANGE from
# the place the page before stopped at and one HMGET, however many wait. A place is named by the letter
# it stands for, so a write reads the letter it replaces first, under WATCH, and writes both in a MULTI.
PLACE_TIME = 64  # characters of dead_at a place keeps (the API's cursor is a place: it stays short)


def dead_letter_place(letter_id: str, letter: Mapping[str, Any] | None) -> str:
    """The letter's place in the order: when it was given up, then its id. A letter that is not JSON (or
    has no ``dead_at``) comes after the others; "_" is kept out of the time, so the id follows the first."""
    dead_at = letter.get("dead_at") if isinstance(letter, Mapping) else None
    return f"{str(dead_at or '').replace('_', '')[:PLACE_TIME]}_{letter_id}"


def _letter(raw: Any) -> dict[str, Any] | None:
    """A letter as kept, None when there is none or it is not a JSON object."""
    try:
        letter = json.loads(_text(raw, "surrogateescape")) if raw is not None else None
    except ValueError:
        return None
    return letter if isinstance(letter, dict) else None


def _write_letter(store: RedisStore, letter_id: str, text: str | None) -> bool:
    """Keep ``text`` as the letter (None: drop it) and move its place, in one MULTI; whether a letter
    was there. Its old place is read under WATCH: a write to the letters between that read and the MULTI
    fails the MULTI, and this one starts again (its place would otherwise be left behind)."""
    letters, order = store.keys.dead_letters, store.keys.dead_letter_order

    def run() -> bool:
        with cast(Any, store.client).pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(letters)
                    old = pipe.hget(letters, letter_id)
                    pipe.multi()
                    if old is not None:
                        pipe.zrem(order, dead_letter_place(letter_id, _letter(old)))
                    if text is None:
                        pipe.hdel(letters, letter_id)
                    else:
                        pipe.hset(letters, letter_id, text)
                        pipe.zadd(order, {dead_letter_place(letter_id, _letter(text)): 0})
                    pipe.execute()
                    return old is not None
                except redis.exceptions.WatchError:
                    continue

    return store._guarded(run)


def put_dead_letter(store: RedisStore, letter: Mapping[str, Any]) -> None:
    """Keep an event a receiver did not take (``letter["id"]`` names it), as JSON, in its place."""
    _write_letter(store, str(letter["id"]), json.dumps(letter, sort_keys=True))


def drop_dead_letter(store: RedisStore, letter_id: str) -> bool:
    """Forget a dead letter and its place; False when there was none by that id."""
    return _write_letter(store, letter_id, None)


def _scan_raw(store: RedisStore, batch: int) -> Iterator[list[tuple[str, Any]]]:
    """The letters as kept, ``batch`` a command (HSCAN: one HGETALL would hold Redis for all of them)."""
    cursor: Any = 0
    while True:
        cursor, found = store._run("HSCAN", store.keys.dead_letters, cursor, "COUNT", batch)
        pairs = found.items() if isinstance(found, dict) else zip(found[::2], found[1::2], strict=True)
        yield [(_text(key, "surrogateescape"), value) for key, value in pairs]
        if int(cursor) == 0:
            return


def scan_dead_letters(store: RedisStore, batch: int = 500) -> Iterator[dict[str, Any]]:
    """Every dead letter, ``batch`` a command (HSCAN: the hash may hold many while a receiver is down),
    each once. A letter that is not JSON is passed over."""
    seen: set[str] = set()
    for pairs in _scan_raw(store, batch):
        for letter_id, raw in pairs:
            if letter_id in seen:  # HSCAN may return an entry twice
                continue
            seen.add(letter_id)
            letter = _letter(raw)
            if letter is not None:
                yield letter


def dead_letter(store: RedisStore, letter_id: str) -> dict[str, Any] | None:
    """One dead letter by id, None when there is none (or it is not JSON)."""
    return _letter(store._run("HGET", store.keys.dead_letters, letter_id))


def _places_after(store: RedisStore, after: str, count: int) -> list[tuple[str, str, Any]]:
    """Up to ``count`` places past ``after`` ("": from the first), each with its letter's id and the
    letter as kept now (None: gone)."""
    start = "(" + after if after else "-"
    found = store._run("ZRANGE", store.keys.dead_letter_order, start, "+", "BYLEX", "LIMIT", 0, count)
    places = [_text(p, "surrogateescape") for p in found]
    ids = [p.partition("_")[2] for p in places]
    kept = store._run("HMGET", store.keys.dead_letters, *ids) if ids else []
    return list(zip(places, ids, kept, strict=True))


def dead_letters_after(store: RedisStore, after: str, count: int) -> list[tuple[str, dict[str, Any] | None]]:
    """Up to ``count`` letters in order past the place ``after`` ("": from the first), each with its
    place: one ZRANGE and one HMGET. None for a letter dropped or moved since the ZRANGE (its reader
    passes over it), or that is not JSON."""
    found = []
    for place, letter_id, raw in _places_after(store, after, count):
        letter = _letter(raw)
        found.append((place, letter if dead_letter_place(letter_id, letter) == place else None))
    return found


def dead_letters_waiting(store: RedisStore) -> int:
    """How many dead letters wait (HLEN), counted in one MULTI with their places: when the two differ
    (letters kept by a version before the order, which wrote the hash only), the order is mended first.
    Once, then a count: every write keeps it."""

    def fill(pipe: Any) -> None:
        pipe.hlen(store.keys.dead_letters)
        pipe.zcard(store.keys.dead_letter_order)

    waiting, placed = (int(n) for n in store._pipeline(fill, transaction=True))
    if waiting != placed:
        _mend_order(store)
    return waiting


def _mend_order(store: RedisStore, batch: int = 500) -> None:
    """Give every letter its place, then take out the places of letters gone, ``batch`` a command: no
    command holds Redis for all of them. Writes meanwhile may leave it unmended (a place added for a
    letter dropped since): the next count sees it and mends again."""
    order = store.keys.dead_letter_order
    for pairs in _scan_raw(store, batch):
        scored = [
            part for letter_id, raw in pairs for part in (0, dead_letter_place(letter_id, _letter(raw)))
        ]
        if scored:
            store._run("ZADD", order, *scored)
    after = ""
    while found := _places_after(store, after, batch):
        gone = [
            p for p, letter_id, raw in found if raw is None or dead_letter_place(letter_id, _letter(raw)) != p
        ]
        if gone:
            store._run("ZREM", order, *gone)
        after = found[-1][0]


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
    "dead_letter_place",
    "dead_letters_after",
    "dead_letters_waiting",
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
