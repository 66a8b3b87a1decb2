"""Charges whose reply never came back: charged and answered, or neither.

A charge is sent with a random token. When its reply does not arrive (the client's read timeout fired:
Redis ran the script late, or the reply was held behind a slow one; the connection broke after the
send), the gate answers the request as Redis being unavailable, and the charge may or may not have
run. The store then hands the token to its ``Voider``, which runs ``void.lua`` in the account's slot
until Redis answers: if the charge ran, it is given back in full (``settle.lua``, a refund, at most
once); if it has not, a marker makes it never charge (charge.lua refuses a voided token). Redis runs
scripts one at a time, so a request is charged only if the gate saw the charge.

The voider retries for ``VOID_SECONDS``. A charge it could not void by then (Redis unreachable the whole
time) is logged at error level and counted, with its account and token, for an operator to check; the
plugin server dying with voids queued loses them likewise (docs/fail-closed.md states both).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import redis

from creditgate.errors import StoreError
from creditgate.store.keys import TOKEN_SECONDS, VOID_SECONDS
from creditgate.store.replies import as_text

log = logging.getLogger("creditgate")

QUEUE_LIMIT = 100_000  # voids waiting at most (a Redis down for long): each is a few hundred bytes
RETRY_SECONDS = (0.05, 0.2, 1.0, 2.0)


# How redis-py and the hot path word a failure before the whole command was sent (Redis runs no part of
# a command it did not receive whole).
NOT_SENT = ("connecting to", "sending to Redis", "Error while writing to socket")


def maybe_sent(error: StoreError) -> bool:
    """Whether a charge that failed with ``error`` may have reached Redis: a timeout or a connection lost
    after the send, but not a connection never made or a command not sent whole (``NOT_SENT``), nor an
    open circuit, a refusal or bad data (Redis ran nothing)."""
    if type(error).__name__ not in ("StoreError", "StoreTimeout"):
        return False
    text = f"{error} {error.__cause__}"
    return not any(words in text for words in NOT_SENT)


@dataclass
class Void:
    account: str
    token: str
    ledger_retention: int
    since: float  # time.monotonic() when the charge failed
    attempts: int = 0


@dataclass
class VoidCounts:
    """What the voider did since the process started (reported with the node's Redis errors)."""

    voided: int = 0  # the charge had not run: it never will
    given_back: int = 0  # the charge had run: refunded
    gave_up: int = 0  # not voided within VOID_SECONDS (or the queue was full)


class Voider:
    """One thread per store that voids the charges handed to it, in order, retrying while Redis fails."""

    def __init__(self, store: Any, script: Any) -> None:
        self._store = store  # the RedisStore (not imported: it imports this module)
        self._script = script  # void.lua, registered on the store's client
        self._queue: deque[Void] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self.counts = VoidCounts()

    def submit(self, account: str, token: str, ledger_retention: int) -> None:
        """Void this charge as soon as Redis answers (never blocks the request)."""
        with self._wake:
            if len(self._queue) >= QUEUE_LIMIT:
                self.counts.gave_up += 1
                log.error(
                    "credit-gate: cannot void charge %s of account %r: %d voids wait already; if it ran, "
                    "it stays charged (look for token:%s in the account's keys)",
                    token,
                    account,
                    len(self._queue),
                    token,
                )
                return
            self._queue.append(Void(account, token, ledger_retention, time.monotonic()))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="credit-gate-voider", daemon=True)
                self._thread.start()
            self._wake.notify()

    def pending(self) -> int:
        return len(self._queue)

    def drain(self, timeout: float) -> bool:
        """Wait until no void is queued (tests, and a clean shutdown); True when none is left."""
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    self._wake.wait()
                void = self._queue[0]
            done = self._attempt(void)
            with self._wake:
                if done:
                    self._queue.popleft()
                    continue
            time.sleep(RETRY_SECONDS[min(void.attempts - 1, len(RETRY_SECONDS) - 1)])

    def _attempt(self, void: Void) -> bool:
        """One try; True when the void is settled (done or given up)."""
        void.attempts += 1
        try:
            outcome = self.void(void.account, void.token, void.ledger_retention)
        except StoreError as error:
            if time.monotonic() - void.since < VOID_SECONDS:
                return False
            self.counts.gave_up += 1
            log.error(
                "credit-gate: could not void charge %s of account %r within %d s (%s); if it ran, it stays "
                "charged (look for token:%s in the account's keys)",
                void.token,
                void.account,
                VOID_SECONDS,
                error,
                void.token,
            )
            return True
        except Exception:  # never let the thread die: the next voids still need it
            log.exception("credit-gate: voiding charge %s of account %r failed", void.token, void.account)
            return time.monotonic() - void.since >= VOID_SECONDS
        if outcome == "given_back":
            self.counts.given_back += 1
            log.warning(
                "credit-gate: charge %s of account %r ran after the gate stopped waiting; given back",
                void.token,
                void.account,
            )
        else:
            self.counts.voided += 1
        return True

    def void(self, account: str, token: str, ledger_retention: int) -> str:
        """``void.lua``, then the refund when the charge ran: "voided", "given_back" (or "already")."""
        store = self._store
        keys = store.keys.account(account)
        # Not through the circuit breaker: a void is no request waiting, and its failures while Redis is
        # down must not open the circuit for the requests (nor an open circuit stop the void).
        try:
            state, ledger_id = store._script(
                self._script, [keys.token(token), keys.void(token)], [TOKEN_SECONDS]
            )
        except (redis.exceptions.RedisError, OSError) as error:
            raise StoreError(f"Redis failed: {error}") from error
        if as_text(state) == "voided":
            return "voided"
        try:
            result = store.settle(
                account,
                as_text(ledger_id),
                0,
                refund=True,
                window_seconds=TOKEN_SECONDS,
                ledger_retention=ledger_retention,
                breaker=False,
            )
        except (redis.exceptions.RedisError, OSError) as error:
            raise StoreError(f"Redis failed: {error}") from error
        return "given_back" if result.outcome == "applied" else result.outcome


__all__ = ["TOKEN_SECONDS", "VOID_SECONDS", "VoidCounts", "Voider", "maybe_sent"]
