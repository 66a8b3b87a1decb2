"""Replaying an account's ledger against its balance, in batches that never hold Redis for long.

One ``XRANGE - +`` inside MULTI read the whole ledger in a single command: at 300,000 entries it held
Redis for a third of a second, and every other account's charge waited behind it (``ledger_retention``
allows 10^7). Here no command reads more than ``batch`` entries (1000 by default: about a millisecond),
and nothing is held between them, so charges, grants and the retention's fold go on while the scan runs.

The rule, which makes that exact however the ledger moves meanwhile:

- **The check is as of one stream id.** One MULTI reads the account's hash, the ledger's first batch
  and its newest id, ``through``: the balance read is the balance as of ``through`` (each script writes
  the balance and appends its entry in one step). The replay is ``ledger_base`` plus the amount of every
  entry after ``ledger_base_id`` up to and including ``through``; entries appended later are not read.
- **A fold is seen, never missed.** The fold (``ledger_plan``/``ledger_append`` in lua/_lib.lua) adds
  the oldest entries to ``ledger_base``, records the last of them in ``ledger_base_id`` and trims them
  with ``XTRIM MINID``, all in one script. Each later batch is read in one MULTI with ``ledger_base`` and
  ``ledger_base_id``: a ``ledger_base_id`` at or before the last entry read means the fold took only
  entries already counted, and the scan goes on; one past it means entries not yet read were folded
  away, and the replay starts again from that fold's ``ledger_base`` (the entries it folded are in it),
  which is the same sum if the data is sound. Should a fold pass ``through`` itself (more appends during
  the scan than the retention keeps), the scan starts over from a new snapshot, ``ATTEMPTS`` times at
  most, then raises Conflict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from creditgate.errors import Conflict, StoreDataError
from creditgate.store.replies import account_state_reply, as_text
from creditgate.store.store import RedisStore

BATCH = 1000  # entries per XRANGE: about a millisecond of Redis time
ATTEMPTS = 3  # snapshots taken before a ledger folded past each of them is reported as a Conflict
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_FIRST = (0, 0)  # before every stream id: no fold yet


def stream_id(text: str) -> tuple[int, int]:
    """A stream id as a pair that compares as Redis orders ids."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class LedgerReplay:
    """What a scan found: ``replayed`` (``ledger_base`` plus the amounts of the ``entries`` after it, up to
    ``through``) against ``balance`` (the balance as of ``through``, the newest entry when the scan
    began; "" for an empty ledger). ``folds`` counts the folds that overtook the scan (it then replayed
    from the newer ``ledger_base``)."""

    account: str
    exists: bool
    balance: int
    ledger_base: int
    entries: int
    replayed: int
    through: str
    folds: int = 0

    @property
    def ok(self) -> bool:
        return self.replayed == self.balance


class LedgerScan:
    """One verification in progress: the snapshot is taken at construction, ``step`` reads one more batch
    (False once the scan has reached ``through``), ``result`` is the replay so far. ``replay_ledger``
    runs it to the end; a test steps it to write between batches."""

    def __init__(self, store: RedisStore, account: str, *, batch: int = BATCH) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.store = store
        self.account = account
        self.batch = batch
        self.keys = store.keys.account(account)
        self.snapshots = 0
        self.folds = 0
        self._begin()

    def _begin(self) -> None:
        """The snapshot: the hash, the newest id and the first batch, in one MULTI."""
        if self.snapshots >= ATTEMPTS:
            raise Conflict(
                f"the ledger of account '{self.account}' was folded past the point being checked "
                f"{ATTEMPTS} times while it was read (more writes than the retention keeps): try again"
            )
        self.snapshots += 1
        keys, batch = self.keys, self.batch

        def fill(pipe: Any) -> None:
            pipe.hgetall(keys.state)
            pipe.xrevrange(keys.ledger, "+", "-", count=1)
            pipe.xrange(keys.ledger, "-", "+", count=batch)

        raw, newest, first = self.store._pipeline(fill, transaction=True)
        state = account_state_reply(self.account, raw)
        self.exists = state.exists
        self.balance = state.balance
        self.through = as_text(newest[0][0]) if newest else ""
        self.base = state.ledger_base
        fields = {as_text(k): v for k, v in raw.items()}
        self.cursor = self._fold_id(fields.get("ledger_base_id"))
        self.sum = 0
        self.entries = 0
        # Read with the hash, the first batch follows ledger_base_id exactly (the fold trims what it adds).
        self._take(first)

    def _fold_id(self, raw: Any) -> tuple[int, int]:
        text = as_text(raw) if raw is not None else ""
        if not text:
            return _FIRST
        if not re.fullmatch(r"[0-9]{1,20}-[0-9]{1,20}", text):
            raise StoreDataError(
                f"bad data in Redis: account '{self.account}' field ledger_base_id: is not a stream id",
                key=self.account,
            )
        return stream_id(text)

    def _take(self, entries: list[Any]) -> None:
        for entry_id, fields in entries:
            self.sum += self._amount(as_text(entry_id), fields)
            self.cursor = stream_id(as_text(entry_id))
        self.entries += len(entries)
        self.done = len(entries) < self.batch or not self.through or self.cursor >= stream_id(self.through)

    def _amount(self, entry_id: str, fields: Any) -> int:
        if isinstance(fields, list):  # a Cluster pipeline's transaction: the raw [name, value, ...] reply
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        value = next((v for k, v in fields.items() if as_text(k) == "amount"), None)
        if value is None:
            return 0
        text = as_text(value)
        if not _INTEGER.fullmatch(text):
            raise StoreDataError(
                f"bad data in Redis: ledger entry {entry_id} of account '{self.account}': amount is not "
                "an integer",
                key=self.account,
            )
        return int(text)

    def step(self) -> bool:
        """Read the next batch, with the fold's fields in the same MULTI; False once the scan is done."""
        if self.done:
            return False
        keys, cursor = self.keys, "{}-{}".format(*self.cursor)

        def fill(pipe: Any) -> None:
            pipe.hmget(keys.state, "ledger_base", "ledger_base_id")
            pipe.xrange(keys.ledger, "(" + cursor, self.through, count=self.batch)

        (base, fold_id), entries = self.store._pipeline(fill, transaction=True)
        folded_to = self._fold_id(fold_id)
        if folded_to > self.cursor:  # a fold took entries this scan had not read yet
            if folded_to > stream_id(self.through):  # ... and the snapshot's own: start again
                self._begin()
                return not self.done
            text = as_text(base) if base is not None else "0"
            if not _INTEGER.fullmatch(text):
                raise StoreDataError(
                    f"bad data in Redis: account '{self.account}' field ledger_base: is not an integer",
                    key=self.account,
                )
            self.base, self.sum, self.entries, self.cursor = int(text), 0, 0, folded_to
            self.folds += 1
        self._take(entries)
        return not self.done

    def result(self) -> LedgerReplay:
        return LedgerReplay(
            self.account,
            self.exists,
            self.balance,
            self.base,
            self.entries,
            self.base + self.sum,
            self.through,
            self.folds,
        )


def replay_ledger(store: RedisStore, account: str, *, batch: int = BATCH) -> LedgerReplay:
    """Replay the account's ledger to the end, a batch per command (see the module's rule)."""
    scan = LedgerScan(store, account, batch=batch)
    while scan.step():
        pass
    return scan.result()


__all__ = ["ATTEMPTS", "BATCH", "LedgerReplay", "LedgerScan", "replay_ledger", "stream_id"]
