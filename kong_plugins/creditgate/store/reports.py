"""Reads that span many accounts, for reports: pages of the accounts, and usage hashes of many
(account, day) pairs. Each Redis command is bounded; callers bound how many they send."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from creditgate.store.replies import as_text
from creditgate.store.store import RedisStore

PIPELINE = 4096  # commands a pipeline at most


def account_page(store: RedisStore, cursor: int, count: int) -> tuple[int, list[str]]:
    """About ``count`` accounts and the cursor of the next page (0 after the last): SSCAN, whose pages
    never miss an account that stays, whatever is added meanwhile. Each page's names sorted."""
    names: list[str] = []
    while True:
        sscan = cast(Any, store.client).sscan
        cursor, page = store._guarded(sscan, store.keys.accounts, cursor, None, count)
        names += [as_text(name) for name in page]
        if cursor == 0 or names:
            return int(cursor), sorted(names)


def account_count(store: RedisStore) -> int:
    return int(store._run("SCARD", store.keys.accounts))


def balances(store: RedisStore, names: Sequence[str]) -> int:
    """The accounts' balances added up, in one pipeline of HGET (the field only, not the whole hash); a
    balance that is not a whole number is left out (the account's own reads refuse it as bad data)."""

    def fill(pipe: Any) -> None:
        for name in names:
            pipe.hget(store.keys.account(name).state, "balance")

    total = 0
    for raw in store._pipeline(fill):
        try:
            total += int(raw) if raw is not None else 0
        except ValueError:
            continue
    return total


def usage_of(store: RedisStore, pairs: Sequence[tuple[str, int]]) -> list[dict[str, int]]:
    """The usage counters of each (account, any instant of a UTC day), ``PIPELINE`` a pipeline."""
    out: list[dict[str, int]] = []
    for i in range(0, len(pairs), PIPELINE):
        batch = pairs[i : i + PIPELINE]

        def fill(pipe: Any, batch: Sequence[tuple[str, int]] = batch) -> None:
            for account, day in batch:
                pipe.hgetall(store.keys.account(account).usage(day))

        out += [{as_text(k): int(v) for k, v in reply.items()} for reply in store._pipeline(fill)]
    return out


__all__ = ["account_count", "account_page", "balances", "usage_of"]
