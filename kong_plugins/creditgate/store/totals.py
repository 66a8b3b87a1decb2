"""The day's totals over every account: what ``/v1/usage/totals`` and ``/metrics`` read, at a cost that
does not grow with the number of accounts.

The charge and settle scripts count each request into the account's usage hash and, in the same step,
into the day's totals (``add_total`` in _lib.lua): a hash ``"<route>|<field>" -> count`` (a pool
member's own counters left out: the pool's count them), a sorted set ``account -> credits charged``
and a HyperLogLog of the accounts counted. On one server (standalone, Sentinel) there is one of each a
day, ``<prefix>:{totals}:totals:<day>``. On a Cluster a script can only write its own slot, so each slot
keeps its own; once the day is over (``CLOSED_AFTER``) the first read folds them into the same global
keys, and marks the day built.

Days counted before these totals existed (an upgrade) are made whole the same way from every
account's usage hash, once each day is over; the day of the upgrade is read from the accounts until
then. The meta hash says which: ``from`` is the first day the scripts counted whole (the day after the
first operator's write or read that found no totals, or 0 for a store created with them), and
``built:<day>`` marks each day folded or rebuilt since.

Every Redis command here is bounded: a page of a sorted set, one hash, one batch of accounts.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from creditgate.core.periods import DAY_SECONDS
from creditgate.store.keys import Keys, day_name, slot_totals_prefixes, totals_meta, totals_prefix
from creditgate.store.replies import USAGE_TTL_SECONDS, as_text


class Reader(Protocol):
    """What the totals need of a store (store/store.py's RedisStore)."""

    keys: Keys
    keyspace: Any

    def _run(self, command: str, *args: Any) -> Any: ...

    def _pipeline(self, fill: Callable[[Any], None], *, transaction: bool = False) -> list[Any]: ...

    def store_marked(self) -> bool: ...

    def account_names(self) -> list[str]: ...


# A day is over, for folding and rebuilding, this long after its end: charges decided on Redis's clock
# near midnight, late settlements and voids (store/voids.py: minutes) have all been counted by then.
CLOSED_AFTER = 3600
ACCOUNTS_BATCH = 500  # accounts read a pipeline when a day is rebuilt from their usage hashes
COMMANDS_BATCH = 4096  # commands a pipeline at most
PAGE = 100  # sorted set entries a command when ranking accounts, in the first round
MAX_PAGE = 5000  # ... doubling each round up to this
ENTRIES_A_PIPELINE = 20_000  # sorted set entries one pipeline reads at most
# A page of a day's accounts, most charged first: ZRANGE's reply inside a script is a flat array.
FLAT_PAGE = "return redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], 'REV', 'WITHSCORES')"
RESOLVE_AT_ONCE = 5000  # accounts summed over every day at once at most; else read further first
MAX_RANKED_PER_DAY = 20_000  # entries of one day read at most when ranking; past it the rank may be inexact


@dataclass
class Day:
    """One UTC day's totals: read from its keys (``key``), or held here (``counters``, ``credits``)
    when it is still being counted on a Cluster's slots or before the scripts counted it whole."""

    start: int
    key: str = ""
    counters: dict[str, int] = field(default_factory=dict)
    credits: dict[str, int] = field(default_factory=dict)  # account -> credits charged (0: counted)


@dataclass(frozen=True)
class Ranked:
    """The accounts charged the most credits over some days, most first, and whether the ranking is
    exact (it is unless a day held more than ``MAX_RANKED_PER_DAY`` accounts near the top)."""

    accounts: list[tuple[str, int]]
    exact: bool


def totals_start(marked_before: bool, now: int) -> int:
    """Where the totals start (the meta hash's ``from``): a store created with them (not marked before)
    from its first day; a store that held data before them (an upgrade) from the next UTC day."""
    return now - now % DAY_SECONDS + DAY_SECONDS if marked_before else 0


def _counters(raw: dict[Any, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, value in raw.items():
        try:
            out[as_text(name)] = int(value)
        except ValueError:  # a field that is not a counter: left out, as the scripts leave it
            continue
    return out


def _own(name: str) -> bool:
    """A counter the totals count: not a pool member's own (the pool's row counts the request)."""
    return "|member:" not in name


class Totals:
    """The totals of a store's days (see the module's docstring)."""

    def __init__(self, store: Reader) -> None:
        self.store = store
        self.prefix = store.keys.prefix
        self.meta = totals_meta(self.prefix)
        self.global_prefix = totals_prefix(self.prefix)
        self.in_scripts = store.keyspace.totals_in_scripts

    # What the totals hold

    def counted_from(self, now: int) -> int:
        """The first day the scripts counted whole: written the first time it is asked, or before the
        store is first marked (store.py)."""
        raw = self.store._run("HGET", self.meta, "from")
        if raw is None:
            self.store._run("HSETNX", self.meta, "from", totals_start(self.store.store_marked(), now))
            raw = self.store._run("HGET", self.meta, "from")
        return int(raw)

    def days(self, starts: Sequence[int], now: int, *, ranked: bool = True) -> list[Day]:
        """Each day's totals, folding or rebuilding the days over that are not yet (once each).
        ``ranked=False``: the counters only (a Cluster's open day is not read account by account)."""
        counted_from = self.counted_from(now)
        built = self._built(starts)
        out: list[Day] = []
        rebuild: list[int] = []
        for start in starts:
            key = self.global_prefix + day_name(start)
            closed = start + DAY_SECONDS + CLOSED_AFTER <= now
            if built[start] or (self.in_scripts and start >= counted_from):
                out.append(Day(start, key=key))
            elif start >= counted_from:  # a Cluster's day: on its slots
                day = self._from_slots(start, ranked=ranked or closed)
                if closed:
                    self._write(day)
                    out.append(Day(start, key=key))
                else:
                    out.append(day)
            else:
                rebuild.append(start)
                out.append(Day(start))
        if rebuild:
            rebuilt = {day.start: day for day in self._from_accounts(rebuild)}
            for i, day in enumerate(out):
                if day.start in rebuilt:
                    whole = rebuilt[day.start]
                    if day.start + DAY_SECONDS + CLOSED_AFTER <= now:
                        self._write(whole)
                        out[i] = Day(day.start, key=self.global_prefix + day_name(day.start))
                    else:
                        out[i] = whole
        return out

    def build_closed(self, now: int) -> int:
        """Fold (Cluster) or rebuild (days before the totals) every day over that is kept and not built
        yet, so that reads find them built: what ``credit-gate serve`` does in the background. Returns
        how many days it built."""
        first = now - now % DAY_SECONDS - (USAGE_TTL_SECONDS // DAY_SECONDS - 1) * DAY_SECONDS
        closed = [d for d in range(first, now, DAY_SECONDS) if d + DAY_SECONDS + CLOSED_AFTER <= now]
        counted_from = self.counted_from(now)
        built = self._built(closed)
        todo = [d for d in closed if not built[d] and (d < counted_from or not self.in_scripts)]
        for start in reversed(todo):  # the newest first: the ones a dashboard asks for
            self.days([start], now)
        return len(todo)

    def counters(self, days: Sequence[Day]) -> list[dict[str, int]]:
        """Each day's ``"<route>|<field>" -> count``, one pipeline."""
        keyed = [d for d in days if d.key]

        def fill(pipe: Any) -> None:
            for d in keyed:
                pipe.hgetall(d.key)

        read = iter(self.store._pipeline(fill)) if keyed else iter(())
        return [_counters(next(read)) if d.key else d.counters for d in days]

    def accounts_counted(self, days: Sequence[Day]) -> int:
        """How many accounts were counted on any of the days: exact for one day, else HyperLogLog's
        estimate (within about 1%)."""
        if len(days) == 1:
            day = days[0]
            return int(self.store._run("ZCARD", day.key + ":accounts")) if day.key else len(day.credits)
        held = set().union(*(d.credits for d in days if not d.key))
        keyed = [d.key + ":active" for d in days if d.key]
        if not keyed:
            return len(held)
        if not held:
            return int(self.store._run("PFCOUNT", *keyed))
        scratch = f"{self.global_prefix}scratch:{id(self)}:{len(keyed)}"

        def fill(pipe: Any) -> None:
            # By name: redis-py's Cluster pipeline refuses pfmerge and pfcount (keys on several slots
            # in general); these are all in the {totals} slot, in one MULTI.
            pipe.execute_command("PFMERGE", scratch, *keyed)
            names = sorted(held)
            for i in range(0, len(names), 1000):
                pipe.pfadd(scratch, *names[i : i + 1000])
            pipe.execute_command("PFCOUNT", scratch)
            pipe.delete(scratch)

        return int(self.store._pipeline(fill, transaction=True)[-2])

    def counted_on(self, days: Sequence[Day], names: Sequence[str]) -> dict[str, list[int]]:
        """The days (their starts) on which each of ``names`` was counted: one ZMSCORE a day."""
        keyed = [d for d in days if d.key]

        def fill(pipe: Any) -> None:
            for d in keyed:
                pipe.execute_command("ZMSCORE", d.key + ":accounts", *names)

        read = (
            dict(zip((d.start for d in keyed), self.store._pipeline(fill), strict=True))
            if keyed and names
            else {}
        )
        out: dict[str, list[int]] = {n: [] for n in names}
        for d in days:
            for i, name in enumerate(names):
                if (read[d.start][i] is not None) if d.key else name in d.credits:
                    out[name].append(d.start)
        return out

    def top(self, days: Sequence[Day], count: int) -> Ranked:
        """The ``count`` accounts charged the most credits over ``days`` (ties at the last place either
        way), with their credits; when fewer were charged, then those counted with nothing charged, by
        name. Fagin's threshold algorithm over the days' sorted sets (``_Ranking``)."""
        return _Ranking(self.store, days).top(count)

    # Reading and writing the keys

    def _built(self, starts: Sequence[int]) -> dict[int, bool]:
        fields = [f"built:{day_name(s)}" for s in starts]
        raw = self.store._run("HMGET", self.meta, *fields) if fields else []
        return {s: value is not None for s, value in zip(starts, raw, strict=True)}

    def _from_slots(self, start: int, *, ranked: bool = True) -> Day:
        """A Cluster's day added up from every slot's totals (hash, and sorted set when ``ranked``)."""
        name = day_name(start)
        keys = [p + name for p in slot_totals_prefixes(self.prefix)]
        day = Day(start)
        for batch in _batches(keys, COMMANDS_BATCH // 2):

            def fill(pipe: Any, batch: list[str] = batch) -> None:
                for key in batch:
                    pipe.hgetall(key)
                    if ranked:
                        pipe.zrange(key + ":accounts", 0, -1, withscores=True)

            replies = self.store._pipeline(fill)
            hashes = replies[::2] if ranked else replies
            ranks = replies[1::2] if ranked else [[]] * len(replies)
            for counters, accounts in zip(hashes, ranks, strict=True):
                for field_name, value in _counters(counters).items():
                    day.counters[field_name] = day.counters.get(field_name, 0) + value
                for account, score in accounts:
                    account_name = as_text(account)
                    day.credits[account_name] = day.credits.get(account_name, 0) + int(score)
        return day

    def _from_accounts(self, starts: Sequence[int]) -> list[Day]:
        """Days made whole from every account's usage hash (days counted before the totals were)."""
        days = {s: Day(s) for s in starts}
        for accounts in _batches(self.store.account_names(), ACCOUNTS_BATCH):
            pairs = [(a, s) for a in accounts for s in starts]
            for batch in _batches(pairs, COMMANDS_BATCH):

                def fill(pipe: Any, batch: list[tuple[str, int]] = batch) -> None:
                    for account, start in batch:
                        pipe.hgetall(self.store.keys.account(account).usage(start))

                for (account, start), raw in zip(batch, self.store._pipeline(fill), strict=True):
                    counters = {n: v for n, v in _counters(raw).items() if _own(n)}
                    if not counters:
                        continue
                    day = days[start]
                    for name, value in counters.items():
                        day.counters[name] = day.counters.get(name, 0) + value
                    credits = sum(v for n, v in counters.items() if n.endswith("|credits"))
                    day.credits[account] = day.credits.get(account, 0) + credits
        return [days[s] for s in starts]

    def _write(self, day: Day) -> None:
        """A day made whole, written over its global keys in one transaction, and marked built."""
        key = self.global_prefix + day_name(day.start)
        expire_at = day.start + USAGE_TTL_SECONDS
        names = sorted(day.credits)

        def fill(pipe: Any) -> None:
            pipe.delete(key, key + ":accounts", key + ":active")
            if day.counters:
                pipe.hset(key, mapping=day.counters)
            for batch in _batches(names, 1000):
                pipe.zadd(key + ":accounts", {n: day.credits[n] for n in batch})
                pipe.pfadd(key + ":active", *batch)
            pipe.expireat(key, expire_at)
            pipe.expireat(key + ":accounts", expire_at)
            pipe.expireat(key + ":active", expire_at)
            pipe.hset(self.meta, f"built:{day_name(day.start)}", 1)

        self.store._pipeline(fill, transaction=True)


class _Ranking:
    """Fagin's threshold algorithm over the days' sorted sets (account -> credits charged): each is read
    from its top a page at a time; each account seen is summed over every day (from the pages already
    read, from what a day read whole holds, else by ZMSCORE on the days still being read); reading
    stops once the ``count``-th best sum is at least what an account not seen yet could reach (the sum
    of each day's last credits read). Each Redis command reads one page, or looks up 1000 names."""

    def __init__(self, store: Reader, days: Sequence[Day]) -> None:
        self.store = store
        self.days = [d for d in days if d.key or d.credits]
        # What each day has shown so far (a held day shows everything at once), and whether that is all.
        self.seen: list[dict[str, int]] = [dict(d.credits) if not d.key else {} for d in self.days]
        self.whole = [not d.key for d in self.days]
        self.ordered = [
            sorted(d.credits.items(), key=lambda item: (-item[1], item[0])) if not d.key else []
            for d in self.days
        ]
        self.known: dict[str, int] = {}  # each account's credits over the days' entries seen so far
        for seen in self.seen:
            for name, credits in seen.items():
                self.known[name] = self.known.get(name, 0) + credits
        self.offsets = [0] * len(self.days)
        self.floors = [0] * len(self.days)
        self.stopped = [False] * len(self.days)  # read no further (whole, nothing above 0, or capped)
        self.exact = True

    def top(self, count: int) -> Ranked:
        sums: dict[str, int] = {}  # accounts whose credits over every day are known exactly
        rounds = 0
        while True:
            size = min(PAGE << rounds, MAX_PAGE)  # pages grow: a long day is read in a few rounds
            rounds += 1
            for i, page in self._pages(size):
                self.offsets[i] += size
                # What an account not read yet can have on this day: at most the last credits read.
                if len(page) < size or page[-1][1] <= 0:
                    self.stopped[i], self.floors[i] = True, 0
                else:
                    self.floors[i] = page[-1][1]
                    if self.offsets[i] >= MAX_RANKED_PER_DAY:  # left unread: the ranking may be inexact
                        self.stopped[i], self.exact = True, False
            # An account seen has at least what it showed, and at most that plus what the days not read
            # whole may still hold: only those that could pass the count-th lowest bound are contenders.
            open_floor = sum(f for i, f in enumerate(self.floors) if not self.whole[i])
            lows = heapq.nlargest(count, (c for c in self.known.values() if c > 0))
            bar = lows[-1] if len(lows) == count else 0
            contenders = [
                n for n, c in self.known.items() if c > 0 and n not in sums and c + open_floor >= bar
            ]
            if len(contenders) > RESOLVE_AT_ONCE and not all(self.stopped):
                continue  # read further down first: the bounds narrow
            contenders.sort(key=lambda n: -self.known[n])
            for start in range(0, len(contenders), 1000):
                best = heapq.nsmallest(count, ((-c, n) for n, c in sums.items()))
                if len(best) == count and self.known[contenders[start]] + open_floor <= -best[-1][0]:
                    break
                sums.update(self.sums(contenders[start : start + 1000]))
            best = heapq.nsmallest(count, ((-c, n) for n, c in sums.items()))
            if all(self.stopped) or (len(best) == count and -best[-1][0] >= sum(self.floors)):
                ranked = [(n, -c) for c, n in best]
                if len(ranked) < count:
                    ranked += [(n, 0) for n in self.uncharged(count - len(ranked))]
                return Ranked(ranked, self.exact)

    def _pages(self, size: int) -> list[tuple[int, list[tuple[str, int]]]]:
        reading = [i for i, d in enumerate(self.days) if not self.stopped[i]]
        keyed = [i for i in reading if self.days[i].key]
        read: dict[int, Any] = {}
        per_pipeline = max(1, ENTRIES_A_PIPELINE // size)  # a pipeline holds Redis for a few ms at most
        for chunk in _batches(keyed, per_pipeline):

            def fill(pipe: Any, chunk: list[int] = chunk) -> None:
                for i in chunk:
                    start = self.offsets[i]
                    key = self.days[i].key + ":accounts"
                    # Through a script: its reply is one flat array of strings, which the client reads
                    # in half the time of RESP3's pair per entry (at 200,000 entries).
                    pipe.execute_command("EVAL", FLAT_PAGE, 1, key, start, start + size - 1)

            read.update(zip(chunk, self.store._pipeline(fill), strict=True))
        pages = []
        for i in reading:
            if i in read:
                page = _pairs(read[i])
                self.seen[i].update(page)
                for name, credits in page:
                    self.known[name] = self.known.get(name, 0) + credits
                if len(page) < size:
                    self.whole[i] = True
            else:
                page = self.ordered[i][self.offsets[i] : self.offsets[i] + size]
            pages.append((i, page))
        return pages

    def sums(self, names: list[str]) -> dict[str, int]:
        """Each name's credits over every day."""
        sums = {n: self.known.get(n, 0) for n in names}
        for i, day in enumerate(self.days):
            if self.whole[i]:
                continue
            ask = [n for n in names if n not in self.seen[i]]
            for batch in _batches(ask, 1000):

                def fill(pipe: Any, batch: list[str] = batch, key: str = day.key) -> None:
                    pipe.execute_command("ZMSCORE", key + ":accounts", *batch)

                (scores,) = self.store._pipeline(fill)
                for name, score in zip(batch, scores, strict=True):
                    if score is not None:
                        sums[name] += int(float(score))
        return sums

    def uncharged(self, want: int) -> list[str]:
        """The first ``want`` accounts by name counted on some of the days and charged nothing on any:
        the days' accounts with no credits merged by name (a sorted set orders equal scores by name)."""
        found: list[str] = []
        batch: list[str] = []
        last = None
        for name in heapq.merge(*(self._zero_names(d) for d in self.days)):
            if name == last:
                continue
            last = name
            batch.append(name)
            if len(batch) == PAGE:
                found += [n for n, c in self.sums(batch).items() if c == 0]
                batch = []
                if len(found) >= want:
                    break
        if batch and len(found) < want:
            found += [n for n, c in self.sums(batch).items() if c == 0]
        return found[:want]

    def _zero_names(self, day: Day) -> Iterator[str]:
        if not day.key:
            yield from sorted(n for n, c in day.credits.items() if c == 0)
            return
        offset = 0
        while True:
            page = self.store._run("ZRANGEBYSCORE", day.key + ":accounts", 0, 0, "LIMIT", offset, PAGE)
            yield from (as_text(name) for name in page)
            if len(page) < PAGE:
                return
            offset += PAGE


def _pairs(reply: list[Any]) -> list[tuple[str, int]]:
    """ZRANGE ... WITHSCORES as (member, score) pairs: pairs (RESP3), or a flat list of text (RESP2, and
    ``FLAT_PAGE``'s reply). Scores are whole numbers of credits."""
    if reply and isinstance(reply[0], list):
        return [(as_text(name), int(float(score))) for name, score in reply]
    names, scores = reply[::2], reply[1::2]
    try:
        return [(name.decode(), int(score)) for name, score in zip(names, scores, strict=True)]
    except (AttributeError, ValueError):  # not bytes, or a score written as a float
        return [(as_text(name), int(float(score))) for name, score in zip(names, scores, strict=True)]


def _batches(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


__all__ = ["CLOSED_AFTER", "Day", "Ranked", "Reader", "Totals", "totals_start"]
